"""gather_selected_rows: onehot(c) @ W becomes a row gather, with the same values; a linear head
whose selection product is not found is reported (PatternNotFound), not left slow in silence."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from camrt.graph import PatternNotFound, export_passes, run_passes
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


# --- the pass says when it finds nothing it should have found ------------------------------------

# LOGITS: a linear classifier (x @ Wᵀ) or not; "gradient.L" = (g ⊙ onehot(class)) @ W, the selection
# written as torch traces it today (ONEHOT) or as a later torch might trace it (WHERE).
HEAD = """
<ir_version: 9, opset_import: ["" : 20]>
head (float[N, 4] x, int64[N] class_idx) => (float[N, 3] logits, float[N, 4] "gradient.L")
    <float[3, 4] W = {1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0}> {
    g = Constant <value = float[1, 3] {1.0, 1.0, 1.0}> ()
    k = Constant <value = int64[3] {0, 1, 2}> ()
    axis = Constant <value = int64[1] {1}> ()
    c = Unsqueeze(class_idx, axis)
    eq = Equal(k, c)
    LOGITS
    SELECTION
    "gradient.L" = MatMul(sel, W)
}
"""
ONEHOT = "onehot = Cast <to = 1> (eq)\n    sel = Mul(g, onehot)"
WHERE = "zero = Constant <value = float {0.0}> ()\n    sel = Where(eq, g, zero)"


def _head(selection: str, logits: str = "logits = Gemm <transB = 1> (x, W)") -> onnx.ModelProto:
    text = HEAD.replace("SELECTION", selection).replace("LOGITS", logits)
    model = onnx.parser.parse_model(text)
    onnx.checker.check_model(model)
    return model


def _gradient(model: onnx.ModelProto, c: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.zeros((len(c), 4), np.float32)
    return sess.run(["gradient.L"], {"x": x, "class_idx": c})[0]


def test_linear_head_in_the_expected_form_is_rewritten() -> None:
    model = _head(ONEHOT)
    out = gather_selected_rows(model)
    assert "Gather" in [n.op_type for n in out.graph.node]
    c = np.array([2, 0])
    np.testing.assert_array_equal(_gradient(out, c), _gradient(model, c))
    np.testing.assert_array_equal(_gradient(out, c), [[9, 10, 11, 12], [1, 2, 3, 4]])


@pytest.mark.parametrize("logits", [
    "logits = Gemm <transB = 1> (x, W)",
    "wt = Transpose <perm = [1, 0]> (W)\n    y = MatMul(x, wt)\n"
    "    b = Constant <value = float[3] {0.0, 1.0, 2.0}> ()\n    logits = Add(y, b)",
], ids=["gemm", "matmul-add"])
def test_linear_head_in_another_form_is_reported(logits) -> None:
    model = _head(WHERE, logits)
    with pytest.raises(PatternNotFound, match="gather_selected_rows: 'logits' is a linear layer") as info:
        gather_selected_rows(model)
    assert info.value.pass_name == "gather_selected_rows"
    with pytest.raises(PatternNotFound):  # and through the exporter's list of passes
        run_passes(model, export_passes(3, "{}"))


def test_no_linear_head_means_nothing_to_find() -> None:
    # scores that are no matrix product: the first three inputs
    model = _head(WHERE, "three = Constant <value = int64[1] {3}> ()\n    start = Constant <value = int64[1] {0}> ()\n"
                         "    logits = Slice(x, start, three, axis)")
    out = gather_selected_rows(model)
    assert [n.op_type for n in out.graph.node] == [n.op_type for n in model.graph.node]
