import keras
import numpy as np
import pytest

from tests.test_case import assert_close
from tests.test_case import run_layer_test
from tests.test_case import to_numpy
from vlm.layers import CrossAttention
from vlm.layers import GatedCrossAttentionBlock


@pytest.mark.parametrize("gates", [{}, {"gate_type": "vector", "gate_scale": 4.0}])
def test_layer_basics(gates):
    run_layer_test(
        GatedCrossAttentionBlock,
        {"num_heads": 2, "mlp_dim": 32, "num_key_value_heads": 1, "dropout": 0.1,
         "layer_norm_epsilon": 1e-6, **gates},
        input_shapes={"inputs": (2, 5, 16), "context": (2, 9, 24)},
        expected_output_shape=(2, 5, 16),
    )


def _block_and_inputs(num_key_value_heads=None, **gates):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 5, 16)).astype("float32")
    context = rng.standard_normal((2, 9, 24)).astype("float32")
    block = GatedCrossAttentionBlock(num_heads=2, mlp_dim=32,
                                     num_key_value_heads=num_key_value_heads, **gates)
    block(x, context)
    return block, x, context


@pytest.mark.parametrize("gate_type, shape", [("scalar", ()), ("vector", (16,))])
def test_identity_while_the_gates_are_zero(gate_type, shape):
    block, x, context = _block_and_inputs(gate_type=gate_type, gate_scale=10.0)
    np.testing.assert_array_equal(to_numpy(block(x, context)), x)
    for gate in (block.cross_attention.gate, block.mlp_gate):
        assert tuple(gate.shape) == shape
        np.testing.assert_array_equal(to_numpy(gate), np.zeros(shape))
    # The weights keep the names saved files hold.
    assert [block.cross_attention.gate.name, block.mlp_gate.name] == ["gate", "mlp_gate"]
    config = block.get_config()
    assert (config["gate_type"], config["gate_scale"]) == (gate_type, 10.0)
    revived = GatedCrossAttentionBlock.from_config(config)
    assert revived.get_config() == config
    np.testing.assert_array_equal(to_numpy(revived(x, context)), x)
    assert tuple(revived.cross_attention.gate.shape) == tuple(revived.mlp_gate.shape) == shape


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


def test_vector_gates_scale_each_hidden_channel():
    """x + tanh(s a) f(x) twice, with a gate per channel and s = 2."""
    block, x, context = _block_and_inputs(gate_type="vector", gate_scale=2.0)
    rng = np.random.default_rng(1)
    a, f = (rng.uniform(-0.5, 0.5, 16).astype("float32") for _ in range(2))
    block.cross_attention.gate.assign(a)
    block.mlp_gate.assign(f)
    # The cross attention's ungated output, from a plain layer with the same projections.
    normed = to_numpy(block.attention_norm(x))
    plain = CrossAttention(num_heads=2)
    plain(normed, context)
    for name in ("query", "key", "value", "output"):
        getattr(plain, f"{name}_dense").set_weights(
            getattr(block.cross_attention, f"{name}_dense").get_weights())
    h = x + np.tanh(2.0 * a) * to_numpy(plain(normed, context))
    ungated = to_numpy(block.mlp_down(block.mlp_up(block.mlp_norm(h))))
    expected = h + np.tanh(2.0 * f) * ungated
    assert_close(block(x, context), expected, atol=1e-5)
    assert np.max(np.abs(expected - x)) > 0.1


def _one_adam_step(block, x, context, target):
    """The block's gates `(a, f)` after one Adam step (learning rate 1e-2) on the MSE."""
    inputs = [keras.Input((5, 16)), keras.Input((9, 24))]
    model = keras.Model(inputs, block(*inputs))
    # Adam's first step is lr * grad / (|grad| + epsilon): the default epsilon, 1e-7,
    # would shorten the step of a 5e-5 gradient (a vector gate's smallest here) by 0.2%.
    optimizer = keras.optimizers.Adam(1e-2, epsilon=1e-10)
    model.compile(optimizer=optimizer, loss="mse", jit_compile=False)
    before = {w.path: to_numpy(w).copy() for w in model.trainable_weights}
    model.train_on_batch([x, context], target)
    gates = (block.cross_attention.gate, block.mlp_gate)
    gate_paths = {g.path for g in gates}
    for w in model.trainable_weights:  # tanh(0) = 0 hides every other weight's gradient
        if w.path not in gate_paths:
            np.testing.assert_array_equal(to_numpy(w), before[w.path], err_msg=w.path)
    return [to_numpy(g) for g in gates]


@pytest.mark.parametrize("gate_type", ["scalar", "vector"])
def test_gate_scale_multiplies_the_gates_first_adam_step(gate_type):
    """Adam moves a weight by about the learning rate whatever its gradient, so from
    the same weights and data tanh(10 g) moves about 10 times as far as tanh(g)."""
    block, x, context = _block_and_inputs(gate_type=gate_type)
    scaled = GatedCrossAttentionBlock(num_heads=2, mlp_dim=32, gate_type=gate_type,
                                      gate_scale=10.0)
    scaled(x, context)
    scaled.set_weights(block.get_weights())
    target = np.random.default_rng(2).standard_normal((2, 5, 16)).astype("float32")
    steps = _one_adam_step(block, x, context, target)
    scaled_steps = _one_adam_step(scaled, x, context, target)
    for g, g10 in zip(steps, scaled_steps):
        # Both weights take Adam's first step, +-lr, the same way...
        np.testing.assert_allclose(np.abs(g), 1e-2, rtol=1e-3)
        np.testing.assert_allclose(g10, g, rtol=1e-3)
        # ...so the gate's argument moves 10x as far, and the gate too, but for the
        # tanh's bend: tanh(0.1) / tanh(0.01) = 9.967.
        np.testing.assert_allclose(10.0 * g10 / g, 10.0, rtol=1e-3)
        np.testing.assert_allclose(np.tanh(10.0 * g10) / np.tanh(g),
                                   np.tanh(0.1) / np.tanh(0.01), rtol=1e-3)


@pytest.mark.parametrize("kwargs, message", [
    ({"gate_type": "matrix"},
     r"^`gate_type` must be one of \('scalar', 'vector'\). Received: gate_type='matrix'$"),
    ({"gate_scale": 0.0},
     r"^`gate_scale` must be a positive finite number. Received: gate_scale=0.0$"),
    ({"gate_scale": -1}, r"Received: gate_scale=-1$"),
])
def test_bad_gate_arguments_name_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GatedCrossAttentionBlock(num_heads=2, mlp_dim=32, **kwargs)
