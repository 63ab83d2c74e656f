import numpy as np
import pytest

from tests.test_case import assert_close
from tests.test_case import run_layer_test
from tests.test_case import to_numpy
from vlm.layers import SideMemory
from vlm.layers.relative_position_block import DirectionCones


def test_layer_basics():
    run_layer_test(SideMemory, {"grid_size": 3, "num_heads": 4, "key_dim": 4},
                   input_shapes={"patches": (2, 9, 8)}, expected_output_shape=(2, 45, 12))


def _reference(layer, patches):
    """The slots written out in NumPy, one patch and head at a time."""
    w = {v.name: to_numpy(v) for v in layer.weights}
    mean = patches.mean(-1, keepdims=True)
    var = patches.var(-1, keepdims=True)
    x = (patches - mean) / np.sqrt(var + 1e-6) * w["gamma"] + w["beta"]
    grid, heads, key_dim = layer.grid_size, layer.num_heads, layer.key_dim
    table = w["offset_bias"].reshape(heads, 2 * grid - 1, 2 * grid - 1)
    cells = grid * grid
    out = np.zeros((patches.shape[0], 1 + heads, cells, patches.shape[-1] + key_dim))
    for b in range(patches.shape[0]):
        q = np.einsum("pd,dhk->hpk", x[b], w["query_kernel"])
        k = np.einsum("pd,dhk->hpk", x[b], w["key_kernel"])
        v = np.einsum("pd,dhk->hpk", x[b], w["value_kernel"])
        out[b, 0, :, : patches.shape[-1]] = patches[b]
        for h in range(heads):
            for i in range(cells):
                (ri, ci) = divmod(i, grid)
                logits = np.array([
                    q[h, i] @ k[h, j] / np.sqrt(key_dim)
                    + table[h, divmod(j, grid)[0] - ri + grid - 1,
                            divmod(j, grid)[1] - ci + grid - 1]
                    for j in range(cells)])
                logits[i] = -np.inf  # never itself
                p = np.exp(logits - logits.max())
                p /= p.sum()
                out[b, 1 + h, i] = np.concatenate([patches[b, i], p @ v[h]])
    out += w["tags"][None, :, None, :]
    return out.reshape(patches.shape[0], -1, out.shape[-1])


def test_slots_match_a_numpy_reference():
    rng = np.random.default_rng(0)
    layer = SideMemory(grid_size=3, num_heads=4, key_dim=4)
    patches = rng.standard_normal((2, 9, 8)).astype("float32")
    layer.build(patches.shape)
    layer.offset_bias.assign(rng.standard_normal((4, 25)).astype("float32"))
    assert_close(layer(patches), _reference(layer, patches), atol=1e-5)


def test_a_side_slot_reads_only_its_cone_and_keeps_its_patch_for_the_key():
    """Head 1 (looking right, as `DirectionCones` starts it) with a wall outside its cone:
    a patch's slot changes when a patch to its right changes and not when one to its left
    does, and the first part of every slot of patch p is patch p itself."""
    rng = np.random.default_rng(1)
    layer = SideMemory(grid_size=4, num_heads=4, key_dim=4,
                       offset_bias_initializer=DirectionCones(1e4))
    patches = rng.standard_normal((1, 16, 8)).astype("float32")
    before = to_numpy(layer(patches)).reshape(1, 5, 16, 12)
    tags = to_numpy(layer.tags)
    for slot in range(5):
        assert_close(before[0, slot, :, :8] - tags[slot, :8], patches[0], atol=1e-6)
    assert_close(before[0, 0, :, 8:], np.broadcast_to(tags[0, 8:], (16, 4)), atol=1e-6)
    moved = patches.copy()
    moved[0, 7] += 1.0 + rng.standard_normal(8).astype("float32")  # row 1, last column
    after = to_numpy(layer(moved)).reshape(1, 5, 16, 12)
    changed = np.abs(after[0, 2, :, 8:] - before[0, 2, :, 8:]).max(-1) > 1e-4  # head 1

    def right_cone(i):
        (ri, ci) = divmod(i, 4)
        return [j for j in range(16)
                if divmod(j, 4)[1] - ci > abs(divmod(j, 4)[0] - ri)]

    readers = [i for i in range(16) if 7 in right_cone(i) or not right_cone(i)]
    # Row 1 left of it, the cones from other rows that reach it, and the last column, whose
    # right cone is empty (so it reads every patch by content, patch 7 by its new query).
    assert readers == [0, 1, 3, 4, 5, 6, 7, 8, 9, 11, 12, 15]
    assert np.flatnonzero(changed).tolist() == readers


def test_config_round_trip_keeps_the_initializer():
    layer = SideMemory(grid_size=3, num_heads=4, key_dim=4,
                       offset_bias_initializer=DirectionCones(3.0))
    config = layer.get_config()
    again = SideMemory.from_config(config)
    assert again.offset_bias_initializer.strength == 3.0 and again.get_config() == config
    assert SideMemory(3, 4, 4).offset_bias_initializer.strength == 4.0


def test_errors_name_the_value():
    with pytest.raises(ValueError, match="key_dim"):
        SideMemory(grid_size=3, num_heads=4, key_dim=0)
    with pytest.raises(ValueError, match="9 patches"):
        SideMemory(grid_size=3, num_heads=4, key_dim=4)(np.zeros((1, 8, 8), "float32"))
