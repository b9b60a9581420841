"""camrt/exporter/relevance.py: `camrt export --relevance` (Relevance-CAM's layer-wise relevance in
the graph) against zennit's LRP, the method `relevancecam` through the engine, and the errors.

Oracle: zennit (https://github.com/chr-peters/zennit) in float64 with the paper's rules: ZPlus
(α1β0, biases zeroed) on convolutions and linear layers, batch norm merged into the convolution
before it (its canonizers), `Norm` (proportional) on sums (its ResNet canonizer turns the residual
`+` into a module) and average pooling, `Pass` on activations, the gradient for max pooling, and
the contrastive initial relevance e_c − (1 − e_c)/K given as the output relevance. One difference
is taken out of the models: zennit's merge leaves each batch norm computing x / √(1 + eps), so the
test models' batch norms have eps 0 (the exported rules fold the true batch norm; with eps 1e-5
the two differ by ~5e-6 relative per batch norm).
"""

from __future__ import annotations

import copy

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from torch import nn
from torchvision.models.resnet import BasicBlock

import camrt
from camrt.cli import main
from camrt.engine import Engine
from camrt.errors import InputError, LayerError
from camrt.graph import without_gradients
from camrt.graph.metadata import read_manifest
from camrt.manifest import CLASS_IDX, INPUT, relevance_name
from tests.cli_checks import assert_one_line_error

zennit = pytest.importorskip("zennit")
from zennit.canonizers import NamedMergeBatchNorm  # noqa: E402
from zennit.composites import LayerMapComposite  # noqa: E402
from zennit.layer import Sum  # noqa: E402
from zennit.rules import Norm, Pass, ZPlus  # noqa: E402
from zennit.torchvision import ResNetBasicBlockCanonizer  # noqa: E402
from zennit.types import Activation, AvgPool, Convolution, Linear  # noqa: E402

SIZE = 16
K = 5


def _stats(model: nn.Module, seed: int) -> nn.Module:
    """Random batch-norm statistics and positive scales (eps 0, see the module docstring)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eps = 0.0
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.3)
    return model.eval()


class TinyResNet(nn.Module):
    """torchvision's BasicBlock (its ReLU module used twice, in place; the residual `+=`)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = BasicBlock(8, 8)
        self.layer2 = BasicBlock(8, 16, 2, nn.Sequential(nn.Conv2d(8, 16, 1, 2, bias=False), nn.BatchNorm2d(16)))
        self.layer3 = BasicBlock(16, 16)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, K)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.relu(self.bn1(self.conv1(x))))))
        return self.fc(torch.flatten(self.pool(x), 1))

    merges = [(["conv1"], "bn1"), (["layer2.downsample.0"], "layer2.downsample.1"),
              *[([f"layer{i}.conv{j}"], f"layer{i}.bn{j}") for i in (1, 2, 3) for j in (1, 2)]]


