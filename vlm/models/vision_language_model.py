"""`VisionLanguageModel`: a keras-hub language model given eyes by gated cross attention."""

import keras
import keras_hub
import numpy as np

from vlm import samplers
from vlm.data.tokenizer import special_token_ids
from vlm.models.captioner import build_encoder
from vlm.models.captioner_preprocessor import CaptionerPreprocessor
from vlm.models.task import Task
from vlm.models.vision_language_backbone import VisionLanguageBackbone
from vlm.saving import load_keras_file


@keras.saving.register_keras_serializable(package="vlm")
class VisionLanguageModel(Task):
    """A keras-hub causal LM that reads images through inserted gated cross attention.

    The Flamingo / Llama 3.2 Vision recipe (`VisionLanguageBackbone`):
    `GatedCrossAttentionBlock`s before every n-th layer of a pretrained
    language model (or at given layers), reading the image encoder's
    patches. Their gates start at 0, so the model starts as the bare
    language model, logit for logit; `freeze_language_model()` leaves only
    the new blocks (and optionally the encoder) to train. Text is `prompt
    [START] answer [END]`: the loss falls on the answer, and
    `generate(images, prompts=...)` prefills each prompt in one pass, then
    decodes with the LM's key/value cache and the blocks' image keys/values
    computed once. An empty prompt captions.

    Args:
        backbone: a `VisionLanguageBackbone`.
        preprocessor: optional `CaptionerPreprocessor`.
        tokenizer: optional tokenizer instead of `preprocessor`.
        **kwargs: Base `keras.Model` arguments.

    Example:

    >>> lm = keras_hub.models.GPT2Backbone(
    ...     vocabulary_size=tokenizer.vocabulary_size(), num_layers=4, num_heads=4,
    ...     hidden_dim=128, intermediate_dim=512, max_sequence_length=24)
    >>> backbone = VisionLanguageBackbone(lm, encoder, cross_attention_every=2)
    >>> model = VisionLanguageModel(backbone, tokenizer=tokenizer)
    >>> model.freeze_language_model()["trainable_parameters"]  # the blocks only
    >>> model.generate(images, prompts=["question what colour is the circle answer"])
    """

    prompted = True

    def __init__(self, backbone, preprocessor=None, tokenizer=None, **kwargs):
        if preprocessor is not None and tokenizer is not None:
            raise ValueError("Pass `preprocessor` or `tokenizer`, not both: the "
                             "preprocessor holds the tokenizer.")
        if tokenizer is not None:
            preprocessor = CaptionerPreprocessor(
                tokenizer, backbone.image_size, backbone.sequence_length, name="preprocessor")
        super().__init__(backbone, preprocessor=preprocessor, **kwargs)

    @property
    def language_model(self):
        """The keras-hub backbone, whose weights this model uses in place."""
        return self.backbone.language_model

    def freeze_language_model(self, freeze_encoder=True):
        """Freezes the language model (and the image encoder); returns what trains.

        Call before `compile`. The gated blocks always train.

        Returns:
            dict: per part (`language_model`, `image_encoder`,
            `cross_attention`) its `parameters` and whether it is
            `trainable`, then `trainable_parameters`, `total_parameters` and
            `trainable_fraction`.
        """
        self.language_model.trainable = False
        self.backbone.encoder.trainable = not freeze_encoder
        return self.parameter_report()

    def parameter_report(self):
        """Parameters per part and the trainable share (see `freeze_language_model`)."""
        def count(weights):
            return int(sum(np.prod(w.shape) for w in weights))

        parts = {"language_model": self.language_model, "image_encoder": self.backbone.encoder}
        report = {name: {"parameters": count(part.weights), "trainable": part.trainable}
                  for name, part in parts.items()}
        blocks = [w for b in self.backbone.decoder.blocks for w in b.weights]
        report["cross_attention"] = {"parameters": count(blocks), "trainable": True}
        report["trainable_parameters"] = count(self.trainable_weights)
        report["total_parameters"] = count(self.weights)
        report["trainable_fraction"] = report["trainable_parameters"] / report["total_parameters"]
        return report

    @property
    def trainable_fraction(self):
        """Trainable / total parameters, as the model stands."""
        return self.parameter_report()["trainable_fraction"]

    def generate(self, images, sampler=None, max_length=None, return_details=False,
                 prompts=None):
        """Answers (or captions) a batch of images, each after its prompt.

        The arguments are `Captioner.generate`'s, in its order.

        Args:
            images: a `(batch, H, W, C)` array or a list of images of any
                sizes.
            sampler, max_length, return_details: as `Captioner.generate`.
            prompts: None (captioning: the empty prompt), one string for
                every image, or one per image, such as "question what
                colour is the circle answer".

        Returns:
            As `Captioner.generate`: the text generated after each prompt.
        """
        sampler = self.sampler if sampler is None else samplers.get(sampler)
        self.check_can_decode()
        if isinstance(images, (list, tuple)) and not len(images):
            raise ValueError("`images` is empty: give at least one image. Received: images=[]")
        return self.generate_prompted(self.preprocessor(images),
                                      "" if prompts is None else prompts, sampler, max_length,
                                      return_details)


