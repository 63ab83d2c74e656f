"""The shared checks every `vlm` layer, backbone, task and preprocessor test runs."""

import inspect
import json
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


def _config_keys_match_constructor(obj):
    config = obj.get_config()
    init_args = set(inspect.signature(type(obj).__init__).parameters) - {"self", "kwargs"}
    assert set(config) - BASE_CONFIG_KEYS == init_args, (
        f"get_config keys {sorted(set(config) - BASE_CONFIG_KEYS)} differ from "
        f"the constructor's {sorted(init_args)}")
    return config


def _as_json(config):
    """A config as its `.keras` file holds it (tuples become lists)."""
    return json.loads(json.dumps(config))


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
    config = _config_keys_match_constructor(layer)
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
    config = _config_keys_match_constructor(backbone)
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


def run_preprocessor_test(preprocessor, images, texts, expected_pixels_shape):
    """Runs the checks every preprocessor must pass, asserting on numbers.

    - `get_config` holds exactly the constructor's arguments and round-trips
      (the vocabulary is an asset of the `.keras` file, checked with the task);
    - a call gives float32 pixels of `expected_pixels_shape` in [0, 255];
    - `tokenize` gives int32 `(tokens, labels)`, the labels the tokens shifted
      by one wherever they carry a loss, and `detokenize(labels)` the texts;
    - `tokenize` inside a `tf.data` map (the training batches' path) gives the
      eager tokens.

    Args:
        preprocessor: the preprocessor, with its tokenizer.
        images: what a user passes to its call.
        texts: lowercase captions in the tokenizer's vocabulary that fit in
            the preprocessor's sequence (they are compared after a round trip).
        expected_pixels_shape: the shape of the pixels the call returns.
    """
    import tensorflow as tf

    config = _config_keys_match_constructor(preprocessor)
    revived = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(preprocessor))
    assert type(revived) is type(preprocessor) and revived.get_config() == config

    output = preprocessor(images)
    pixels = output[0] if isinstance(output, tuple) else output
    assert keras.backend.standardize_dtype(pixels.dtype) == "float32"
    pixels = to_numpy(pixels)
    assert pixels.shape == tuple(expected_pixels_shape)
    assert np.all(np.isfinite(pixels)) and pixels.min() >= 0.0 and pixels.max() <= 255.0

    tokens, labels = (np.asarray(x) for x in preprocessor.tokenize(texts))
    assert tokens.dtype == labels.dtype == np.int32
    assert tokens.shape == labels.shape == (len(texts), preprocessor.sequence_length)
    learned = labels[:, :-1] != 0
    np.testing.assert_array_equal(tokens[:, 1:][learned], labels[:, :-1][learned])
    assert learned.any()
    assert preprocessor.detokenize(labels) == list(texts)

    mapped = tf.data.Dataset.from_tensor_slices(list(texts)).batch(len(texts)).map(
        preprocessor.tokenize)
    graph_tokens, graph_labels = next(iter(mapped))
    np.testing.assert_array_equal(graph_tokens.numpy(), tokens)
    np.testing.assert_array_equal(graph_labels.numpy(), labels)


def _weights_moved(before, weights):
    return [not np.array_equal(b, to_numpy(w)) for b, w in zip(before, weights)]


def run_task_test(task, input_data, labels, images, generate_kwargs=None, jit_compile=None):
    """Runs the checks every task must pass, asserting on numbers.

    - a call gives finite float32 logits `(batch, tokens, vocabulary_size)`;
    - compiled with its defaults (the masked caption loss and accuracy), one
      `fit` epoch gives a finite loss and moves trainable weights, and no
      frozen one;
    - `generate` on `images` (through the preprocessor) gives one string per
      example, the same twice (greedy).

    Args:
        task: the task, with its preprocessor.
        input_data: `{"images": ..., "tokens": ...}` NumPy arrays.
        labels: the next-token labels of `input_data["tokens"]`.
        images: what a user passes to `generate`.
        generate_kwargs: more `generate` arguments (`prompts`, `max_length`).
        jit_compile: for `compile`; default XLA on TF and JAX.
    """
    assert task.preprocessor is not None and task.tokenizer is task.preprocessor.tokenizer
    batch, length = input_data["tokens"].shape
    logits = task(input_data)
    assert tuple(logits.shape) == (batch, length, task.tokenizer.vocabulary_size())
    assert keras.backend.standardize_dtype(logits.dtype) == "float32"
    assert np.all(np.isfinite(to_numpy(logits)))

    task.compile(optimizer=keras.optimizers.AdamW(1e-3),
                 jit_compile=jit_compile_for_backend() if jit_compile is None else jit_compile)
    trainable = [to_numpy(w).copy() for w in task.trainable_weights]
    frozen = [to_numpy(w).copy() for w in task.non_trainable_weights]
    history = task.fit(input_data, labels, batch_size=batch, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert 0.0 <= history.history["token_accuracy"][0] <= 1.0
    assert any(_weights_moved(trainable, task.trainable_weights))
    assert not any(_weights_moved(frozen, task.non_trainable_weights))

    generate_kwargs = dict(generate_kwargs or {})
    generate_kwargs.setdefault("max_length", 4)
    texts = task.generate(images, **generate_kwargs)
    assert isinstance(texts, list) and len(texts) == len(images)
    assert all(isinstance(text, str) for text in texts)
    assert task.generate(images, **generate_kwargs) == texts
    return task


def run_model_saving_test(task, input_data, labels, texts, path):
    """A `.keras` round trip gives the same model: config, logits, vocabulary, training.

    The loaded task is of the same class with the same config, gives the
    same logits, detokenizes alike (its vocabulary is an asset of the file),
    has the same weights trainable and frozen, and one SGD step from the
    same batch moves both to the same weights. (Compiled decoding of loaded
    files is what the shipped models' tests run.)

    Args:
        task: the (built) task to save.
        input_data, labels: as `run_task_test`.
        texts: captions the task's preprocessor tokenizes whole.
        path: where to write the `.keras` file.

    Returns:
        The loaded task.
    """
    task.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded) is type(task)
    assert _as_json(loaded.get_config()) == _as_json(task.get_config())
    assert_close(loaded(input_data), task(input_data), atol=1e-6)
    # The same logits decode alike; what else `generate` needs is the vocabulary (an asset).
    ids = np.asarray(task.preprocessor.tokenize(texts)[1])
    assert loaded.preprocessor.detokenize(ids) == task.preprocessor.detokenize(ids) == texts
    assert [w.path for w in loaded.trainable_weights] == [w.path for w in task.trainable_weights]
    assert [w.path for w in loaded.non_trainable_weights] == [
        w.path for w in task.non_trainable_weights]

    before = [to_numpy(w).copy() for w in task.trainable_weights]
    for model in (task, loaded):  # a step compiled alike, from the same weights
        model.compile(optimizer=keras.optimizers.SGD(0.5), jit_compile=False)
        model.train_on_batch(input_data, labels)
    assert max(np.abs(b - to_numpy(w)).max() for b, w in zip(before, task.trainable_weights)) > 1e-4
    for saved, reloaded in zip(task.weights, loaded.weights):
        assert_close(reloaded, saved, atol=1e-6, msg=saved.path)
    return loaded
