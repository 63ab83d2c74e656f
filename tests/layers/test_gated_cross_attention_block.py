import numpy as np

from tests.test_case import assert_close
from tests.test_case import run_layer_test
from tests.test_case import to_numpy
from vlm.layers import GatedCrossAttentionBlock


def test_layer_basics():
    run_layer_test(
        GatedCrossAttentionBlock,
        {"num_heads": 2, "mlp_dim": 32, "num_key_value_heads": 1, "dropout": 0.1,
         "layer_norm_epsilon": 1e-6},
        input_shapes={"inputs": (2, 5, 16), "context": (2, 9, 24)},
        expected_output_shape=(2, 5, 16),
    )


def _block_and_inputs(num_key_value_heads=None):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 5, 16)).astype("float32")
    context = rng.standard_normal((2, 9, 24)).astype("float32")
    block = GatedCrossAttentionBlock(num_heads=2, mlp_dim=32,
                                     num_key_value_heads=num_key_value_heads)
    block(x, context)
    return block, x, context


def test_identity_while_the_gates_are_zero():
    block, x, context = _block_and_inputs()
    np.testing.assert_array_equal(to_numpy(block(x, context)), x)
    assert to_numpy(block.cross_attention.gate) == 0.0 and to_numpy(block.mlp_gate) == 0.0


def test_is_the_two_gated_branches():
    """Recomputed from the sublayers with the gates moved: x + tanh(a) f(x) twice."""
    block, x, context = _block_and_inputs(num_key_value_heads=1)
    block.cross_attention.gate.assign(0.7)
    block.mlp_gate.assign(-1.3)
    attention = block.cross_attention  # its output carries tanh(0.7) already
    h = x + to_numpy(attention(block.attention_norm(x), context))
    ungated = to_numpy(block.mlp_down(block.mlp_up(block.mlp_norm(h))))
    expected = h + np.tanh(-1.3) * ungated
    assert_close(block(x, context), expected, atol=1e-5)
    assert np.max(np.abs(expected - x)) > 0.1  # the image now changes the states
    cache = block.compute_context_cache(context)
    assert_close(block(x, None, context_cache=cache), expected, atol=1e-5)


def test_attention_mask_hides_the_image():
    block, x, context = _block_and_inputs()
    block.cross_attention.gate.assign(1.0)
    hidden = np.zeros((2, 5, 9), bool)
    hidden[:, 3:] = True  # the first three tokens see no image
    out = to_numpy(block(x, context, attention_mask=hidden))
    np.testing.assert_array_equal(out[:, :3], x[:, :3])  # mlp gate still 0
    assert np.max(np.abs(out[:, 3:] - x[:, 3:])) > 1e-2
