"""gather_selected_rows: onehot(c) @ W becomes a row gather, with the same values."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from camrt.graph.class_select import gather_selected_rows

K, D = 6, 4


def _model(arange: np.ndarray) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(arange, "arange"),
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
        numpy_helper.from_array(rng.normal(size=(K, D)).astype(np.float32), "W"),
        numpy_helper.from_array(rng.normal(size=(D, 3)).astype(np.float32), "V"),
    ]
    nodes = [
        helper.make_node("Unsqueeze", ["c", "axis1"], ["cu"]),
        helper.make_node("Equal", ["arange", "cu"], ["eq"]),
        helper.make_node("Cast", ["eq"], ["onehot"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["g", "onehot"], ["gsel"]),
        helper.make_node("MatMul", ["gsel", "W"], ["y"]),
        helper.make_node("MatMul", ["y", "V"], ["z"]),  # not a selection: must stay
    ]
    graph = helper.make_graph(
        nodes, "sel",
        [helper.make_tensor_value_info("g", TensorProto.FLOAT, ["N", K]),
         helper.make_tensor_value_info("c", TensorProto.INT64, ["N"])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 3])], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


def _run(model: onnx.ModelProto, g: np.ndarray, c: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"g": g, "c": c})[0]


def test_selection_product_becomes_gather_with_same_values() -> None:
    model = _model(np.arange(K, dtype=np.int64))
    out = gather_selected_rows(model)
    onnx.checker.check_model(out)
    ops = [n.op_type for n in out.graph.node]
    assert ops.count("MatMul") == 1 and "Gather" in ops
    g = np.random.default_rng(1).normal(size=(3, K)).astype(np.float32)
    c = np.array([0, 5, 2])
    np.testing.assert_allclose(_run(out, g, c), _run(model, g, c), rtol=1e-6, atol=1e-6)
    assert len(model.graph.node) == 6  # the input model is left as it was


def test_other_products_are_left_alone() -> None:
    model = _model(np.array([0, 1, 2, 3, 5, 4], np.int64))  # not an arange: not a one-hot selection
    assert [n.op_type for n in gather_selected_rows(model).graph.node].count("MatMul") == 2
