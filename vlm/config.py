"""Typed experiment configs: Python files returning dataclasses, plus `--set` overrides.

A config file (`configs/<name>.py`) defines `get_config() -> Config`. The
command line changes single fields with `--set section.key=value`; values
are parsed to the field's type and checked, and an unknown key is an error
that names the closest valid one.
"""

import dataclasses
import difflib
import importlib.util
import json
import math
import os
import re
import typing
from typing import Optional
from typing import Union


class ConfigError(ValueError):
    """A config key or value that cannot be used; the message names it."""


@dataclasses.dataclass
class ModelConfig:
    """Sizes of the ViT encoder and the text decoder."""

    image_size: int = 64
    patch_size: int = 8
    encoder_layers: int = 4
    encoder_heads: int = 4
    encoder_dim: int = 256
    encoder_mlp_dim: int = 1024
    # A keras-hub ViT preset (downloads weights; its sizes win), or None.
    encoder_preset: Optional[str] = None
    # A .keras captioner whose image encoder (same sizes) starts this model's.
    encoder_from: Optional[str] = None
    # Stride-2 3x3 convolutions before the ViT's patches (0: none), with
    # encoder_dim / 2**n ... encoder_dim / 2 channels (`vlm.layers.ConvStem`).
    encoder_stem_layers: int = 0
    # x and y maps in [-1, 1] beside every stem convolution's input (CoordConv).
    encoder_coordinates: bool = False
    # Add the 2D sine-cosine code to the stem's output, before the ViT.
    encoder_stem_positions: bool = False
    # Transformer blocks after the ViT whose attention learns a bias per 2D
    # offset (`vlm.layers.RelativePositionBlock`).
    encoder_relative_layers: int = 0
    # How their offset tables start: "zeros", or "directions" (the first four
    # heads looking left, right, up and down: `DirectionCones`).
    encoder_relative_init: str = "zeros"
    # End the encoder with `vlm.layers.SideMemory`: beside each patch, a slot
    # per side (left, right, above, below) holding what lies there.
    encoder_side_memory: bool = False
    # Add a fixed 2D sine-cosine position code to the patches the decoder reads.
    add_2d_positions: bool = True
    decoder_layers: int = 4
    decoder_heads: int = 4
    decoder_dim: int = 256
    decoder_mlp_dim: int = 1024
    # GeGLU feed-forwards in the decoder blocks (`vlm.layers.DecoderBlock`).
    decoder_gated_mlp: bool = False
    # Each decoder block after the first biases its cross attention by where
    # the one before looked, shifted by kernels its queries pick (FocusShift).
    decoder_focus_shift: bool = False
    # Each decoder block adds the (x, y) its cross-attention heads looked at.
    decoder_position_readout: bool = False
    num_key_value_heads: Optional[int] = None
    # Tokens per caption, [START] included; longer captions are truncated.
    sequence_length: int = 24
    vocabulary_size: int = 1000
    dropout: float = 0.1
    tie_embeddings: bool = True
    # Images per example (shapes_change: 2). Above 1, `multi_image` says how
    # the decoder reads them: "interleaved" (one context, an <image> marker
    # per image, `media_mode` masks) or "sources" (one cross attention each).
    num_images: int = 1
    multi_image: str = "interleaved"
    media_mode: str = "all_previous"
    # Each image after the first also carries how its patches differ from the
    # image before (`vlm.layers.ImageDifference`): what changed, in one lookup.
    image_difference: bool = False
    # "captioner" (vlm's own decoder) or "adapter": gated cross-attention
    # blocks in a keras-hub language model (`VisionLanguageModel`), which is
    # built from the decoder_* sizes as `language_model` ("gpt2", "gemma",
    # "llama"), loaded from `language_model_from` (a .keras backbone), or
    # downloaded as `language_model_preset` (its sizes win).
    architecture: str = "captioner"
    language_model: str = "gpt2"
    language_model_from: Optional[str] = None
    language_model_preset: Optional[str] = None
    cross_attention_every: int = 1
    adapter_mlp_dim: int = 256
    # The adapter blocks' tanh gates: one per branch ("scalar") or per channel ("vector").
    adapter_gate: str = "scalar"
    # Multiplier inside the gates' tanh: with Adam, their learning-rate multiplier.
    adapter_gate_scale: float = 1.0

    def validate(self, prefix="model"):
        """Raises `ConfigError` naming the first bad key and the value received."""
        _check_fields(self, prefix)
        for dim, heads in [("encoder_dim", "encoder_heads"), ("decoder_dim", "decoder_heads")]:
            if getattr(self, dim) % getattr(self, heads):
                raise ConfigError(
                    f"{prefix}.{heads} must divide {prefix}.{dim}. Received: "
                    f"{heads}={getattr(self, heads)}, {dim}={getattr(self, dim)}"
                )
        if self.num_key_value_heads and self.decoder_heads % self.num_key_value_heads:
            raise ConfigError(
                f"{prefix}.num_key_value_heads must divide {prefix}.decoder_heads. Received: "
                f"num_key_value_heads={self.num_key_value_heads}, "
                f"decoder_heads={self.decoder_heads}"
            )
        if self.image_size % self.patch_size:
            raise ConfigError(
                f"{prefix}.patch_size must divide {prefix}.image_size. Received: "
                f"patch_size={self.patch_size}, image_size={self.image_size}"
            )
        if self.encoder_stem_layers and (self.patch_size % 2**self.encoder_stem_layers
                                         or self.encoder_preset):
            raise ConfigError(
                f"{prefix}.encoder_stem_layers halves the image per layer before a fresh "
                f"ViT's patches, so 2**encoder_stem_layers must divide {prefix}.patch_size, "
                f"with no encoder_preset. Received: encoder_stem_layers="
                f"{self.encoder_stem_layers}, patch_size={self.patch_size}, "
                f"encoder_preset={self.encoder_preset!r}")
        for key in ("encoder_coordinates", "encoder_stem_positions"):
            if getattr(self, key) and not self.encoder_stem_layers:
                raise ConfigError(f"{prefix}.{key} feeds the stem, so it needs "
                                  f"{prefix}.encoder_stem_layers > 0. Received: "
                                  f"encoder_stem_layers={self.encoder_stem_layers}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"{prefix}.dropout must be in [0, 1). Received: {self.dropout!r}")
        if self.encoder_relative_init not in RELATIVE_INITS:
            raise ConfigError(f"{prefix}.encoder_relative_init must be one of "
                              f"{RELATIVE_INITS}. Received: {self.encoder_relative_init!r}")
        if self.encoder_side_memory and (self.decoder_focus_shift or self.decoder_position_readout
                                         or self.architecture != "captioner"
                                         or self.num_images > 1):
            raise ConfigError(
                f"{prefix}.encoder_side_memory gives the decoder slots, not a patch grid, and is "
                "built for a one-image captioner without decoder_focus_shift or "
                f"decoder_position_readout. Received: architecture={self.architecture!r}, "
                f"num_images={self.num_images}, decoder_focus_shift={self.decoder_focus_shift}, "
                f"decoder_position_readout={self.decoder_position_readout}")
        if self.multi_image not in MULTI_IMAGE_DESIGNS:
            raise ConfigError(f"{prefix}.multi_image must be one of {MULTI_IMAGE_DESIGNS}. "
                              f"Received: {self.multi_image!r}")
        if self.architecture not in ARCHITECTURES:
            raise ConfigError(f"{prefix}.architecture must be one of {ARCHITECTURES}. "
                              f"Received: {self.architecture!r}")
        if self.language_model not in LANGUAGE_MODELS:
            raise ConfigError(f"{prefix}.language_model must be one of {LANGUAGE_MODELS}. "
                              f"Received: {self.language_model!r}")
        if self.media_mode not in MEDIA_MODES:
            raise ConfigError(f"{prefix}.media_mode must be one of {MEDIA_MODES}. "
                              f"Received: {self.media_mode!r}")
        if self.image_difference and (
                self.num_images < 2 or self.architecture != "captioner"
                or (self.multi_image == "interleaved" and self.media_mode == "immediate")):
            raise ConfigError(
                f"{prefix}.image_difference gives each image what changed since the one before, "
                "so it needs a captioner with num_images >= 2 whose tokens may see the image "
                "before (not multi_image='interleaved' with media_mode='immediate'). Received: "
                f"architecture={self.architecture!r}, num_images={self.num_images}, "
                f"multi_image={self.multi_image!r}, media_mode={self.media_mode!r}")
        if self.adapter_gate not in ADAPTER_GATES:
            raise ConfigError(f"{prefix}.adapter_gate must be one of {ADAPTER_GATES}. "
                              f"Received: {self.adapter_gate!r}")


@dataclasses.dataclass
class DataConfig:
    """Which dataset, and how to read it."""

    dataset: str = "shapes"  # a `vlm.datasets` name: "shapes", "shapes_qa", "coco", ...
    train_size: int = 20000  # shapes only
    validation_size: int = 1000  # shapes only
    test_size: int = 1000  # shapes only
    seed: int = 0
    captions_file: Optional[str] = None  # folder only: CSV or JSONL
    image_dir: Optional[str] = None  # folder only; defaults to the file's folder
    data_dir: Optional[str] = None  # TFDS data; defaults to the vlm cache
    shuffle_buffer: int = 20000
    max_references: int = 5

    def validate(self, prefix="data"):
        """Raises `ConfigError` naming the first bad key and the value received."""
        from vlm import datasets

        _check_fields(self, prefix)
        if self.dataset not in datasets.names():
            raise ConfigError(f"{prefix}.dataset must be one of {datasets.names()}. "
                              f"Received: {self.dataset!r}")
        if self.dataset == "folder" and not self.captions_file:
            raise ConfigError(
                f"{prefix}.dataset='folder' needs {prefix}.captions_file. Received: None"
            )


@dataclasses.dataclass
class TrainConfig:
    """Optimisation, and where the results go."""

    name: str = "shapes"
    # The Keras backend train.py runs on when KERAS_BACKEND is not set (None:
    # Keras' own choice). A config names the one it trains fastest on.
    backend: Optional[str] = None
    epochs: int = 10
    batch_size: int = 64  # captions per batch
    # Captions read with each image in a batch (k): the batch holds
    # batch_size / k images, each encoded once for its k captions.
    captions_per_image: int = 1
    # Captions of at least long_caption_words words (0: off) are read
    # long_caption_repeats times per pass: more of the busy images, where
    # relations are learned (`vlm.data.batching.train_batches`).
    long_caption_words: int = 0
    long_caption_repeats: int = 1
    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    warmup_fraction: float = 0.05
    # "cosine" or "linear" decay to zero after the warmup, or "wsd": the peak
    # held, then a linear decay over the last decay_fraction (`vlm.optimization`).
    schedule: str = "cosine"
    decay_fraction: float = 0.2
    # "adamw" or "muon" (`keras.optimizers.Muon`: AdamW for non-2D variables
    # and embeddings).
    optimizer: str = "adamw"
    # Limit steps per epoch (smoke runs); None uses the whole split.
    steps_per_epoch: Optional[int] = None
    # True, False or "auto" (XLA on TensorFlow and JAX, eager on PyTorch); True
    # on PyTorch asks for torch.compile. `vlm.backend.resolve_jit_compile`.
    jit_compile: Union[bool, str] = "auto"
    # None, "mixed_float16" or "mixed_bfloat16".
    mixed_precision: Optional[str] = None
    early_stopping_patience: int = 0  # 0 turns early stopping off
    output_dir: str = "saved_models"
    log_dir: str = "logs"
    seed: int = 0
    # Images of the test split captioned for the report (0: none).
    report_images: int = 1000
    # Validation images captioned (or asked their questions) after each epoch
    # and scored: val_relation_accuracy, ... in the history (0: none).
    validation_images: int = 0
    # Stop after the first epoch whose validation scores meet these, e.g.
    # "relation_accuracy>=0.97,hallucination_rate<=0.01" ("": run all epochs).
    stop_at: str = ""
    # Devices: "none", "data_parallel", "model_parallel" (JAX) or "auto" (data
    # parallel when several devices are visible); `train.py --distribute`.
    distribute: str = "none"
    # model_parallel: devices along the mesh's "model" axis.
    model_shards: int = 2
    # Epochs at the start that train the decoder only (the encoder frozen).
    freeze_encoder_epochs: int = 0
    # model.architecture="adapter": train only the gated blocks (and the
    # encoder when it is not frozen), the language model frozen.
    freeze_language_model: bool = True
    # Epochs of language-model training on the dataset's text alone (no
    # images) before the adapters train, standing in for a pretrained LM
    # where none can be downloaded; 0 when the LM comes from elsewhere.
    language_model_epochs: int = 0
    # What that text is: "task" (questions with their answers and the scene
    # captions, each alone: the answers cannot be predicted) or "scene"
    # (also every question after a reference caption of its scene, so that
    # the answer follows from the text, as a pretrained LM reads a context).
    language_model_text: str = "task"
    # Tokens per row of that text (0: model.sequence_length); the backbone's
    # position table is made this long, the image phase keeps the model's.
    language_model_sequence_length: int = 0

    def validate(self, prefix="train"):
        """Raises `ConfigError` naming the first bad key and the value received."""
        _check_fields(self, prefix)
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise ConfigError(
                f"{prefix}.warmup_fraction must be in [0, 1). "
                f"Received: {self.warmup_fraction!r}"
            )
        for key, choices in (("schedule", SCHEDULES), ("optimizer", OPTIMIZERS),
                             ("language_model_text", LANGUAGE_MODEL_TEXTS)):
            if getattr(self, key) not in choices:
                raise ConfigError(f"{prefix}.{key} must be one of {choices}. "
                                  f"Received: {getattr(self, key)!r}")
        if not 0.0 < self.decay_fraction <= 1.0:
            raise ConfigError(f"{prefix}.decay_fraction must be in (0, 1]. "
                              f"Received: {self.decay_fraction!r}")
        if self.batch_size % self.captions_per_image:
            raise ConfigError(
                f"{prefix}.captions_per_image must divide {prefix}.batch_size. "
                f"Received: captions_per_image={self.captions_per_image!r}, "
                f"batch_size={self.batch_size!r}"
            )
        if not isinstance(self.jit_compile, bool) and self.jit_compile != "auto":
            raise ConfigError(
                f"{prefix}.jit_compile must be True, False or 'auto'. "
                f"Received: {self.jit_compile!r}"
            )
        if self.backend not in BACKENDS:
            raise ConfigError(
                f"{prefix}.backend must be one of {BACKENDS}. Received: {self.backend!r}")
        if self.mixed_precision not in PRECISIONS:
            raise ConfigError(
                f"{prefix}.mixed_precision must be one of {PRECISIONS}. "
                f"Received: {self.mixed_precision!r}"
            )
        if self.distribute not in DISTRIBUTE_MODES:
            raise ConfigError(
                f"{prefix}.distribute must be one of {DISTRIBUTE_MODES}. "
                f"Received: {self.distribute!r}"
            )
        try:
            parse_targets(self.stop_at)
        except ValueError as error:
            raise ConfigError(f"{prefix}.stop_at: {error} Received: {self.stop_at!r}") from None
        if self.stop_at and not self.validation_images:
            raise ConfigError(f"{prefix}.stop_at needs {prefix}.validation_images > 0 (the "
                              f"images it is measured on). Received: {self.stop_at!r}")
        if not self.name or os.sep in self.name or self.name in (".", ".."):
            raise ConfigError(
                f"{prefix}.name must be a file name (it names the run's files). "
                f"Received: {self.name!r}"
            )


def parse_targets(text):
    """`{"relation_accuracy": (">=", 0.97), ...}` from `"relation_accuracy>=0.97,..."`.

    Raises:
        ValueError: a part is not `score>=number` or `score<=number`.
    """
    targets = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        match = re.fullmatch(r"(\w+)\s*(>=|<=)\s*([0-9.eE+-]+)", part)
        try:
            bound = float(match[3]) if match else None
        except ValueError:
            bound = None
        if bound is None:
            raise ValueError(f"each target must look like score>=number or score<=number, "
                             f"e.g. relation_accuracy>=0.97; got {part!r}.")
        targets[match[1]] = (match[2], bound)
    return targets


def targets_met(scores, targets):
    """Whether `scores` (`{name: value}`; a missing or None value fails) meet every target."""
    def met(value, op, bound):
        return value is not None and (value >= bound if op == ">=" else value <= bound)

    return all(met(scores.get(name), op, bound) for name, (op, bound) in targets.items())


@dataclasses.dataclass
class Config:
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)

    def validate(self):
        """Checks every section; raises `ConfigError` naming the key and value."""
        for field in dataclasses.fields(self):
            section = getattr(self, field.name)
            expected = typing.get_type_hints(type(self))[field.name]
            if not isinstance(section, expected):
                raise ConfigError(
                    f"{field.name} must be a {expected.__name__}. "
                    f"Received: {type(section).__name__}"
                )
            section.validate(field.name)
        scored = scored_datasets()
        if self.train.validation_images and self.data.dataset not in scored:
            raise ConfigError(
                f"train.validation_images scores captions against scene graphs or answers: "
                f"data.dataset must be one of {scored}. Received: "
                f"validation_images={self.train.validation_images!r}, "
                f"dataset={self.data.dataset!r}")
        return self

    def to_dict(self):
        return dataclasses.asdict(self)

    def to_json(self):
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)


