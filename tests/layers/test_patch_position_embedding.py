import numpy as np
import pytest

from tests.test_case import assert_close
from tests.test_case import run_layer_test
from vlm.layers import PatchPositionEmbedding
from vlm.layers.patch_position_embedding import sincos_2d


def test_layer_basics():
    run_layer_test(PatchPositionEmbedding, {"grid_size": 3},
                   input_shapes={"inputs": (2, 9, 8)}, expected_output_shape=(2, 9, 8),
                   has_weights=False)


def test_table_values():
    table = sincos_2d(2, 3, 8)  # quarter=2: frequencies 1 and 1/100
    assert table.shape == (6, 8)
    # Patch (row 1, col 2) is token 5: row code then column code.
    row, col = 1.0, 2.0
    expected = [np.sin(row), np.sin(row / 100), np.cos(row), np.cos(row / 100),
                np.sin(col), np.sin(col / 100), np.cos(col), np.cos(col / 100)]
    np.testing.assert_allclose(table[5], expected, atol=1e-6)
    # Same row, different columns share the row half only.
    np.testing.assert_allclose(table[3, :4], table[5, :4])
    assert not np.allclose(table[3, 4:], table[5, 4:])


def test_adds_the_table():
    x = np.ones((2, 4, 8), "float32")
    assert_close(PatchPositionEmbedding(2)(x), x + sincos_2d(2, 2, 8)[None])


def test_errors():
    with pytest.raises(ValueError, match="Received: grid_size=0"):
        PatchPositionEmbedding(0)
    with pytest.raises(ValueError, match="Expected 9 patch tokens"):
        PatchPositionEmbedding(3)(np.zeros((1, 8, 8), "float32"))
    with pytest.raises(ValueError, match="divisible by 4. Received: dim=6"):
        sincos_2d(2, 2, 6)
