"""An attention bias that moves where the previous cross attention looked, as the text asks."""

import keras
import numpy as np
from keras import ops

from vlm.utils.argument_checks import check_positive_int


def offset_index(grid_size):
    """`(cells, cells)` int array: the index of the 2D offset from cell `i` to cell `j`.

    Cells are row-major; offsets `(d_row, d_col)` in `[-(g - 1), g - 1]` are
    numbered row-major in a `(2g - 1) x (2g - 1)` table.
    """
    rows, cols = np.divmod(np.arange(grid_size**2), grid_size)
    d_row = rows[None, :] - rows[:, None] + grid_size - 1
    d_col = cols[None, :] - cols[:, None] + grid_size - 1
    return (d_row * (2 * grid_size - 1) + d_col).astype("int32")


def offset_biases(table, grid_size):
    """`(rows, cells, cells)`: each row of a `(rows, (2g - 1)**2)` offset table, per cell pair."""
    cells = grid_size**2
    bias = ops.take(table, ops.reshape(offset_index(grid_size), (-1,)), axis=1)
    return ops.reshape(bias, (-1, cells, cells))


@keras.saving.register_keras_serializable(package="vlm")
class FocusShift(keras.layers.Layer):
    """Shifts an attention map over a patch grid by learned 2D kernels the query picks.

    In "a red circle left of a blue square", the blue square is the object in
    a direction from the red circle: once one attention has found the red
    circle, the next should look beside it, on the side the relation word
    says. Content cannot say where that is and a position code added to the
    patches only says where each patch is, so each of `num_shifts` learned
    kernels over 2D offsets moves the previous attention map ("shift by
    kernel s": `shifted_s[j] = sum_i focus[i] * kernel_s[offset(i, j)]`, a 2D
    convolution of the map), and each head of the next attention adds a
    mixture of the shifted maps, weighted by a softmax of its query, to its
    logits. The kernels start at zero: the bias is zero until they learn.
    (Neural Module Networks' `Transform[relation]` module, Andreas et al.
    2016, as an attention bias.)

    Args:
        grid_size: int. Patches per side; the attention reads
            `grid_size**2` row-major patches.
        num_heads: int. Heads of the attention the bias is for.
        num_shifts: int. Learned kernels.
        **kwargs: Base `keras.layers.Layer` arguments.

    Call arguments:
        focus: `(batch, heads, q_len, grid_size**2)` probabilities of the
            previous attention (any number of heads; their mean is shifted).
        query: `(batch, q_len, dim)` states the next attention's queries
            come from.

    Returns:
        `(batch, num_heads, q_len, grid_size**2)` float32 logit bias.

    Example:

    >>> layer = FocusShift(grid_size=4, num_heads=2)
    >>> focus = keras.ops.softmax(keras.random.normal((3, 2, 5, 16)))
    >>> layer(focus, keras.random.normal((3, 5, 8))).shape
    (3, 2, 5, 16)
    """

    def __init__(self, grid_size, num_heads, num_shifts=4, **kwargs):
        super().__init__(**kwargs)
        self.grid_size = check_positive_int("grid_size", grid_size)
        self.num_heads = check_positive_int("num_heads", num_heads)
        self.num_shifts = check_positive_int("num_shifts", num_shifts)
        self._offsets = offset_index(self.grid_size)

    def build(self, focus_shape, query_shape):
        cells = self.grid_size**2
        if focus_shape[-1] is not None and focus_shape[-1] != cells:
            raise ValueError(f"`focus` must cover grid_size**2 = {cells} patches. "
                             f"Received: focus.shape={tuple(focus_shape)}")
        self.kernels = self.add_weight(
            shape=(self.num_shifts, (2 * self.grid_size - 1) ** 2), initializer="zeros",
            name="kernels")
        self.selector = keras.layers.Dense(self.num_heads * self.num_shifts, name="selector",
                                           dtype=self.dtype_policy)
        self.selector.build(query_shape)

    def call(self, focus, query):
        focus = ops.mean(ops.cast(focus, "float32"), axis=1)  # (batch, q_len, cells)
        kernels = ops.cast(self.kernels, "float32")
        shifts = ops.take(kernels, ops.convert_to_tensor(self._offsets), axis=1)  # (s, i, j)
        shifted = ops.einsum("bqi,sij->bqsj", focus, shifts)
        batch, q_len = ops.shape(query)[0], ops.shape(query)[1]
        weights = ops.reshape(ops.cast(self.selector(query), "float32"),
                              (batch, q_len, self.num_heads, self.num_shifts))
        weights = ops.softmax(weights, axis=-1)
        return ops.einsum("bqsj,bqhs->bhqj", shifted, weights)

    def compute_output_shape(self, focus_shape, query_shape):
        return (focus_shape[0], self.num_heads, focus_shape[2], self.grid_size**2)

    def get_config(self):
        config = super().get_config()
        config.update({"grid_size": self.grid_size, "num_heads": self.num_heads,
                       "num_shifts": self.num_shifts})
        return config
