"""Backward rules that torch has no decomposition for, written as forward ATen ops.

`make_fx` traces the backward pass of the network down to the target activation. Most backward
ops decompose into forward ops through torch's own tables; the first three below are core ATen
ops with no decomposition, so camrt owns them, and max-pool backward has one that scatters
(see its rule for why camrt replaces it). Spatial sizes are static at export time (only the
batch is dynamic), so every padding below is an ordinary Python integer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch._decomp import core_aten_decompositions

aten = torch.ops.aten


def _crop_or_pad(t: torch.Tensor, start: Sequence[int], size: Sequence[int]) -> torch.Tensor:
    """Take `size[d]` elements from position `start[d]` along the last len(size) dims, zero-padding
    where the window leaves the tensor (this happens with ceil_mode pooling)."""
    pads: list[int] = []
    for d in reversed(range(len(size))):
        have = t.shape[t.dim() - len(size) + d]
        before = max(0, -start[d])
        after = max(0, start[d] + size[d] - have)
        pads += [before, after]
    if any(pads):
        t = torch.nn.functional.pad(t, pads)
    index = [slice(None)] * (t.dim() - len(size))
    for d in range(len(size)):
        s = max(0, start[d])
        index.append(slice(s, s + size[d]))
    return t[tuple(index)]


def convolution_backward(
    grad_output: torch.Tensor,
    input: torch.Tensor,  # noqa: A002 - ATen's argument name
    weight: torch.Tensor,
    bias_sizes: Sequence[int] | None,
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    transposed: bool,
    output_padding: Sequence[int],
    groups: int,
    output_mask: Sequence[bool],
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Input gradient of a (non-transposed) N-d convolution as a transposed convolution.

    Only the input gradient is produced: weights are constants of the exported graph. The
    transposed convolution is run without padding and cropped to the input window, which is
    exact for every stride, dilation and padding (including those where an output padding
    would otherwise be needed).
    """
    if transposed:
        raise NotImplementedError("convolution_backward of a transposed convolution")
    if output_mask[1] or output_mask[2]:
        raise NotImplementedError("weight or bias gradients are not exported")
    spatial = input.shape[2:]
    full = aten.convolution(
        grad_output, weight, None, stride, [0] * len(spatial), dilation, True,
        [0] * len(spatial), groups,
    )
    grad_input = _crop_or_pad(full, list(padding), list(spatial))
    return grad_input, None, None


