"""camrt.graph.broadcast_weights: MatMul(X, Expand(W)) → MatMul(X, W), and the transposed read of
the backward pass, on hand-built graphs run by ONNX Runtime before and after (the same numbers),
and the cases where the rewrite would change a shape left alone."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from camrt.graph import unexpand_matmul_weights

RNG = np.random.default_rng(0)


def graph(w: np.ndarray, x_shape: list, expand_to: list, transpose: bool = False, extra_reader: bool = False
          ) -> onnx.ModelProto:
    """y = X @ Expand(W, expand_to) (and z = G @ Transpose(Expand(W)) with `transpose`)."""
    nodes = [helper.make_node("Expand", ["W", "shape"], ["We"]), helper.make_node("MatMul", ["X", "We"], ["y"])]
    inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, x_shape)]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    if transpose:
        rank = len(expand_to)
        perm = [*range(rank - 2), rank - 1, rank - 2]
        nodes += [helper.make_node("Transpose", ["We"], ["Wt"], perm=perm),
                  helper.make_node("MatMul", ["G", "Wt"], ["z"])]
        inputs.append(helper.make_tensor_value_info("G", TensorProto.FLOAT, [*x_shape[:-1], w.shape[1]]))
        outputs.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, None))
    if extra_reader:
        nodes.append(helper.make_node("ReduceSum", ["We"], ["s"], keepdims=0))
        outputs.append(helper.make_tensor_value_info("s", TensorProto.FLOAT, None))
    inits = [numpy_helper.from_array(w, "W"), numpy_helper.from_array(np.array(expand_to, np.int64), "shape")]
    g = helper.make_graph(nodes, "g", inputs, outputs, initializer=inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


def run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, feeds)


def expands(model: onnx.ModelProto) -> int:
    return sum(n.op_type == "Expand" for n in model.graph.node)


@pytest.mark.parametrize("transpose", [False, True])
def test_the_copies_go_and_the_numbers_stay(transpose) -> None:
    w = RNG.normal(size=(6, 5)).astype(np.float32)
    x = RNG.normal(size=(4, 3, 6)).astype(np.float32)
    feeds = {"X": x} | ({"G": RNG.normal(size=(4, 3, 5)).astype(np.float32)} if transpose else {})
    before = graph(w, [4, 3, 6], [4, 6, 5], transpose)
    after = unexpand_matmul_weights(before)
    assert expands(before) == 1 and expands(after) == 0
    assert expands(graph(w, [4, 3, 6], [4, 6, 5], transpose)) == 1  # the argument is left as it was
    for a, b in zip(run(before, feeds), run(after, feeds), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(("w_shape", "x_shape", "expand_to", "extra"), [
    ((6, 1), [4, 3, 6], [4, 6, 1], False),  # a size-1 axis: Expand may broadcast it to another size
    ((6, 5), [3, 6], [4, 6, 5], False),  # X of lower rank: MatMul(X, W) would be 3×5, not 4×3×5
    ((6, 5), [4, 3, 6], [4, 6, 5], True),  # another reader needs the copies
])
def test_left_alone_where_it_could_change_a_shape(w_shape, x_shape, expand_to, extra) -> None:
    w = RNG.normal(size=w_shape).astype(np.float32)
    before = graph(w, x_shape, expand_to, extra_reader=extra)
    after = unexpand_matmul_weights(before)
    assert expands(after) == 1
    feeds = {"X": RNG.normal(size=x_shape).astype(np.float32)}
    for a, b in zip(run(before, feeds), run(after, feeds), strict=True):
        np.testing.assert_array_equal(a, b)
