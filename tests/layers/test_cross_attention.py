import os

import keras
import numpy as np
import pytest
from keras import ops

from tests.test_case import assert_close
from tests.test_case import backend
from tests.test_case import run_layer_test
from tests.test_case import to_numpy
from vlm.layers import CrossAttention

GOLDEN_DIR = os.path.join(os.path.dirname(__file__), "golden")


# ----------------------------------------------------------------------------
# A NumPy reference of the math, written independently of the layer.
# ----------------------------------------------------------------------------


def projections(layer):
    """The layer's weights as NumPy arrays (zero biases when use_bias=False)."""
    weights = {}
    for name in ("query", "key", "value", "output"):
        dense = getattr(layer, f"{name}_dense")
        kernel = to_numpy(dense.kernel)
        bias = to_numpy(dense.bias) if dense.bias is not None else 0.0
        weights[name] = (kernel, bias)
    # The query kernel is 2-D, (query_dim, heads * key_dim), heads outermost.
    kernel, bias = weights["query"]
    weights["query"] = (kernel.reshape(kernel.shape[0], layer.num_heads, -1),
                        np.reshape(bias, (layer.num_heads, -1)) if layer.use_bias else 0.0)
    return weights


def numpy_cross_attention(layer, query, context, context_mask=None, attention_mask=None,
                          attention_bias=None):
    """softmax(Q K^T / sqrt(d) + bias) V per head, then the output projection."""
    w = projections(layer)
    q = np.einsum("btd,dnh->btnh", query, w["query"][0]) + w["query"][1]
    k = np.einsum("bsd,dnh->bsnh", context, w["key"][0]) + w["key"][1]
    v = np.einsum("bsd,dnh->bsnh", context, w["value"][0]) + w["value"][1]
    groups = q.shape[2] // k.shape[2]
    k = np.repeat(k, groups, axis=2)  # query head h reads kv head h // groups
    v = np.repeat(v, groups, axis=2)
    logits = np.einsum("bqnh,bknh->bnqk", q, k) / np.sqrt(q.shape[-1])
    if attention_bias is not None:
        logits = logits + attention_bias
    if context_mask is None:
        context_mask = np.ones(context.shape[:2], bool)
    visible = context_mask[:, None, None, :]
    if attention_mask is not None:
        visible = visible & attention_mask[:, None]  # (batch, 1, q_len, k_len)
    logits = np.where(visible, logits, -np.inf)
    row_max = np.max(logits, axis=-1, keepdims=True)
    row_max = np.where(np.isfinite(row_max), row_max, 0.0)
    exp = np.where(visible, np.exp(logits - row_max), 0.0)
    denom = exp.sum(-1, keepdims=True)
    probs = np.divide(exp, denom, out=np.zeros_like(exp), where=denom > 0)
    out = np.einsum("bnqk,bknh->bqnh", probs, v)
    out = np.einsum("bqnh,nho->bqo", out, w["output"][0]) + w["output"][1]
    out = out * visible.any(-1)[:, 0, :, None]  # rows that see nothing: zeros
    if layer.gated:  # a scalar gate, or one per output channel
        out = out * np.tanh(layer.gate_scale * to_numpy(layer.gate))
    return out.astype("float32"), probs.astype("float32")


def random_inputs(batch=2, q_len=5, k_len=7, query_dim=16, context_dim=24, seed=0):
    rng = np.random.default_rng(seed)
    query = rng.standard_normal((batch, q_len, query_dim)).astype("float32")
    context = rng.standard_normal((batch, k_len, context_dim)).astype("float32")
    return query, context


def random_mask(batch=2, k_len=7, seed=1):
    mask = np.random.default_rng(seed).random((batch, k_len)) > 0.4
    mask[:, 0] = True  # at least one visible position per row
    return mask


def built_layer(query, context, **kwargs):
    layer = CrossAttention(**kwargs)
    layer(query, context)
    return layer


def randomize_biases(layer, seed=3):
    """Zero-initialised biases would hide bias bugs: give them values."""
    rng = np.random.default_rng(seed)
    for dense in (layer.query_dense, layer.key_dense, layer.value_dense,
                  layer.output_dense):
        if dense.bias is not None:
            dense.bias.assign(rng.standard_normal(dense.bias.shape) * 0.5)


