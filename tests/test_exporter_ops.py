"""Each op family README lists as supported, after a target layer, against eager autograd."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

import camrt
from camrt.errors import UnsupportedOpError
from tests.oracle import assert_close, eager_cam_outputs


class Attention(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.qkv = nn.Linear(c, 3 * c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        t = x.flatten(2).transpose(1, 2)  # N×hw×C tokens
        q, k, v = self.qkv(t).chunk(3, dim=-1)
        y = nn.functional.scaled_dot_product_attention(q, k, v)
        return y.transpose(1, 2).reshape(n, c, h, w)


HEADS = {
    "relu6_hardtanh_leaky": lambda c: nn.Sequential(nn.ReLU6(), nn.Hardtanh(-0.5, 0.5), nn.LeakyReLU(0.1)),
    "gelu_silu_hardswish": lambda c: nn.Sequential(nn.GELU(), nn.SiLU(), nn.Hardswish(), nn.Hardsigmoid()),
    "sigmoid_tanh": lambda c: nn.Sequential(nn.Sigmoid(), nn.Tanh()),
    "groupnorm": lambda c: nn.Sequential(nn.GroupNorm(2, c), nn.ReLU()),
    "layernorm_channels_last": lambda c: nn.Sequential(LayerNorm2d(c), nn.GELU()),
    "softmax": lambda c: nn.Softmax2d(),
    "attention": lambda c: Attention(c),
    "dropout_eval": lambda c: nn.Dropout(0.5),
}


class LayerNorm2d(nn.LayerNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class Net(nn.Module):
    def __init__(self, head: nn.Module, c: int = 8) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.head = head
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.fc = nn.Linear(c, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(self.head(self.stem(x)))
        return self.fc(torch.cat([y[:, :4], y[:, 4:] * 2], 1).mean((2, 3)))


@pytest.mark.parametrize("name", list(HEADS))
def test_op_after_target_matches_eager(name: str, tmp_path) -> None:
    torch.manual_seed(0)
    model = Net(HEADS[name](8)).eval()
    path = str(tmp_path / "m.onnx")
    camrt.export(model, layers=["stem"], path=path, input_shape=(1, 3, 12, 12))
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).normal(size=(3, 3, 12, 12)).astype(np.float32)
    cls = np.array([-1, 0, 4])
    got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"input": x, "class_idx": cls}), strict=True))
    ref = eager_cam_outputs(model, x, cls, ["stem"])
    assert_close("logits", got["logits"], ref["logits"])
    assert_close("gradient", got["gradient.stem"], ref["gradient.stem"])
    assert np.abs(ref["gradient.stem"]).max() > 0


def test_transposed_convolution_after_target_is_named(tmp_path) -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ConvTranspose2d(4, 4, 2, stride=2), nn.Flatten(), nn.LazyLinear(3))
    model(torch.zeros(1, 3, 8, 8))
    with pytest.raises(UnsupportedOpError, match="transposed convolution"):
        camrt.export(model, layers=["0"], path=str(tmp_path / "m.onnx"), input_shape=(1, 3, 8, 8))
    assert list(tmp_path.iterdir()) == []


# --- max-pool backward: camrt's scatter-free rule -------------------------------------------------

# (kernel, stride, padding, dilation, ceil_mode) on odd sizes: overlapping windows, windows in the
# padding, cut by the border (ceil_mode), dilated, and an input row read by no window.
MAX_POOLS = [
    (3, 2, 1, 1, False),
    (3, 2, 1, 1, True),
    (2, 2, 0, 1, True),
    ((3, 2), (1, 2), (1, 0), 1, False),
    (3, 3, 1, 2, True),
    (2, 3, 0, 1, False),
]


MAX_POOL_INPUTS = {
    "distinct": lambda x, g: x,
    "ties": lambda x, g: x.round(),  # few distinct values: most windows hold their maximum several times
    "relu": lambda x, g: x.clamp(min=0),  # windows of zeros, as after a ReLU (resnet's stem pool)
    "constant": lambda x, g: torch.zeros_like(x),  # every window one big tie
    "neg_inf": lambda x, g: torch.where(torch.rand(x.shape, generator=g, dtype=x.dtype) < 0.7, float("-inf"), x),
}


@pytest.mark.parametrize("params", MAX_POOLS, ids=str)
@pytest.mark.parametrize("kind", list(MAX_POOL_INPUTS))
def test_max_pool_backward_rule_equals_native(params, kind: str) -> None:
    """The rule against PyTorch's native kernel in float64: equal up to the order of additions,
    and the same elements get a gradient (a tie goes to the window's first maximum; a window of
    -inf values to its first element inside the input, never to the padding). The rule does not
    read the indices: it is given wrong ones."""
    from camrt.exporter.rules import max_pool2d_with_indices_backward

    k, s, p, d, ceil = params
    g = torch.Generator().manual_seed(0)
    x = MAX_POOL_INPUTS[kind](torch.randn(2, 3, 13, 11, generator=g, dtype=torch.float64), g)
    y, idx = torch.nn.functional.max_pool2d(x, k, s, p, d, ceil_mode=ceil, return_indices=True)
    go = torch.randn(y.shape, generator=g, dtype=torch.float64)
    args = (list(torch.nn.modules.utils._pair(k)), list(torch.nn.modules.utils._pair(s)),
            list(torch.nn.modules.utils._pair(p)), list(torch.nn.modules.utils._pair(d)), ceil)
    native = torch.ops.aten.max_pool2d_with_indices_backward(go, x, *args, idx)
    ours = max_pool2d_with_indices_backward(go, x, *args, torch.zeros_like(idx))
    torch.testing.assert_close(ours, native, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours != 0, native != 0)


class MaxNet(nn.Module):
    """Max pools straight on the input (exact ties on integer-valued pixels) and after a conv."""

    def __init__(self) -> None:
        super().__init__()
        self.pool_in = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)  # 15 → 8
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.pool = nn.MaxPool2d(2, stride=1, dilation=2)  # 8 → 6
        self.fc = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(torch.tanh(self.conv(self.pool_in(x)))).mean((2, 3)))


def test_max_pool_input_gradient_with_ties_matches_eager(tmp_path) -> None:
    torch.manual_seed(0)
    model = MaxNet().eval()
    path = str(tmp_path / "m.onnx")
    camrt.export(model, layers=["conv"], path=path, input_shape=(1, 3, 15, 15), input_gradient=True)
    nodes = onnx.load(path).graph.node
    assert "ScatterElements" not in {n.op_type for n in nodes}
    # The forward pools are MaxPool nodes with one output: TensorRT's parser refuses an Indices output.
    assert [len(n.output) for n in nodes if n.op_type == "MaxPool"] == [1, 1]
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(2).integers(-2, 3, size=(3, 3, 15, 15)).astype(np.float32)
    cls = np.array([-1, 0, 3])
    got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"input": x, "class_idx": cls}), strict=True))
    ref = eager_cam_outputs(model, x, cls, ["conv"], input_gradient=True)
    assert_close("gradient.conv", got["gradient.conv"], ref["gradient.conv"])
    assert_close("gradient.input", got["gradient.input"], ref["gradient.input"])
    # Ties: only one element of each window gets the gradient, exactly as in PyTorch.
    assert np.count_nonzero(ref["gradient.input"]) < x.size / 2
    np.testing.assert_array_equal(got["gradient.input"] != 0, ref["gradient.input"] != 0)


# --- convolution backward: depthwise convolutions as convolutions --------------------------------

# (kernel, stride, padding, dilation) of depthwise convolutions: odd sizes, padding beyond
# dilation·(k−1) (the flipped form then crops), strides 2 and 3 (zero-inserted gradient), rows read
# by no window, asymmetric kernels.
DEPTHWISE = [
    (3, 1, 1, 1),
    (5, 1, 2, 1),
    (3, 1, 0, 2),
    (3, 1, 4, 1),
    (3, 2, 1, 1),
    (5, 2, 2, 2),
    (2, 3, 0, 1),
    ((3, 5), (2, 1), (1, 3), (1, 2)),
    (4, 3, 2, 3),
    (1, 2, 0, 1),
    (1, 1, 0, 1),  # pointwise: "auto" writes it as a convolution whatever the groups
]


def _conv_args(k, s, p, d) -> tuple[list[int], list[int], list[int], list[int]]:
    pair = torch.nn.modules.utils._pair
    return list(pair(k)), list(pair(s)), list(pair(p)), list(pair(d))


@pytest.mark.parametrize("params", DEPTHWISE, ids=str)
@pytest.mark.parametrize(("groups", "out_channels"), [(6, 6), (6, 12), (3, 9), (1, 4)],
                         ids=["depthwise", "multiplier", "grouped", "dense"])
def test_convolution_backward_forms_equal_autograd(params, groups: int, out_channels: int) -> None:
    """Every form of the rule against eager autograd in float64, on a 2×6×13×11 input: the flipped
    convolution (what "auto" writes for depthwise convolutions, "conv" for all) and the transposed
    one are the same sums."""
    from camrt.exporter.rules import CONV_BACKWARD_FORMS, convolution_backward

    k, s, p, d = _conv_args(*params)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 6, 13, 11, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(out_channels, 6 // groups, *k, generator=g, dtype=torch.float64)
    y = torch.nn.functional.conv2d(x, w, None, s, p, d, groups)
    go = torch.randn(y.shape, generator=g, dtype=torch.float64)
    (ref,) = torch.autograd.grad(y, x, go)
    for form in CONV_BACKWARD_FORMS:
        grad, none_w, none_b = convolution_backward(go, x.detach(), w, None, s, p, d, False, [0, 0], groups,
                                                    [True, False, False], form=form)
        assert none_w is None and none_b is None
        torch.testing.assert_close(grad, ref, rtol=1e-12, atol=1e-12, msg=lambda m, f=form: f"{f}: {m}")


@pytest.mark.parametrize("dims", [1, 3])
def test_depthwise_backward_in_1d_and_3d(dims: int) -> None:
    from camrt.exporter.rules import convolution_backward

    conv = {1: torch.nn.functional.conv1d, 3: torch.nn.functional.conv3d}[dims]
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 4, *[9, 8, 7][:dims], generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 1, *[3] * dims, generator=g, dtype=torch.float64)
    y = conv(x, w, None, 2, 1, 2, 4)
    go = torch.randn(y.shape, generator=g, dtype=torch.float64)
    (ref,) = torch.autograd.grad(y, x, go)
    grad, _, _ = convolution_backward(go, x.detach(), w, None, [2] * dims, [1] * dims, [2] * dims, False,
                                      [0] * dims, 4, [True, False, False])
    torch.testing.assert_close(grad, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("form", ["auto", "transpose"])
@pytest.mark.parametrize(("k", "s", "p", "ceil", "count_pad", "divisor"), [
    (3, 2, 1, True, False, None), (3, 2, 1, True, True, None), (2, 2, 0, True, True, None),
    (3, 1, 1, False, True, None), ((3, 2), (2, 1), (1, 0), False, False, None), (2, 2, 0, False, True, 3),
], ids=str)
def test_avg_pool_backward_forms_equal_autograd(form: str, k, s, p, ceil: bool, count_pad: bool, divisor) -> None:
    from camrt.exporter.rules import avg_pool2d_backward

    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 3, 13, 11, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.nn.functional.avg_pool2d(x, k, s, p, ceil, count_pad, divisor)
    go = torch.randn(y.shape, generator=g, dtype=torch.float64)
    (ref,) = torch.autograd.grad(y, x, go)
    k2, s2, p2, _ = _conv_args(k, s, p, 1)
    ours = avg_pool2d_backward(go, x.detach(), k2, s2, p2, ceil, count_pad, divisor, form=form)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)


class DepthNet(nn.Module):
    """Depthwise convolutions after the target on odd sizes (a 17×13 input): stride 1 with the
    usual padding, padding beyond dilation·(k−1), dilation, stride 2 on an odd size, stride 3 with a
    column read by no window, an asymmetric kernel; each followed by tanh (no ties)."""

    def __init__(self, c: int = 6) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)  # 17×13
        self.dw = nn.Sequential(
            nn.Conv2d(c, c, 3, padding=1, groups=c),  # 17×13
            nn.Tanh(),
            nn.Conv2d(c, c, 3, padding=4, groups=c, bias=False),  # 23×19
            nn.Tanh(),
            nn.Conv2d(c, c, 5, padding=3, dilation=2, groups=c),  # 21×17
            nn.Tanh(),
            nn.Conv2d(c, c, 3, stride=2, padding=1, groups=c),  # 11×9
            nn.Tanh(),
            nn.Conv2d(c, c, (3, 2), stride=(1, 3), padding=(2, 0), groups=c),  # 13×3, the last column unread
            nn.Tanh(),
        )
        self.fc = nn.Linear(c * 13 * 3, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dw(self.stem(x)).flatten(1))


def test_depthwise_convolutions_after_target_match_eager(tmp_path) -> None:
    """Exported with camrt's default form: every depthwise backward is a Conv (group = C), not a
    ConvTranspose (the dense stem's input gradient still is). Gradients of the stem and of the
    input against eager float64 on fresh inputs (other batch sizes than the example's), a
    different class for each image."""
    torch.manual_seed(0)
    model = DepthNet().eval()
    for m in model.modules():
        if isinstance(m, nn.Conv2d):  # weights large enough for the gradient not to vanish
            nn.init.normal_(m.weight, std=0.8)
    path = str(tmp_path / "m.onnx")
    camrt.export(model, layers=["stem"], path=path, input_shape=(1, 3, 17, 13), input_gradient=True)
    nodes = onnx.load(path).graph.node
    def groups(op: str) -> list[int]:
        return [next((a.i for a in n.attribute if a.name == "group"), 1) for n in nodes if n.op_type == op]

    assert groups("Conv").count(6) == 10  # five depthwise convolutions forward, five backward
    assert groups("ConvTranspose") == [1]  # the stem's (dense) input gradient only
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    for seed, n in [(5, 4), (6, 3)]:
        x = np.random.default_rng(seed).normal(size=(n, 3, 17, 13)).astype(np.float32)
        with torch.no_grad():
            top = int(model(torch.from_numpy(x[:1])).argmax())
        cls = np.array([-1, *[c for c in (4, 0, 2, 1, 3) if c != top][: n - 1]])  # top-1, then other classes
        got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"input": x, "class_idx": cls}),
                       strict=True))
        ref = eager_cam_outputs(model, x, cls, ["stem"], input_gradient=True)
        assert len(set(ref["class_idx_used"].tolist())) == len(cls)  # a different class per image
        np.testing.assert_array_equal(got["class_idx_used"], ref["class_idx_used"])
        assert_close("logits", got["logits"], ref["logits"])
        for name in ("gradient.stem", "gradient.input"):
            assert np.abs(ref[name]).max() > 0
            assert_close(name, got[name], ref[name])
        assert np.all(ref["gradient.input"][..., -1] != 0)  # the unread column is in the stem's receptive field


class DilatedNet(nn.Module):
    """DeepLab's pattern after the target: parallel dense 3×3 convolutions of several dilations."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.branches = nn.ModuleList(nn.Conv2d(8, 4, 3, padding=d, dilation=d) for d in (2, 3, 5))
        self.fc = nn.Linear(12, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stem(x)
        y = torch.cat([torch.relu(b(s)) for b in self.branches], dim=1)
        return self.fc(y.mean(dim=(2, 3)))


def test_dilated_convolutions_backward_as_convolutions(tmp_path) -> None:
    """The default form writes a dilated convolution's input gradient as a Conv (ONNX Runtime's CPU
    ConvTranspose has no fast path for dilation), not a ConvTranspose; gradients against eager
    float64 on a fresh input."""
    torch.manual_seed(0)
    model = DilatedNet().eval()
    path = str(tmp_path / "d.onnx")
    camrt.export(model, layers=["stem"], path=path, input_shape=(1, 3, 19, 17))
    ops = [n.op_type for n in onnx.load(path).graph.node]
    assert "ConvTranspose" not in ops and ops.count("Conv") == 1 + 3 + 3
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(4).normal(size=(3, 3, 19, 17)).astype(np.float32)
    cls = np.array([-1, 2, 4])
    got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"input": x, "class_idx": cls}), strict=True))
    ref = eager_cam_outputs(model, x, cls, ["stem"])
    assert_close("gradient.stem", got["gradient.stem"], ref["gradient.stem"])


