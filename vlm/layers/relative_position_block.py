"""A transformer block over a patch grid whose attention knows each pair's 2D offset."""

import keras
import numpy as np
from keras import ops

from vlm.layers.cross_attention import CrossAttention
from vlm.layers.focus_shift import offset_biases
from vlm.utils.argument_checks import check_positive_int


@keras.saving.register_keras_serializable(package="vlm")
class DirectionCones(keras.initializers.Initializer):
    """Starts the first four heads' offset tables looking to one side each.

    Head 0 gets `strength` on the offsets whose dominant axis is horizontal and
    that lie to the left, heads 1, 2, 3 likewise right, above and below; the
    dominant axis decides, as the shapes captions do. Other heads, ties and the
    zero offset start at 0. A patch of an object then starts out gathering
    what lies on each side of it, one side per head.

    Args:
        strength: float. The logit bias inside a cone.

    Example:

    >>> table = DirectionCones(2.0)((4, 9))  # a 2 x 2 grid: 3 x 3 offsets
    >>> keras.ops.convert_to_numpy(table)[0].reshape(3, 3)[1]  # the row of no vertical offset
    array([2., 0., 0.], dtype=float32)
    """

    def __init__(self, strength=2.0):
        self.strength = float(strength)

    def __call__(self, shape, dtype=None):
        heads, offsets = shape
        side = int(round(offsets**0.5))
        if side * side != offsets or side % 2 == 0:
            raise ValueError("DirectionCones initialises a (heads, (2 * grid - 1) ** 2) table. "
                             f"Received: shape={tuple(shape)}")
        d_row, d_col = np.divmod(np.arange(offsets), side)
        d_row, d_col = d_row - side // 2, d_col - side // 2
        cones = [(d_col < 0) & (-d_col > np.abs(d_row)), (d_col > 0) & (d_col > np.abs(d_row)),
                 (d_row < 0) & (-d_row > np.abs(d_col)), (d_row > 0) & (d_row > np.abs(d_col))]
        table = np.zeros((heads, offsets), "float32")
        for head, cone in zip(range(heads), cones):
            table[head, cone] = self.strength
        return ops.convert_to_tensor(table, dtype=dtype or "float32")

    def get_config(self):
        return {"strength": self.strength}


@keras.saving.register_keras_serializable(package="vlm")
class RelativePositionBlock(keras.layers.Layer):
    """Pre-norm self-attention and MLP over patches, with a learned bias per 2D offset.

    Each head adds `table[head, offset(i, j)]` to the logit of patch `i`
    attending to patch `j` (Swin's relative position bias): a head can look
    "to the right of itself" at any position with one table entry per
    offset, so a patch of one object can gather what lies on each side of
    it. Absolute position codes make that a comparison the block would have
    to learn; here it is a lookup. The table starts at zero.

    Args:
        grid_size: int. Patches per side (row-major `grid_size**2` patches).
        num_heads: int.
        mlp_dim: int. Width of the MLP's hidden layer.
        dropout: float. Dropout on the attention and MLP outputs.
        offset_bias_initializer: the offset table's initializer: "zeros", or
            `DirectionCones()` for heads that start out looking one way each.
        **kwargs: Base `keras.layers.Layer` arguments.

    Call arguments:
        patches: `(batch, grid_size**2, dim)`.

    Returns:
        `(batch, grid_size**2, dim)`.
    """

    def __init__(self, grid_size, num_heads, mlp_dim, dropout=0.0,
                 offset_bias_initializer="zeros", **kwargs):
        super().__init__(**kwargs)
        self.offset_bias_initializer = keras.initializers.get(offset_bias_initializer)
        check_positive_int("grid_size", grid_size)
        check_positive_int("num_heads", num_heads)
        check_positive_int("mlp_dim", mlp_dim)
        self.grid_size, self.num_heads, self.mlp_dim = grid_size, num_heads, mlp_dim
        self.dropout = float(dropout)

    def build(self, patches_shape):
        dim = patches_shape[-1]
        policy = self.dtype_policy
        self.attention_norm = keras.layers.LayerNormalization(
            epsilon=1e-6, name="attention_norm", dtype=policy)
        self.attention = CrossAttention(self.num_heads, name="attention", dtype=policy)
        self.mlp_norm = keras.layers.LayerNormalization(
            epsilon=1e-6, name="mlp_norm", dtype=policy)
        self.mlp_in = keras.layers.Dense(self.mlp_dim, activation="gelu", name="mlp_in",
                                         dtype=policy)
        self.mlp_out = keras.layers.Dense(dim, name="mlp_out", dtype=policy)
        self.output_dropout = keras.layers.Dropout(self.dropout, dtype=policy)
        self.attention_norm.build(patches_shape)
        self.attention.build(patches_shape, patches_shape)
        self.mlp_norm.build(patches_shape)
        self.mlp_in.build(patches_shape)
        self.mlp_out.build(tuple(patches_shape[:-1]) + (self.mlp_dim,))
        self.offset_bias = self.add_weight(
            shape=(self.num_heads, (2 * self.grid_size - 1) ** 2),
            initializer=self.offset_bias_initializer, name="offset_bias")

    def offset_biases(self):
        """`(num_heads, cells, cells)`: each head's logit bias of patch `i` reading patch `j`."""
        return offset_biases(self.offset_bias, self.grid_size)

    def call(self, patches, training=None):
        cells = self.grid_size**2
        bias = ops.broadcast_to(self.offset_biases()[None],
                                (ops.shape(patches)[0], self.num_heads, cells, cells))
        x = self.attention_norm(patches)
        x = self.attention(x, x, attention_bias=bias, training=training)
        patches = patches + self.output_dropout(x, training=training)
        x = self.mlp_out(self.mlp_in(self.mlp_norm(patches)))
        return patches + self.output_dropout(x, training=training)

    def compute_output_shape(self, patches_shape):
        return patches_shape

    def get_config(self):
        config = super().get_config()
        config.update(grid_size=self.grid_size, num_heads=self.num_heads,
                      mlp_dim=self.mlp_dim, dropout=self.dropout,
                      offset_bias_initializer=keras.initializers.serialize(
                          self.offset_bias_initializer))
        return config
