"""The one place with backend branches: compiling an inference function
(and a loop inside one), what `train.jit_compile="auto"` means, summing over
`tf.distribute` replicas, and the global random state a resumed run restores.

Everything else in `vlm/layers`, `vlm/models`, `vlm/samplers` and
`vlm/generation` is `keras.ops` only. Two modules name a backend because
their whole job is backend-specific, and keep their branches to it:
`vlm/distribution.py` picks the engine that spreads training over devices
(the Keras distribution API on JAX, `tf.distribute` on TensorFlow, none on
PyTorch), and `vlm/export` writes a TensorFlow SavedModel, in a TensorFlow
subprocess when this process runs another backend.
"""

import base64
import os
import warnings

import keras
from keras import ops


def compiled_inference(fn, variables):
    """Compiles `fn(*tensors)` for inference on the current Keras backend.

    - TensorFlow: `tf.function(jit_compile=True)` (XLA); variables are read
      live, so later weight updates are seen.
    - JAX: `jax.jit`, with the variables' values passed in through a
      `keras.StatelessScope` (so they are arguments, not baked-in constants,
      and later weight updates are seen).
    - PyTorch: the same stateless function traced by `torch.export` once per
      input signature (a graph of ATen ops, with a `while_loop` as one loop
      operation) and compiled by Inductor (`torch.compile`). Keras' per-layer
      bookkeeping and PyTorch's eager dispatch, which cost decoding most of
      its time, are then gone. `VLM_TORCH_INFERENCE` chooses otherwise:
      "exported" runs the traced graph without Inductor (no C++ compiler
      needed, no compile wait), "eager" runs `fn` under `torch.no_grad()`.

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

        jitted = jax.jit(lambda values, *args: _with_values(fn, variables, values, args))
        return lambda *args: jitted([v.value for v in variables], *args)
    if backend == "torch":
        mode = torch_inference_mode()
        if mode != "eager":
            return _ExportedFunction(fn, variables, compile=mode == "compiled")
        import torch

        def no_grad(*args):
            with torch.no_grad():
                return fn(*args)

        return no_grad
    return fn


def _with_values(fn, variables, values, args):
    """`fn(*args)` reading `values` for `variables` (a `StatelessScope`): a pure function."""
    with keras.StatelessScope(state_mapping=list(zip(variables, values))):
        return fn(*args)


TORCH_INFERENCE_MODES = ("compiled", "exported", "eager")


def torch_inference_mode():
    """`VLM_TORCH_INFERENCE`: how `compiled_inference` runs on PyTorch (default "compiled")."""
    mode = os.environ.get("VLM_TORCH_INFERENCE", "compiled")
    if mode not in TORCH_INFERENCE_MODES:
        raise ValueError(f"VLM_TORCH_INFERENCE must be one of {TORCH_INFERENCE_MODES}. "
                         f"Received: VLM_TORCH_INFERENCE={mode!r}")
    return mode


# Per-call checks of every input's size and alignment: in a decoding loop, per step.
_INDUCTOR_OPTIONS = {"size_asserts": False, "alignment_asserts": False}


class _ExportedFunction:
    """`fn` traced by `torch.export` once per input signature, compiled, replayed.

    Attributes:
        graphs: `{signature: callable}`, one per (shape, dtype, device) of
            the arguments: the compiled graphs (`len(graphs)` traces so far).
    """

    def __init__(self, fn, variables, compile=True):
        self.fn = fn
        self.variables = list(variables)
        self.compile = compile
        self.graphs = {}

    def __call__(self, *args):
        import torch

        args = tuple(ops.convert_to_tensor(a) for a in args)
        values = [v.value.detach() for v in self.variables]
        key = tuple((tuple(a.shape), a.dtype, a.device) for a in args)
        with torch.no_grad():
            if key in self.graphs:
                return self.graphs[key](values, *args)
            graph = self._export(values, args)
            if self.compile:
                compiled = torch.compile(graph, fullgraph=True, dynamic=False,
                                         options=_INDUCTOR_OPTIONS)
                try:
                    outputs = compiled(values, *args)
                    self.graphs[key] = compiled
                    return outputs
                except Exception as error:  # no C++ compiler, an Inductor gap
                    warnings.warn(
                        f"torch.compile could not compile decoding ({type(error).__name__}: "
                        f"{str(error)[:300]}); it runs the exported graph uncompiled. "
                        "Set VLM_TORCH_INFERENCE=exported to skip the attempt.", stacklevel=2)
            self.graphs[key] = graph
            return graph(values, *args)

    def _export(self, values, args):
        """The ATen graph of `fn`, as a module of `(values, *args)`."""
        import torch

        fn, variables = self.fn, self.variables

        class Stateless(torch.nn.Module):
            def forward(self, values, *args):
                global _torch_trace
                _torch_trace = (variables, values)
                try:
                    return _with_values(fn, variables, values, args)
                finally:
                    _torch_trace = None

        module = torch.export.export(Stateless(), (values, *args), strict=False).module()
        _drop_no_ops(module)
        return module


def _drop_no_ops(module):
    """Removes the graph's metadata asserts and same-dtype casts (Keras casts every input).

    A third of the traced nodes: each costs a dispatch when the graph runs
    uncompiled and tracing time when Inductor compiles it.
    """
    import torch

    aten = torch.ops.aten
    for graph_module in module.modules():
        if not isinstance(graph_module, torch.fx.GraphModule):
            continue
        graph = graph_module.graph
        for node in list(graph.nodes):
            if node.op != "call_function":
                continue
            if node.target is aten._assert_tensor_metadata.default:
                graph.erase_node(node)
            elif node.target in (aten.to.dtype_layout, aten.to.dtype):
                out, source = node.meta.get("val"), node.args[0].meta.get("val")
                if (isinstance(out, torch.Tensor) and isinstance(source, torch.Tensor)
                        and (out.dtype, out.device) == (source.dtype, source.device)):
                    node.replace_all_uses_with(node.args[0])
                    graph.erase_node(node)
        graph.lint()
        graph_module.recompile()


# While `_ExportedFunction` traces on PyTorch: the variables and their traced values.
_torch_trace = None


def while_loop(cond, body, loop_vars, constants=()):
    """`ops.while_loop` over `loop_vars`, with `constants` passed to both functions.

    `cond(*loop_vars, *constants)` and `body(*loop_vars, *constants)` (which
    returns new `loop_vars`). `constants` are the tensors the loop reads but
    never changes (an image's keys and values, a sampler's noise): given
    here rather than captured in a closure, they reach the loop as inputs
    when `torch.export` traces it (`compiled_inference` on PyTorch), which
    would otherwise bake them in as constants. Elsewhere this is
    `ops.while_loop`.

    Args:
        cond: returns a boolean scalar tensor.
        body: returns the next `loop_vars`, the same structure and shapes.
        loop_vars: a tuple (or nested structure) of tensors.
        constants: a tuple of tensors (or nested structures of them).

    Returns:
        The final `loop_vars`.
    """
    if keras.config.backend() == "torch" and _torch_trace is not None:
        return _torch_while_loop(cond, body, tuple(loop_vars), tuple(constants))
    return ops.while_loop(lambda *v: cond(*v, *constants), lambda *v: body(*v, *constants),
                          tuple(loop_vars))


def _torch_while_loop(cond, body, loop_vars, constants):
    """One `while_loop` operation of the traced graph (`torch.while_loop`'s own).

    `torch.while_loop` traces its functions with Dynamo, which breaks on
    Keras' layer code; its operation traces them the way `torch.export`
    traces the rest. It takes flat tuples; what the loop reads from outside
    (the constants and the variables' values) must be among its inputs; and
    a body's output may not be one of its inputs (copied here: in decoding,
    a few ints per row).
    """
    import torch
    from torch._higher_order_ops.while_loop import while_loop_op

    variables, values = _torch_trace
    flat_vars, flat_constants = keras.tree.flatten(loop_vars), keras.tree.flatten(constants)
    count, fixed_count = len(flat_vars), len(flat_constants)

    def traced(fn):
        def flat_fn(*flat):
            loop = keras.tree.pack_sequence_as(loop_vars, list(flat[:count]))
            fixed = keras.tree.pack_sequence_as(constants, list(flat[count:count + fixed_count]))
            return _with_values(fn, variables, flat[count + fixed_count:], (flat, *loop, *fixed))
        return flat_fn

    def flat_body(flat, *args):
        outputs = keras.tree.flatten(tuple(body(*args)))
        return tuple(torch.clone(o) if any(o is i for i in flat) else o for o in outputs)

    flat = while_loop_op(traced(lambda flat, *args: cond(*args)), traced(flat_body),
                         tuple(flat_vars), tuple(flat_constants) + tuple(values))
    return keras.tree.pack_sequence_as(loop_vars, list(flat))


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
