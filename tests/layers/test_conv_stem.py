import math

import numpy as np
import pytest

from tests.test_case import assert_close
from tests.test_case import run_layer_test
from tests.test_case import to_numpy
from vlm.layers import ConvStem


def test_layer_basics():
    run_layer_test(ConvStem, {"filters": [4, 8]}, input_shapes={"images": (2, 16, 16, 3)},
                   expected_output_shape=(2, 4, 4, 8))


def _gelu(x):  # keras' "gelu": the exact one, with erf
    return 0.5 * x * (1 + np.vectorize(math.erf)(x / np.sqrt(2)))


def _conv_stride2_same(x, kernel, bias):
    """3x3 stride-2 "same" convolution, as TensorFlow pads: (0, 1) on an even side."""
    padded = np.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
    n, h, w, _ = x.shape
    out = np.zeros((n, h // 2, w // 2, kernel.shape[-1]), "float64")
    for i in range(h // 2):
        for j in range(w // 2):
            window = padded[:, 2 * i:2 * i + 3, 2 * j:2 * j + 3, :]
            out[:, i, j] = np.einsum("nabc,abcd->nd", window, kernel) + bias
    return out


def test_matches_strided_convolutions_written_out():
    stem = ConvStem([4, 6])
    x = np.random.default_rng(0).standard_normal((2, 8, 8, 3)).astype("float32")
    got = stem(x)
    expected = x.astype("float64")
    for conv in stem.convolutions:
        kernel, bias = (np.asarray(w) for w in conv.get_weights())
        expected = _gelu(_conv_stride2_same(expected, kernel, bias))
    assert stem.stride == 4 and tuple(got.shape) == (2, 2, 2, 6)
    assert_close(got, expected, atol=1e-5)


def test_layer_basics_with_coordinates():
    run_layer_test(ConvStem, {"filters": [4, 8], "coordinates": True},
                   input_shapes={"images": (2, 16, 16, 3)}, expected_output_shape=(2, 4, 4, 8))


def test_coordinates_are_x_and_y_maps_beside_every_convolution_input():
    stem = ConvStem([4, 6], coordinates=True)
    x = np.random.default_rng(0).standard_normal((2, 8, 8, 3)).astype("float32")
    got = stem(x)
    expected = x.astype("float64")
    for conv in stem.convolutions:
        n, h, w, _ = expected.shape
        cols, rows = np.meshgrid(np.linspace(-1, 1, w), np.linspace(-1, 1, h))
        grid = np.broadcast_to(np.stack([cols, rows], -1), (n, h, w, 2))
        kernel, bias = (np.asarray(w) for w in conv.get_weights())
        expected = _gelu(_conv_stride2_same(np.concatenate([expected, grid], -1), kernel, bias))
    assert [tuple(c.kernel.shape) for c in stem.convolutions] == [(3, 3, 5, 4), (3, 3, 6, 6)]
    assert_close(got, expected, atol=1e-5)
    # The same pixels at two places give two outputs: the stem knows where it is.
    flat = to_numpy(stem(np.zeros((1, 8, 8, 3), "float32")))[0]
    assert np.abs(flat[0, 0] - flat[1, 1]).max() > 1e-3


def test_errors():
    with pytest.raises(ValueError, match=r"Received: filters=\[\]"):
        ConvStem([])
    with pytest.raises(ValueError, match=r"Received: filters=\[8, 0\]"):
        ConvStem([8, 0])
