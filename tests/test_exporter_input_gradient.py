"""`export(..., input_gradient=True)`: the output `gradient.input` = ∂ logits[n, c_n] / ∂ input[n]
against eager autograd, on inputs other than the export example (other batch sizes, other
predicted classes, explicit classes).

Criterion: that of the layer gradients (camrt/exporter/verify.py, tests/oracle.py
`assert_gradient_close`): against float64 eager autograd, at most 0.5% of the elements off by more
than 1e-4 of their image's largest value plus twice float32 PyTorch's own share, and a relative
L2 error at most 1e-3 plus twice PyTorch's.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torchvision

import camrt
from camrt.errors import LayerError, VerificationError
from camrt.exporter import verify
from camrt.graph import keep_outputs
from camrt.manifest import INPUT_GRADIENT, METADATA_KEY, Manifest
from tests.oracle import assert_close, assert_gradient_close, eager_cam_outputs, eager_float32_gradients
from tests.tiny import SHAPE, ConvNet, PoolNet, TinyNet, diverse_inputs, make

# model class, target layers, example shape (batch 1: the traced batch differs from the checked ones)
TINY = {
    "TinyNet": (TinyNet, ["layer1"], SHAPE),  # ReLU, batch norm, a stride-2 padded conv
    "ConvNet": (ConvNet, ["c3"], ConvNet.SHAPE),  # stride-2 padded first conv on an odd size, max pool
    "PoolNet": (PoolNet, ["avg1"], PoolNet.SHAPE),  # ceil-mode average pools, adaptive pooling
}


def run(path_or_proto, x: np.ndarray, cls: np.ndarray | None = None) -> dict[str, np.ndarray]:
    src = path_or_proto.SerializeToString() if isinstance(path_or_proto, onnx.ModelProto) else str(path_or_proto)
    sess = ort.InferenceSession(src, providers=["CPUExecutionProvider"])
    feed = {"input": x} if cls is None else {"input": x, "class_idx": np.asarray(cls, np.int64)}
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feed), strict=True))


def check_input_gradient(model: torch.nn.Module, path, layers: list[str], x: np.ndarray,
                         cls: np.ndarray) -> dict[str, np.ndarray]:
    """The exported outputs against float64 eager autograd; gradients with the yardstick criterion."""
    got = run(path, x, cls)
    ref = eager_cam_outputs(model, x, cls, layers, input_gradient=True)
    yardstick = eager_float32_gradients(model, x, cls, layers, input_gradient=True)
    np.testing.assert_array_equal(got["class_idx_used"], ref["class_idx_used"])
    assert_close("logits", got["logits"], ref["logits"])
    for name in [*(f"gradient.{n}" for n in layers), INPUT_GRADIENT]:
        assert np.abs(ref[name]).max() > 0, f"{name}: a zero reference gradient proves nothing"
        assert_gradient_close(name, got[name], ref[name], yardstick[name])
    assert got[INPUT_GRADIENT].shape == x.shape
    return got


@pytest.fixture(scope="module", params=list(TINY))
def tiny_export(request, tmp_path_factory):
    cls, layers, shape = TINY[request.param]
    model = make(cls, seed=3)
    path = tmp_path_factory.mktemp("ig") / f"{request.param}.cam.onnx"
    manifest = camrt.export(model, layers=layers, path=path, input_shape=shape, input_gradient=True)
    return model, path, layers, shape, manifest


@pytest.mark.parametrize("n", [1, 3])
def test_tiny_input_gradient_top1_on_fresh_inputs(tiny_export, n) -> None:
    model, path, layers, shape, _ = tiny_export
    x = diverse_inputs(model, (max(n, 2), *shape[1:]), seed=300 + n)[:n]
    got = check_input_gradient(model, path, layers, x, np.array([-1]))
    if n == 3:
        with torch.no_grad():  # the example the graph was traced with
            example_top = int(model(torch.randn(shape, generator=torch.Generator().manual_seed(0))).argmax())
        assert len(set(got["class_idx_used"].tolist()) | {example_top}) > 1


@pytest.mark.parametrize("n", [1, 3])
def test_tiny_input_gradient_explicit_classes(tiny_export, n) -> None:
    model, path, layers, shape, manifest = tiny_export
    x = diverse_inputs(model, (3, *shape[1:]), seed=400 + n)[:n]
    k = manifest.num_classes
    cls = (np.arange(n) * 2 + 1) % k
    got = check_input_gradient(model, path, layers, x, cls)
    assert got["class_idx_used"].tolist() == cls.tolist()
    # Another class gives another input gradient: the class reaches the input's branch.
    other = run(path, x, (cls + 1) % k)[INPUT_GRADIENT]
    assert not np.allclose(other, got[INPUT_GRADIENT])


def test_manifest_records_the_input_gradient(tiny_export) -> None:
    _, path, layers, _, manifest = tiny_export
    proto = onnx.load(path)
    assert manifest.input_gradient
    assert Manifest.from_json({p.key: p.value for p in proto.metadata_props}[METADATA_KEY]) == manifest
    names = [o.name for o in proto.graph.output]
    assert names[-1] == INPUT_GRADIENT and names.count(INPUT_GRADIENT) == 1
    assert names[:-1] == ["logits", "class_idx_used", *(f"{k}.{n}" for k in ("activation", "gradient") for n in layers)]


def test_keep_outputs_gives_the_input_gradient_alone(tiny_export) -> None:
    """The sub-graph an input optimisation runs: logits and gradient.input, class_idx still an input."""
    model, path, _, shape, manifest = tiny_export
    sub = keep_outputs(onnx.load(path), ["logits", INPUT_GRADIENT])
    onnx.checker.check_model(sub)
    assert [o.name for o in sub.graph.output] == ["logits", INPUT_GRADIENT]
    x = diverse_inputs(model, (3, *shape[1:]), seed=500)
    for cls in (None, np.array([manifest.num_classes - 1])):
        full, part = run(path, x, cls), run(sub, x, cls)
        np.testing.assert_array_equal(part["logits"], full["logits"])
        np.testing.assert_array_equal(part[INPUT_GRADIENT], full[INPUT_GRADIENT])


def test_default_export_has_no_input_gradient(tmp_path) -> None:
    path = tmp_path / "m.onnx"
    manifest = camrt.export(make(TinyNet), layers=["layer1"], path=path, input_shape=SHAPE)
    assert not manifest.input_gradient
    proto = onnx.load(path)
    assert INPUT_GRADIENT not in [o.name for o in proto.graph.output]
    assert json.loads({p.key: p.value for p in proto.metadata_props}[METADATA_KEY])["input_gradient"] is False


def test_a_layer_named_input_is_refused(tmp_path) -> None:
    """Its gradient would be called gradient.input too."""
    model = torch.nn.Sequential()
    model.add_module("input", torch.nn.Conv2d(3, 4, 3))
    model.add_module("pool", torch.nn.AdaptiveAvgPool2d(1))
    model.add_module("flat", torch.nn.Flatten())
    model.add_module("fc", torch.nn.Linear(4, 3))
    with pytest.raises(LayerError, match="reserves"):
        camrt.export(model, layers=["input"], path=tmp_path / "m.onnx", input_shape=(1, 3, 8, 8), input_gradient=True)
    assert list(tmp_path.iterdir()) == []


def test_self_check_verifies_the_input_gradient(tmp_path, monkeypatch) -> None:
    """The export refuses to write a file whose gradient.input disagrees with eager PyTorch."""
    seen: list[str] = []
    real = verify.compare

    def fail_input_gradient(name, got, ref, yardstick=None):
        seen.append(name)
        return verify.Mismatch(name, "forced") if name == INPUT_GRADIENT else real(name, got, ref, yardstick)

    monkeypatch.setattr(verify, "compare", fail_input_gradient)
    with pytest.raises(VerificationError, match="gradient.input: forced"):
        camrt.export(make(TinyNet), layers=["layer1"], path=tmp_path / "m.onnx", input_shape=SHAPE,
                     input_gradient=True)
    assert INPUT_GRADIENT in seen and list(tmp_path.iterdir()) == []


# --- real architectures -------------------------------------------------------------------------

ZOO = {
    "resnet18": ["layer4"],  # 7×7 stride-2 padded stem conv, batch norm, max pool before layer1
    "mobilenet_v2": ["features.18"],  # depthwise convs, ReLU6, stride-2 stem
}


def fresh_inputs(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 3, 224, 224)).astype(np.float32)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_input_gradient_matches_eager(name: str, tmp_path) -> None:
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)().eval()
    path = tmp_path / f"{name}.cam.onnx"
    layers = ZOO[name]
    manifest = camrt.export(model, layers=layers, path=path, input_gradient=True)
    k = manifest.num_classes
    check_input_gradient(model, path, layers, fresh_inputs(1, 1), np.array([-1]))
    got = check_input_gradient(model, path, layers, fresh_inputs(3, 2), np.array([-1, 3, k - 1]))
    assert got["class_idx_used"].tolist()[1:] == [3, k - 1]


@pytest.fixture(scope="module")
def lite0_input_gradient(tmp_path_factory):
    from models.efficientnet_lite0 import LAYERS, MEAN, STD, imagenet_labels, pretrained

    model = pretrained().eval()
    path = tmp_path_factory.mktemp("lite0ig") / "lite0.cam.onnx"
    camrt.export(model, layers=list(LAYERS), path=path, mean=MEAN, std=STD, labels=imagenet_labels(),
                 input_gradient=True)
    return model, path, list(LAYERS)


@pytest.mark.slow
def test_pretrained_efficientnet_lite0_input_gradient_on_real_photos(lite0_input_gradient) -> None:
    from skimage import data, transform

    from models.efficientnet_lite0 import imagenet_labels

    model, path, layers = lite0_input_gradient
    photos = [data.chelsea(), data.coffee(), data.astronaut()]
    x = np.stack([
        ((transform.resize(p, (224, 224), order=1, anti_aliasing=False) - 0.5) / 0.5).transpose(2, 0, 1)
        for p in photos
    ]).astype(np.float32)
    got = check_input_gradient(model, path, layers, x, np.array([-1]))
    assert len(set(got["class_idx_used"].tolist())) == 3  # three different predicted classes
    espresso = imagenet_labels().index("espresso")
    check_input_gradient(model, path, layers, x[:1], np.array([espresso]))  # the cat explained as espresso
