"""`VisionLanguageBackbone`: a keras-hub language model with gated cross attention to a ViT."""

import keras

from vlm.models.backbone import Backbone
from vlm.models.cross_attention_language_model import CrossAttentionLanguageModel

_BLOCK_ARGS = ("cross_attention_every", "cross_attention_layers", "num_heads",
               "num_key_value_heads", "mlp_dim", "dropout", "sequence_length", "gate_type",
               "gate_scale")


@keras.saving.register_keras_serializable(package="vlm")
class VisionLanguageBackbone(Backbone):
    """An image encoder read by `GatedCrossAttentionBlock`s inside a keras-hub language model.

    The Flamingo / Llama 3.2 Vision graph: the blocks go before every n-th
    layer of the language model (or at given layers) and read the image
    encoder's patches (`CrossAttentionLanguageModel`). Their gates start at
    0, so the graph starts as the bare language model, logit for logit. It
    has the decoding interface of `CaptionerBackbone`.

    Inputs `{"images": (B, S, S, 3) floats in [0, 255], "tokens": (B, T)}`;
    outputs float32 next-token logits `(B, T, vocabulary_size)`.

    Args:
        language_model: a keras-hub `GPT2Backbone`, `GemmaBackbone` or
            `LlamaBackbone`, or a `CausalLM` of one (its backbone is used).
            Its weights are used in place.
        encoder: a `vlm.models.ImageEncoder`.
        cross_attention_every, cross_attention_layers, num_heads,
        num_key_value_heads, mlp_dim, dropout, sequence_length, gate_type,
        gate_scale: where the gated blocks go, their sizes and gates
            (`CrossAttentionLanguageModel`); by default a block before every
            layer.
        **kwargs: base `keras.Model` arguments.
    """

    def __init__(self, language_model, encoder, cross_attention_every=None,
                 cross_attention_layers=None, num_heads=None, num_key_value_heads=None,
                 mlp_dim=None, dropout=0.0, sequence_length=None, gate_type="scalar",
                 gate_scale=1.0, **kwargs):
        if not hasattr(language_model, "transformer_layers") and hasattr(
                language_model, "backbone"):
            language_model = language_model.backbone  # a CausalLM
        if cross_attention_every is None and cross_attention_layers is None:
            cross_attention_every = 1
        decoder = CrossAttentionLanguageModel(
            language_model, cross_attention_every=cross_attention_every,
            cross_attention_layers=cross_attention_layers, num_heads=num_heads,
            num_key_value_heads=num_key_value_heads, mlp_dim=mlp_dim, dropout=dropout,
            sequence_length=sequence_length, gate_type=gate_type, gate_scale=gate_scale,
            name="language_model")
        images = keras.Input((encoder.image_size, encoder.image_size, 3), name="images")
        tokens = keras.Input((None,), dtype="int32", name="tokens")
        logits = decoder(tokens, encoder(images))
        super().__init__(inputs={"images": images, "tokens": tokens}, outputs=logits, **kwargs)
        self.encoder = encoder
        self.decoder = decoder

    @property
    def language_model(self):
        """The keras-hub backbone, whose weights this graph uses in place."""
        return self.decoder.backbone

    def get_config(self):
        config = {"name": self.name, "trainable": self.trainable,
                  "language_model": keras.saving.serialize_keras_object(self.language_model),
                  "encoder": keras.saving.serialize_keras_object(self.encoder)}
        decoder = self.decoder.get_config()
        config.update({key: decoder[key] for key in _BLOCK_ARGS})
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("language_model", "encoder"):
            config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)
