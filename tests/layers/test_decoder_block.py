import math

import numpy as np
import pytest

from tests.test_case import assert_close
from tests.test_case import run_layer_test
from tests.test_case import to_numpy
from vlm.layers import DecoderBlock


def test_layer_basics():
    run_layer_test(
        DecoderBlock,
        {"num_heads": 2, "mlp_dim": 32, "num_key_value_heads": 1, "dropout": 0.1,
         "layer_norm_epsilon": 1e-5},
        input_shapes={"inputs": (2, 5, 16), "context": (2, 9, 24)},
        expected_output_shape=(2, 5, 16),
    )


def _block_and_inputs():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 5, 16)).astype("float32")
    context = rng.standard_normal((2, 9, 24)).astype("float32")
    block = DecoderBlock(num_heads=2, mlp_dim=32)
    block(x, context)
    return block, x, context


def test_block_is_the_three_residual_branches():
    """Recompute the block from its sublayers: pre-LN self, cross, MLP."""
    block, x, context = _block_and_inputs()
    h = x + to_numpy(block.self_attention(block.self_attention_norm(x)))
    h = h + to_numpy(block.cross_attention(block.cross_attention_norm(h), context))
    h = h + to_numpy(block.mlp_down(block.mlp_up(block.mlp_norm(h))))
    assert_close(block(x, context), h, atol=1e-5)


def test_gated_mlp_multiplies_a_gelu_gate_into_the_up_projection():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 5, 16)).astype("float32")
    context = rng.standard_normal((2, 9, 24)).astype("float32")
    block = DecoderBlock(num_heads=2, mlp_dim=32, gated_mlp=True)
    block(x, context)
    assert block.mlp_up.activation.__name__ == "linear"
    h = x + to_numpy(block.self_attention(block.self_attention_norm(x)))
    h = h + to_numpy(block.cross_attention(block.cross_attention_norm(h), context))
    normed = to_numpy(block.mlp_norm(h))
    up = normed @ to_numpy(block.mlp_up.kernel) + to_numpy(block.mlp_up.bias)
    gate = normed @ to_numpy(block.mlp_gate.kernel) + to_numpy(block.mlp_gate.bias)
    gelu = 0.5 * gate * (1 + np.vectorize(math.erf)(gate / np.sqrt(2)))
    h = h + (up * gelu) @ to_numpy(block.mlp_down.kernel) + to_numpy(block.mlp_down.bias)
    assert_close(block(x, context), h, atol=1e-4)
    run_layer_test(DecoderBlock, {"num_heads": 2, "mlp_dim": 32, "gated_mlp": True},
                   input_shapes={"inputs": (2, 5, 16), "context": (2, 9, 24)},
                   expected_output_shape=(2, 5, 16))


def test_reads_the_image_and_is_causal():
    block, x, context = _block_and_inputs()
    base = to_numpy(block(x, context))
    assert np.max(np.abs(base - to_numpy(block(x, context + 1.0)))) > 1e-3
    changed = x.copy()
    changed[:, 3:] += 5.0
    assert_close(block(changed, context)[:, :3], base[:, :3], atol=1e-5)


def test_cached_step_by_step_equals_full():
    block, x, context = _block_and_inputs()
    full = to_numpy(block(x, context))
    context_cache = block.cross_attention.compute_context_cache(context)
    cache = np.zeros((2, 2, 2, 5, 8), "float32")  # (batch, k/v, heads, length, dim)
    steps = []
    for t in range(5):
        out, cache = block(x[:, t:t + 1], None, context_cache=context_cache,
                           self_attention_cache=cache, cache_index=t)
        steps.append(to_numpy(out))
    assert_close(np.concatenate(steps, axis=1), full, atol=1e-5)


def test_heads_must_divide_width():
    with pytest.raises(ValueError, match="num_heads=3, hidden_dim=16"):
        DecoderBlock(num_heads=3, mlp_dim=8)(np.zeros((1, 2, 16), "float32"),
                                             np.zeros((1, 3, 8), "float32"))


def test_sources_are_one_cross_attention_each_in_order():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 5, 16)).astype("float32")
    before = rng.standard_normal((2, 4, 24)).astype("float32")
    after = rng.standard_normal((2, 6, 24)).astype("float32")
    block = DecoderBlock(num_heads=2, mlp_dim=32, sources=("before", "after"))
    context = {"before": before, "after": after}
    out = to_numpy(block(x, context))
    h = x + to_numpy(block.self_attention(block.self_attention_norm(x)))
    h = h + to_numpy(block.cross_attention_before(block.cross_attention_norm_before(h), before))
    h = h + to_numpy(block.cross_attention_after(block.cross_attention_norm_after(h), after))
    h = h + to_numpy(block.mlp_down(block.mlp_up(block.mlp_norm(h))))
    assert_close(out, h, atol=1e-5)
    # Cached: each source's keys and values, projected once.
    caches = block.compute_context_cache(context)
    assert sorted(caches) == ["after", "before"]
    assert_close(block(x, None, context_cache=caches), out, atol=1e-5)
    assert DecoderBlock.from_config(block.get_config()).sources == ("before", "after")


def test_bad_sources():
    with pytest.raises(ValueError, match="Received: sources=\\('a', 'a'\\)"):
        DecoderBlock(num_heads=2, mlp_dim=8, sources=("a", "a"))
