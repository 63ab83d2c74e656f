"""Small backend branches for training: what `train.jit_compile="auto"` means,
summing over `tf.distribute` replicas, the global random state a resumed run
restores, and whether XLA can train under `mixed_float16` here.

Everything in `vlm/layers`, `vlm/models` and `vlm/samplers`
is `keras.ops` only. Three packages name a backend because their whole job is
backend-specific, and keep their branches to it: `vlm/compilation` compiles
inference functions (XLA; `torch.export` and Inductor on PyTorch),
`vlm/distribution.py` picks the engine that spreads training over devices
(the Keras distribution API on JAX, `tf.distribute` on TensorFlow, none on
PyTorch), and `vlm/export` writes a TensorFlow SavedModel, in a TensorFlow
subprocess when this process runs another backend.
"""

import base64

import keras


def resolve_jit_compile(value):
    """The `jit_compile` that `Model.compile` gets for a `train.jit_compile` value.

    `"auto"` is XLA on TensorFlow and JAX and eager on PyTorch, where
    `torch.compile` of a Keras model takes minutes on a CPU before the first
    step and recompiles on Keras' layer hooks. `True` on PyTorch still asks
    for `torch.compile`; `False` is eager everywhere.

    Args:
        value: True, False or "auto".

    Returns:
        bool.
    """
    if isinstance(value, bool):
        return value
    if value != "auto":
        raise ValueError(
            f"`jit_compile` must be True, False or 'auto'. Received: jit_compile={value!r}"
        )
    return keras.config.backend() in ("tensorflow", "jax")


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


def global_rng_state():
    """The backend's global random state that training draws from, or None.

    Keras' dropout on PyTorch, for a layer given no seed, draws from torch's
    global generators (Keras' comment: "torch doesn't support seeding
    dropout"); TensorFlow and JAX draw from the layers' `SeedGenerator`
    variables, which `model.variables` holds. A backup keeps this state so a
    resumed run drops the same units an uninterrupted one would.

    Returns:
        On PyTorch, a JSON-able dict of base64 generator states (CPU, and
        each CUDA device); elsewhere None.
    """
    if keras.config.backend() != "torch":
        return None
    import torch

    def encode(state):
        return base64.b64encode(state.cpu().numpy().tobytes()).decode("ascii")

    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return {"cpu": encode(torch.get_rng_state()), "cuda": [encode(s) for s in cuda]}


def set_global_rng_state(state):
    """Restores what `global_rng_state()` returned (None: nothing to restore)."""
    if state is None or keras.config.backend() != "torch":
        return
    import numpy as np
    import torch

    def decode(text):
        return torch.from_numpy(np.frombuffer(base64.b64decode(text), np.uint8).copy())

    torch.set_rng_state(decode(state["cpu"]))
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([decode(s) for s in state["cuda"]])


def xla_has_float16_attention():
    """Whether `jit_compile` can train under `mixed_float16` on this backend.

    False on JAX's CPU backend: under `jax.jit`, Keras' attention in the
    keras-hub ViT asks for a float16 x float16 -> float32 matmul, which
    XLA:CPU refuses ("The precision 'F16_F16_F32' is not supported by
    dot_general on CPU"). Eager JAX, `mixed_bfloat16` and GPUs are fine.
    """
    if keras.config.backend() != "jax":
        return True
    import jax

    return jax.default_backend() != "cpu"
