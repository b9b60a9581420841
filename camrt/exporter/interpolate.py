"""Bilinear and nearest resizing traced as two matrix products, forward and backward.

Traced with autograd, ``F.interpolate`` decomposes into index gathers (``_unsafe_index``) and its
backward into index scatters (``_unsafe_index_put``), which the ONNX exporter writes as GatherND
and ScatterND: on ONNX Runtime's CPU provider, torchvision's DeepLabV3-MobileNetV3 at 4×256×256
ran its forward 2.5× slower than a plain export (which keeps one Resize) and its gradient through
the head slower still. A resize of an N×C×H×W tensor to H'×W' is linear and separable:

    out = R_h · X · R_wᵀ        R_h: H'×H, R_w: W'×W, constants fixed by the sizes and the mode

and its vector-Jacobian product is ``R_hᵀ · G · R_w``: two MatMuls each way. `SeparableResize`
is a torch function mode the exporter traces under; it replaces the calls whose matrices it can
write exactly as PyTorch computes them, and leaves every other call to PyTorch:

- ``mode="bilinear"``, ``align_corners=False``: half-pixel source coordinates, clamped
  (`camrt.methods._core._interpolation_taps`, the same taps camrt's map upsampling uses);
- ``mode="bilinear"``, ``align_corners=True``: source ``i · (H − 1)/(H' − 1)``;
- ``mode="nearest"``: source ``floor(i · H/H')``;

on 4-D inputs, without antialiasing, given an output size, or a scale factor that makes whole
output sizes (then the two coordinate rules coincide). The export's check against eager PyTorch
(`camrt.exporter.verify`) compares the result with PyTorch's own resize.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from camrt.methods._core import _interpolation_taps


def _matrix(n_in: int, n_out: int, mode: str, align_corners: bool) -> np.ndarray:
    """R (n_out × n_in) with ``out = R · in`` along one axis."""
    r = np.zeros((n_out, n_in), np.float64)
    rows = np.arange(n_out)
    if mode == "nearest":
        r[rows, np.minimum(np.floor(rows * (n_in / n_out)).astype(np.int64), n_in - 1)] = 1.0
        return r
    if align_corners:
        src = rows * ((n_in - 1) / (n_out - 1)) if n_out > 1 else np.zeros(1)
        lo = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
        hi = np.minimum(lo + 1, n_in - 1)
        frac = src - lo
    else:
        lo, hi, frac = _interpolation_taps(n_in, n_out)
    np.add.at(r, (rows, lo), 1.0 - frac)
    np.add.at(r, (rows, hi), frac)
    return r


def _out_sizes(h: int, w: int, size: object, scale_factor: object) -> tuple[int, int] | None:
    if size is not None:
        sizes = (size, size) if isinstance(size, (int, torch.SymInt)) else tuple(size)
        return (int(sizes[0]), int(sizes[1])) if len(sizes) == 2 else None
    if scale_factor is None:
        return None
    scales = (scale_factor, scale_factor) if isinstance(scale_factor, (int, float)) else tuple(scale_factor)
    if len(scales) != 2:
        return None
    outs = (h * float(scales[0]), w * float(scales[1]))
    if any(o != int(o) for o in outs):  # PyTorch then maps coordinates by 1/scale, not by the sizes
        return None
    return int(outs[0]), int(outs[1])


def separable_resize(x: torch.Tensor, size: object = None, scale_factor: object = None, mode: str = "nearest",
                     align_corners: bool | None = None, recompute_scale_factor: bool | None = None,
                     antialias: bool = False) -> torch.Tensor | None:
    """``F.interpolate(x, ...)`` as ``R_h · x · R_wᵀ``, or None when the call is not one this module
    writes exactly (module docstring)."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or antialias or mode not in ("bilinear", "nearest"):
        return None
    if mode == "nearest" and align_corners:
        return None
    h, w = int(x.shape[2]), int(x.shape[3])
    sizes = _out_sizes(h, w, size, scale_factor)
    if sizes is None or min(sizes) < 1:
        return None
    corners = bool(align_corners) if mode == "bilinear" else False
    r_h = torch.from_numpy(_matrix(h, sizes[0], mode, corners)).to(x.dtype)
    r_w = torch.from_numpy(_matrix(w, sizes[1], mode, corners).T.copy()).to(x.dtype)
    return torch.matmul(torch.matmul(r_h, x), r_w)


class SeparableResize(TorchFunctionMode):
    """Within this mode, ``F.interpolate`` calls that `separable_resize` writes exactly become two
    matrix products; the rest run as PyTorch's. The mode remembers what it resized: `source` of
    a tensor it returned is the tensor it was computed from."""

    def __init__(self) -> None:
        super().__init__()
        self._resized: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # id(out) -> (out, x), out kept alive

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.interpolate and (args or "input" in kwargs):
            rest = {k: v for k, v in kwargs.items() if k != "input"}
            x = args[0] if args else kwargs["input"]
            out = separable_resize(x, *args[1:], **rest)
            if out is not None:
                self._resized[id(out)] = (out, x)
                return out
        return func(*args, **kwargs)

    def source(self, t: torch.Tensor) -> torch.Tensor | None:
        """The input of the resize that returned `t` within this mode, or None if `t` is not one."""
        out, x = self._resized.get(id(t), (None, None))
        return x if out is t else None