MULTI_IMAGE_DESIGNS = ("interleaved", "sources")
MEDIA_MODES = ("immediate", "all_previous")
ARCHITECTURES = ("captioner", "adapter")
LANGUAGE_MODELS = ("gpt2", "gemma", "llama")
ADAPTER_GATES = ("scalar", "vector")
OPTIMIZERS = ("adamw", "muon")
SCHEDULES = ("cosine", "linear", "wsd")
RELATIVE_INITS = ("zeros", "directions")
LANGUAGE_MODEL_TEXTS = ("task", "scene")
PRECISIONS = (None, "mixed_float16", "mixed_bfloat16")
BACKENDS = (None, "tensorflow", "jax", "torch")
DISTRIBUTE_MODES = ("none", "data_parallel", "model_parallel", "auto")
_SECTION_NAMES = {"ModelConfig": "model", "DataConfig": "data", "TrainConfig": "train"}


def scored_datasets():
    """The datasets whose validation images `train.validation_images` can score."""
    from vlm import datasets

    return tuple(name for name in datasets.names() if datasets.get(name).scorer.score_names)


def load_config(path):
    """Runs `get_config()` from a config file and validates the result.

    Args:
        path: path to a Python file defining `get_config() -> Config`.
    """
    if not os.path.isfile(path):
        raise ConfigError(f"Config file not found: {path}")
    name = "vlm_config_" + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"{path} defines no `get_config()` function.")
    try:
        config = module.get_config()
    except TypeError as error:  # ModelConfig(hidden_dim=...): name the key
        unknown = re.search(r"(\w+)\.__init__\(\) got an unexpected keyword argument "
                            r"'(\w+)'", str(error))
        section = unknown and _SECTION_NAMES.get(unknown[1])
        if not section:
            raise
        key = f"{section}.{unknown[2]}"
        fields = dataclasses.fields(globals()[unknown[1]])
        valid = [f"{section}.{f.name}" for f in fields]
        raise ConfigError(
            f"{path}: Unknown config key {key!r}{_suggest(key, valid)}. "
            f"Received: {unknown[1]}({unknown[2]}=...)"
        ) from None
    if not isinstance(config, Config):
        raise ConfigError(
            f"{path}: get_config() must return a vlm.config.Config. "
            f"Received: {type(config).__name__}"
        )
    try:
        config.validate()
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None
    return config


