"""PyTorch's compiled inference: `torch.export` of a stateless function, then Inductor.

`ExportedFunction` traces a Keras function once per input signature with
`torch.export` (non-strict: Keras' layer code runs once as Python, as under
`jax.jit`), with the weights as inputs, trims the graph (`drop_no_ops`) and
compiles it with Inductor. A loop in the function (`while_loop`) becomes one
`while_loop` operation of the graph. Keras' per-layer bookkeeping and
PyTorch's eager dispatch, which cost decoding most of its time, are gone.

The loop is the one place that needs PyTorch's private API, all of it named
here and checked on torch 2.13.0:

- `torch._higher_order_ops.while_loop.while_loop_op`: the loop operation.
  The public `torch.while_loop` traces its functions with Dynamo, which
  breaks on Keras' layer code; the operation traces them as `torch.export`
  traces the rest.
- `torch._higher_order_ops.utils.reenter_make_fx` and
  `torch.fx.experimental.proxy_tensor.{get_proxy_mode, has_proxy_slot,
  disable_proxy_modes_tracing}`: to trace the loop's functions ourselves and
  find the tensors they read from the enclosing trace (`_lift_captured`),
  which the operation takes only as explicit inputs (Dynamo's job in
  `torch.while_loop`).
"""

import warnings

import keras
import torch
from keras import ops
from torch._higher_order_ops.utils import reenter_make_fx
from torch._higher_order_ops.while_loop import while_loop_op
from torch.fx.experimental.proxy_tensor import disable_proxy_modes_tracing
from torch.fx.experimental.proxy_tensor import get_proxy_mode
from torch.fx.experimental.proxy_tensor import has_proxy_slot

# Per-call checks of every input's size and alignment: in a decoding loop, per step.
INDUCTOR_OPTIONS = {"size_asserts": False, "alignment_asserts": False}


class ExportedFunction:
    """`fn` traced by `torch.export` once per input signature, compiled, replayed.

    Args:
        fn: a function of tensors that calls Keras layers.
        variables: the variables `fn` reads; their current values are
            inputs of every call, so later weight updates are seen.
        compile: compile the traced graph with Inductor (`torch.compile`);
            False runs it uncompiled (no C++ compiler needed, no wait).

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
        args = tuple(ops.convert_to_tensor(a) for a in args)
        values = [v.value.detach() for v in self.variables]
        key = tuple((tuple(a.shape), a.dtype, a.device) for a in args)
        with torch.no_grad():
            if key in self.graphs:
                return self.graphs[key](values, *args)
            graph = self.export(values, args)
            if self.compile:
                compiled = torch.compile(graph, fullgraph=True, dynamic=False,
                                         options=INDUCTOR_OPTIONS)
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

    def export(self, values, args):
        """The ATen graph of `fn`, as a module of `(values, *args)`, trimmed."""
        fn, variables = self.fn, self.variables

        class Stateless(torch.nn.Module):
            def forward(self, values, *args):
                # The weights are inputs (as under `jax.jit`), not baked-in constants.
                with keras.StatelessScope(state_mapping=list(zip(variables, values))):
                    return fn(*args)

        module = torch.export.export(Stateless(), (values, *args), strict=False).module()
        drop_no_ops(module)
        return module


def drop_no_ops(module):
    """Removes the graph's metadata asserts and same-dtype casts (Keras casts every input).

    A third of the traced nodes: each costs a dispatch when the graph runs
    uncompiled and tracing time when Inductor compiles it. Edits `module`
    and its subgraphs (the loop's) in place.
    """
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


def is_tracing():
    """Whether `torch.export` is tracing this call (so a loop must be one operation)."""
    return torch.compiler.is_exporting() and get_proxy_mode() is not None


def while_loop(cond, body, loop_vars):
    """`ops.while_loop` as one `while_loop` operation of the graph being traced.

    `cond` and `body` may read any tensor of the enclosing function (the
    weights, an image's keys and values, a sampler's noise) as Python
    closures: each tensor they read is found and passed to the operation
    as an input, as Dynamo does for `torch.while_loop`. Call it only while
    `is_tracing()`.

    Args:
        cond: `cond(*loop_vars)`, a boolean scalar tensor.
        body: `body(*loop_vars)`, the next `loop_vars` (same structure and shapes).
        loop_vars: a tuple (or nested structure) of tensors.

    Returns:
        The final `loop_vars`.
    """
    loop_vars = keras.tree.map_structure(ops.convert_to_tensor, tuple(loop_vars))
    flat_vars = tuple(keras.tree.flatten(loop_vars))

    def flat_cond(*flat):
        return cond(*keras.tree.pack_sequence_as(loop_vars, list(flat)))

    def flat_body(*flat):
        outputs = keras.tree.flatten(tuple(body(*keras.tree.pack_sequence_as(loop_vars,
                                                                               list(flat)))))
        # The operation refuses an output that is one of its inputs (in
        # decoding: a few ints per row that a step leaves as they were).
        return tuple(torch.clone(o) if any(o is i for i in flat) else o for o in outputs)

    (cond_graph, body_graph), captured = _lift_captured((flat_cond, flat_body), flat_vars)
    flat = while_loop_op(cond_graph, body_graph, flat_vars, captured)
    return keras.tree.pack_sequence_as(loop_vars, list(flat))


def _lift_captured(fns, flat_vars):
    """`fns` traced to graphs of `(*flat_vars, *captured)`, and `captured`.

    Tracing a closure makes each tensor it reads from the enclosing trace a
    constant of its graph (a `get_attr`), which would bake today's value in;
    each such constant becomes a trailing input instead, shared by all `fns`.
    """
    with disable_proxy_modes_tracing():
        # As `while_loop_op` does: fresh copies, not marked constant, so that
        # nothing reads a loop variable's starting value as fixed.
        placeholders = []
        for tensor in flat_vars:
            copy = tensor.clone()
            if getattr(copy, "constant", None) is not None:
                copy.constant = None
            placeholders.append(copy)
    graphs = [reenter_make_fx(fn)(*placeholders) for fn in fns]
    tracer = get_proxy_mode().tracer
    captured = {}
    for graph in graphs:
        for node in graph.graph.nodes:
            value = getattr(graph, node.target) if node.op == "get_attr" else None
            if isinstance(value, torch.Tensor) and has_proxy_slot(value, tracer):
                captured.setdefault(id(value), value)
    captured = list(captured.values())
    for graph in graphs:
        last = [n for n in graph.graph.nodes if n.op == "placeholder"][-1]
        inputs = {}
        for i, tensor in enumerate(captured):
            with graph.graph.inserting_after(last):
                last = inputs[id(tensor)] = graph.graph.placeholder(f"captured_{i}")
        for node in list(graph.graph.nodes):
            if node.op == "get_attr" and id(getattr(graph, node.target, None)) in inputs:
                node.replace_all_uses_with(inputs[id(getattr(graph, node.target))])
                delattr(graph, node.target)
                graph.graph.erase_node(node)
        graph.graph.lint()
        graph.recompile()
    return graphs, tuple(captured)
