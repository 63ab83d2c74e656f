"""Gives each image's patches what changed since the image before it."""

import keras
from keras import ops

from vlm.utils.argument_checks import check_positive_int


@keras.saving.register_keras_serializable(package="vlm")
class ImageDifference(keras.layers.Layer):
    """Adds to each patch a learned projection of how it differs from the image before.

    Image `i > 0` of an example gets `patches_i + Dense(patches_i -
    patches_{i-1})`, place by place; the first image is unchanged. Images
    of a (before, after) pair come out of the encoder with the same
    positions and mostly the same content, so the difference is near zero
    except where something moved, appeared, vanished or changed colour: the
    decoder finds the change in one lookup instead of comparing two
    attention reads (change captioning's difference features, as in Park
    et al. 2019's DUDA). Only the image before is used, so padded images at
    the end of an example never reach a real one.

    The kernel and bias start at zero: the layer is the identity at
    initialisation.

    Args:
        num_images: int, images per example.
        kernel_initializer: initializer of the `(dim, dim)` projection.
        **kwargs: base `keras.layers.Layer` arguments.

    Call arguments:
        patches: `(batch * num_images, patches, dim)`, the images of each
            example consecutive, as the encoder returns them.

    Returns:
        The same shape as `patches`.

    Example:

    >>> layer = ImageDifference(num_images=2)
    >>> layer(keras.random.normal((6, 16, 32))).shape
    (6, 16, 32)
    """

    def __init__(self, num_images, kernel_initializer="zeros", **kwargs):
        super().__init__(**kwargs)
        self.num_images = check_positive_int("num_images", num_images)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def build(self, patches_shape):
        dim = patches_shape[-1]
        self.projection = keras.layers.Dense(
            dim, kernel_initializer=self.kernel_initializer, dtype=self.dtype_policy,
            name="projection")
        self.projection.build((None, None, None, dim))

    def call(self, patches):
        if self.num_images == 1:
            return patches
        patches_per_image, dim = ops.shape(patches)[1], ops.shape(patches)[2]
        grouped = ops.reshape(patches, (-1, self.num_images, patches_per_image, dim))
        # The first image has no image before it: it passes unchanged.
        later = grouped[:, 1:] + self.projection(grouped[:, 1:] - grouped[:, :-1])
        out = ops.concatenate([grouped[:, :1], later], axis=1)
        return ops.reshape(out, ops.shape(patches))

    def compute_output_shape(self, patches_shape):
        return patches_shape

    def get_config(self):
        config = super().get_config()
        config.update({
            "num_images": self.num_images,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
        })
        return config
