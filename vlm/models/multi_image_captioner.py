"""`MultiImageCaptioner`: one caption for several images, such as a before/after pair."""

import keras
import numpy as np

from vlm import samplers
from vlm.data.tokenizer import IMAGE
from vlm.models.captioner import build_encoder_decoder
from vlm.models.multi_image_backbone import MultiImageBackbone
from vlm.models.multi_image_preprocessor import MultiImagePreprocessor
from vlm.models.task import Task


@keras.saving.register_keras_serializable(package="vlm")
class MultiImageCaptioner(Task):
    """A captioner that reads up to `num_images` images per example (`MultiImageBackbone`).

    Inputs `{"images": (B, num_images, S, S, 3), "tokens": (B, T)}`; outputs
    float32 next-token logits `(B, T, vocabulary_size)`. In the interleaved
    design the preprocessor puts an `<image>` marker per image before the
    text; with named sources there are none.

    Args:
        backbone: a `MultiImageBackbone`.
        preprocessor: optional `MultiImagePreprocessor`.
        tokenizer: optional tokenizer, instead of `preprocessor`.
        **kwargs: base `keras.Model` arguments.

    Example:

    >>> model.generate([[before, after]])       # one caption for the pair
    ['the small red circle moved to the left of the large blue square']
    """

    def __init__(self, backbone, preprocessor=None, tokenizer=None, **kwargs):
        if preprocessor is not None and tokenizer is not None:
            raise ValueError("Pass `preprocessor` or `tokenizer`, not both: the "
                             "preprocessor holds the tokenizer.")
        if tokenizer is not None:
            preprocessor = MultiImagePreprocessor(
                tokenizer, backbone.image_size, backbone.sequence_length, backbone.num_images,
                interleaved=backbone.sources is None, name="preprocessor")
        super().__init__(backbone, preprocessor=preprocessor, **kwargs)

    @property
    def images_per_example(self):
        return self.backbone.num_images

    def generate(self, images, sampler=None, max_length=None, return_details=False,
                 prompts=None):
        """One caption per example from its images.

        Args:
            images: a list with one list of images per example (1 to
                `num_images`, any sizes), or a `(batch, num_images, H, W, C)`
                array.
            sampler: as `Captioner.generate`.
            max_length: new tokens at most.
            return_details: as `Captioner.generate`.
            prompts: interleaved design: optional strings with an `<image>`
                per image, where it sits (default: the markers alone).

        Returns:
            As `Captioner.generate`. Examples whose prompts differ in length
            are decoded in separate groups (each compiled once).
        """
        sampler = self.sampler if sampler is None else samplers.get(sampler)
        self.check_can_decode()
        max_length = self.resolve_max_length(max_length)
        pixels, counts = self.preprocessor(images)
        if self.backbone.sources is not None and np.any(counts != self.backbone.num_images):
            row = int(np.argmax(counts != self.backbone.num_images))
            raise ValueError(
                f"Example {row} has {counts[row]} images; this model reads exactly "
                f"{self.backbone.num_images}, one per source {self.backbone.sources}.")
        prompt_rows = self.preprocessor.prompt(counts, prompts)
        ids, log_probs = self.generate_groups(pixels, prompt_rows, sampler, max_length)
        return self.decoded(ids, log_probs, return_details, pixels)


# The sources' names by number of images: the pair of a change caption, then
# numbered images.
PAIR_SOURCES = ("before", "after")


def build_multi_image_captioner(model_config, vocabulary_size, tokenizer=None, dtype=None):
    """Builds a `MultiImageCaptioner` from a `configs` model section.

    `model_config.num_images` images per example, read as
    `model_config.multi_image` says: "interleaved" (`<image>` markers and
    `media_mode` masks; the tokenizer needs the marker) or "sources" (named
    "before" and "after" for two images, else "image_1", ...).
    """
    count = model_config.num_images
    sources = None
    if model_config.multi_image == "sources":
        sources = PAIR_SOURCES if count == 2 else tuple(f"image_{i + 1}" for i in range(count))
    encoder, decoder = build_encoder_decoder(model_config, vocabulary_size, dtype=dtype,
                                             sources=sources)
    image_token_id = None if sources is not None else image_token_of(tokenizer)
    backbone = MultiImageBackbone(encoder, decoder, num_images=count,
                                  mode=model_config.media_mode, image_token_id=image_token_id,
                                  image_difference=model_config.image_difference,
                                  name="backbone")
    return MultiImageCaptioner(backbone, tokenizer=tokenizer, name="captioner")


def image_token_of(tokenizer):
    """The id of the `<image>` marker in `tokenizer`'s vocabulary; a one-line error without."""
    vocabulary = tokenizer.get_vocabulary()
    if IMAGE not in vocabulary:
        raise ValueError(f"The tokenizer has no {IMAGE} token: train it with "
                         f"`extra_special_tokens=('{IMAGE}',)`.")
    return vocabulary.index(IMAGE)
