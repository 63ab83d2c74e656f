"""Marks which image a patch came from, and lays several images end to end."""

import keras
from keras import ops

from vlm.utils.argument_checks import check_positive_int


@keras.saving.register_keras_serializable(package="vlm")
class ImageIndexEmbedding(keras.layers.Layer):
    """Adds a learned embedding of each image's slot to its patches and joins the images.

    The encoder sees every image alone; this layer tells the decoder which of
    an example's images a patch belongs to ("before" or "after"), then lays
    the `num_images` images of each example end to end as one context.

    Args:
        num_images: int, images per example.
        embeddings_initializer: initializer of the `(num_images, dim)` table.
        **kwargs: base `keras.layers.Layer` arguments.

    Call arguments:
        patches: `(batch * num_images, patches, dim)`, the images of each
            example consecutive (a `(batch, num_images, ...)` batch of images
            reshaped to `(batch * num_images, ...)` before the encoder).

    Returns:
        `(batch, num_images * patches, dim)`.

    Example:

    >>> layer = ImageIndexEmbedding(num_images=2)
    >>> layer(keras.random.normal((6, 16, 32))).shape
    (3, 32, 32)
    """

    def __init__(self, num_images, embeddings_initializer="zeros", **kwargs):
        super().__init__(**kwargs)
        self.num_images = check_positive_int("num_images", num_images)
        self.embeddings_initializer = keras.initializers.get(embeddings_initializer)

    def build(self, patches_shape):
        self.embeddings = self.add_weight(
            name="embeddings",
            shape=(self.num_images, patches_shape[-1]),
            initializer=self.embeddings_initializer,
        )

    def call(self, patches):
        patches_per_image, dim = ops.shape(patches)[1], ops.shape(patches)[2]
        grouped = ops.reshape(patches, (-1, self.num_images, patches_per_image, dim))
        grouped = grouped + ops.cast(self.embeddings, grouped.dtype)[None, :, None, :]
        return ops.reshape(grouped, (-1, self.num_images * patches_per_image, dim))

    def compute_output_shape(self, patches_shape):
        batch = None if patches_shape[0] is None else patches_shape[0] // self.num_images
        length = None if patches_shape[1] is None else patches_shape[1] * self.num_images
        return (batch, length, patches_shape[2])

    def get_config(self):
        config = super().get_config()
        config.update({
            "num_images": self.num_images,
            "embeddings_initializer": keras.initializers.serialize(self.embeddings_initializer),
        })
        return config
