"""The shared checks every `vlm` layer and backbone test runs: one helper for each kind."""

import inspect
import os
import tempfile

import keras
import numpy as np

BASE_CONFIG_KEYS = {"name", "trainable", "dtype"}


def backend():
    return keras.config.backend()


def to_numpy(x):
    return keras.ops.convert_to_numpy(x)


def assert_close(actual, expected, atol=1e-5, rtol=0.0, msg=""):
    np.testing.assert_allclose(
        to_numpy(actual), to_numpy(expected), atol=atol, rtol=rtol, err_msg=msg
    )


def jit_compile_for_backend():
    """XLA on TF and JAX. `torch.compile` takes about a minute per model on
    this CPU, so it is exercised once, in the dedicated slow test of each layer
    that asks for it, and the shared helper runs torch eagerly."""
    return backend() != "torch"


def run_layer_test(
    layer_cls,
    init_kwargs,
    input_shapes,
    expected_output_shape,
    call_kwargs=None,
    seed=0,
    has_weights=True,
    fit=True,
):
    """Runs the checks every layer must pass, asserting on numbers.

    Args:
        layer_cls: the layer class.
        init_kwargs: constructor arguments.
        input_shapes: dict of call argument name -> full shape (batch included),
            in call order. The build arguments are these names + "_shape".
        expected_output_shape: full output shape.
        call_kwargs: extra keyword arguments for `call`.
        has_weights: False for a layer with no weights (the fit step is
            then skipped: there is nothing to train).
        fit: False skips the fit step, for a layer whose output batch is not
            its input batch (its training is tested in a model).
    """
    call_kwargs = call_kwargs or {}
    rng = np.random.default_rng(seed)
    inputs = {
        name: rng.standard_normal(shape).astype("float32")
        for name, shape in input_shapes.items()
    }

    # get_config is exactly the constructor's arguments, and round-trips.
    layer = layer_cls(**init_kwargs)
    config = layer.get_config()
    init_args = set(inspect.signature(layer_cls.__init__).parameters)
    init_args -= {"self", "kwargs"}
    assert set(config) - BASE_CONFIG_KEYS == init_args, (
        f"get_config keys {sorted(set(config) - BASE_CONFIG_KEYS)} differ from "
        f"the constructor's {sorted(init_args)}"
    )
    for key, value in init_kwargs.items():
        if not isinstance(value, (str, dict)):
            assert config[key] == value, (key, config[key], value)
    revived = layer_cls.from_config(config)
    assert revived.get_config() == config

    # Build from shapes: build(<arg>_shape, ...) named after call(<arg>, ...).
    layer = layer_cls(**init_kwargs)
    layer.build(**{f"{k}_shape": v for k, v in input_shapes.items()})
    assert layer.built
    assert bool(layer.weights) == has_weights
    assert tuple(layer.compute_output_shape(*input_shapes.values())) == tuple(
        expected_output_shape
    )

    # Symbolic call with unknown batch size, then eager call.
    symbolic = [keras.Input(shape[1:]) for shape in input_shapes.values()]
    layer = layer_cls(**init_kwargs)
    symbolic_out = layer(*symbolic, **call_kwargs)
    assert tuple(symbolic_out.shape) == (None,) + tuple(expected_output_shape[1:])
    eager_out = layer(*inputs.values(), **call_kwargs)
    assert tuple(eager_out.shape) == tuple(expected_output_shape)
    assert np.all(np.isfinite(to_numpy(eager_out)))

    model = keras.Model(symbolic, symbolic_out)
    if has_weights and fit:
        _fit_two_steps(model, inputs, expected_output_shape, rng)

    # A .keras round trip gives identical outputs.
    expected = to_numpy(model(list(inputs.values())))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.keras")
        model.save(path)
        loaded = keras.saving.load_model(path)
    assert_close(loaded(list(inputs.values())), expected, atol=0.0)
    return model


def _fit_two_steps(model, inputs, expected_output_shape, rng):
    """A model around the layer trains (compiled where the backend allows)."""
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss="mse",
        jit_compile=jit_compile_for_backend(),
    )
    before = [to_numpy(w).copy() for w in model.trainable_weights]
    target = rng.standard_normal(expected_output_shape).astype("float32")
    history = model.fit(
        list(inputs.values()), target, epochs=2, batch_size=expected_output_shape[0],
        verbose=0,
    )
    assert all(np.isfinite(history.history["loss"]))
    changed = [
        not np.array_equal(b, to_numpy(w))
        for b, w in zip(before, model.trainable_weights)
    ]
    assert any(changed), "no trainable weight moved after two fit steps"


def run_backbone_test(backbone_cls, init_kwargs, input_data, expected_output_shape, atol=1e-5):
    """Runs the checks every backbone must pass, asserting on numbers.

    - `get_config` holds exactly the constructor's arguments and round-trips;
    - a call gives finite logits of `expected_output_shape`;
    - the decoding interface agrees with the call: `encode`, the decoder's
      context caches, `cross_attention_mask` and one cached pass over all the
      tokens give the call's logits (within `atol`);
    - a `.keras` round trip gives identical logits.

    Args:
        backbone_cls: the backbone class.
        init_kwargs: constructor arguments (their parts are used in place).
        input_data: `{"images": ..., "tokens": ...}` NumPy arrays.
        expected_output_shape: `(batch, tokens, vocabulary_size)`.

    Returns:
        The backbone built from `init_kwargs`.
    """
    backbone = backbone_cls(**init_kwargs)
    config = backbone.get_config()
    init_args = set(inspect.signature(backbone_cls.__init__).parameters) - {"self", "kwargs"}
    assert set(config) - BASE_CONFIG_KEYS == init_args, (
        f"get_config keys {sorted(set(config) - BASE_CONFIG_KEYS)} differ from "
        f"the constructor's {sorted(init_args)}")
    for key, value in init_kwargs.items():
        if isinstance(value, (int, float, str, tuple, list)) or value is None:
            assert config[key] == value, (key, config[key], value)
    revived = backbone_cls.from_config(config)
    assert revived.get_config() == config

    logits = backbone(input_data)
    assert tuple(logits.shape) == tuple(expected_output_shape)
    assert keras.backend.standardize_dtype(logits.dtype) == "float32"
    assert np.all(np.isfinite(to_numpy(logits)))

    tokens = keras.ops.convert_to_tensor(input_data["tokens"], "int32")
    batch, length = input_data["tokens"].shape
    decoder = backbone.decoder
    context_caches = decoder.compute_context_caches(backbone.encode(
        keras.ops.convert_to_tensor(input_data["images"], "float32")))
    mask, seen = backbone.cross_attention_mask(tokens, keras.ops.zeros((batch,), "int32"))
    cached, _ = decoder.call_with_cache(tokens, context_caches, decoder.empty_caches(batch, length),
                                        0, mask)
    assert_close(cached, logits, atol=atol)
    assert tuple(seen.shape) == (batch,)

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "backbone.keras")
        backbone.save(path)
        loaded = keras.saving.load_model(path)
    assert type(loaded) is backbone_cls
    assert_close(loaded(input_data), logits, atol=0.0)
    return backbone