def _adaptive_bins(size_in: int, size_out: int) -> torch.Tensor:
    """Matrix P (size_out × size_in) with P[i, j] = 1/len(bin i) when j is in bin i."""
    p = torch.zeros(size_out, size_in)
    for i in range(size_out):
        start = (i * size_in) // size_out
        end = -((-(i + 1) * size_in) // size_out)
        p[i, start:end] = 1.0 / (end - start)
    return p


def adaptive_avg_pool2d_backward(grad_output: torch.Tensor, input: torch.Tensor) -> torch.Tensor:  # noqa: A002
    """Gradient of adaptive average pooling: each output bin spreads its gradient evenly."""
    h_in, w_in = input.shape[-2:]
    h_out, w_out = grad_output.shape[-2:]
    ph = _adaptive_bins(h_in, h_out).to(grad_output.dtype)
    pw = _adaptive_bins(w_in, w_out).to(grad_output.dtype)
    return torch.matmul(torch.matmul(ph.t(), grad_output), pw)


def _pair(v: Sequence[int]) -> tuple[int, int]:
    return (v[0], v[0]) if len(v) == 1 else (v[0], v[1])


def avg_pool2d_backward(
    grad_output: torch.Tensor,
    input: torch.Tensor,  # noqa: A002
    kernel_size: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    ceil_mode: bool,
    count_include_pad: bool,
    divisor_override: int | None,
) -> torch.Tensor:
    """Gradient of 2-d average pooling: divide by each window's divisor, then scatter with a
    depthwise transposed convolution of ones, cropped to the input window."""
    kh, kw = _pair(kernel_size)
    sh, sw = _pair(stride) if len(stride) else (kh, kw)
    ph, pw = _pair(padding)
    h_in, w_in = input.shape[-2:]
    h_out, w_out = grad_output.shape[-2:]
    channels = input.shape[-3]
    # Computed in Python and made one constant: element-wise writes to a tensor would each be
    # traced as an op (20 s of export for one 14×14 pooled map, growing with the map size).
    divisor = [[float(divisor_override or 0)] * w_out for _ in range(h_out)]
    if not divisor_override:
        for i in range(h_out):
            hs, he = i * sh - ph, min(i * sh - ph + kh, h_in + ph)
            for j in range(w_out):
                ws, we = j * sw - pw, min(j * sw - pw + kw, w_in + pw)
                if count_include_pad:
                    divisor[i][j] = (he - hs) * (we - ws)
                else:
                    divisor[i][j] = (min(he, h_in) - max(hs, 0)) * (min(we, w_in) - max(ws, 0))
    scaled = grad_output / torch.tensor(divisor, dtype=grad_output.dtype)
    ones = torch.ones(channels, 1, kh, kw, dtype=grad_output.dtype)
    full = aten.convolution(scaled, ones, None, [sh, sw], [0, 0], [1, 1], True, [0, 0], channels)
    return _crop_or_pad(full, [ph, pw], [h_in, w_in])


def max_pool2d_with_indices_backward(
    grad_output: torch.Tensor,
    input: torch.Tensor,  # noqa: A002
    kernel_size: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    ceil_mode: bool,
    indices: torch.Tensor,
) -> torch.Tensor:
    """Gradient of 2-d max pooling without a scatter: for each kernel offset, keep the gradient of
    the windows whose maximum (`indices`, flat positions in the input plane) sits at that offset,
    then place all offsets at once with a grouped transposed convolution of one-hot kernels,
    cropped to the input window. Windows sharing a maximum add up, as in the native kernel.

    torch's own decomposition scatters with ScatterElements(reduction=add), which the CUDA and
    TensorRT providers handle poorly, and it steps aside in deterministic mode; `ceil_mode` only
    shows in the output size, which `grad_output` carries.
    """
    if input.dim() != 4:
        raise NotImplementedError("max_pool2d backward of an unbatched input")
    kh, kw = _pair(kernel_size)
    sh, sw = _pair(stride) if len(stride) else (kh, kw)
    ph, pw = _pair(padding)
    dh, dw = _pair(dilation)
    h_in, w_in = input.shape[-2:]
    h_out, w_out = grad_output.shape[-2:]
    channels = input.shape[-3]
    # Where offset (a, b) of window (i, j) falls in the flat input plane; -1 in the padding (a flat
    # index computed there would alias a position of the neighbouring row). One constant, K×h×w.
    rows = [[i * sh - ph + a * dh for i in range(h_out)] for a in range(kh)]
    cols = [[j * sw - pw + b * dw for j in range(w_out)] for b in range(kw)]
    where = [[[r * w_in + c if 0 <= r < h_in and 0 <= c < w_in else -1 for c in cols[b]] for r in rows[a]]
             for a in range(kh) for b in range(kw)]
    at_offset = indices.unsqueeze(2) == torch.tensor(where, dtype=indices.dtype)  # N×C×K×h_out×w_out
    picked = torch.where(at_offset, grad_output.unsqueeze(2), torch.zeros((), dtype=grad_output.dtype))
    onehot = torch.eye(kh * kw, dtype=grad_output.dtype).reshape(kh * kw, 1, kh, kw).repeat(channels, 1, 1, 1)
    full = aten.convolution(picked.flatten(1, 2), onehot, None, [sh, sw], [0, 0], [dh, dw], True, [0, 0], channels)
    return _crop_or_pad(full, [ph, pw], [h_in, w_in])


OWN_RULES: dict[torch._ops.OpOverload, Callable] = {
    aten.convolution_backward.default: convolution_backward,
    aten._adaptive_avg_pool2d_backward.default: adaptive_avg_pool2d_backward,
    aten.avg_pool2d_backward.default: avg_pool2d_backward,
    aten.max_pool2d_with_indices_backward.default: max_pool2d_with_indices_backward,
}


def backward_decompositions() -> dict:
    """The table given to make_fx: torch's decompositions of backward ops only (forward ops stay
    whole so ONNX Runtime can fuse them as in a plain export) and camrt's own rules."""
    table = {k: v for k, v in core_aten_decompositions().items() if "backward" in str(k)}
    table.update(OWN_RULES)
    return table
