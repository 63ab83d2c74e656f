"""Memory slots of what lies on each side of each patch, for a decoder to look up."""

import keras
from keras import ops

from vlm.layers.attention_utils import finfo_min
from vlm.layers.focus_shift import offset_biases
from vlm.layers.relative_position_block import DirectionCones
from vlm.utils.argument_checks import check_positive_int


@keras.saving.register_keras_serializable(package="vlm")
class SideMemory(keras.layers.Layer):
    """Turns `cells` patches into `(1 + num_heads) * cells` slots: each patch, what its heads saw.

    Each head attends from every patch over the grid with a learned bias per
    2D offset (by default `DirectionCones`: head 0 looks left, 1 right, 2 up,
    3 down). Where a `RelativePositionBlock` adds what its heads gathered
    into the patch, so that a patch of X also looks like its neighbour, here
    each head's result gets a slot of its own beside the patch:

        slot (patch p)      = [x_p, 0]         + tag_0
        slot (p, head h)    = [x_p, context_ph] + tag_(1 + h)

    A decoder's key projection can then match "X, the right-hand side" on
    `x_p` and the tag alone, and its value projection read `context_ph`:
    "the object X is left of" becomes one lookup.

    Args:
        grid_size: int. Patches per side (row-major `grid_size**2` patches).
        num_heads: int. Slots per patch besides its own.
        key_dim: int. Width of each head's query, key and gathered context.
        offset_bias_initializer: the `(num_heads, (2 * grid_size - 1)**2)`
            offset table's initializer. Defaults to `DirectionCones(4.0)`.
        **kwargs: Base `keras.layers.Layer` arguments.

    Call arguments:
        patches: `(batch, grid_size**2, dim)`.

    Returns:
        `(batch, (1 + num_heads) * grid_size**2, dim + key_dim)`: the patches'
        own slots first, then head 0's for every patch, and so on.

    Example:

    >>> layer = SideMemory(grid_size=4, num_heads=4, key_dim=8)
    >>> layer(keras.ops.zeros((2, 16, 32))).shape
    (2, 80, 40)
    """

    def __init__(self, grid_size, num_heads, key_dim, offset_bias_initializer=None, **kwargs):
        super().__init__(**kwargs)
        self.grid_size = check_positive_int("grid_size", grid_size)
        self.num_heads = check_positive_int("num_heads", num_heads)
        self.key_dim = check_positive_int("key_dim", key_dim)
        self.offset_bias_initializer = keras.initializers.get(
            offset_bias_initializer or DirectionCones(4.0))

    def build(self, patches_shape):
        if patches_shape[1] is not None and patches_shape[1] != self.grid_size**2:
            raise ValueError(f"SideMemory expects {self.grid_size**2} patches for grid_size="
                             f"{self.grid_size}. Received: patches.shape={tuple(patches_shape)}")
        dim = patches_shape[-1]
        self.norm = keras.layers.LayerNormalization(epsilon=1e-6, name="norm",
                                                    dtype=self.dtype_policy)
        self.norm.build(patches_shape)
        projection = (dim, self.num_heads, self.key_dim)
        self.query_kernel = self.add_weight(shape=projection, initializer="glorot_uniform",
                                            name="query_kernel")
        self.key_kernel = self.add_weight(shape=projection, initializer="glorot_uniform",
                                          name="key_kernel")
        self.value_kernel = self.add_weight(shape=projection, initializer="glorot_uniform",
                                            name="value_kernel")
        self.offset_bias = self.add_weight(
            shape=(self.num_heads, (2 * self.grid_size - 1) ** 2),
            initializer=self.offset_bias_initializer, name="offset_bias")
        self.tags = self.add_weight(
            shape=(1 + self.num_heads, dim + self.key_dim),
            initializer=keras.initializers.RandomNormal(stddev=0.02), name="tags")

    def offset_biases(self):
        """`(num_heads, cells, cells)`: each head's logit bias of patch `i` reading patch `j`."""
        return offset_biases(self.offset_bias, self.grid_size)

    def call(self, patches):
        x = self.norm(patches)
        query = ops.einsum("bpd,dhk->bhpk", x, self.query_kernel)
        key = ops.einsum("bpd,dhk->bhpk", x, self.key_kernel)
        value = ops.einsum("bpd,dhk->bhpk", x, self.value_kernel)
        logits = ops.einsum("bhpk,bhqk->bhpq", ops.cast(query, "float32"),
                            ops.cast(key, "float32")) / float(self.key_dim) ** 0.5
        # A patch gathers what lies beside it, never itself.
        cells = self.grid_size**2
        itself = ops.eye(cells, dtype="float32") * finfo_min("float32")
        logits = logits + ops.cast(self.offset_biases(), "float32")[None] + itself
        weights = ops.cast(ops.softmax(logits, axis=-1), value.dtype)
        context = ops.einsum("bhpq,bhqk->bhpk", weights, value)
        own = ops.concatenate([patches, ops.zeros_like(context[:, 0])], axis=-1)
        sides = ops.concatenate(
            [ops.repeat(patches[:, None], self.num_heads, axis=1), context], axis=-1)
        slots = ops.concatenate([own[:, None], sides], axis=1)  # (b, 1 + heads, cells, width)
        slots = slots + ops.cast(self.tags, slots.dtype)[None, :, None, :]
        return ops.reshape(slots, (-1, (1 + self.num_heads) * cells,
                                   ops.shape(patches)[-1] + self.key_dim))

    def compute_output_shape(self, patches_shape):
        return (patches_shape[0], (1 + self.num_heads) * self.grid_size**2,
                patches_shape[-1] + self.key_dim)

    def get_config(self):
        config = super().get_config()
        config.update(grid_size=self.grid_size, num_heads=self.num_heads, key_dim=self.key_dim,
                      offset_bias_initializer=keras.initializers.serialize(
                          self.offset_bias_initializer))
        return config
