"""The one place with backend branches: compiling an inference function, and
summing over `tf.distribute` replicas.

Everything else in `vlm/layers`, `vlm/models` and `vlm/generation` is
`keras.ops` only.
"""

import keras


def compiled_inference(fn, variables):
    """Compiles `fn(*tensors)` for inference on the current Keras backend.

    - TensorFlow: `tf.function(jit_compile=True)` (XLA); variables are read
      live, so later weight updates are seen.
    - JAX: `jax.jit`, with the variables' values passed in through a
      `keras.StatelessScope` (so they are arguments, not baked-in constants,
      and later weight updates are seen).
    - PyTorch: eager under `torch.no_grad()`. `torch.compile` of Keras code
      takes about a minute per shape on these CPUs and retraces on Keras'
      layer hooks, so decoding does not use it.

    Args:
        fn: a function of tensors that calls Keras layers.
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
        import torch

        def no_grad(*args):
            with torch.no_grad():
                return fn(*args)

        return no_grad
    return fn


def replica_sum(x):
    """Sums `x` over the replicas of a `tf.distribute` strategy.

    Under `tf.distribute` (TensorFlow, `vlm.distribution`) each replica runs
    `fit`'s step on its slice of the batch; this is a sum over the whole
    global batch. On JAX a distributed step is one program over the global
    batch and on PyTorch there is one device, so `x` is returned as is.
    """
    if keras.config.backend() == "tensorflow":
        import tensorflow as tf

        context = tf.distribute.get_replica_context()
        if context is not None and context.num_replicas_in_sync > 1:
            return context.all_reduce(tf.distribute.ReduceOp.SUM, x)
    return x
