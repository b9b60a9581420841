"""Tiny models (a few conv layers, 32×32 inputs) for the exporter tests, and their comparison rule.

`TinyNet` is importable as `--arch tests.tiny:TinyNet`. The oracle is `tests.oracle.eager_cam`
(re-exported here for the exporter tests): each image's gradient is that of its own class score,
so comparing a batch also checks that the exported graph keeps images apart.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from tests.oracle import eager_cam  # noqa: F401 - the one oracle, imported from here by the exporter tests

SHAPE = (1, 3, 32, 32)


def _randomize_bn(model: nn.Module, seed: int) -> None:
    """Non-trivial running statistics, so eval and train mode give different outputs."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)


class TinyNet(nn.Module):
    """conv1 → relu → layer1 → relu → layer2 → pool → fc. `relu` is one module used twice."""

    def __init__(self, num_classes: int = 5) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.layer1 = nn.Sequential(nn.Conv2d(4, 6, 3, stride=2, padding=1), nn.BatchNorm2d(6))
        self.layer2 = nn.Sequential(nn.Conv2d(6, 8, 3, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, num_classes)
        _randomize_bn(self, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.conv1(x))
        x = self.relu(self.layer1(x))
        x = self.layer2(x)
        return self.fc(self.pool(x).flatten(1))


class TupleNet(TinyNet):
    """Returns (features, logits): the class scores are output 1."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.relu(self.conv1(x))
        x = self.relu(self.layer1(x))
        x = self.layer2(x)
        return x, self.fc(self.pool(x).flatten(1))


class PoolNet(nn.Module):
    """Average pools that exercise camrt's backward rules on a 29×29 input.

    avg1: k3 s2 p1, ceil_mode, count_include_pad=False (27 → 14, last window cut by the border);
    avg2: k3 s2 p1, ceil_mode, count_include_pad=True (14 → 8, a window past the padding);
    avg3: F.avg_pool2d k2 s2, ceil_mode, no padding (15 → 8, the last window is one wide);
    adapt: adaptive average pooling 7×7 → 3×3 (overlapping bins).
    """

    SHAPE = (1, 3, 29, 29)

    def __init__(self, num_classes: int = 6) -> None:
        super().__init__()
        self.conv_a = nn.Conv2d(3, 4, 3)  # 27×27
        self.avg1 = nn.AvgPool2d(3, stride=2, padding=1, ceil_mode=True, count_include_pad=False)  # 14×14
        self.conv_b = nn.Conv2d(4, 6, 3, padding=1)  # 14×14
        self.avg2 = nn.AvgPool2d(3, stride=2, padding=1, ceil_mode=True, count_include_pad=True)  # 8×8
        self.conv_c = nn.Conv2d(6, 6, 2, padding=4)  # 15×15
        self.conv_d = nn.Conv2d(6, 6, 2)  # 8 → 7
        self.adapt = nn.AdaptiveAvgPool2d(3)
        self.fc = nn.Linear(6 * 9, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.tanh(self.avg1(self.conv_a(x)))
        x = torch.tanh(self.avg2(self.conv_b(x)))
        x = torch.tanh(F.avg_pool2d(self.conv_c(x), 2, stride=2, ceil_mode=True))
        x = torch.tanh(self.adapt(self.conv_d(x)))
        return self.fc(x.flatten(1))


class ConvNet(nn.Module):
    """Strided, dilated, grouped and depthwise convolutions with odd sizes, and a max pool, on 31×31."""

    SHAPE = (1, 3, 31, 31)

    def __init__(self, num_classes: int = 7) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 6, 3, stride=2, padding=1)  # 16×16
        self.c2 = nn.Conv2d(6, 6, 3, dilation=2, padding=1, bias=False)  # 14×14
        # 14×14 → 7×3; the last input column is read by no window.
        self.c3 = nn.Conv2d(6, 9, (3, 5), stride=(2, 4), padding=(1, 0), groups=3)
        self.c4 = nn.Conv2d(9, 9, 3, padding=2, dilation=2, groups=9)  # depthwise, 7×3
        self.mp = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)  # 4×2
        self.fc = nn.Linear(9 * 4 * 2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.tanh(self.c1(x))
        x = torch.tanh(self.c2(x))
        x = self.c3(x)
        x = self.mp(self.c4(torch.tanh(x)))  # max over conv outputs: no ties
        return self.fc(torch.tanh(x).flatten(1))


def make(cls: type[nn.Module], seed: int = 0, **kwargs) -> nn.Module:
    """A model in eval mode with seeded weights; classifier heads get larger weights and no bias
    so that the top class depends on the input."""
    torch.manual_seed(seed)
    model = cls(**kwargs).eval()
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=3 * m.in_features ** -0.5)
            nn.init.zeros_(m.bias)
    return model


def inputs(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Noise plus a per-image, per-channel offset, so that images differ after global pooling."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g) + 2 * torch.randn(shape[0], shape[1], 1, 1, generator=g)).numpy()


def diverse_inputs(model: nn.Module, shape: tuple[int, ...], seed: int, output_index: int | None = None) -> np.ndarray:
    """`shape[0]` inputs whose top classes are not all the same (picked from 64 candidates)."""
    pool = inputs((64, *shape[1:]), seed)
    with torch.no_grad():
        out = model.eval()(torch.from_numpy(pool))
    top = (out if output_index is None else out[output_index]).argmax(1).numpy()
    first = [int(np.flatnonzero(top == c)[0]) for c in np.unique(top)]
    assert len(first) > 1, "every candidate has the same top class"
    rest = [i for i in range(64) if i not in first]
    return pool[(first + rest)[: shape[0]]]


def assert_matches(got: dict[str, np.ndarray], ref: dict[str, np.ndarray], rtol: float = 1e-4) -> None:
    """Every reference tensor is present with the same shape, and agrees within `rtol` of its
    largest magnitude; gradients must not be all zero (that would make the comparison vacuous)."""
    for k, r in ref.items():
        assert k in got, f"missing output {k}"
        g = got[k]
        assert g.shape == r.shape, f"{k}: shape {g.shape} != {r.shape}"
        if k == "class_idx_used":
            np.testing.assert_array_equal(g, r, err_msg=k)
            continue
        scale = float(np.abs(r).max())
        assert scale > 0, f"{k}: the reference is all zero"
        err = float(np.abs(g.astype(np.float64) - r).max()) / scale
        assert err < rtol, f"{k}: max error {err:.2e} of the largest magnitude (tolerance {rtol})"


# Callables for --arch tests (MODULE:CALLABLE is called with no arguments).


def tiny_net_7() -> nn.Module:
    """TinyNet with 7 classes: the same keys as TinyNet, another head shape."""
    return TinyNet(num_classes=7)


def broken_arch() -> nn.Module:
    raise ValueError("boom in the architecture")


def not_a_module() -> int:
    return 42


class ResNetty(nn.Module):
    """A stem and one residual block: the skip from `stem` crosses a cut at `block.2`."""

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.block = nn.Sequential(nn.Conv2d(6, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1))
        self.head = nn.Conv2d(6, 8, 3, stride=2)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.relu(self.stem(x))
        x = torch.relu(self.block(s) + s)
        x = torch.relu(self.head(x))
        return self.fc(x.mean((2, 3)))