class VGGish(nn.Module):
    """Convolutions with and without batch norm and bias, max and average pooling, SiLU (passed
    through), dropout and two linear layers."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),  # 0-3
            nn.Conv2d(8, 12, 3, padding=1), nn.BatchNorm2d(12), nn.SiLU(),  # 4-6
            nn.Conv2d(12, 12, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),  # 7-9
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(12 * 4 * 4, 10), nn.ReLU(),
                                        nn.Linear(10, K))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))

    merges = [(["features.0"], "features.1"), (["features.4"], "features.5")]


def _model(cls: type[nn.Module], seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return _stats(cls(), seed + 1)


def zennit_relevance(model: nn.Module, x: np.ndarray, layer: str, classes: np.ndarray) -> np.ndarray:
    """The relevance at `layer`'s output by zennit in float64 (module docstring's rules)."""
    m = copy.deepcopy(model).double().eval()
    eps = 1e-300
    composite = LayerMapComposite(
        layer_map=[(Activation, Pass()), (Sum, Norm(eps)), (AvgPool, Norm(eps)),
                   (Convolution, ZPlus(eps, zero_params="bias")), (Linear, ZPlus(eps, zero_params="bias"))],
        canonizers=[NamedMergeBatchNorm(type(model).merges), ResNetBasicBlockCanonizer()])
    store = {}

    def hook(_m, _i, out):
        out.register_hook(lambda g: store.__setitem__("r", g))

    with composite.context(m) as modified:
        handle = dict(modified.named_modules())[layer].register_forward_hook(hook)
        xx = torch.from_numpy(x).double().requires_grad_(True)
        out = modified(xx)
        onehot = nn.functional.one_hot(torch.from_numpy(classes), out.shape[1]).double()
        torch.autograd.grad(out, xx, grad_outputs=onehot - (1 - onehot) / out.shape[1])
        handle.remove()
    return store["r"].numpy()


@pytest.fixture(scope="module", params=[(TinyResNet, ("layer1", "layer2")), (VGGish, ("features.3", "features.6"))],
                ids=["resnet", "vgg"])
def exported(request, tmp_path_factory):
    cls, layers = request.param
    model = _model(cls)
    path = tmp_path_factory.mktemp("rel") / "m.cam.onnx"
    manifest = camrt.export(model, layers=layers, path=path, input_shape=(1, 3, SIZE, SIZE), relevance=True)
    return model, layers, path, manifest


def _fresh(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 3, SIZE, SIZE)).astype(np.float32)


def test_relevance_matches_zennit_on_fresh_inputs(exported):
    """Each layer's relevance.L against zennit, for the top-1 class and a given class, on inputs
    other than the export example; the relevance of the explained class is conserved down to the
    layer (Σ R = Σ t = 1/K, up to what dead units drop)."""
    model, layers, path, manifest = exported
    assert manifest.relevance
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = _fresh(3, 11)
    cls = np.array([-1, 3, -1], np.int64)
    names = ["class_idx_used", *map(relevance_name, layers)]
    used, *got = sess.run(names, {INPUT: x, CLASS_IDX: cls})
    assert used[1] == 3
    for layer, r in zip(layers, got, strict=True):
        ref = zennit_relevance(model, x, layer, used)
        assert r.shape == ref.shape
        scale = np.abs(ref).reshape(3, -1).max(axis=1)
        err = np.abs(r - ref).reshape(3, -1).max(axis=1) / scale
        assert (err < 1e-4).all(), (layer, err)
        assert np.allclose(ref.reshape(3, -1).sum(1), 1 / K, rtol=0.2), ref.reshape(3, -1).sum(1)


def test_relevancecam_map_through_the_engine(exported):
    """`relevancecam` is ReLU(Σ_k (Σ_ij R_kij) A_k) of the graph's outputs, per image, for a class
    other than the top-1 too."""
    model, layers, path, _ = exported
    engine = Engine(path)
    images = [np.random.default_rng(s).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8) for s in (1, 2)]
    x = engine.prepare(images)
    for cls in (None, [2, 4]):
        res = engine.explain(images, method="relevancecam", layer=layers[0], class_idx=cls)
        ref = zennit_relevance(model, x, layers[0], res.class_idx)
        want = np.maximum((ref.sum(axis=(2, 3))[:, :, None, None] * _activation(model, x, layers[0])).sum(1), 0)
        assert np.allclose(res.low_res, want, atol=1e-4 * np.abs(want).max()), cls


def _activation(model: nn.Module, x: np.ndarray, layer: str) -> np.ndarray:
    acts = {}
    h = dict(model.named_modules())[layer].register_forward_hook(
        lambda _m, _i, o: acts.__setitem__("a", o.double().numpy().copy()))
    with torch.no_grad():
        model(torch.from_numpy(x))
    h.remove()
    return acts["a"]


def test_unsupported_module_after_the_target_is_refused(tmp_path):
    class Gated(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.norm = nn.GroupNorm(2, 4)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(4, K)

        def forward(self, x):
            return self.fc(self.pool(self.norm(self.conv(x))).flatten(1))

    with pytest.raises(LayerError, match=r"'norm' \(GroupNorm\).*after the target layer 'conv'.*later target"):
        camrt.export(Gated().eval(), layers=["conv"], path=tmp_path / "g.onnx", input_shape=(1, 3, SIZE, SIZE),
                     relevance=True)
    assert not (tmp_path / "g.onnx").exists()
    camrt.export(Gated().eval(), layers=["norm"], path=tmp_path / "g.onnx", input_shape=(1, 3, SIZE, SIZE),
                 relevance=True)  # a later target: only pooling and a linear layer follow


def test_relevance_is_refused_with_target_mode_and_fp16(tmp_path):
    for kw in ({"target": True}, {"fp16": True}):
        with pytest.raises(InputError, match="--relevance is not offered with --target or --fp16"):
            camrt.export(_model(VGGish), layers=["features.6"], path=tmp_path / "v.onnx",
                         input_shape=(1, 3, SIZE, SIZE), relevance=True, **kw)


def test_relevancecam_needs_a_model_exported_with_relevance(tmp_path):
    plain = tmp_path / "plain.onnx"
    camrt.export(_model(VGGish), layers=["features.6"], path=plain, input_shape=(1, 3, SIZE, SIZE))
    image = np.zeros((SIZE, SIZE, 3), np.uint8)
    with pytest.raises(InputError, match=r"lacks; re-export the model with `camrt export --relevance`"):
        Engine(plain).explain([image], method="relevancecam")


def test_without_gradients_drops_the_relevance(exported):
    """`camrt add-maps --no-gradients`: the relevance (a backward pass) goes with the gradients."""
    bare = without_gradients(onnx.load(str(exported[2])))
    assert not read_manifest(bare).relevance
    assert not [o.name for o in bare.graph.output if o.name.startswith("relevance.")]




def test_cli_export_relevance_and_its_errors(tmp_path):
    torch.save(_model(VGGish), tmp_path / "v.pt")
    runner = CliRunner()
    out = tmp_path / "v.cam.onnx"
    res = runner.invoke(main, ["export", str(tmp_path / "v.pt"), "--trust-pickle", "--layer", "features.6",
                               "--input-shape", f"1,3,{SIZE},{SIZE}", "--relevance", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert "layer-wise relevance" in res.output
    res = runner.invoke(main, ["explain", str(out), "--method", "relevancecam", "-o", str(tmp_path / "ex"),
                               _png(tmp_path)])
    assert res.exit_code == 0, res.output
    assert list((tmp_path / "ex").glob("*relevancecam*"))
    res = runner.invoke(main, ["export", str(tmp_path / "v.pt"), "--trust-pickle", "--layer", "features.6",
                               "--input-shape", f"1,3,{SIZE},{SIZE}", "--relevance", "--fp16", "-o", str(out)])
    assert_one_line_error(res, "--relevance is not offered")


def _png(tmp_path) -> str:
    from camrt.visual.overlay import write_image

    p = tmp_path / "img.png"
    write_image(p, np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))
    return str(p)


def test_perturbation_methods_on_a_model_with_relevance(exported, tmp_path):
    """The relevance rules share weights with the forward pass (a transposed or clamped weight the
    optimiser keeps as a node): the tail the feature methods run must compute such tensors itself,
    not take them as batch inputs crossing the cut. Maps equal those of the same model exported
    without --relevance."""
    model, layers, path, _ = exported
    plain = tmp_path / "plain.onnx"
    camrt.export(model, layers=layers[-1:], path=plain, input_shape=(1, 3, SIZE, SIZE))
    images = [np.random.default_rng(s).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8) for s in (3, 4)]
    for method in ("ablationcam", "reciprocam", "scorecam"):
        got = Engine(path).explain(images, method, layer=layers[-1])
        want = Engine(plain).explain(images, method)
        assert np.allclose(got.low_res, want.low_res, atol=1e-5 * max(1.0, float(np.abs(want.low_res).max()))), method
