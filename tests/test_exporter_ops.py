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


@pytest.mark.parametrize("params", MAX_POOLS, ids=str)
@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
def test_max_pool_backward_rule_equals_native(params, ties: bool) -> None:
    """The rule against PyTorch's native kernel in float64: equal up to the order of additions."""
    from camrt.exporter.rules import max_pool2d_with_indices_backward

    k, s, p, d, ceil = params
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 13, 11, generator=g, dtype=torch.float64)
    if ties:  # few distinct values: most windows hold their maximum several times
        x = x.round()
    y, idx = torch.nn.functional.max_pool2d(x, k, s, p, d, ceil_mode=ceil, return_indices=True)
    go = torch.randn(y.shape, generator=g, dtype=torch.float64)
    args = (list(torch.nn.modules.utils._pair(k)), list(torch.nn.modules.utils._pair(s)),
            list(torch.nn.modules.utils._pair(p)), list(torch.nn.modules.utils._pair(d)), ceil)
    native = torch.ops.aten.max_pool2d_with_indices_backward(go, x, *args, idx)
    ours = max_pool2d_with_indices_backward(go, x, *args, idx)
    torch.testing.assert_close(ours, native, rtol=1e-12, atol=1e-12)


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
    assert "ScatterElements" not in {n.op_type for n in onnx.load(path).graph.node}
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