def build_language_model(model_config, vocabulary_size, dtype=None, max_sequence_length=None):
    """The keras-hub backbone a `configs` model section names.

    `language_model_preset` downloads a pretrained one (its sizes win);
    `language_model_from` loads a `.keras` backbone or `CausalLM`; otherwise
    a `language_model` family ("gpt2", "gemma", "llama") is built with the
    `decoder_*` sizes and random weights, GPT-2's position table
    `max_sequence_length` long (default: `sequence_length`).
    """
    if model_config.language_model_preset:
        return keras_hub.models.Backbone.from_preset(model_config.language_model_preset,
                                                     dtype=dtype)
    if model_config.language_model_from:
        loaded = load_keras_file(model_config.language_model_from)
        backbone = getattr(loaded, "backbone", loaded)
        if backbone.vocabulary_size != vocabulary_size:
            raise ValueError(
                f"model.language_model_from={model_config.language_model_from!r} has a "
                f"vocabulary of {backbone.vocabulary_size}, the tokenizer {vocabulary_size}.")
        return backbone
    sizes = dict(vocabulary_size=vocabulary_size, num_layers=model_config.decoder_layers,
                 hidden_dim=model_config.decoder_dim,
                 intermediate_dim=model_config.decoder_mlp_dim, dtype=dtype)
    heads = model_config.decoder_heads
    kv_heads = model_config.num_key_value_heads or heads
    if model_config.language_model == "gpt2":
        return keras_hub.models.GPT2Backbone(
            num_heads=heads, dropout=model_config.dropout,
            max_sequence_length=max(model_config.sequence_length, max_sequence_length or 0),
            **sizes)
    if model_config.language_model == "llama":
        return keras_hub.models.LlamaBackbone(
            num_query_heads=heads, num_key_value_heads=kv_heads,
            dropout=model_config.dropout, **sizes)
    return keras_hub.models.GemmaBackbone(
        num_query_heads=heads, num_key_value_heads=kv_heads,
        head_dim=model_config.decoder_dim // heads, dropout=model_config.dropout, **sizes)


def preset_tokenizer(model_config):
    """The tokenizer of `model.language_model_preset` (downloaded), checked to fit vlm's text.

    Raises:
        ValueError: it pads with another id than 0, or ends with its padding
            id, as `vlm.data.tokenizer.special_token_ids` says.
    """
    preset = model_config.language_model_preset
    tokenizer = keras_hub.models.Tokenizer.from_preset(preset)
    try:
        special_token_ids(tokenizer)
    except ValueError as error:
        raise ValueError(f"model.language_model_preset={preset!r}: {error}") from None
    return tokenizer


def build_vision_language_model(model_config, tokenizer, language_model, dtype=None):
    """A `VisionLanguageModel` of a `configs` model section around `language_model`."""
    backbone = VisionLanguageBackbone(
        language_model, build_encoder(model_config, dtype=dtype),
        cross_attention_every=model_config.cross_attention_every,
        num_key_value_heads=model_config.num_key_value_heads,
        mlp_dim=model_config.adapter_mlp_dim, dropout=model_config.dropout,
        sequence_length=model_config.sequence_length, gate_type=model_config.adapter_gate,
        gate_scale=model_config.adapter_gate_scale, name="backbone")
    return VisionLanguageModel(backbone, tokenizer=tokenizer, name="vision_language_model")
