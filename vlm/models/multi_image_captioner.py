"""`MultiImageCaptioner`: one caption for several images, such as a before/after pair."""

import keras
import numpy as np
from keras import ops

from vlm import samplers
from vlm.data.tokenizer import IMAGE
from vlm.layers.image_index_embedding import ImageIndexEmbedding
from vlm.layers.media_attention_mask import MODES
from vlm.layers.media_attention_mask import count_images
from vlm.layers.media_attention_mask import media_attention_mask
from vlm.models.captioner import Captioner
from vlm.models.captioner import build_encoder_decoder
from vlm.models.captioner import freeze_frozen_parts
from vlm.models.multi_image_preprocessor import MultiImagePreprocessor
from vlm.utils.argument_checks import check_positive_int


@keras.saving.register_keras_serializable(package="vlm")
class MultiImageCaptioner(Captioner):
    """A captioner that reads up to `num_images` images per example.

    Every image goes through the encoder alone (one pass over `batch *
    num_images` images). The decoder then reads them in one of two designs:

    - **interleaved** (the decoder has no `sources`): the images' patches,
      each tagged with its slot (`ImageIndexEmbedding`), form one context;
      the text holds an `<image>` marker per image, and
      `media_attention_mask` lets each token see the image before it
      (`mode="immediate"`) or all images before it ("all_previous"), as in
      Flamingo. Text before the first marker sees nothing; padded images are
      never seen.
    - **sources** (`TextDecoder(sources=("before", "after"))`): image `i` is
      the context of source `i`, read by its own cross attention in every
      block. The text has no markers; every example has all its images.

    Inputs `{"images": (B, num_images, S, S, 3), "tokens": (B, T)}`; outputs
    float32 next-token logits `(B, T, vocabulary_size)`.

    Args:
        encoder: an `ImageEncoder`.
        decoder: a `TextDecoder`, with `sources` of `num_images` names for
            that design.
        num_images: int, images per example at most.
        mode: "immediate" or "all_previous" (interleaved design).
        image_token_id: the `<image>` id (interleaved design); defaults to
            the tokenizer's.
        preprocessor: optional `MultiImagePreprocessor`.
        tokenizer: optional tokenizer, instead of `preprocessor`.
        **kwargs: base `keras.Model` arguments.

    Example:

    >>> model.generate([[before, after]])       # one caption for the pair
    ['the small red circle moved to the left of the large blue square']
    """

    @property
    def images_per_example(self):
        return self.num_images

    def __init__(self, encoder, decoder, num_images=2, mode="all_previous",
                 image_token_id=None, preprocessor=None, tokenizer=None, **kwargs):
        if preprocessor is not None and tokenizer is not None:
            raise ValueError("Pass `preprocessor` or `tokenizer`, not both: the "
                             "preprocessor holds the tokenizer.")
        check_positive_int("num_images", num_images)
        if mode not in MODES:
            raise ValueError(f"`mode` must be one of {MODES}. Received: mode={mode!r}")
        sources = decoder.sources
        if sources is not None and len(sources) != num_images:
            raise ValueError(
                f"The decoder's sources must name each image. Received: "
                f"sources={sources}, num_images={num_images}")
        if tokenizer is not None:
            preprocessor = MultiImagePreprocessor(
                tokenizer, encoder.image_size, decoder.sequence_length, num_images,
                interleaved=sources is None, name="preprocessor")
        if sources is not None:
            image_token_id = None
        elif image_token_id is None:
            if preprocessor is None:
                raise ValueError(f"The interleaved design needs the {IMAGE} id: pass "
                                 "`image_token_id`, `preprocessor` or `tokenizer`.")
            vocabulary = preprocessor.tokenizer.get_vocabulary()
            if IMAGE not in vocabulary:
                raise ValueError(f"The tokenizer has no {IMAGE} token: train it with "
                                 f"`extra_special_tokens=('{IMAGE}',)`.")
            image_token_id = vocabulary.index(IMAGE)

        size = encoder.image_size
        images = keras.Input((num_images, size, size, 3), name="images")
        tokens = keras.Input((None,), dtype="int32", name="tokens")
        patches = encoder(ops.reshape(images, (-1, size, size, 3)))
        index_embedding = None
        if sources is None:
            index_embedding = ImageIndexEmbedding(num_images, name="image_index_embedding")
            mask = media_attention_mask(tokens, image_token_id, num_images, patches.shape[1],
                                        mode)
            logits = decoder(tokens, index_embedding(patches), attention_mask=mask)
        else:
            logits = decoder(tokens, _by_source(patches, sources))
        # Skips `Captioner.__init__` (another graph) for the functional model's.
        super(Captioner, self).__init__(inputs={"images": images, "tokens": tokens},
                                        outputs=logits, **kwargs)
        self.encoder = encoder
        self.decoder = decoder
        self.preprocessor = preprocessor
        self.num_images = num_images
        self.mode = mode
        self.image_token_id = image_token_id
        self.image_index_embedding = index_embedding
        freeze_frozen_parts(self)

    @property
    def sources(self):
        return self.decoder.sources

    def encode_images(self, images):
        patches = self.encoder(ops.reshape(images, (-1,) + tuple(images.shape[2:])),
                               training=False)
        if self.sources is None:
            return self.image_index_embedding(patches)
        return _by_source(patches, self.sources)

    def cross_attention_mask(self, tokens, previous_images):
        if self.sources is None:
            patches = self.encoder.grid_size**2
            mask = media_attention_mask(tokens, self.image_token_id, self.num_images, patches,
                                        self.mode, previous_images=previous_images)
            return mask, ops.add(previous_images, count_images(tokens, self.image_token_id))
        return None, previous_images

    @property
    def prompt_length(self):
        """The `<image>` markers before [START] (interleaved design), else 0."""
        return self.num_images if self.sources is None else 0

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
        max_length = self.resolve_max_length(max_length)
        pixels, counts = self.preprocessor(images)
        if self.sources is not None and np.any(counts != self.num_images):
            row = int(np.argmax(counts != self.num_images))
            raise ValueError(
                f"Example {row} has {counts[row]} images; this model reads exactly "
                f"{self.num_images}, one per source {self.sources}.")
        prompt_rows = self.preprocessor.prompt(counts, prompts)
        batch = len(counts)
        ids, log_probs = self.generate_groups(pixels, prompt_rows, sampler, max_length)
        captions = self.preprocessor.detokenize(ids) if batch else []
        if return_details:
            return {"captions": captions, "token_ids": ids, "log_probs": log_probs}
        return captions

    def get_config(self):
        config = super().get_config()
        config.update({"num_images": self.num_images, "mode": self.mode,
                       "image_token_id": self.image_token_id})
        return config


def _by_source(patches, sources):
    """`{source: (batch, patches, dim)}` from `(batch * len(sources), patches, dim)`."""
    per_image = ops.reshape(patches, (-1, len(sources)) + tuple(patches.shape[1:]))
    return {source: per_image[:, i] for i, source in enumerate(sources)}


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
    return MultiImageCaptioner(encoder, decoder, num_images=count,
                               mode=model_config.media_mode, tokenizer=tokenizer,
                               name="captioner")
