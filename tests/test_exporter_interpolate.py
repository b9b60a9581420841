"""camrt.exporter.interpolate: F.interpolate as R_h · X · R_wᵀ, against PyTorch's own resize in
float64 (forward and gradient), the calls it leaves to PyTorch, and an export whose graph then
holds MatMuls instead of GatherND/ScatterND."""

from __future__ import annotations

import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import camrt
from camrt.exporter.interpolate import SeparableResize, separable_resize

CASES = [
    dict(size=(29, 40), mode="bilinear", align_corners=False),
    dict(size=(29, 40), mode="bilinear", align_corners=True),
    dict(size=(5, 4), mode="bilinear", align_corners=False),  # downsampling
    dict(size=(1, 1), mode="bilinear", align_corners=True),
    dict(scale_factor=2, mode="bilinear", align_corners=False),
    dict(scale_factor=(3, 2), mode="nearest"),
    dict(size=(17, 9), mode="nearest"),
    dict(size=(4, 3), mode="nearest"),
    dict(size=7, mode="bilinear", align_corners=False),
]


@pytest.mark.parametrize("kwargs", CASES, ids=str)
def test_separable_resize_equals_pytorch_with_its_gradient(kwargs) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 11, 8, generator=g, dtype=torch.float64, requires_grad=True)
    ref = F.interpolate(x, **kwargs)
    ours = separable_resize(x, **kwargs)
    assert ours is not None and ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    go = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    (g_ref,) = torch.autograd.grad(ref, x, go)
    (g_ours,) = torch.autograd.grad(ours, x, go)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kwargs", [
    dict(size=(9, 9), mode="bicubic", align_corners=False),
    dict(size=(9, 9), mode="bilinear", align_corners=False, antialias=True),
    dict(scale_factor=1.5, mode="bilinear", align_corners=False),  # 11 · 1.5 is not a whole size
    dict(size=(9, 9), mode="nearest-exact"),
], ids=str)
def test_calls_it_cannot_write_exactly_are_left_to_pytorch(kwargs) -> None:
    x = torch.randn(1, 2, 11, 8)
    assert separable_resize(x, **kwargs) is None
    with SeparableResize():
        torch.testing.assert_close(F.interpolate(x, **kwargs), F.interpolate(x, **kwargs))
    assert separable_resize(torch.randn(1, 2, 11), size=5, mode="linear") is None


def test_the_mode_knows_what_it_resized() -> None:
    """`source` of a tensor the mode returned is the tensor it resized (the input given by
    position or by name); of anything else, None."""
    x = torch.randn(1, 2, 4, 4)
    with SeparableResize() as mode:
        y = F.interpolate(x, size=8, mode="bilinear", align_corners=False)
        z = F.interpolate(input=x, scale_factor=2, mode="nearest")
        w = F.interpolate(x, size=(5, 5), mode="bicubic", align_corners=False)  # left to PyTorch
    assert mode.source(y) is x and mode.source(z) is x
    assert mode.source(w) is None and mode.source(x) is None and mode.source(y.clone()) is None
    torch.testing.assert_close(z, F.interpolate(x, scale_factor=2, mode="nearest"))


class Head(nn.Module):
    """A segmentation-style head: features at 1/4, classes upsampled back, bilinear and nearest."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=4, padding=1)
        self.cls = nn.Conv2d(8, 5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = torch.relu(self.stem(x))
        up = F.interpolate(self.cls(f), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return up + F.interpolate(self.cls(f), scale_factor=4, mode="nearest")


def test_export_writes_matmuls_not_gathers(tmp_path) -> None:
    """Verified against eager PyTorch at export (target mode: the whole upsampled output); the
    graph resizes and back-propagates with MatMul."""
    path = tmp_path / "head.cam.onnx"
    camrt.export(Head().eval(), layers=["stem"], path=path, input_shape=(1, 3, 24, 32), target=True)
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert "MatMul" in ops and not ops & {"GatherND", "ScatterND", "Resize", "GatherElements", "ScatterElements"}
