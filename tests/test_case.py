"""The shared checks every `vlm` layer test runs: one helper for all of them."""

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