def apply_overrides(config, overrides):
    """Applies `section.key=value` strings to `config` in place, type-checked.

    Args:
        config: a `Config`.
        overrides: iterable of strings like `"train.epochs=3"`.

    Returns:
        The same `config`, validated.
    """
    for override in overrides:
        if "=" not in override:
            raise ConfigError(
                f"An override must look like section.key=value. Received: {override!r}"
            )
        path, raw = override.split("=", 1)
        parts = path.strip().split(".")
        sections = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
        if len(parts) != 2 or parts[0] not in sections:
            raise ConfigError(
                f"Unknown config key {path!r}{_suggest(parts[0], sections)}. "
                f"Keys look like {'/'.join(sections)}.<field>. Received: {override.strip()}"
            )
        section = sections[parts[0]]
        fields = {f.name: f for f in dataclasses.fields(section)}
        if parts[1] not in fields:
            valid = [f"{parts[0]}.{name}" for name in fields]
            raise ConfigError(
                f"Unknown config key {path!r}{_suggest(path, valid)}. "
                f"Received: {override.strip()}"
            )
        hints = typing.get_type_hints(type(section))
        setattr(section, parts[1], _parse_value(path, raw.strip(), hints[parts[1]]))
    validate(config)
    return config


def _suggest(key, valid):
    close = difflib.get_close_matches(key, list(valid), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _parse_value(key, raw, annotation):
    origin_args = typing.get_args(annotation)
    if type(None) in origin_args:  # Optional[X]
        if raw.lower() in ("none", "null", ""):
            return None
        annotation = next(a for a in origin_args if a is not type(None))
    if bool in typing.get_args(annotation):  # Union[bool, str]: a bool, else the text
        if raw.lower() in ("true", "false", "1", "0", "yes", "no"):
            return _parse_value(key, raw, bool)
        return raw
    try:
        if annotation is bool:
            if raw.lower() in ("true", "1", "yes"):
                return True
            if raw.lower() in ("false", "0", "no"):
                return False
            raise ValueError
        if annotation is int:
            return int(raw)
        if annotation is float:
            return float(raw)
        return str(raw)
    except ValueError:
        raise ConfigError(
            f"{key} expects {annotation.__name__}. Received: {raw!r}"
        ) from None


def validate(config):
    """Checks types and ranges of every field; raises `ConfigError` naming the key."""
    return config.validate()


def _check_fields(section, prefix):
    """Types and ranges of a section's fields, and no attributes beyond them."""
    fields = [f.name for f in dataclasses.fields(section)]
    for name, value in vars(section).items():
        if name not in fields:  # e.g. `config.model.hidden_dim = 128` in a config file
            valid = [f"{prefix}.{field}" for field in fields]
            key = f"{prefix}.{name}"
            raise ConfigError(
                f"Unknown config key {key!r}{_suggest(key, valid)}. Received: {key}={value!r}"
            )
    hints = typing.get_type_hints(type(section))
    for name in fields:
        key, value = f"{prefix}.{name}", getattr(section, name)
        _check_type(key, value, hints[name])
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ConfigError(f"{key} must be a finite number. Received: {value!r}")
            if name in _NON_NEGATIVE and value < 0:
                raise ConfigError(f"{key} must be >= 0. Received: {value!r}")
            if name not in _NON_NEGATIVE and value <= 0:
                raise ConfigError(f"{key} must be positive. Received: {value!r}")


# Fields where 0 is meaningful; every other number must be positive.
_NON_NEGATIVE = {"dropout", "encoder_stem_layers", "encoder_relative_layers", "weight_decay",
                 "warmup_fraction",
                 "early_stopping_patience", "seed", "report_images", "validation_images",
                 "freeze_encoder_epochs", "language_model_epochs",
                 "language_model_sequence_length", "long_caption_words"}


def _check_type(key, value, annotation):
    args = typing.get_args(annotation)
    if type(None) in args:
        if value is None:
            return
        annotation = next(a for a in args if a is not type(None))
    types = typing.get_args(annotation) or (annotation,)  # Union[bool, str]: either
    if float in types and isinstance(value, int) and not isinstance(value, bool):
        return
    if int in types and bool not in types and isinstance(value, bool):
        ok = False
    else:
        ok = isinstance(value, types)
    if not ok:
        raise ConfigError(
            f"{key} must be {' or '.join(t.__name__ for t in types)}. Received: {value!r} "
            f"({type(value).__name__})"
        )
