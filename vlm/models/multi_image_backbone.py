"""`MultiImageBackbone`: the graph of a model that reads several images per example."""

import keras
from keras import ops

from vlm.layers.image_difference import ImageDifference
from vlm.layers.image_index_embedding import ImageIndexEmbedding
from vlm.layers.media_attention_mask import MODES
from vlm.layers.media_attention_mask import count_images
from vlm.layers.media_attention_mask import media_attention_mask
from vlm.models.backbone import Backbone
from vlm.utils.argument_checks import check_positive_int


@keras.saving.register_keras_serializable(package="vlm")
class MultiImageBackbone(Backbone):
    """Up to `num_images` images per example, each encoded alone, read by one decoder.

    Every image goes through the encoder alone (one pass over `batch *
    num_images` images). The decoder then reads them in one of two designs:

    - **interleaved** (the decoder has no `sources`): the images' patches,
      each tagged with its slot (`ImageIndexEmbedding`), form one context;
      the text holds an `<image>` marker (`image_token_id`) per image, and
      `media_attention_mask` lets each token see the image before it
      (`mode="immediate"`) or all images before it ("all_previous"), as in
      Flamingo. Text before the first marker sees nothing; padded images are
      never seen.
    - **sources** (`TextDecoder(sources=("before", "after"))`): image `i` is
      the context of source `i`, read by its own cross attention in every
      block. The text has no markers; every example has all its images.

    With `image_difference`, each image after the first also carries how its
    patches differ from the image before's (`ImageDifference`), in both designs.

    Inputs `{"images": (B, num_images, S, S, 3), "tokens": (B, T)}`; outputs
    float32 next-token logits `(B, T, vocabulary_size)`.

    Args:
        encoder: an `ImageEncoder`.
        decoder: a `TextDecoder`, with `sources` of `num_images` names for
            that design.
        num_images: int, images per example at most.
        mode: "immediate" or "all_previous" (interleaved design).
        image_token_id: int, the `<image>` id (interleaved design only).
        image_difference: bool, add `ImageDifference` after the encoder.
        **kwargs: base `keras.Model` arguments.
    """

    def __init__(self, encoder, decoder, num_images=2, mode="all_previous",
                 image_token_id=None, image_difference=False, **kwargs):
        check_positive_int("num_images", num_images)
        if mode not in MODES:
            raise ValueError(f"`mode` must be one of {MODES}. Received: mode={mode!r}")
        sources = decoder.sources
        if sources is not None and len(sources) != num_images:
            raise ValueError(
                f"The decoder's sources must name each image. Received: "
                f"sources={sources}, num_images={num_images}")
        if sources is not None:
            image_token_id = None
        elif image_token_id is None:
            raise ValueError("The interleaved design (a decoder without `sources`) needs "
                             "`image_token_id`, the id of the <image> marker.")
        size = encoder.image_size
        images = keras.Input((num_images, size, size, 3), name="images")
        tokens = keras.Input((None,), dtype="int32", name="tokens")
        difference = (ImageDifference(num_images, name="image_difference")
                      if image_difference else None)
        patches = encoder(ops.reshape(images, (-1, size, size, 3)))
        if difference is not None:
            patches = difference(patches)
        index_embedding = None
        if sources is None:
            index_embedding = ImageIndexEmbedding(num_images, name="image_index_embedding")
            mask = media_attention_mask(tokens, image_token_id, num_images, patches.shape[1],
                                        mode)
            logits = decoder(tokens, index_embedding(patches), attention_mask=mask)
        else:
            logits = decoder(tokens, _by_source(patches, sources))
        super().__init__(inputs={"images": images, "tokens": tokens}, outputs=logits, **kwargs)
        self.encoder = encoder
        self.decoder = decoder
        self.num_images = num_images
        self.mode = mode
        self.image_token_id = image_token_id
        self.difference = difference
        self.image_index_embedding = index_embedding

    @property
    def image_difference(self):
        """Whether each image after the first carries its difference (`ImageDifference`)."""
        return self.difference is not None

    @property
    def sources(self):
        return self.decoder.sources

    def encode(self, images):
        """The decoder's context for `(batch, num_images, S, S, 3)` model-ready images."""
        patches = self.encoder(ops.reshape(images, (-1,) + tuple(images.shape[2:])),
                               training=False)
        if self.difference is not None:
            patches = self.difference(patches)
        if self.sources is None:
            return self.image_index_embedding(patches)
        return _by_source(patches, self.sources)

    def cross_attention_mask(self, tokens, previous_images):
        """The mask rows of `tokens`, and the images seen after them (interleaved), per row."""
        if self.sources is None:
            patches = self.encoder.grid_size**2
            mask = media_attention_mask(tokens, self.image_token_id, self.num_images, patches,
                                        self.mode, previous_images=previous_images)
            return mask, ops.add(previous_images, count_images(tokens, self.image_token_id))
        return None, previous_images

    def get_config(self):
        return {"name": self.name, "trainable": self.trainable,
                "encoder": keras.saving.serialize_keras_object(self.encoder),
                "decoder": keras.saving.serialize_keras_object(self.decoder),
                "num_images": self.num_images, "mode": self.mode,
                "image_token_id": self.image_token_id,
                "image_difference": self.image_difference}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("encoder", "decoder"):
            config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)


def _by_source(patches, sources):
    """`{source: (batch, patches, dim)}` from `(batch * len(sources), patches, dim)`."""
    per_image = ops.reshape(patches, (-1, len(sources)) + tuple(patches.shape[1:]))
    return {source: per_image[:, i] for i, source in enumerate(sources)}
