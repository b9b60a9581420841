"""Sub-graphs of a real exported model: forward-only and tail reproduce the full graph's logits."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torchvision

import camrt
from camrt.graph import forward_only, tail


@pytest.fixture(scope="module")
def resnet18_cam(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("r18") / "r18.cam.onnx"
    # layer3.0's output crosses the cut twice: into layer3.1's convolutions and its identity skip.
    camrt.export(torchvision.models.resnet18().eval(), layers=["layer3.0", "layer4"], path=path)
    return onnx.load(path)


def _run(model: onnx.ModelProto, feed: dict) -> list[np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feed)


def test_forward_only_drops_the_gradient_branch(resnet18_cam) -> None:
    fwd = forward_only(resnet18_cam)
    ops = {n.op_type for n in fwd.graph.node}
    assert "ConvTranspose" not in ops and len(fwd.graph.node) < len(resnet18_cam.graph.node)
    assert [o.name for o in fwd.graph.output] == ["logits"]
    x = np.random.default_rng(0).normal(size=(3, 3, 224, 224)).astype(np.float32)
    full = _run(resnet18_cam, {"input": x})[0]
    np.testing.assert_allclose(_run(fwd, {"input": x})[0], full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layer", ["layer3.0", "layer4"])
def test_tail_from_activation_reproduces_logits(resnet18_cam, layer: str) -> None:
    sub, boundary = tail(resnet18_cam, layer)
    assert "ConvTranspose" not in {n.op_type for n in sub.graph.node}
    x = np.random.default_rng(1).normal(size=(2, 3, 224, 224)).astype(np.float32)
    fwd = forward_only(resnet18_cam, extra_outputs=[f"activation.{layer}", *boundary])
    outs = _run(fwd, {"input": x})
    logits, act, crossing = outs[0], outs[1], outs[2:]
    feed = {f"activation.{layer}": act, **dict(zip(boundary, crossing, strict=True))}
    np.testing.assert_allclose(_run(sub, feed)[0], logits, rtol=1e-5, atol=1e-5)
    # Perturbing the activation changes the logits through the tail (it is not a constant).
    feed[f"activation.{layer}"] = act * 0.5
    assert np.abs(_run(sub, feed)[0] - logits).max() > 1e-3


def test_tail_computes_what_does_not_depend_on_the_input() -> None:
    """A weight transposed by a node (the optimiser keeps such a node when several branches share
    the weight, as Relevance-CAM's rules do on EfficientNet-Lite0's classifier) is computed inside
    the tail, not taken as an input crossing the cut: the engine feeds crossing tensors one row per
    copy, and a weight has no rows."""
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(3, 4) / 10, "w")
    nodes = [helper.make_node("Relu", ["input"], ["activation.L"]),
             helper.make_node("Transpose", ["w"], ["t"]),
             helper.make_node("MatMul", ["activation.L", "t"], ["logits"])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3]),
         helper.make_tensor_value_info("activation.L", TensorProto.FLOAT, ["N", 4])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    cut, crossing = tail(model, "L")
    assert crossing == []
    a = np.random.default_rng(0).random((5, 4)).astype(np.float32)
    np.testing.assert_allclose(_run(cut, {"activation.L": a})[0], a @ (np.arange(12).reshape(3, 4) / 10).T,
                               rtol=1e-6)