# ----------------------------------------------------------------------------
# Keras citizenship
# ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "init_kwargs, expected",
    [
        ({"num_heads": 2}, (2, 5, 16)),
        (
            {"num_heads": 4, "key_dim": 8, "value_dim": 6,
             "num_key_value_heads": 2, "output_dim": 12, "gated": True,
             "use_bias": False, "dropout": 0.1},
            (2, 5, 12),
        ),
        ({"num_heads": 2, "output_dim": 12, "gated": True, "gate_type": "vector",
          "gate_scale": 3.0}, (2, 5, 12)),
    ],
)
def test_layer_basics(init_kwargs, expected):
    run_layer_test(
        CrossAttention,
        init_kwargs,
        input_shapes={"query": (2, 5, 16), "context": (2, 7, 24)},
        expected_output_shape=expected,
    )


def test_registered_serializable():
    assert keras.saving.get_registered_object("vlm>CrossAttention") is CrossAttention


def test_compute_output_shape_with_scores_and_cache():
    layer = CrossAttention(num_heads=4, key_dim=8, output_dim=10)
    out, scores = layer.compute_output_shape(
        (3, 5, 16), (3, 9, 24), return_attention_scores=True
    )
    assert out == (3, 5, 10) and scores == (3, 4, 5, 9)
    out, scores = layer.compute_output_shape(
        (3, 5, 16), context_cache_shape=((3, 4, 9, 8), (3, 4, 9, 8)),  # heads first
        return_attention_scores=True,
    )
    assert scores == (3, 4, 5, 9)
    query = keras.Input((None, 16))
    context = keras.Input((9, 24))
    sym_out, sym_scores = layer(query, context, return_attention_scores=True)
    assert sym_out.shape == (None, None, 10)
    assert sym_scores.shape == (None, 4, None, 9)


# ----------------------------------------------------------------------------
# The math
# ----------------------------------------------------------------------------

CONFIGS = [
    dict(num_heads=2),
    dict(num_heads=4, key_dim=8, value_dim=6, output_dim=12),
    dict(num_heads=4, key_dim=8, num_key_value_heads=2),
    dict(num_heads=4, key_dim=8, num_key_value_heads=1, use_bias=False),
]


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("masked", [False, True])
def test_matches_numpy_reference_on_both_paths(config, masked):
    query, context = random_inputs()
    layer = built_layer(query, context, **config)
    randomize_biases(layer)
    mask = random_mask() if masked else None
    expected_out, expected_probs = numpy_cross_attention(layer, query, context, mask)

    fused = layer(query, context, context_mask=mask)
    explicit, scores = layer(
        query, context, context_mask=mask, return_attention_scores=True
    )
    assert_close(fused, expected_out, atol=1e-5)
    assert_close(explicit, expected_out, atol=1e-5)
    assert_close(scores, expected_probs, atol=1e-6)
    # Both paths give the same numbers as each other, not only the reference.
    assert_close(fused, explicit, atol=1e-5)


@pytest.mark.parametrize("masked", [False, True])
def test_matches_keras_multi_head_attention(masked):
    query, context = random_inputs()
    # value_dim == key_dim: Keras' own MultiHeadAttention fails on JAX
    # otherwise (its fused path reshapes values to the key width).
    ours = built_layer(query, context, num_heads=4, key_dim=8, output_dim=10)
    randomize_biases(ours)
    mha = keras.layers.MultiHeadAttention(num_heads=4, key_dim=8, output_shape=10)
    mha.build(query.shape, context.shape)
    for ours_dense, theirs_dense in [
        (ours.query_dense, mha._query_dense),
        (ours.key_dense, mha._key_dense),
        (ours.value_dense, mha._value_dense),
        (ours.output_dense, mha._output_dense),
    ]:
        # Same values; our query kernel is the 2-D form of Keras' (16, 4, 8).
        theirs_dense.set_weights([np.reshape(w, v.shape) for w, v in
                                  zip(ours_dense.get_weights(), theirs_dense.weights)])
    mask = random_mask() if masked else None
    expected = mha(query, context, value_mask=mask)
    actual = ours(query, context, context_mask=mask)
    assert np.max(np.abs(to_numpy(actual) - to_numpy(expected))) < 1e-5


