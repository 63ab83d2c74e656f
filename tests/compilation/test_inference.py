"""`vlm.compilation`: a compiled function with a loop, on the backend this process runs."""

import keras
import numpy as np
import pytest
from keras import ops

from vlm.compilation import compiled_inference
from vlm.compilation import torch_inference_mode
from vlm.compilation import while_loop


def decode_like(dense, x, steps):
    """A loop whose body reads a layer's weights and a tensor from its closure."""
    context = ops.tanh(x)  # computed in the compiled function: not an input of the loop

    def body(index, state):
        return index + 1, ops.tanh(dense(state) + context)

    start = ops.convert_to_tensor(0, "int32")
    _, state = while_loop(lambda index, state: index < steps, body, (start, ops.zeros_like(x)))
    return state


def reference(kernel, bias, x, steps):
    state = np.zeros_like(x)
    for _ in range(steps):
        state = np.tanh(state @ kernel + bias + np.tanh(x))
    return state


def test_a_compiled_loop_reads_its_closure_and_the_current_weights():
    dense = keras.layers.Dense(4)
    dense.build((None, 4))
    x = np.random.default_rng(0).normal(size=(3, 4)).astype("float32")
    run = compiled_inference(lambda x: decode_like(dense, x, 5), dense.variables)
    kernel, bias = (np.asarray(ops.convert_to_numpy(v)) for v in dense.variables)
    np.testing.assert_allclose(ops.convert_to_numpy(run(x)), reference(kernel, bias, x, 5),
                               atol=1e-5)
    dense.kernel.assign(kernel * 2.0)
    np.testing.assert_allclose(ops.convert_to_numpy(run(x)),
                               reference(kernel * 2.0, bias, x, 5), atol=1e-5)


def test_an_unknown_torch_inference_mode_names_the_value(monkeypatch):
    monkeypatch.setenv("VLM_TORCH_INFERENCE", "jit")
    with pytest.raises(ValueError, match=r"VLM_TORCH_INFERENCE must be one of \('compiled', "
                                         r"'exported', 'eager'\). Received: "
                                         r"VLM_TORCH_INFERENCE='jit'"):
        torch_inference_mode()