class PointwiseNet(nn.Module):
    """A segmentation head's pattern after the target: 1×1 convolutions of stride 1 (a classifier,
    a projection) and one of stride 2."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.project = nn.Conv2d(8, 6, 1)
        self.down = nn.Conv2d(6, 7, 1, stride=2)
        self.fc = nn.Linear(7, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.down(torch.relu(self.project(self.stem(x))))).mean(dim=(2, 3)))


def test_pointwise_convolutions_backward_as_convolutions(tmp_path) -> None:
    """The default form writes a 1×1 stride-1 convolution's input gradient as the 1×1 Conv with the
    transposed weight (ONNX Runtime's CPU ConvTranspose took 0.77 against 0.13 ms for LR-ASPP's
    classifier); the strided one keeps its ConvTranspose. Gradients against eager float64 on a
    fresh input, a different class per image."""
    torch.manual_seed(0)
    model = PointwiseNet().eval()
    path = str(tmp_path / "p.onnx")
    camrt.export(model, layers=["stem"], path=path, input_shape=(1, 3, 15, 12))
    ops = [n.op_type for n in onnx.load(path).graph.node]
    assert ops.count("ConvTranspose") == 1 and ops.count("Conv") == 3 + 1
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(7).normal(size=(3, 3, 15, 12)).astype(np.float32)
    cls = np.array([-1, 2, 4])
    got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"input": x, "class_idx": cls}), strict=True))
    ref = eager_cam_outputs(model, x, cls, ["stem"])
    assert np.abs(ref["gradient.stem"]).max() > 0
    assert_close("gradient.stem", got["gradient.stem"], ref["gradient.stem"])