def test_query_kernel_is_2d_heads_outermost_and_initialised_as_keras_would():
    # 2-D because the query projection runs at every decoding step (see
    # tests/generation); keys and values keep Keras' per-head layout.
    layer = CrossAttention(num_heads=2, key_dim=4,
                           kernel_initializer=keras.initializers.GlorotUniform(seed=7))
    layer.build((None, 5, 8), (None, 9, 6))
    assert tuple(layer.query_dense.kernel.shape) == (8, 2 * 4)
    assert tuple(layer.key_dense.kernel.shape) == (6, 2, 4)
    # The same values Keras gives its (8, 2, 4) query kernel, in 2-D.
    mha = keras.layers.MultiHeadAttention(
        num_heads=2, key_dim=4, kernel_initializer=keras.initializers.GlorotUniform(seed=7))
    mha.build((None, 5, 8), (None, 9, 6))
    np.testing.assert_array_equal(to_numpy(layer.query_dense.kernel),
                                  to_numpy(mha._query_dense.kernel).reshape(8, 8))


def test_grouped_query_attention_equals_full_layer_with_repeated_heads():
    query, context = random_inputs()
    gqa = built_layer(query, context, num_heads=6, key_dim=4, num_key_value_heads=2)
    full = built_layer(query, context, num_heads=6, key_dim=4)
    randomize_biases(gqa)
    # GQA has a third of the key/value parameters.
    assert gqa.key_dense.kernel.shape == (24, 2, 4)
    full.query_dense.set_weights(gqa.query_dense.get_weights())
    full.output_dense.set_weights(gqa.output_dense.get_weights())
    for g, f in [(gqa.key_dense, full.key_dense), (gqa.value_dense, full.value_dense)]:
        kernel, bias = g.get_weights()
        f.set_weights([np.repeat(kernel, 3, axis=1), np.repeat(bias, 3, axis=0)])
    mask = random_mask()
    for kwargs in ({}, {"return_attention_scores": True}):
        ours = gqa(query, context, context_mask=mask, **kwargs)
        reference = full(query, context, context_mask=mask, **kwargs)
        if kwargs:
            assert_close(ours[1], reference[1], atol=1e-6)
            ours, reference = ours[0], reference[0]
        assert_close(ours, reference, atol=1e-5)


def test_context_cache_gives_the_same_outputs():
    query, context = random_inputs()
    layer = built_layer(query, context, num_heads=4, key_dim=8,
                        num_key_value_heads=2)
    key, value = layer.compute_context_cache(context)
    # Heads first: (batch, kv_heads, k_len, key_dim).
    assert tuple(key.shape) == (2, 2, 7, 8) and tuple(value.shape) == (2, 2, 7, 8)
    mask = random_mask()
    direct = layer(query, context, context_mask=mask)
    cached = layer(query, None, context_mask=mask, context_cache=(key, value))
    # The cached keys are read by the written-out einsums, the direct ones by
    # ops.dot_product_attention: float32 rounding apart.
    assert_close(direct, cached, atol=1e-6)
    # The cache is what the output depends on: a changed context with the old
    # cache still gives the old output (the projections really are skipped).
    cached_again = layer(query, context * 0.0 + 5.0, context_mask=mask,
                         context_cache=(key, value))
    assert np.array_equal(to_numpy(cached), to_numpy(cached_again))
    _, scores = layer(query, None, context_cache=(key, value),
                      return_attention_scores=True)
    assert tuple(scores.shape) == (2, 4, 5, 7)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_heads": 4, "key_dim": 8},  # the fused path
        {"num_heads": 4, "key_dim": 8, "value_dim": 6},  # written out
        {"num_heads": 6, "key_dim": 4, "num_key_value_heads": 2},
    ],
)
def test_context_shared_by_consecutive_rows_equals_repeated_context(kwargs):
    """3 captions per image: 6 query rows over 2 contexts, rows 0-2 read context 0."""
    query, _ = random_inputs(batch=6, seed=4)
    _, context = random_inputs(batch=2, seed=5)
    mask = random_mask(batch=2)
    layer = built_layer(query, context, **kwargs)
    randomize_biases(layer)
    repeated = np.repeat(context, 3, axis=0)
    repeated_mask = np.repeat(mask, 3, axis=0)
    shared = layer(query, context, context_mask=mask)
    expected = layer(query, repeated, context_mask=repeated_mask)
    assert tuple(shared.shape) == (6, 5, 16)
    assert_close(shared, expected, atol=1e-5)
    reference, reference_scores = numpy_cross_attention(
        layer, query, repeated, repeated_mask
    )
    assert_close(shared, reference, atol=1e-5)
    # Scores come back per query row, and a cached context works the same.
    cache = layer.compute_context_cache(context)
    out, scores = layer(query, None, context_mask=mask, context_cache=cache,
                        return_attention_scores=True)
    assert tuple(scores.shape) == (6, kwargs["num_heads"], 5, 7)
    assert_close(out, reference, atol=1e-5)
    assert_close(scores, reference_scores, atol=1e-6)


