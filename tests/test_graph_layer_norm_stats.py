"""camrt.graph.layer_norm_stats: a LayerNormalization's Mean and InvStdDev outputs written as
reductions (TensorRT parses LayerNormalization with Y only), on hand-built graphs run by ONNX
Runtime before and after, against numpy's statistics, at opsets with axes as an attribute and as
an input; an axis that cannot be resolved is refused."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from camrt.graph import PatternNotFound, layer_norm_statistics
from camrt.graph.tensorrt import check_tensorrt

X = np.random.default_rng(0).normal(size=(2, 5, 6)).astype(np.float32) * 3 + 1


def graph(axis: int, outputs: tuple[str, ...], opset: int = 20, known_rank: bool = True) -> onnx.ModelProto:
    """Y, Mean, InvStdDev of LayerNormalization(X), each read by an Identity into a graph output."""
    names = ["Y", "Mean", "InvStdDev"]
    ln_outputs = [n if n in outputs else "" for n in names]
    while ln_outputs and not ln_outputs[-1]:
        ln_outputs.pop()
    normalised = X.shape[axis:]
    nodes = [helper.make_node("LayerNormalization", ["X", "scale", "bias"], ln_outputs, name="ln", axis=axis,
                              epsilon=1e-3)]
    nodes += [helper.make_node("Identity", [n], [f"out_{n}"]) for n in outputs]
    shape = list(X.shape) if known_rank else None
    g = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info(f"out_{n}", TensorProto.FLOAT, None) for n in outputs],
        initializer=[numpy_helper.from_array(np.linspace(0.5, 2, int(np.prod(normalised)), dtype=np.float32)
                                             .reshape(normalised), "scale"),
                     numpy_helper.from_array(np.full(normalised, 0.25, np.float32), "bias")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=9)


def run(model: onnx.ModelProto) -> list[np.ndarray]:
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, {"X": X})


@pytest.mark.parametrize("opset", [17, 20])
@pytest.mark.parametrize("axis", [-1, -2, 1, 2])
@pytest.mark.parametrize("outputs", [("Y", "Mean", "InvStdDev"), ("Y", "InvStdDev"), ("Y", "Mean")])
def test_statistics_as_reductions_give_the_same_numbers(opset, axis, outputs) -> None:
    model = graph(axis, outputs, opset)
    rewritten = layer_norm_statistics(model)
    ln = next(n for n in rewritten.graph.node if n.op_type == "LayerNormalization")
    assert list(ln.output) == ["Y"]
    assert check_tensorrt(rewritten) == []
    assert check_tensorrt(model) != []  # the problem the pass removes
    before, after = run(model), run(rewritten)
    red = tuple(range(axis % X.ndim, X.ndim))
    expected = {"Y": None, "Mean": X.mean(axis=red, keepdims=True),
                "InvStdDev": 1 / np.sqrt(X.var(axis=red, keepdims=True) + 1e-3)}
    for name, b, a in zip(outputs, before, after, strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-6)
        if expected[name] is not None:
            np.testing.assert_allclose(a, expected[name], rtol=1e-5)


def test_a_layer_norm_with_y_only_is_left_alone() -> None:
    model = graph(-1, ("Y",))
    rewritten = layer_norm_statistics(model)
    assert rewritten.graph.node == model.graph.node and rewritten is not model


def test_a_positive_axis_of_unknown_rank_is_refused() -> None:
    with pytest.raises(PatternNotFound, match="unknown rank"):
        layer_norm_statistics(graph(1, ("Y", "Mean"), known_rank=False))
    assert [n.op_type for n in layer_norm_statistics(graph(-1, ("Y", "Mean"), known_rank=False)).graph.node][:2] == [
        "LayerNormalization", "ReduceMean"]
