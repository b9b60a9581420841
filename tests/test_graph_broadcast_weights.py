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


def left_graph(r: np.ndarray, batch: list[int], to: list[int], x_rank: int = 3, extra_reader: bool = False
               ) -> onnx.ModelProto:
    """y = Reshape(Expand(R, batch + R's shape), to) @ X and z = Transpose(that, [0, 2, 1]) @ G, as
    a separable resize's left-hand product traces (forward and backward)."""
    m, k = r.shape
    b = int(np.prod(batch))
    x_shape, g_shape = ([b, to[2], 7], [b, to[1], 7]) if x_rank == 3 else ([k, 7], [m, 7])
    nodes = [helper.make_node("Expand", ["R", "shape"], ["Re"]),
             helper.make_node("Reshape", ["Re", "to"], ["R3"]),
             helper.make_node("MatMul", ["R3", "X"], ["y"]),
             helper.make_node("Transpose", ["R3"], ["Rt"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["Rt", "G"], ["z"])]
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("y", "z")]
    if extra_reader:
        nodes.append(helper.make_node("ReduceSum", ["R3"], ["s"], keepdims=0))
        outputs.append(helper.make_tensor_value_info("s", TensorProto.FLOAT, None))
    inits = [numpy_helper.from_array(r, "R"), numpy_helper.from_array(np.array([*batch, m, k], np.int64), "shape"),
             numpy_helper.from_array(np.array(to, np.int64), "to")]
    inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, x_shape),
              helper.make_tensor_value_info("G", TensorProto.FLOAT, g_shape)]
    g = helper.make_graph(nodes, "g", inputs, outputs, initializer=inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


def left_feeds(model: onnx.ModelProto) -> dict:
    return {i.name: RNG.normal(size=[d.dim_value for d in i.type.tensor_type.shape.dim]).astype(np.float32)
            for i in model.graph.input}


@pytest.mark.parametrize("to", [[-1, 5, 3], [6, 5, 3]], ids=str)
def test_a_matrix_multiplied_from_the_left_is_not_copied(to) -> None:
    """MatMul(Reshape(Expand(R), [-1, M, K]), X) → MatMul(R, X), and its transposed read, as in
    the separable resize of a segmenter's logits; the Expand, the Reshape and their shapes go."""
    before = left_graph(RNG.normal(size=(5, 3)).astype(np.float32), [2, 3], to)
    after = unexpand_matmul_weights(before)
    assert expands(before) == 1 and expands(after) == 0
    assert {n.op_type for n in after.graph.node} == {"MatMul", "Transpose"}
    assert {t.name for t in after.graph.initializer} == {"R"}
    feeds = left_feeds(before)
    for a, b in zip(run(before, feeds), run(after, feeds), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("case", ["X of rank 2", "another reader", "Reshape to other sizes"])
def test_the_left_hand_form_is_left_alone_where_it_could_change_a_shape(case) -> None:
    r = RNG.normal(size=(5, 3)).astype(np.float32)
    before = {"X of rank 2": lambda: left_graph(r, [1], [1, 5, 3], x_rank=2),  # MatMul(R, X) would be 5×7
              "another reader": lambda: left_graph(r, [2, 3], [-1, 5, 3], extra_reader=True),
              "Reshape to other sizes": lambda: left_graph(r, [2, 3], [-1, 15, 1])}[case]()
    after = unexpand_matmul_weights(before)
    assert expands(after) == 1
    feeds = left_feeds(before)
    for a, b in zip(run(before, feeds), run(after, feeds), strict=True):
        np.testing.assert_array_equal(a, b)