def test_shared_context_honours_the_query_mask():
    query, _ = random_inputs(batch=4, seed=6)
    _, context = random_inputs(batch=2, seed=7)
    layer = built_layer(query, context, num_heads=2)
    randomize_biases(layer)
    query_mask = np.ones((4, 5), bool)
    query_mask[1, 3:] = False
    query_mask[2, :] = False
    shared = to_numpy(layer(query, context, query_mask=query_mask))
    expected = to_numpy(
        layer(query, np.repeat(context, 2, axis=0), query_mask=query_mask)
    )
    np.testing.assert_allclose(shared, expected, atol=1e-5)
    assert np.all(shared[1, 3:] == 0.0) and np.all(shared[2] == 0.0)
    assert np.abs(shared[0]).min() > 0.0


def test_context_batch_must_divide_the_query_batch():
    query, _ = random_inputs(batch=5)
    _, context = random_inputs(batch=2)
    layer = CrossAttention(num_heads=2)
    with pytest.raises(ValueError, match="query batch=5, context batch=2"):
        layer(query, context)


@pytest.mark.skipif(backend() != "tensorflow", reason="TF graphs with unknown batch")
def test_shared_context_with_unknown_batch_sizes_in_a_tf_graph():
    import tensorflow as tf

    query, _ = random_inputs(batch=6, seed=8)
    _, context = random_inputs(batch=3, seed=9)
    layer = built_layer(query, context, num_heads=2)
    spec = lambda x: tf.TensorSpec((None,) + x.shape[1:], tf.float32)  # noqa: E731
    graph = tf.function(layer.__call__, input_signature=[spec(query), spec(context)])
    expected = layer(query, np.repeat(context, 2, axis=0))
    assert_close(graph(query, context), expected, atol=1e-5)
    # No rows at all: empty in, empty out (a serving batch of zero images).
    assert tuple(graph(query[:0], context[:0]).shape) == (0, 5, 16)


# ----------------------------------------------------------------------------
# Masks
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("dropout, training", [(0.0, False), (0.5, True)])
def test_masked_context_gets_exactly_zero_weight(dropout, training):
    query, context = random_inputs()
    layer = built_layer(query, context, num_heads=2, dropout=dropout)
    mask = random_mask()
    _, scores = layer(query, context, context_mask=mask,
                      return_attention_scores=True)
    scores = to_numpy(scores)
    hidden = ~mask[:, None, None, :].repeat(2, 1).repeat(5, 2)
    assert np.all(scores[hidden] == 0.0)
    np.testing.assert_allclose(scores.sum(-1), 1.0, atol=1e-6)
    # Whatever sits at a masked position cannot change the output, on the
    # fused path and (keras#23038) on the dropout path.
    changed = np.where(mask[..., None], context, 1e3).astype("float32")
    if not training:
        assert_close(layer(query, context, context_mask=mask),
                     layer(query, changed, context_mask=mask), atol=1e-6)
    else:
        # Replay the same dropout draw for both calls (torch's dropout draws
        # from the global generator, the others from the layer's seed state).
        state = layer.dropout_layer.seed_generator.state
        start = to_numpy(state).copy()
        keras.utils.set_random_seed(7)
        a = layer(query, context, context_mask=mask, training=True)
        state.assign(start)
        keras.utils.set_random_seed(7)
        b = layer(query, changed, context_mask=mask, training=True)
        assert_close(a, b, atol=1e-5)
        c = layer(query, context, context_mask=mask, training=False)
        assert np.max(np.abs(to_numpy(a) - to_numpy(c))) > 1e-3  # dropout acted


