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
import os
import typing
from typing import Optional


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
    # Add a fixed 2D sine-cosine position code to the patches the decoder reads.
    add_2d_positions: bool = True
    decoder_layers: int = 4
    decoder_heads: int = 4
    decoder_dim: int = 256
    decoder_mlp_dim: int = 1024
    num_key_value_heads: Optional[int] = None
    # Tokens per caption, [START] included; longer captions are truncated.
    sequence_length: int = 24
    vocabulary_size: int = 1000
    dropout: float = 0.1
    tie_embeddings: bool = True


@dataclasses.dataclass
class DataConfig:
    """Which dataset, and how to read it."""

    dataset: str = "shapes"  # "shapes", "coco" or "folder"
    train_size: int = 20000  # shapes only
    validation_size: int = 1000  # shapes only
    test_size: int = 1000  # shapes only
    seed: int = 0
    captions_file: Optional[str] = None  # folder only: CSV or JSONL
    image_dir: Optional[str] = None  # folder only; defaults to the file's folder
    data_dir: Optional[str] = None  # TFDS data; defaults to the vlm cache
    shuffle_buffer: int = 20000
    max_references: int = 5


@dataclasses.dataclass
class TrainConfig:
    """Optimisation, and where the results go."""

    name: str = "shapes"
    epochs: int = 10
    batch_size: int = 64
    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    warmup_fraction: float = 0.05
    # Limit steps per epoch (smoke runs); None uses the whole split.
    steps_per_epoch: Optional[int] = None
    jit_compile: bool = True
    # None, "mixed_float16" or "mixed_bfloat16".
    mixed_precision: Optional[str] = None
    early_stopping_patience: int = 0  # 0 turns early stopping off
    output_dir: str = "saved_models"
    log_dir: str = "logs"
    seed: int = 0
    # Images of the validation split captioned for the report (0: none).
    report_images: int = 1000
    # Devices: "none", "data_parallel", "model_parallel" (JAX) or "auto" (data
    # parallel when several devices are visible); `train.py --distribute`.
    distribute: str = "none"
    # model_parallel: devices along the mesh's "model" axis.
    model_shards: int = 2
    # Epochs at the start that train the decoder only (the encoder frozen).
    freeze_encoder_epochs: int = 0


@dataclasses.dataclass
class Config:
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)

    def to_dict(self):
        return dataclasses.asdict(self)

    def to_json(self):
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)


DATASETS = ("shapes", "coco", "folder")
PRECISIONS = (None, "mixed_float16", "mixed_bfloat16")
DISTRIBUTE_MODES = ("none", "data_parallel", "model_parallel", "auto")


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
    config = module.get_config()
    if not isinstance(config, Config):
        raise ConfigError(
            f"{path}: get_config() must return a vlm.config.Config. "
            f"Received: {type(config).__name__}"
        )
    validate(config)
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
                f"Keys look like {'/'.join(sections)}.<field>."
            )
        section = sections[parts[0]]
        fields = {f.name: f for f in dataclasses.fields(section)}
        if parts[1] not in fields:
            valid = [f"{parts[0]}.{name}" for name in fields]
            raise ConfigError(
                f"Unknown config key {path!r}{_suggest(path, valid)}."
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
    for section_field in dataclasses.fields(config):
        section = getattr(config, section_field.name)
        hints = typing.get_type_hints(type(section))
        for field in dataclasses.fields(section):
            key = f"{section_field.name}.{field.name}"
            value = getattr(section, field.name)
            _check_type(key, value, hints[field.name])
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                if field.name in _NON_NEGATIVE and value < 0:
                    raise ConfigError(f"{key} must be >= 0. Received: {value!r}")
                if field.name not in _NON_NEGATIVE and value <= 0:
                    raise ConfigError(f"{key} must be positive. Received: {value!r}")
    model, data, train = config.model, config.data, config.train
    for dim, heads in [("encoder_dim", "encoder_heads"), ("decoder_dim", "decoder_heads")]:
        if getattr(model, dim) % getattr(model, heads):
            raise ConfigError(
                f"model.{heads} must divide model.{dim}. Received: "
                f"{heads}={getattr(model, heads)}, {dim}={getattr(model, dim)}"
            )
    if model.num_key_value_heads and model.decoder_heads % model.num_key_value_heads:
        raise ConfigError(
            "model.num_key_value_heads must divide model.decoder_heads. Received: "
            f"num_key_value_heads={model.num_key_value_heads}, "
            f"decoder_heads={model.decoder_heads}"
        )
    if model.image_size % model.patch_size:
        raise ConfigError(
            "model.patch_size must divide model.image_size. Received: "
            f"patch_size={model.patch_size}, image_size={model.image_size}"
        )
    if not 0.0 <= model.dropout < 1.0:
        raise ConfigError(f"model.dropout must be in [0, 1). Received: {model.dropout!r}")
    if not 0.0 <= train.warmup_fraction < 1.0:
        raise ConfigError(
            f"train.warmup_fraction must be in [0, 1). Received: {train.warmup_fraction!r}"
        )
    if data.dataset not in DATASETS:
        raise ConfigError(
            f"data.dataset must be one of {DATASETS}. Received: {data.dataset!r}"
        )
    if data.dataset == "folder" and not data.captions_file:
        raise ConfigError("data.dataset='folder' needs data.captions_file. Received: None")
    if train.mixed_precision not in PRECISIONS:
        raise ConfigError(
            f"train.mixed_precision must be one of {PRECISIONS}. "
            f"Received: {train.mixed_precision!r}"
        )
    if train.distribute not in DISTRIBUTE_MODES:
        raise ConfigError(
            f"train.distribute must be one of {DISTRIBUTE_MODES}. "
            f"Received: {train.distribute!r}"
        )


# Fields where 0 is meaningful; every other number must be positive.
_NON_NEGATIVE = {"dropout", "weight_decay", "warmup_fraction", "early_stopping_patience",
                 "seed", "report_images", "freeze_encoder_epochs"}


def _check_type(key, value, annotation):
    args = typing.get_args(annotation)
    if type(None) in args:
        if value is None:
            return
        annotation = next(a for a in args if a is not type(None))
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return
    if annotation is int and isinstance(value, bool):
        ok = False
    else:
        ok = isinstance(value, annotation)
    if not ok:
        raise ConfigError(
            f"{key} must be {annotation.__name__}. Received: {value!r} "
            f"({type(value).__name__})"
        )
