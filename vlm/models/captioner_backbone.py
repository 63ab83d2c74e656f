"""`CaptionerBackbone`: the captioner's graph, ViT patches read by a cross-attention decoder."""

import keras

from vlm.models.backbone import Backbone


@keras.saving.register_keras_serializable(package="vlm")
class CaptionerBackbone(Backbone):
    """An `ImageEncoder` whose patches a `TextDecoder` reads: images and tokens in, logits out.

    The graph and the weights of a `Captioner`, as a keras-hub backbone is
    its task's: the task adds the loss, decoding and the preprocessor. Its
    decoding interface (`encode`, `cross_attention_mask`, the decoder's
    caches) is the one every vlm backbone has, which `vlm.models.task.Task`
    decodes through.

    Inputs `{"images": (B, S, S, 3) floats in [0, 255], "tokens": (B, T)}`;
    outputs float32 next-token logits `(B, T, vocabulary_size)`.

    Args:
        encoder: an `ImageEncoder`.
        decoder: a `TextDecoder`.
        **kwargs: base `keras.Model` arguments (`name`, ...).

    Example:

    >>> backbone = CaptionerBackbone(encoder, decoder)
    >>> backbone({"images": images, "tokens": tokens}).shape  # (B, T, vocabulary)
    """

    def __init__(self, encoder, decoder, **kwargs):
        images = keras.Input((encoder.image_size, encoder.image_size, 3), name="images")
        tokens = keras.Input((None,), dtype="int32", name="tokens")
        logits = decoder(tokens, encoder(images))
        super().__init__(inputs={"images": images, "tokens": tokens}, outputs=logits, **kwargs)
        self.encoder = encoder
        self.decoder = decoder

    def get_config(self):
        return {"name": self.name, "trainable": self.trainable,
                "encoder": keras.saving.serialize_keras_object(self.encoder),
                "decoder": keras.saving.serialize_keras_object(self.decoder)}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("encoder", "decoder"):
            config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)
