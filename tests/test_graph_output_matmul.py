"""camrt.graph.output_matmul: a graph output written by Reshape(MatMul(Reshape(A, [P, K]), W), S)
is written by MatMul(Reshape(A, S[:-1] ++ [K]), W); hand-built graphs run by ONNX Runtime before and
after (the same numbers), and the graphs where the rewrite would change a number or a reader left
alone."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from camrt.graph import unflatten_output_matmuls

RNG = np.random.default_rng(0)
X_SHAPE = [2, 3, 4, 5]


def graph(shape: list[int], flat: list[int] = (-1, 5), m: int = 6, allowzero: int = 1, extra_reader: bool = False,
          output: bool = True) -> onnx.ModelProto:
    """y = Reshape(MatMul(Reshape(X, flat), W[5×m]), shape) (+ z = MatMul's output summed with
    `extra_reader`; y fed to an Identity when not `output`)."""
    nodes = [helper.make_node("Relu", ["X"], ["A"]),
             helper.make_node("Reshape", ["A", "flat"], ["A2"]),
             helper.make_node("MatMul", ["A2", "W"], ["P"]),
             helper.make_node("Reshape", ["P", "shape"], ["y" if output else "y0"], allowzero=allowzero)]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    if not output:
        nodes.append(helper.make_node("Identity", ["y0"], ["y"]))
    if extra_reader:
        nodes.append(helper.make_node("ReduceSum", ["P"], ["z"], keepdims=0))
        outputs.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, None))
    inits = [numpy_helper.from_array(RNG.normal(size=(5, m)).astype(np.float32), "W"),
             numpy_helper.from_array(np.array(flat, np.int64), "flat"),
             numpy_helper.from_array(np.array(shape, np.int64), "shape")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, X_SHAPE)], outputs,
                          initializer=inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


def run(model: onnx.ModelProto) -> list[np.ndarray]:
    x = np.random.default_rng(1).normal(size=X_SHAPE).astype(np.float32)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"X": x})


def writer(model: onnx.ModelProto, name: str = "y") -> str:
    return next(n.op_type for n in model.graph.node if name in n.output)


@pytest.mark.parametrize(("shape", "allowzero"), [([2, 3, 4, 6], 1), ([2, 3, 4, 6], 0), ([-1, 3, 4, 6], 1),
                                                 ([6, 4, 6], 1), ([24, 6], 0)], ids=str)
def test_the_output_is_written_by_the_matmul_and_the_numbers_stay(shape, allowzero) -> None:
    before = graph(shape, flat=[24, 5] if shape == [24, 6] else [-1, 5], allowzero=allowzero)
    after = unflatten_output_matmuls(before)
    assert writer(before) == "Reshape" and writer(after) == "MatMul"
    assert writer(before) == "Reshape"  # the argument is left as it was
    assert sum(n.op_type == "Reshape" for n in after.graph.node) == 1  # the old inner Reshape went
    assert {t.name for t in after.graph.initializer} == {"W", "y/unflattened_shape"}  # no shape left unread
    (a,), (b,) = run(before), run(after)
    assert a.shape == b.shape
    np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("case", ["last size is not M", "zero without allowzero", "MatMul read twice",
                                  "not a graph output", "inner shape not 2-D"])
def test_graphs_the_rewrite_would_change_are_left_alone(case) -> None:
    model = {
        "last size is not M": lambda: graph([2, 3, 16], m=4),  # the rows' values regrouped
        "zero without allowzero": lambda: graph([0, 6], allowzero=0),  # 0: the size of P's axis 0, not A's
        "MatMul read twice": lambda: graph([2, 3, 4, 6], extra_reader=True),
        "not a graph output": lambda: graph([2, 3, 4, 6], output=False),
        "inner shape not 2-D": lambda: graph([2, 3, 4, 6], flat=[2, 12, 5]),
    }[case]()
    after = unflatten_output_matmuls(model)
    assert [n.op_type for n in after.graph.node] == [n.op_type for n in model.graph.node]
    for a, b in zip(run(model), run(after), strict=True):
        np.testing.assert_array_equal(b, a)
