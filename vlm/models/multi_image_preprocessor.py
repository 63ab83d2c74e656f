"""`MultiImagePreprocessor`: several images per example in, model inputs out."""

import keras
import numpy as np
from keras import ops

from vlm.data.tokenizer import IMAGE
from vlm.data.tokenizer import prefixed_captions
from vlm.models.captioner_preprocessor import CaptionerPreprocessor
from vlm.models.captioner_preprocessor import _to_numpy
from vlm.utils.argument_checks import check_positive_int


@keras.saving.register_keras_serializable(package="vlm")
class MultiImagePreprocessor(CaptionerPreprocessor):
    """The `CaptionerPreprocessor` of a model that reads `num_images` images per example.

    Each image follows the single-image rules (dtype, channels, the one
    resize), so images of different sizes in one example are fine. A model
    reads the image counts it was trained for, `min_images` to `num_images`
    (`train.py` trains on `num_images` per example, so by default exactly
    that many); any other count is refused in one line. An example with
    fewer than `num_images` is padded with black images, which the model
    never reads (no `<image>` marker points at them).

    Args:
        tokenizer: a `CaptionTokenizer`; with `interleaved`, its vocabulary
            has the `<image>` marker.
        image_size: int, the model's square image side.
        sequence_length: int, the model's token sequence length.
        num_images: int, images per example at most.
        min_images: int, images per example at least (default
            `num_images`). An interleaved model trained on examples of
            fewer images reads them (Flamingo's masks).
        interleaved: bool. True: the text holds an `<image>` marker per image
            (`prompt`); False: the images are the model's named sources
            and need no marker.
        **kwargs: base `keras.layers.Layer` arguments.

    Call arguments:
        images: a `(batch, num_images, H, W, C)` array, or a list with one
            list (or array) of images per example, each image as
            `CaptionerPreprocessor` takes it.

    Returns:
        `(pixels, counts)`: float32 `(batch, num_images, S, S, 3)` and int
        `(batch,)` NumPy, the images each example really has.

    Example:

    >>> preprocessor = MultiImagePreprocessor(tokenizer, 64, 32, num_images=2,
    ...                                       min_images=1)
    >>> pixels, counts = preprocessor([[before, after], [photo]])
    >>> counts
    array([2, 1])
    """

    def __init__(self, tokenizer, image_size, sequence_length, num_images, interleaved=True,
                 min_images=None, **kwargs):
        super().__init__(tokenizer, image_size, sequence_length, **kwargs)
        self.num_images = check_positive_int("num_images", num_images)
        self.min_images = check_positive_int("min_images", min_images, allow_none=True)
        if self.min_images is not None and self.min_images > self.num_images:
            raise ValueError(f"`min_images` must be at most `num_images`. Received: "
                             f"min_images={min_images}, num_images={num_images}")
        self.interleaved = bool(interleaved)

    @property
    def image_counts(self):
        """`(least, most)` images per example this model reads."""
        return (self.min_images or self.num_images, self.num_images)

    @property
    def prefix_ids(self):
        """An `<image>` marker per image before every caption (interleaved), else none."""
        return (self.image_token_id,) * self.num_images if self.interleaved else ()

    def __call__(self, images, *args, **kwargs):
        # Checked before Keras' call wrapper, whose error would print every pixel.
        self.check_counts(images)
        return super().__call__(images, *args, **kwargs)

    def check_counts(self, images):
        """Raises a one-line `ValueError` for an example of a count the model does not read."""
        if not isinstance(images, (list, tuple)):
            shape = ops.shape(images)
            counts = [shape[1]] * shape[0] if len(shape) == 5 else []
        else:
            counts = [len(example) if isinstance(example, (list, tuple))
                      else ops.shape(example)[0] for example in images]
        least, most = self.image_counts
        for row, count in enumerate(counts):
            if not least <= count <= most:
                takes = f"{most}" if least == most else f"{least} to {most}"
                raise ValueError(f"Example {row} has {count} images; this model reads "
                                 f"{takes} per example.")

    @property
    def image_token_id(self):
        """The id of `<image>`, or None where the model needs no markers."""
        return self.tokenizer.token_to_id(IMAGE) if self.interleaved else None

    def call(self, images):
        if not isinstance(images, (list, tuple)):
            images = _to_numpy(images)
            if images.ndim != 5:
                raise ValueError(
                    "`images` must be (batch, num_images, height, width, channels) or a list "
                    f"of image lists. Received: shape={images.shape}")
            images = list(images)
        pixels = np.zeros((len(images), self.num_images, self.image_size, self.image_size, 3),
                          "float32")
        counts = np.zeros((len(images),), "int32")
        for row, example in enumerate(images):
            example = list(example) if isinstance(example, (list, tuple)) else list(
                _to_numpy(example))
            pixels[row, :len(example)] = ops.convert_to_numpy(self.pixels(example))
            counts[row] = len(example)
        return ops.convert_to_tensor(pixels), counts

    def prompt(self, counts, prompts=None):
        """Each example's tokens before [START]: its `<image>` markers.

        Args:
            counts: images per example.
            prompts: optional strings with `<image>` where each image sits
                (default: the markers alone, one per image); the words
                between them are tokenized.

        Returns:
            A list of int32 arrays, one per example (empty without markers).

        Raises:
            ValueError: an example's markers do not match its images.
        """
        if not self.interleaved:
            if prompts is not None:
                raise ValueError("This model reads its images as named sources: it takes "
                                 "no prompts with <image> markers.")
            return [np.zeros((0,), "int32") for _ in counts]
        if prompts is not None and len(prompts) != len(counts):
            raise ValueError(f"Got {len(prompts)} prompts for {len(counts)} examples.")
        rows = []
        for row, count in enumerate(counts):
            text = " ".join([IMAGE] * int(count)) if prompts is None else prompts[row]
            ids = []
            for piece in text.replace(IMAGE, f" {IMAGE} ").split():
                if piece == IMAGE:
                    ids.append(self.image_token_id)
                else:
                    ids += [int(i) for i in ops.convert_to_numpy(self.tokenizer(piece))]
            markers = ids.count(self.image_token_id)
            if markers != count:
                raise ValueError(
                    f"Example {row} has {int(count)} images but {markers} {IMAGE} tokens "
                    f"in its prompt {text!r}: give one {IMAGE} per image.")
            rows.append(np.asarray(ids, "int32"))
        return rows

    def tokenize(self, captions, prompts=None):
        """Teacher-forcing `(tokens, labels)`, `num_images` markers before each caption.

        The labels of the marker positions are padding (no loss); without
        markers (named sources) this is `CaptionerPreprocessor.tokenize`.
        """
        if prompts is not None:
            raise ValueError("A model of several images per example is trained on captions "
                             "alone: its examples take no `prompts`.")
        if not self.interleaved:
            return super().tokenize(captions)
        return prefixed_captions(self.tokenizer, captions, self.sequence_length,
                                 list(self.prefix_ids))

    def get_config(self):
        config = super().get_config()
        config.update({"num_images": self.num_images, "interleaved": self.interleaved,
                       "min_images": self.min_images})
        return config
