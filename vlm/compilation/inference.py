"""`compiled_inference` and `while_loop`: one function, compiled on each Keras backend.

Model and sampler code calls these two and stays `keras.ops` only; what a
backend does to compile is here (TensorFlow, JAX) or in its own module
(PyTorch: `vlm.compilation.torch_export`).
"""

import os

import keras
from keras import ops

TORCH_INFERENCE_MODES = ("compiled", "exported", "eager")


def compiled_inference(fn, variables):
    """Compiles `fn(*tensors)` for inference on the current Keras backend.

    - TensorFlow: `tf.function(jit_compile=True)` (XLA); variables are read
      live, so later weight updates are seen.
    - JAX: `jax.jit`, with the variables' values passed in through a
      `keras.StatelessScope` (so they are arguments, not baked-in constants,
      and later weight updates are seen).
    - PyTorch: the same stateless function traced by `torch.export` once per
      input signature and compiled by Inductor
      (`vlm.compilation.torch_export.ExportedFunction`).
      `VLM_TORCH_INFERENCE` chooses otherwise: "exported" runs the traced
      graph without Inductor (no C++ compiler needed, no compile wait),
      "eager" runs `fn` under `torch.no_grad()`.

    Args:
        fn: a function of tensors that calls Keras layers; a loop in it is
            `vlm.compilation.while_loop`.
        variables: the variables `fn` reads (for example `model.variables`).

    Returns:
        A function with the same arguments as `fn`.
    """
    backend = keras.config.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, jit_compile=True, reduce_retracing=True)
    if backend == "jax":
        import jax

        def stateless(values, *args):
            with keras.StatelessScope(state_mapping=list(zip(variables, values))):
                return fn(*args)

        jitted = jax.jit(stateless)
        return lambda *args: jitted([v.value for v in variables], *args)
    if backend == "torch":
        mode = torch_inference_mode()
        if mode != "eager":
            from vlm.compilation.torch_export import ExportedFunction

            return ExportedFunction(fn, variables, compile=mode == "compiled")
        import torch

        def no_grad(*args):
            with torch.no_grad():
                return fn(*args)

        return no_grad
    return fn


def torch_inference_mode():
    """`VLM_TORCH_INFERENCE`: how `compiled_inference` runs on PyTorch (default "compiled")."""
    mode = os.environ.get("VLM_TORCH_INFERENCE", "compiled")
    if mode not in TORCH_INFERENCE_MODES:
        raise ValueError(f"VLM_TORCH_INFERENCE must be one of {TORCH_INFERENCE_MODES}. "
                         f"Received: VLM_TORCH_INFERENCE={mode!r}")
    return mode


def while_loop(cond, body, loop_vars):
    """`ops.while_loop(cond, body, loop_vars)` that `compiled_inference` can trace anywhere.

    `ops.while_loop` on PyTorch is a Python loop, which `torch.export` cannot
    trace; while it traces, this is one loop operation of the graph
    (`vlm.compilation.torch_export.while_loop`). `cond` and `body` may read
    tensors from their closure, as with `ops.while_loop`.

    Args:
        cond: `cond(*loop_vars)`, a boolean scalar tensor.
        body: `body(*loop_vars)`, the next `loop_vars` (same structure and shapes).
        loop_vars: a tuple (or nested structure) of tensors.

    Returns:
        The final `loop_vars`.
    """
    if keras.config.backend() == "torch":
        from vlm.compilation import torch_export

        if torch_export.is_tracing():
            return torch_export.while_loop(cond, body, loop_vars)
    return ops.while_loop(cond, body, tuple(loop_vars))
