"""`CaptionerPreprocessor`: raw images and captions in, model inputs out, and back."""

import keras
import numpy as np
from keras import ops

from vlm.data import images as image_ops
from vlm.data.tokenizer import ServingText
from vlm.data.tokenizer import detokenize_captions
from vlm.data.tokenizer import pack_captions
from vlm.data.tokenizer import prompted_captions
from vlm.utils.argument_checks import check_positive_int


@keras.saving.register_keras_serializable(package="vlm")
class CaptionerPreprocessor(keras.layers.Layer):
    """What a `Captioner` needs around it: image rules, the resize, the tokenizer.

    The image rules (decoding files, dtype and channel conversion, the
    antialiased square resize of `vlm.data.images.preprocess_image`) and the
    tokenizer live here once, and are saved inside the `.keras` file with
    the model, so training data, `Captioner.generate`, the caption command,
    evaluation and the SavedModel all prepare an image the same way. Its
    image and text ops are TensorFlow's (graph safe, so the SavedModel and
    `tf.data` can use them) on every Keras backend; eager calls return
    backend tensors.

    Args:
        tokenizer: a `vlm.data.tokenizer.CaptionTokenizer`.
        image_size: int, the model's square image side.
        sequence_length: int, the model's token sequence length.
        **kwargs: base `keras.layers.Layer` arguments.

    Call arguments:
        images: a `(batch, H, W, C)` array or tensor, or a list of `(H, W,
            C)` / `(H, W)` images of any sizes: uint8, uint16 (scaled to 8
            bits) or floats in [0, 255], with 1 (gray), 3 or 4 (alpha
            dropped) channels.

    Returns:
        float32 `(batch, image_size, image_size, 3)` in [0, 255].

    Example:

    >>> preprocessor = model.preprocessor
    >>> pixels = preprocessor([photo_480x640, gray_32x32])    # (2, S, S, 3)
    >>> tokens, labels = preprocessor.tokenize(["a red circle"])
    >>> preprocessor.detokenize(token_ids)                    # ["a red circle"]
    """

    def __init__(self, tokenizer, image_size, sequence_length, **kwargs):
        super().__init__(**kwargs)
        # Images pass through as given (lists, uint16, float64): no conversion
        # to the layer's compute dtype, which under mixed precision would
        # round pixels to 16 bits.
        self._convert_input_args = False
        self._allow_non_tensor_positional_args = True
        self.tokenizer = tokenizer
        self.image_size = check_positive_int("image_size", image_size)
        self.sequence_length = check_positive_int("sequence_length", sequence_length)
        self.built = True

    @property
    def prefix_ids(self):
        """Token ids before every text's [START], with no loss on them: none here."""
        return ()

    def call(self, images):
        return self.pixels(images)

    def pixels(self, images):
        """float32 `(batch, S, S, 3)` from a batch or list of images (the `call` of this class)."""
        if isinstance(images, (list, tuple)):
            if not len(images):
                return ops.zeros((0, self.image_size, self.image_size, 3))
            return ops.concatenate([self.pixels(_batch_of_one(image)) for image in images], 0)
        images = images if isinstance(images, np.ndarray) else _to_numpy(images)
        if images.ndim != 4:
            raise ValueError(
                "`images` must be a batch (batch, height, width, channels) or a list "
                f"of images. Received: shape={images.shape}")
        pixels = image_ops.preprocess_image(image_ops.to_rgb_float(images), self.image_size)
        return ops.convert_to_tensor(pixels.numpy())

    def decode_image(self, contents):
        """uint8 `(H, W, 3)` from encoded bytes (TensorFlow ops, graph safe).

        The header is checked before any pixel is decoded (`vlm.data.images`).
        """
        return image_ops.decode_image(contents)

    def resize(self, images):
        """The square resize to the model's size, float32 in [0, 255] (TensorFlow ops)."""
        return image_ops.preprocess_image(images, self.image_size)

    def tokenize(self, captions, prompts=None):
        """Teacher-forcing `(tokens, labels)`, int32 `(batch, sequence_length)` each.

        TensorFlow ops (a `tf.data` map calls it for the training batches).
        With `prompts` (one string per caption, such as a question) a row is
        `prompt [START] caption [END]`, with the loss on the caption only.
        """
        if prompts is not None:
            return prompted_captions(self.tokenizer, prompts, captions, self.sequence_length)
        packed = pack_captions(self.tokenizer, captions, self.sequence_length)
        return packed[:, :-1], packed[:, 1:]

    def prompt_ids(self, prompts):
        """Token ids of each prompt string (no [START] or [END]), a list of int32 arrays."""
        if not prompts:
            return []
        ids = self.tokenizer(list(prompts))  # ragged: a list of rows off TensorFlow
        rows = ids.to_list() if hasattr(ids, "to_list") else ids
        return [np.asarray(_to_numpy(row), "int32").reshape(-1) for row in rows]

    def detokenize(self, token_ids):
        """Caption strings from `(batch, length)` ids: cut at [END], specials dropped."""
        return detokenize_captions(self.tokenizer, token_ids)

    def serving_text(self):
        """The tokenizer's prompt lookup and detokenization in core TensorFlow ops.

        A SavedModel's text path (`ServingText`); the `tf.Module` it returns
        must be tracked where it is used.
        """
        return ServingText(self.tokenizer)

    def compute_output_shape(self, images_shape):
        return (images_shape[0], self.image_size, self.image_size, 3)

    def get_config(self):
        config = super().get_config()
        config.update({
            "tokenizer": keras.saving.serialize_keras_object(self.tokenizer),
            "image_size": self.image_size,
            "sequence_length": self.sequence_length,
        })
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["tokenizer"] = keras.saving.deserialize_keras_object(config["tokenizer"])
        return cls(**config)


def _to_numpy(x):
    """NumPy from a tensor of any backend (or TensorFlow, or a nested list)."""
    if hasattr(x, "numpy") and not ops.is_tensor(x):  # a TensorFlow tensor elsewhere
        return x.numpy()
    return ops.convert_to_numpy(x) if ops.is_tensor(x) else np.asarray(x)


def _batch_of_one(image):
    """`(1, H, W, C)` from one `(H, W, C)` or `(H, W)` image."""
    image = _to_numpy(image)
    return image[None, ..., None] if image.ndim == 2 else image[None]
