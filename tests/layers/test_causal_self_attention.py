import keras
import numpy as np
import pytest

from tests.test_case import assert_close
from tests.test_case import run_layer_test
from tests.test_case import to_numpy
from vlm.layers import CausalSelfAttention


def numpy_causal_attention(layer, x):
    """Reference: per-head softmax(QK^T/sqrt(d)) V with a lower-triangular mask."""
    heads = layer.num_heads
    # The fused kernel is (hidden, heads * 3 * key_dim), heads outermost.
    kernel = to_numpy(layer.qkv_dense.kernel).reshape(x.shape[-1], heads, 3, -1)
    bias = to_numpy(layer.qkv_dense.bias).reshape(heads, 3, -1)
    qkv = np.einsum("btd,dnch->btnch", x, kernel) + bias
    q, k, v = qkv[:, :, :, 0], qkv[:, :, :, 1], qkv[:, :, :, 2]
    logits = np.einsum("bqnh,bknh->bnqk", q, k) / np.sqrt(q.shape[-1])
    length = x.shape[1]
    logits = np.where(np.tril(np.ones((length, length), bool)), logits, -np.inf)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    out = np.einsum("bnqk,bknh->bqnh", probs, v)
    return (np.einsum("bqnh,nho->bqo", out, to_numpy(layer.output_dense.kernel))
            + to_numpy(layer.output_dense.bias))


def make_layer(x, **kwargs):
    layer = CausalSelfAttention(**{"num_heads": 2, **kwargs})
    layer(x)
    rng = np.random.default_rng(3)
    for dense in (layer.qkv_dense, layer.output_dense):
        dense.bias.assign(rng.standard_normal(dense.bias.shape) * 0.5)
    return layer


def inputs(batch=2, length=6, dim=16, seed=0):
    return np.random.default_rng(seed).standard_normal((batch, length, dim)).astype("float32")


def test_fused_projection_kernel_is_2d_heads_outermost_with_keras_scale():
    # 2-D so that XLA:CPU keeps a one-token step a real matrix-vector product
    # (tests/generation checks the compiled step); heads outermost so that a
    # split of the last axis is a split by head. The reference above reads the
    # layout as (hidden, heads, 3, key_dim), so the numbers check it too.
    layer = CausalSelfAttention(num_heads=2, key_dim=4,
                                kernel_initializer=keras.initializers.GlorotUniform(seed=7))
    layer.build((None, 5, 8))
    kernel = to_numpy(layer.qkv_dense.kernel)
    assert kernel.shape == (8, 2 * 3 * 4)
    assert to_numpy(layer.qkv_dense.bias).shape == (24,)
    # Glorot over hidden in, heads * 3 * key_dim out: the scale a per-head
    # (hidden, 3, heads, key_dim) Keras EinsumDense kernel also gets.
    limit = np.sqrt(6.0 / (8 + 24))
    assert 0.8 * limit < np.abs(kernel).max() <= limit


def test_layer_basics():
    run_layer_test(CausalSelfAttention, {"num_heads": 2, "dropout": 0.1},
                   input_shapes={"inputs": (2, 6, 16)},
                   expected_output_shape=(2, 6, 16))


def test_matches_numpy_reference():
    x = inputs()
    layer = make_layer(x)
    assert_close(layer(x), numpy_causal_attention(layer, x), atol=1e-5)


def test_position_never_sees_the_future():
    x = inputs()
    layer = make_layer(x)
    changed = x.copy()
    changed[:, 4:] += 10.0
    assert_close(layer(x)[:, :4], layer(changed)[:, :4], atol=1e-6)
    assert np.max(np.abs(to_numpy(layer(x)[:, 4:]) - to_numpy(layer(changed)[:, 4:]))) > 1e-2


def test_dropout_path_is_causal_and_inference_matches():
    x = inputs()
    layer = make_layer(x, dropout=0.5)
    assert_close(layer(x, training=False), numpy_causal_attention(layer, x), atol=1e-5)
    changed = x.copy()
    changed[:, 4:] += 10.0
    state = layer.dropout_layer.seed_generator.state
    start = to_numpy(state).copy()
    keras.utils.set_random_seed(1)
    a = layer(x, training=True)
    state.assign(start)
    keras.utils.set_random_seed(1)
    b = layer(changed, training=True)
    assert_close(a[:, :4], b[:, :4], atol=1e-5)  # keras#23038: mask kept with dropout


@pytest.mark.parametrize("chunk", [1, 2])
def test_cache_decoding_equals_full_attention(chunk):
    x = inputs(length=6)
    layer = make_layer(x)
    full = to_numpy(layer(x))
    cache = np.zeros((2, 2, 2, 8, 8), "float32")  # 2 heads, room for 8 positions
    outputs = []
    for start in range(0, 6, chunk):
        out, cache = layer(x[:, start:start + chunk], cache=cache, cache_index=start)
        outputs.append(to_numpy(out))
    assert tuple(cache.shape) == (2, 2, 2, 8, 8)
    assert_close(np.concatenate(outputs, axis=1), full, atol=1e-5)


def test_errors_name_the_value():
    with pytest.raises(ValueError, match="Received: num_heads=0"):
        CausalSelfAttention(num_heads=0)
    with pytest.raises(ValueError, match="num_heads=3, hidden_dim=16"):
        CausalSelfAttention(num_heads=3)(inputs())
