"""A convolutional stem: strided 3x3 convolutions that turn pixels into a coarser, deeper grid."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="vlm")
class ConvStem(keras.layers.Layer):
    """Stride-2 3x3 convolutions, each followed by GELU, before a ViT's patches.

    A ViT that embeds raw 8x8 pixel patches with one linear map has to learn
    edges and corners from attention between patches; a few convolutions
    see them directly, and a small ViT trained from scratch learns shapes in
    far fewer steps ("Early Convolutions Help Transformers See Better",
    Xiao et al., 2021). Each convolution halves the height and width, so
    the stem's stride is `2 ** len(filters)`.

    With `coordinates`, each convolution also reads two maps of its input
    cells' x and y in [-1, 1] (CoordConv, Liu et al., 2018; FiLM's
    `coord_map`): a convolution cannot tell where it is, and a feature that
    says where an object's pixels lie has to be learned otherwise.

    Args:
        filters: list of ints, the output channels of each convolution.
        coordinates: bool. Concatenate x and y maps to every convolution's input.
        **kwargs: Base `keras.layers.Layer` arguments.

    Call arguments:
        images: `(batch, height, width, channels)` normalised pixels.

    Returns:
        `(batch, height / stride, width / stride, filters[-1])`.

    Example:

    >>> stem = ConvStem([8, 16])
    >>> stem(keras.ops.zeros((2, 32, 32, 3))).shape
    (2, 8, 8, 16)
    """

    def __init__(self, filters, coordinates=False, **kwargs):
        super().__init__(**kwargs)
        self.filters = [int(f) for f in filters]
        self.coordinates = bool(coordinates)
        if not self.filters or min(self.filters) < 1:
            raise ValueError(f"`filters` must be a non-empty list of positive ints. "
                             f"Received: filters={filters!r}")
        self.stride = 2 ** len(self.filters)
        self.convolutions = [
            keras.layers.Conv2D(f, 3, strides=2, padding="same", activation="gelu",
                                name=f"conv_{i}", dtype=self.dtype_policy)
            for i, f in enumerate(self.filters)
        ]

    def build(self, images_shape):
        shape = tuple(images_shape)
        for convolution in self.convolutions:
            if self.coordinates:
                shape = shape[:-1] + (shape[-1] + 2,)
            convolution.build(shape)
            shape = convolution.compute_output_shape(shape)

    def call(self, images):
        x = images
        for convolution in self.convolutions:
            if self.coordinates:
                x = self._with_coordinates(x)
            x = convolution(x)
        return x

    def _with_coordinates(self, x):
        """`x` with its cells' x and y in [-1, 1] as two more channels."""
        batch, height, width = ops.shape(x)[0], ops.shape(x)[1], ops.shape(x)[2]
        rows = ops.linspace(-1.0, 1.0, height, dtype=self.compute_dtype)
        cols = ops.linspace(-1.0, 1.0, width, dtype=self.compute_dtype)
        grid = ops.stack([ops.broadcast_to(cols[None, :], (height, width)),
                          ops.broadcast_to(rows[:, None], (height, width))], axis=-1)
        grid = ops.broadcast_to(ops.cast(grid, x.dtype)[None], (batch, height, width, 2))
        return ops.concatenate([x, grid], axis=-1)  # (batch, height, width, channels + 2)

    def compute_output_shape(self, images_shape):
        batch, height, width = images_shape[:3]
        # "same" padding: each convolution rounds up, and so does the stem.
        height, width = (None if n is None else -(-n // self.stride) for n in (height, width))
        return (batch, height, width, self.filters[-1])

    def get_config(self):
        config = super().get_config()
        config.update({"filters": list(self.filters), "coordinates": self.coordinates})
        return config
