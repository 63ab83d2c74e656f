import numpy as np
import pytest

from tests.test_case import assert_close
from tests.test_case import run_layer_test
from tests.test_case import to_numpy
from vlm.layers import FocusShift
from vlm.layers.focus_shift import offset_index


def test_layer_basics():
    run_layer_test(FocusShift, {"grid_size": 3, "num_heads": 2, "num_shifts": 3},
                   input_shapes={"focus": (2, 4, 5, 9), "query": (2, 5, 8)},
                   expected_output_shape=(2, 2, 5, 9))


def test_offsets_index_the_2d_displacement():
    index = offset_index(3)  # offsets in [-2, 2]^2, numbered row-major in a 5 x 5 table
    assert index.shape == (9, 9)
    assert index[4, 4] == 12  # centre to itself: (0, 0)
    assert index[4, 5] == 13  # one column right: (0, +1)
    assert index[4, 1] == 7  # one row up: (-1, 0)
    assert index[0, 8] == 24 and index[8, 0] == 0  # the far corners


def reference(layer, focus, query):
    """The shift written out cell by cell, then the heads' softmax mixture."""
    g = layer.grid_size
    kernels = to_numpy(layer.kernels).reshape(layer.num_shifts, 2 * g - 1, 2 * g - 1)
    mean = focus.mean(axis=1)  # (batch, q, cells)
    batch, q_len, cells = mean.shape
    shifted = np.zeros((batch, q_len, layer.num_shifts, cells))
    for i in range(cells):
        for j in range(cells):
            (ri, ci), (rj, cj) = divmod(i, g), divmod(j, g)
            shifted[..., j] += mean[..., i, None] * kernels[:, rj - ri + g - 1, cj - ci + g - 1]
    logits = query @ to_numpy(layer.selector.kernel) + to_numpy(layer.selector.bias)
    logits = logits.reshape(batch, q_len, layer.num_heads, layer.num_shifts)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    return np.einsum("bqsj,bqhs->bhqj", shifted, weights)


def test_matches_the_shift_written_out():
    rng = np.random.default_rng(0)
    layer = FocusShift(grid_size=3, num_heads=2, num_shifts=3)
    focus = rng.random((2, 4, 5, 9)).astype("float32")
    query = rng.standard_normal((2, 5, 8)).astype("float32")
    assert_close(layer(focus, query), np.zeros((2, 2, 5, 9)))  # zero kernels: no bias
    layer.kernels.assign(rng.standard_normal(layer.kernels.shape))
    assert_close(layer(focus, query), reference(layer, focus, query), atol=1e-5)


def test_a_kernel_moves_a_point_of_focus():
    """A kernel that is 1 at offset (0, +1) moves attention on a cell to its right neighbour."""
    layer = FocusShift(grid_size=4, num_heads=1, num_shifts=2)
    query = np.zeros((1, 1, 8), "float32")
    layer(np.zeros((1, 1, 1, 16), "float32"), query)
    kernel = np.zeros((2, 7, 7), "float32")
    kernel[:, 3, 4] = 1.0  # both kernels alike: any mixture of them is the same
    layer.kernels.assign(kernel.reshape(2, 49))
    focus = np.zeros((1, 1, 1, 16), "float32")
    focus[..., 5] = 1.0  # row 1, column 1
    bias = to_numpy(layer(focus, query))[0, 0, 0]
    assert np.argmax(bias) == 6 and np.count_nonzero(bias) == 1
    assert bias[6] == pytest.approx(1.0)


def test_errors_name_the_value():
    with pytest.raises(ValueError, match="grid_size"):
        FocusShift(grid_size=0, num_heads=2)
    with pytest.raises(ValueError, match=r"focus.shape=\(2, 2, 5, 8\)"):
        FocusShift(grid_size=3, num_heads=2)(np.zeros((2, 2, 5, 8), "float32"),
                                             np.zeros((2, 5, 8), "float32"))
