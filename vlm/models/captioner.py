"""`Captioner`: the image encoder and text decoder, trained with `fit`."""

import keras
from keras import ops

from vlm.backend import replica_sum
from vlm.models.image_encoder import ImageEncoder
from vlm.models.text_decoder import TextDecoder

PAD_ID = 0  # the tokenizer reserves id 0 for padding


@keras.saving.register_keras_serializable(package="vlm")
class CaptionLoss(keras.losses.Loss):
    """Token cross-entropy from logits, the mean over the non-padding labels.

    Args:
        pad_token_id: label id that contributes nothing.
    """

    def __init__(self, pad_token_id=PAD_ID, name="caption_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.pad_token_id = pad_token_id

    def call(self, y_true, y_pred):
        y_true = ops.cast(y_true, "int32")
        mask = ops.cast(ops.not_equal(y_true, self.pad_token_id), "float32")
        per_token = keras.losses.sparse_categorical_crossentropy(
            y_true, ops.cast(y_pred, "float32"), from_logits=True
        )
        # The mean over the batch's real tokens (a scalar, so Keras' own
        # reduction leaves it as is). Under tf.distribute each replica divides
        # its sum by the global count; Keras sums the replicas' gradients (and
        # reports the mean of the replicas' losses times their number), so both
        # are those of the global batch's token mean.
        total = ops.stop_gradient(replica_sum(ops.sum(mask)))
        return ops.sum(per_token * mask) / ops.maximum(total, 1.0)

    def get_config(self):
        config = super().get_config()
        config["pad_token_id"] = self.pad_token_id
        return config


@keras.saving.register_keras_serializable(package="vlm")
class MaskedTokenAccuracy(keras.metrics.Metric):
    """Fraction of non-padding next tokens predicted exactly (argmax).

    Args:
        pad_token_id: label id that is not counted.
    """

    def __init__(self, pad_token_id=PAD_ID, name="token_accuracy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.pad_token_id = pad_token_id
        self.correct = self.add_variable(shape=(), initializer="zeros", name="correct")
        self.total = self.add_variable(shape=(), initializer="zeros", name="total")

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true = ops.cast(y_true, "int32")
        mask = ops.not_equal(y_true, self.pad_token_id)
        hits = ops.logical_and(
            ops.equal(ops.cast(ops.argmax(y_pred, axis=-1), "int32"), y_true), mask
        )
        self.correct.assign_add(ops.sum(ops.cast(hits, "float32")))
        self.total.assign_add(ops.sum(ops.cast(mask, "float32")))

    def result(self):
        return ops.divide_no_nan(self.correct, self.total)

    def reset_state(self):
        self.correct.assign(0.0)
        self.total.assign(0.0)

    def get_config(self):
        config = super().get_config()
        config["pad_token_id"] = self.pad_token_id
        return config


@keras.saving.register_keras_serializable(package="vlm")
class Captioner(keras.Model):
    """An image captioner: ViT patches, read by a cross-attention decoder.

    Takes `{"images": (B, H, W, 3) floats in [0, 255], "tokens": (B, T)}` and
    returns next-token logits `(B, T, vocabulary_size)` (float32). The model
    holds its tokenizer, so a saved `.keras` file alone can caption images.

    Args:
        encoder: an `ImageEncoder`.
        decoder: a `TextDecoder`.
        tokenizer: optional keras-hub tokenizer (saved with the model).
        **kwargs: Base `keras.Model` arguments (`name`, ...).

    Example:

    >>> model = Captioner(encoder, decoder, tokenizer)
    >>> model.compile(optimizer="adamw")   # masked loss and accuracy
    >>> model.fit(train_batches, epochs=1)
    """

    def __init__(self, encoder, decoder, tokenizer=None, **kwargs):
        images = keras.Input(
            (encoder.image_size, encoder.image_size, 3), name="images"
        )
        tokens = keras.Input((None,), dtype="int32", name="tokens")
        logits = decoder(tokens, encoder(images))
        super().__init__(
            inputs={"images": images, "tokens": tokens}, outputs=logits, **kwargs
        )
        self.encoder = encoder
        self.decoder = decoder
        self.tokenizer = tokenizer

    def generate(
        self,
        images,
        max_length=None,
        strategy="greedy",
        num_beams=4,
        top_k=10,
        top_p=0.9,
        temperature=1.0,
        seed=0,
        return_details=False,
    ):
        """Captions a batch of images.

        The images are encoded once and every decoder block's cross-attention
        keys and values computed once; the decoding loop runs compiled (XLA on
        TensorFlow and JAX; eager under no-grad on PyTorch).

        Args:
            images: a `(batch, H, W, C)` array or tensor, or a list of images
                of any sizes (uint8, uint16 or floats in [0, 255]; grayscale
                and RGBA are converted).
            max_length: new tokens at most (default `sequence_length - 1`).
            strategy: "greedy", "beam", "top_k" or "top_p".
            num_beams: beams for "beam".
            top_k: candidates kept for "top_k".
            top_p: probability mass kept for "top_p".
            temperature: softens (>1) or sharpens (<1) sampling.
            seed: int; the same seed gives the same samples on every backend.
            return_details: also return the token ids and the sequences'
                log-probabilities.

        Returns:
            A list of caption strings, or with `return_details` a dict with
            `captions`, `token_ids` (batch, max_length) and `log_probs`
            (batch,).
        """
        # Generation builds on the model, so it is imported where it is used.
        from vlm.generation.generator import CaptionGenerator

        if getattr(self, "_caption_generator", None) is None:
            self._caption_generator = CaptionGenerator(self)
        return self._caption_generator(
            images, max_length=max_length, strategy=strategy, num_beams=num_beams,
            top_k=top_k, top_p=top_p, temperature=temperature, seed=seed,
            return_details=return_details,
        )

    @property
    def image_size(self):
        return self.encoder.image_size

    @property
    def sequence_length(self):
        return self.decoder.sequence_length

    def compile(self, optimizer="adamw", loss=None, metrics=None, **kwargs):
        """`keras.Model.compile` with the masked caption loss and accuracy as defaults."""
        super().compile(
            optimizer=optimizer,
            loss=CaptionLoss() if loss is None else loss,
            metrics=[MaskedTokenAccuracy()] if metrics is None else metrics,
            **kwargs,
        )

    def compile_from_config(self, config):
        """Restores the compile settings saved in a `.keras` file."""
        self.compile(**keras.saving.deserialize_keras_object(config))
        if self.built:
            self.optimizer.build(self.trainable_variables)

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "encoder": keras.saving.serialize_keras_object(self.encoder),
            "decoder": keras.saving.serialize_keras_object(self.decoder),
            "tokenizer": (
                None
                if self.tokenizer is None
                else keras.saving.serialize_keras_object(self.tokenizer)
            ),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("encoder", "decoder", "tokenizer"):
            if config.get(key) is not None:
                config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)


def build_captioner(model_config, vocabulary_size, tokenizer=None, dtype=None):
    """Builds a `Captioner` from a `configs` model section.

    Args:
        model_config: a `vlm.config.ModelConfig`.
        vocabulary_size: int, the tokenizer's vocabulary size.
        tokenizer: the tokenizer to ship inside the model.
        dtype: optional dtype policy name (for example "mixed_bfloat16").
    """
    encoder = ImageEncoder.from_sizes(
        image_size=model_config.image_size,
        patch_size=model_config.patch_size,
        num_layers=model_config.encoder_layers,
        num_heads=model_config.encoder_heads,
        hidden_dim=model_config.encoder_dim,
        mlp_dim=model_config.encoder_mlp_dim,
        dropout=model_config.dropout,
        preset=model_config.encoder_preset,
        add_2d_positions=model_config.add_2d_positions,
        dtype=dtype,
        name="encoder",
    )
    decoder = TextDecoder(
        vocabulary_size=vocabulary_size,
        sequence_length=model_config.sequence_length,
        hidden_dim=model_config.decoder_dim,
        num_layers=model_config.decoder_layers,
        num_heads=model_config.decoder_heads,
        mlp_dim=model_config.decoder_mlp_dim,
        num_key_value_heads=model_config.num_key_value_heads,
        dropout=model_config.dropout,
        tie_embeddings=model_config.tie_embeddings,
        dtype=dtype,
        name="decoder",
    )
    return Captioner(encoder, decoder, tokenizer=tokenizer, name="captioner")
