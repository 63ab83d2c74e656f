import numpy as np
import pytest

from tests.test_case import assert_close
from tests.test_case import run_layer_test
from tests.test_case import to_numpy
from vlm.datasets.shapes.vocabulary import dominant_relation
from vlm.layers import RelativePositionBlock
from vlm.layers.relative_position_block import DirectionCones


def test_layer_basics():
    run_layer_test(RelativePositionBlock, {"grid_size": 3, "num_heads": 2, "mlp_dim": 16},
                   input_shapes={"patches": (2, 9, 8)}, expected_output_shape=(2, 9, 8))


def test_the_bias_is_the_table_entry_of_each_pairs_2d_offset():
    rng = np.random.default_rng(0)
    block = RelativePositionBlock(grid_size=3, num_heads=2, mlp_dim=16)
    block.build((None, 9, 8))
    table = rng.standard_normal((2, 25)).astype("float32")
    block.offset_bias.assign(table)
    expected = np.zeros((2, 9, 9), "float32")
    for i in range(9):
        for j in range(9):
            (ri, ci), (rj, cj) = divmod(i, 3), divmod(j, 3)
            expected[:, i, j] = table.reshape(2, 5, 5)[:, rj - ri + 2, cj - ci + 2]
    assert_close(block.offset_biases(), expected)


def test_a_head_that_looks_right_reads_only_the_right_neighbour():
    """With all its bias on offset (0, +1), a patch's output depends on itself and its right
    neighbour only: changing any other patch leaves it as it was. (The last column has no
    right neighbour: its logits are all alike, so it reads every patch.)"""
    rng = np.random.default_rng(1)
    block = RelativePositionBlock(grid_size=4, num_heads=1, mlp_dim=16)
    block.build((None, 16, 8))
    table = np.full((1, 49), -1e4, "float32")
    table[0, 3 * 7 + 4] = 0.0  # (d_row, d_col) = (0, +1)
    block.offset_bias.assign(table)
    patches = rng.standard_normal((1, 16, 8)).astype("float32")
    before = to_numpy(block(patches))
    for changed in (5, 10):
        moved = patches.copy()
        moved[0, changed] += rng.standard_normal(8).astype("float32")  # not a shift: norms
        differs = np.abs(to_numpy(block(moved)) - before).max(-1)[0] > 1e-5
        readers = [i for i in range(16) if i % 4 != 3 and i + 1 == changed]
        last_column = [3, 7, 11, 15]
        assert sorted(np.flatnonzero(differs)) == sorted({changed, *readers, *last_column})


def test_direction_cones_start_each_head_on_one_side_by_the_dominant_axis():
    """Head 0 on the offsets whose objects X is right of (they lie left), then left of,
    below and above: the relation the captions state between the patch and the one read."""
    table = to_numpy(DirectionCones(2.0)((5, 49))).reshape(5, 7, 7)
    relations = ("right of", "left of", "below", "above")
    for d_row in range(-3, 4):
        for d_col in range(-3, 4):
            values = table[:, d_row + 3, d_col + 3]
            assert values[4] == 0.0  # heads after the fourth start at zero
            if abs(d_row) == abs(d_col):  # no dominant axis (the zero offset included)
                assert not values.any()
                continue
            here, there = {"x": 0.0, "y": 0.0}, {"x": float(d_col), "y": float(d_row)}
            expected = [2.0 * (dominant_relation(here, there) == r) for r in relations]
            assert values[:4].tolist() == expected
    with pytest.raises(ValueError, match="grid"):
        DirectionCones()((4, 10))


def test_a_block_with_direction_cones_saves_and_loads_its_initializer():
    block = RelativePositionBlock(grid_size=3, num_heads=4, mlp_dim=16,
                                  offset_bias_initializer=DirectionCones(1.5))
    block.build((None, 9, 8))
    assert_close(block.offset_bias, DirectionCones(1.5)((4, 25)))
    config = block.get_config()
    again = RelativePositionBlock.from_config(config)
    assert isinstance(again.offset_bias_initializer, DirectionCones)
    assert again.offset_bias_initializer.strength == 1.5 and again.get_config() == config


def test_errors_name_the_value():
    with pytest.raises(ValueError, match="grid_size"):
        RelativePositionBlock(grid_size=0, num_heads=2, mlp_dim=8)