@pytest.mark.parametrize("return_scores", [False, True])
def test_fully_masked_context_returns_zeros_not_nan(return_scores):
    query, context = random_inputs()
    layer = built_layer(query, context, num_heads=2)
    randomize_biases(layer)
    mask = random_mask()
    mask[1] = False  # the second example sees no context at all
    result = layer(query, context, context_mask=mask,
                   return_attention_scores=return_scores)
    out = to_numpy(result[0] if return_scores else result)
    assert np.all(np.isfinite(out))
    assert np.all(out[1] == 0.0)
    assert np.any(out[0] != 0.0)
    if return_scores:
        scores = to_numpy(result[1])
        assert np.all(scores[1] == 0.0)
        np.testing.assert_allclose(scores[0].sum(-1), 1.0, atol=1e-6)


class _MaskProbe(keras.layers.Layer):
    """Returns the Keras mask it receives, as floats (public mask plumbing)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True

    def call(self, x, mask=None):
        return ops.cast(mask, "float32")

    def compute_output_shape(self, shape):
        return shape[:-1]


def test_implicit_query_mask_is_honoured_and_propagated():
    tokens = np.array([[3, 4, 5, 0, 0], [6, 7, 0, 0, 0]])
    _, context = random_inputs()
    token_input = keras.Input((5,), dtype="int32")
    context_input = keras.Input((7, 24))
    embedding = keras.layers.Embedding(10, 16, mask_zero=True)
    embedded = embedding(token_input)
    attention = CrossAttention(num_heads=2, name="cross")
    attended = attention(embedded, context_input)
    probe = _MaskProbe()(attended)
    model = keras.Model([token_input, context_input], [attended, probe])
    out, propagated = model([tokens, context])
    np.testing.assert_array_equal(to_numpy(propagated), (tokens != 0).astype("float32"))
    out = to_numpy(out)
    assert np.all(out[tokens == 0] == 0.0)
    assert np.all(np.any(out[tokens != 0] != 0.0, axis=-1))
    # The context's own Keras mask fills `context_mask`.
    layer = model.get_layer("cross")
    query = to_numpy(embedding(tokens))
    context_tokens = np.array([[1, 2, 0, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0, 0]])
    context_embedding = keras.layers.Embedding(10, 24, mask_zero=True)
    masked_context = context_embedding(context_tokens)
    implicit = layer(query, masked_context)
    explicit = layer(query, to_numpy(masked_context), context_mask=context_tokens != 0)
    assert_close(implicit, explicit, atol=0.0)


@pytest.mark.parametrize(
    "mask_shape", [(2, 6), (2, 7, 1), (3, 7)],
)
def test_wrong_mask_shape_is_an_error(mask_shape):
    query, context = random_inputs()
    layer = built_layer(query, context, num_heads=2)
    with pytest.raises(ValueError, match=r"context_mask.*Received: context_mask.shape"):
        layer(query, context, context_mask=np.ones(mask_shape, bool))


# ----------------------------------------------------------------------------
# Gate, dropout, precision
# ----------------------------------------------------------------------------


def test_gate_starts_as_noop_and_scales_by_tanh():
    query, context = random_inputs()
    gated = built_layer(query, context, num_heads=2, gated=True)
    assert float(to_numpy(gated.gate)) == 0.0
    assert np.all(to_numpy(gated(query, context)) == 0.0)
    plain = built_layer(query, context, num_heads=2)
    for name in ("query", "key", "value", "output"):
        getattr(plain, f"{name}_dense").set_weights(
            getattr(gated, f"{name}_dense").get_weights()
        )
    gated.gate.assign(0.7)
    assert_close(gated(query, context), np.tanh(0.7) * to_numpy(plain(query, context)),
                 atol=1e-6)
    # The gate trains: its gradient is nonzero even at 0.
    assert len(gated.trainable_weights) == 9


def test_vector_gate_scales_each_output_channel_by_tanh_of_scale_times_gate():
    query, context = random_inputs()
    gated = built_layer(query, context, num_heads=2, output_dim=12, gated=True,
                        gate_type="vector", gate_scale=2.5)
    assert tuple(gated.gate.shape) == (12,)
    np.testing.assert_array_equal(to_numpy(gated.gate), np.zeros(12))
    assert np.all(to_numpy(gated(query, context)) == 0.0)  # a no-op as built
    plain = built_layer(query, context, num_heads=2, output_dim=12)
    for name in ("query", "key", "value", "output"):
        getattr(plain, f"{name}_dense").set_weights(
            getattr(gated, f"{name}_dense").get_weights()
        )
    gate = np.linspace(-0.4, 0.4, 12).astype("float32")
    gated.gate.assign(gate)
    expected = np.tanh(2.5 * gate) * to_numpy(plain(query, context))
    assert_close(gated(query, context), expected, atol=1e-6)
    expected_out, _ = numpy_cross_attention(gated, query, context)
    assert_close(expected, expected_out, atol=1e-5)
    assert CrossAttention.from_config(gated.get_config()).gate_type == "vector"


def test_default_gate_is_the_scalar_tanh_of_before():
    """The defaults give `tanh(gate)` on a `()` weight named "gate", as saved files hold."""
    query, context = random_inputs()
    layer = built_layer(query, context, num_heads=2, gated=True)
    assert (layer.gate.name, tuple(layer.gate.shape)) == ("gate", ())
    assert (layer.gate_type, layer.gate_scale) == ("scalar", 1.0)
    config = layer.get_config()
    del config["gate_type"], config["gate_scale"]  # a config saved before they existed
    old = CrossAttention.from_config(config)
    old(query, context)
    old.set_weights(layer.get_weights())
    layer.gate.assign(0.3)
    old.gate.assign(0.3)
    np.testing.assert_array_equal(to_numpy(old(query, context)), to_numpy(layer(query, context)))
    plain = built_layer(query, context, num_heads=2)
    for name in ("query", "key", "value", "output"):
        getattr(plain, f"{name}_dense").set_weights(
            getattr(layer, f"{name}_dense").get_weights()
        )
    assert_close(layer(query, context), np.tanh(0.3) * to_numpy(plain(query, context)),
                 atol=1e-6)


def test_dropout_only_in_training():
    query, context = random_inputs()
    layer = built_layer(query, context, num_heads=2, dropout=0.5)
    inference = to_numpy(layer(query, context, training=False))
    no_dropout = built_layer(query, context, num_heads=2)
    for name in ("query", "key", "value", "output"):
        getattr(no_dropout, f"{name}_dense").set_weights(
            getattr(layer, f"{name}_dense").get_weights()
        )
    assert_close(inference, no_dropout(query, context), atol=1e-6)
    trained = to_numpy(layer(query, context, training=True))
    assert np.max(np.abs(trained - inference)) > 1e-3


def _copy_to_policy(reference_layer, query, context, policy):
    layer = CrossAttention(num_heads=2, key_dim=8, dtype=policy)
    layer(query, context)
    layer.set_weights(reference_layer.get_weights())
    return layer


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_runs_softmax_in_float32(policy):
    compute_dtype = policy.split("_")[1]
    query, context = random_inputs()
    reference_layer = built_layer(query, context, num_heads=2, key_dim=8)
    randomize_biases(reference_layer)
    layer = _copy_to_policy(reference_layer, query, context, policy)
    # At ordinary scale the low-precision layer tracks the float32 one.
    expected = to_numpy(reference_layer(query, context))
    out = to_numpy(layer(query, context)).astype("float32")
    tolerance = 0.05 if compute_dtype == "bfloat16" else 0.01
    assert np.max(np.abs(out - expected)) < tolerance * np.max(np.abs(expected))

    # Activations scaled by 100 push Q K^T past float16's range (65504):
    # only float32 logits and softmax keep the result finite.
    query, context = query * 100.0, context * 100.0
    w = projections(reference_layer)
    q = np.einsum("btd,dnh->btnh", query, w["query"][0]) + w["query"][1]
    k = np.einsum("bsd,dnh->bsnh", context, w["key"][0]) + w["key"][1]
    raw_logits = np.einsum("bqnh,bknh->bnqk", q, k)  # Q K^T as fp16 would hold it
    assert np.max(np.abs(raw_logits)) > 65504.0
    mask = random_mask()
    mask[1] = False
    for kwargs in ({}, {"context_mask": mask}):
        out, scores = layer(query, context, return_attention_scores=True, **kwargs)
        fused = layer(query, context, **kwargs)
        assert keras.backend.standardize_dtype(out.dtype) == compute_dtype
        assert keras.backend.standardize_dtype(fused.dtype) == compute_dtype
        assert keras.backend.standardize_dtype(scores.dtype) == "float32"
        for value in (out, scores, fused):
            assert np.all(np.isfinite(to_numpy(value).astype("float32")))
        np.testing.assert_allclose(to_numpy(scores)[0].sum(-1), 1.0, atol=1e-5)
        # The two paths agree under mixed precision too.
        np.testing.assert_allclose(
            to_numpy(out).astype("float32"), to_numpy(fused).astype("float32"),
            atol=1e-2 * np.max(np.abs(to_numpy(out).astype("float32"))),
        )


# ----------------------------------------------------------------------------
# Argument validation
# ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_heads": 0}, r"num_heads.*Received: num_heads=0"),
        ({"num_heads": 2, "key_dim": 0}, r"key_dim.*Received: key_dim=0"),
        ({"num_heads": 2, "key_dim": -4}, r"key_dim.*Received: key_dim=-4"),
        ({"num_heads": 2, "key_dim": 2.5}, r"key_dim.*Received: key_dim=2.5"),
        ({"num_heads": 4, "num_key_value_heads": 3},
         r"num_key_value_heads.*Received: num_heads=4, num_key_value_heads=3"),
        ({"num_heads": 2, "dropout": 1.5}, r"dropout.*Received: dropout=1.5"),
        ({"num_heads": 2, "output_dim": -1}, r"Received: output_dim=-1"),
        ({"num_heads": 2, "gate_type": "matrix"},
         r"^`gate_type` must be one of \('scalar', 'vector'\). Received: gate_type='matrix'$"),
        ({"num_heads": 2, "gate_scale": 0},
         r"^`gate_scale` must be a positive finite number. Received: gate_scale=0$"),
        ({"num_heads": 2, "gate_scale": -2.0}, r"Received: gate_scale=-2.0$"),
        ({"num_heads": 2, "gate_scale": float("inf")}, r"Received: gate_scale=inf$"),
        ({"num_heads": 2, "gate_scale": float("nan")}, r"Received: gate_scale=nan$"),
        ({"num_heads": 2, "gate_scale": "10"}, r"Received: gate_scale='10'$"),
    ],
)
def test_bad_arguments_name_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CrossAttention(**kwargs)


def test_bad_input_ranks_name_the_shape():
    query, context = random_inputs()
    layer = CrossAttention(num_heads=2)
    with pytest.raises(ValueError, match=r"context.*rank 3.*Received: context.shape=\(2, 7\)"):
        layer(query, context[:, :, 0])
    layer = built_layer(query, context, num_heads=2)
    with pytest.raises(ValueError, match=r"context.*rank 3.*Received: context.shape"):
        layer(query, context[0])
    with pytest.raises(ValueError, match=r"`num_heads` must divide the query width.*"
                       r"num_heads=3, query_dim=16"):
        CrossAttention(num_heads=3)(query, context)
    with pytest.raises(ValueError, match="needs a `context` or a `context_cache`"):
        layer(query, None)


# ----------------------------------------------------------------------------
# Compiled training, and the same numbers on every backend
# ----------------------------------------------------------------------------


def _train_tiny_model(jit_compile):
    keras.utils.set_random_seed(11)
    query_in, context_in = keras.Input((5, 16)), keras.Input((7, 24))
    x = CrossAttention(num_heads=4, key_dim=4, num_key_value_heads=2,
                       gated=True)(query_in, context_in)
    x = CrossAttention(num_heads=2, dropout=0.0)(x, context_in)
    model = keras.Model([query_in, context_in], keras.layers.Dense(3)(x))
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse",
                  jit_compile=jit_compile)
    query, context = random_inputs(batch=8)
    target = np.random.default_rng(5).standard_normal((8, 5, 3)).astype("float32")
    history = model.fit([query, context], target, batch_size=4, epochs=3,
                        shuffle=False, verbose=0)
    return np.array(history.history["loss"])


@pytest.mark.slow
def test_trains_with_jit_compile_like_eager():
    """XLA on TF and JAX, torch.compile on PyTorch: same losses as eager.

    On PyTorch this compiles for about a minute on the 2-core CPU machines
    (Dynamo traces Keras' layer machinery), which is why it is marked slow.
    """
    compiled = _train_tiny_model(jit_compile=True)
    eager = _train_tiny_model(jit_compile=False)
    assert compiled[-1] < compiled[0]  # it learns
    np.testing.assert_allclose(compiled, eager, rtol=1e-4)


def test_golden_outputs_from_tensorflow_saved_model():
    """A .keras file saved under TensorFlow gives the stored outputs here."""
    golden = np.load(os.path.join(GOLDEN_DIR, "cross_attention.npz"))
    model = keras.saving.load_model(os.path.join(GOLDEN_DIR, "cross_attention.keras"))
    out, scores = model([golden["query"], golden["context"], golden["mask"]])
    assert_close(out, golden["output"], atol=1e-5)
    assert_close(scores, golden["scores"], atol=1e-5)
    # And the stored outputs are the math, not only what TF happened to give.
    layer = model.get_layer("cross_attention")
    expected_out, expected_scores = numpy_cross_attention(
        layer, golden["query"], golden["context"], golden["mask"]
    )
    assert_close(golden["output"], expected_out, atol=1e-5)
    assert_close(golden["scores"], expected_scores, atol=1e-6)


def random_attention_mask(batch=2, q_len=5, k_len=7, seed=2):
    mask = np.random.default_rng(seed).random((batch, q_len, k_len)) > 0.5
    mask[:, 0] = False  # a row that sees nothing (text before any image)
    return mask


@pytest.mark.parametrize("path", ["fused", "explicit", "cached"])
def test_attention_mask_per_query_row(path):
    query, context = random_inputs()
    layer = built_layer(query, context, num_heads=4, key_dim=8)
    context_mask, attention_mask = random_mask(), random_attention_mask()
    expected, expected_probs = numpy_cross_attention(layer, query, context, context_mask,
                                                     attention_mask)
    kwargs = dict(context_mask=context_mask, attention_mask=attention_mask)
    if path == "fused":
        out = layer(query, context, **kwargs)
    elif path == "explicit":
        out, probs = layer(query, context, return_attention_scores=True, **kwargs)
        assert_close(probs, expected_probs, atol=1e-6)
    else:
        cache = layer.compute_context_cache(context)
        out = layer(query, None, context_cache=cache, **kwargs)
    assert_close(out, expected, atol=1e-5)
    assert np.all(to_numpy(out)[:, 0] == 0.0)  # exactly zero, bias included


def test_attention_mask_with_captions_sharing_a_context():
    """Three captions per image: each caption row keeps its own mask row."""
    query, context = random_inputs(batch=6)
    context = context[:2]
    layer = built_layer(query, context, num_heads=2, key_dim=8)
    attention_mask = random_attention_mask(batch=6)
    shared = layer(query, context, attention_mask=attention_mask)
    repeated = np.repeat(context, 3, axis=0)
    expected, _ = numpy_cross_attention(layer, query, repeated, None, attention_mask)
    assert_close(shared, expected, atol=1e-5)


def test_attention_mask_shape_is_checked():
    query, context = random_inputs()
    layer = built_layer(query, context, num_heads=2)
    with pytest.raises(ValueError, match="attention_mask.shape=\\(2, 5, 6\\)"):
        layer(query, context, attention_mask=np.ones((2, 5, 6), bool))


@pytest.mark.parametrize("path", ["fused", "explicit", "cache", "shared"])
def test_attention_bias_is_added_to_the_logits(path):
    query, context = random_inputs(batch=4)
    bias = np.random.default_rng(5).standard_normal((4, 4, 5, 7)).astype("float32") * 3
    mask = random_mask(batch=4)
    if path == "shared":  # two captions per image: each row keeps its own bias row
        layer = built_layer(query, context[:2], num_heads=4, key_dim=8)
        expected, _ = numpy_cross_attention(layer, query, np.repeat(context[:2], 2, axis=0),
                                            np.repeat(mask[:2], 2, axis=0), None, bias)
        out = layer(query, context[:2], context_mask=mask[:2], attention_bias=bias)
        assert_close(out, expected, atol=1e-5)
        return
    layer = built_layer(query, context, num_heads=4, key_dim=8, num_key_value_heads=2)
    expected, expected_probs = numpy_cross_attention(layer, query, context, mask, None, bias)
    if path == "fused":
        out = layer(query, context, context_mask=mask, attention_bias=bias)
    elif path == "explicit":
        out, probs = layer(query, context, context_mask=mask, attention_bias=bias,
                           return_attention_scores=True)
        assert_close(probs, expected_probs, atol=1e-6)
    else:
        out = layer(query, None, context_cache=layer.compute_context_cache(context),
                    context_mask=mask, attention_bias=bias)
    assert_close(out, expected, atol=1e-5)
    unbiased, _ = numpy_cross_attention(layer, query, context, mask)
    assert np.abs(to_numpy(out) - unbiased).max() > 1e-2  # the bias mattered
