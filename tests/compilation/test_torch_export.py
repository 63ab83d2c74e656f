"""`vlm.compilation.torch_export`: the loop operation, its lifted inputs, the graph edit."""

import keras
import numpy as np
import pytest
from keras import ops

from tests.compilation.test_inference import decode_like
from tests.compilation.test_inference import reference

pytestmark = pytest.mark.skipif(keras.config.backend() != "torch",
                                reason="PyTorch's torch.export path")


def dense_and_input():
    dense = keras.layers.Dense(4)
    dense.build((None, 4))
    x = np.random.default_rng(0).normal(size=(3, 4)).astype("float32")
    return dense, x


def numpy_of(variables):
    return [ops.convert_to_numpy(v) for v in variables]


def call_targets(module):
    """The targets of every call in `module`'s graphs, subgraphs included."""
    import torch

    return [node.target for m in module.modules() if isinstance(m, torch.fx.GraphModule)
            for node in m.graph.nodes if node.op == "call_function"]


def test_the_loop_is_one_operation_whose_closure_tensors_are_inputs():
    import torch

    from vlm.compilation.torch_export import ExportedFunction

    dense, x = dense_and_input()
    function = ExportedFunction(lambda x: decode_like(dense, x, 5), dense.variables,
                                compile=False)
    np.testing.assert_allclose(ops.convert_to_numpy(function(x)),
                               reference(*numpy_of(dense.variables), x, 5), atol=1e-5)
    (graph,) = function.graphs.values()
    loops = [n for n in graph.graph.nodes if n.target is torch.ops.higher_order.while_loop]
    assert len(loops) == 1
    # The weights and the closure's tensor reach the loop as its inputs: new
    # weights and a new input change the output of the same graph.
    _, _, carried, lifted = loops[0].args
    assert len(carried) == 2 and len(lifted) == 3  # kernel, bias, tanh(x)
    body = getattr(graph, loops[0].args[1].target)
    assert not [n for n in body.graph.nodes if n.op == "get_attr"]
    kernel, bias = numpy_of(dense.variables)
    dense.kernel.assign(kernel * 2.0)
    np.testing.assert_allclose(ops.convert_to_numpy(function(-x)),
                               reference(kernel * 2.0, bias, -x, 5), atol=1e-5)
    assert len(function.graphs) == 1


def test_a_new_input_signature_traces_once_more():
    from vlm.compilation.torch_export import ExportedFunction

    dense, x = dense_and_input()
    function = ExportedFunction(lambda x: decode_like(dense, x, 2), dense.variables,
                                compile=False)
    for batch in (3, 3, 2, 3, 2):
        function(x[:batch])
    assert sorted(shape[0][0][0] for shape in function.graphs) == [2, 3]


def test_no_op_casts_and_metadata_asserts_are_dropped_and_the_result_is_unchanged():
    import torch

    from vlm.compilation.torch_export import ExportedFunction
    from vlm.compilation.torch_export import drop_no_ops

    dense, x = dense_and_input()

    def fn(x):  # Keras casts each layer's float32 input to float32
        return ops.cast(decode_like(dense, ops.cast(x, "float32"), 2), "float16")

    function = ExportedFunction(fn, dense.variables, compile=False)
    values = [v.value.detach() for v in dense.variables]
    kept = torch.export.export(_Stateless(fn, dense.variables), (values, torch.tensor(x)),
                               strict=False).module()
    trimmed = function.export(values, (torch.tensor(x),))
    aten = torch.ops.aten
    assert aten._assert_tensor_metadata.default in call_targets(kept)
    assert aten._assert_tensor_metadata.default not in call_targets(trimmed)
    casts = [t for t in call_targets(trimmed) if t in (aten.to.dtype, aten.to.dtype_layout)]
    assert len(casts) == 1  # float32 -> float16 stays
    np.testing.assert_array_equal(trimmed(values, torch.tensor(x)).numpy(),
                                  kept(values, torch.tensor(x)).numpy())
    drop_no_ops(kept)  # idempotent on a trimmed graph, edits in place
    assert call_targets(kept) == call_targets(trimmed)


def test_is_tracing_only_inside_an_export():
    import torch

    from vlm.compilation.torch_export import is_tracing

    seen = []

    class Probe(torch.nn.Module):
        def forward(self, x):
            seen.append(is_tracing())
            return x + 1

    torch.export.export(Probe(), (torch.zeros(2),), strict=False)
    assert seen == [True] and not is_tracing()


class _Stateless:
    """`fn` with its variables' values as inputs, untrimmed (what `export` trims)."""

    def __new__(cls, fn, variables):
        import torch

        class Module(torch.nn.Module):
            def forward(self, values, x):
                with keras.StatelessScope(state_mapping=list(zip(variables, values))):
                    return fn(x)

        return Module()
