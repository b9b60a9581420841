"""Backward rules that torch has no decomposition for, written as forward ATen ops.

`make_fx` traces the backward pass of the network down to the target activation. Most backward
ops decompose into forward ops through torch's own tables; the first three below are core ATen
ops with no decomposition, so camrt owns them, and max-pool backward has one that scatters
(see its rule for why camrt replaces it). Spatial sizes are static at export time (only the
batch is dynamic), so every padding below is an ordinary Python integer.

Every "scatter back onto the input grid" below is a transposed convolution. For the backward of
a depthwise, a dilated or a pointwise convolution, of average pooling and of max pooling camrt
writes it as an ordinary convolution instead: the gradient zero-inserted by the stride, then
convolved with the spatially flipped kernel (`_transposed_as_conv`); see `convolution_backward`
for why. Other convolutions keep the transposed convolution (ConvTranspose).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import torch
from torch._decomp import core_aten_decompositions
from torch._subclasses.fake_tensor import FakeTensor, unset_fake_temporarily
from torch.fx.experimental.proxy_tensor import disable_proxy_modes_tracing

aten = torch.ops.aten

# How convolution_backward writes an input gradient: "auto" (the default) as a convolution for
# depthwise, dilated and pointwise (1×1, stride 1) convolutions and as a transposed convolution
# otherwise, "conv" always as a convolution, "transpose" always as a transposed convolution
# (camrt's only form until the depthwise one was added; kept so that the two can be timed on a GPU).
CONV_BACKWARD_FORMS = ("auto", "conv", "transpose")


def _static(sizes: Sequence) -> list[int]:
    """Sizes as Python integers. Symbolic tracing makes every dimension a SymInt; all but the
    batch are static at export time, and the rules below compute paddings and constants from them."""
    return [int(d) for d in sizes]


def _crop_or_pad(t: torch.Tensor, start: Sequence[int], size: Sequence[int]) -> torch.Tensor:
    """Take `size[d]` elements from position `start[d]` along the last len(size) dims, zero-padding
    where the window leaves the tensor (this happens with ceil_mode pooling)."""
    pads: list[int] = []
    for d in reversed(range(len(size))):
        have = int(t.shape[t.dim() - len(size) + d])
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


def _pad_edges(t: torch.Tensor, lead: Sequence[int], trail: Sequence[int], value: float = 0.0) -> torch.Tensor:
    """Add `lead[d]` elements before and `trail[d]` after along the last len(lead) dims, filled
    with `value`; a negative count removes that many instead."""
    n = len(lead)
    pads: list[int] = []
    for d in reversed(range(n)):
        pads += [max(0, lead[d]), max(0, trail[d])]
    if any(pads):
        t = torch.nn.functional.pad(t, pads, value=value)
    if any(a < 0 or b < 0 for a, b in zip(lead, trail, strict=True)):
        index = [slice(None)] * (t.dim() - n)
        for d in range(n):
            size = int(t.shape[t.dim() - n + d])
            index.append(slice(max(0, -lead[d]), size - max(0, -trail[d])))
        t = t[tuple(index)]
    return t


def _zero_insert(t: torch.Tensor, stride: Sequence[int]) -> torch.Tensor:
    """Each element of the last len(stride) dims followed by stride-1 zeros along that dim
    (size h becomes h·s): what a transposed convolution of stride s scatters onto. Written as
    an unsqueeze, a Pad and a Reshape, so it is exact and needs no grouped or transposed op."""
    n = len(stride)
    if all(s == 1 for s in stride):
        return t
    lead = t.dim() - n
    spatial = _static(t.shape[lead:])
    for d in range(n):  # ..., h1, 1, h2, 1, ...
        t = t.unsqueeze(lead + 2 * d + 1)
    pads: list[int] = []
    for d in reversed(range(n)):
        pads += [0, stride[d] - 1, 0, 0]
    t = torch.nn.functional.pad(t, pads)
    return t.reshape(*t.shape[:lead], *(h * s for h, s in zip(spatial, stride, strict=True)))


def _constant(f: Callable[[torch.Tensor], torch.Tensor], weight: torch.Tensor) -> torch.Tensor:
    """`f(weight)` computed now, outside the trace, when `weight` is a real tensor (a parameter):
    the graph then holds the result as one initializer rather than ops on the weight (the ONNX
    exporter's constant folding, onnxscript 0.7.2, skips inputs over 8192 elements, and TensorRT
    wants convolution weights it can import as weights). A weight computed in the forward is
    transformed by traced ops."""
    if isinstance(weight, FakeTensor):
        return f(weight)
    with unset_fake_temporarily(), disable_proxy_modes_tracing(), torch.no_grad():
        return f(weight.detach()).contiguous()


def _conv_weight_of_transposed(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """The weight W' of the convolution equal to the transposed convolution with `weight`
    (C_out × C_in/groups × k…, the forward convolution's layout): in each group the in and out
    channel roles swapped (C_in × C_out/groups × k…) and every kernel flipped in space."""
    c_out, c_in_g, *k = weight.shape
    w = weight.reshape(groups, c_out // groups, c_in_g, *k).transpose(1, 2)
    w = w.reshape(groups * c_in_g, c_out // groups, *k)
    return w.flip(list(range(2, w.dim())))


def _transposed_as_conv(
    g: torch.Tensor, flipped: torch.Tensor, stride: Sequence[int], dilation: Sequence[int], groups: int,
    start: Sequence[int], size: Sequence[int],
) -> torch.Tensor:
    """`_crop_or_pad(conv_transpose(g, W, stride, padding 0, dilation, groups), start, size)`
    computed with an ordinary convolution, `flipped` being `_conv_weight_of_transposed(W)`.

    The transposed convolution gives full[m] = Σ_a W[a]·z[m − a·d], z being `g` zero-inserted by
    the stride; result[j] = full[j + start] = Σ_a' flip(W)[a']·z[j + start − (k−1)·d + a'·d],
    a valid convolution of z shifted by start − (k−1)·d. With stride 1 and the symmetric
    padding p of a convolution backward, the shift is the padding p' = d·(k−1) − p on both sides,
    which goes into the convolution's own padding (a negative p' is a crop).
    """
    n = len(size)
    z = _zero_insert(g, stride)
    span = [dilation[d] * (int(flipped.shape[2 + d]) - 1) for d in range(n)]
    lead = [span[d] - start[d] for d in range(n)]
    have = _static(z.shape[z.dim() - n:])
    trail = [size[d] + span[d] - lead[d] - have[d] for d in range(n)]
    inner = [max(0, min(a, b)) for a, b in zip(lead, trail, strict=True)]  # padding the Conv itself does
    z = _pad_edges(z, [a - p for a, p in zip(lead, inner, strict=True)],
                   [b - p for b, p in zip(trail, inner, strict=True)])
    return aten.convolution(z, flipped, None, [1] * n, inner, list(dilation), False, [0] * n, groups)


def is_depthwise(weight: torch.Tensor, groups: int) -> bool:
    """A depthwise convolution: one group per channel, as many outputs as inputs (C × 1 × k…)."""
    return groups > 1 and weight.shape[0] == groups and weight.shape[1] == 1


def is_pointwise(weight: torch.Tensor, stride: Sequence[int], padding: Sequence[int]) -> bool:
    """A 1×1 convolution of stride 1 without padding: its input gradient is the 1×1 convolution
    with the transposed weight (no zero insertion, no cropping)."""
    return (all(int(k) == 1 for k in weight.shape[2:]) and all(int(s) == 1 for s in stride)
            and all(int(p) == 0 for p in padding))


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
    *,
    form: str = "auto",
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Input gradient of a (non-transposed) N-d convolution.

    Only the input gradient is produced: weights are constants of the exported graph. It is
    the transposed convolution of `grad_output` with the weight, run without padding and
    cropped to the input window, which is exact for every stride, dilation and padding
    (including those where an output padding would otherwise be needed). `form` says how that
    is written (`CONV_BACKWARD_FORMS`):

    - as an ordinary convolution (the default for a depthwise convolution, groups == C_in ==
      C_out): the gradient zero-inserted by the stride (exact: a Pad and a Reshape), then a
      depthwise convolution (group = C) with the spatially flipped kernel and padding
      p' = dilation·(k−1) − p, cropping where that is negative (`_transposed_as_conv`). Why:
      grouped and depthwise transposed convolutions have a history of slow or failing kernels
      in cuDNN and TensorRT (older TensorRT versions, Jetson), while the depthwise convolution
      is the forward op of every MobileNet and EfficientNet and has tuned kernels in both. The
      GPU timing of the two forms has NOT been measured yet (no GPU in the session that wrote
      this); the "transpose" form is kept so they can be compared. Also the default for a
      dilated convolution (any dilation > 1): ONNX Runtime's CPU ConvTranspose has no fast path
      for dilation, and the backward of DeepLabV3's three dilated ASPP convolutions (rates 12,
      24, 36; 4×256×256 input) took 155 ms as ConvTranspose against about 15 ms as Conv
      (tools/bench_segmentation.py, docs/benchmarks.md). And for a pointwise convolution (1×1,
      stride 1, no padding), where the flipped form is the 1×1 convolution with the transposed
      weight: ONNX Runtime's CPU ConvTranspose took 1.06 ms for LR-ASPP's 21 → 128 channel
      classifier at 4×32×32, where its Conv runs the forward's fast (NCHWc) kernels;
    - as a transposed convolution (ConvTranspose; the default for every other convolution,
      where the grouped-deconvolution concern does not apply or the flipped form would itself
      be a grouped convolution of another shape).

    Both forms compute the same sums; they agree with eager autograd to float32 rounding
    (tests/test_exporter_ops.py).
    """
    if transposed:
        raise NotImplementedError("convolution_backward of a transposed convolution")
    if output_mask[1] or output_mask[2]:
        raise NotImplementedError("weight or bias gradients are not exported")
    if form not in CONV_BACKWARD_FORMS:
        raise ValueError(f"form must be one of {CONV_BACKWARD_FORMS}, not {form!r}")
    spatial = _static(input.shape[2:])
    n = len(spatial)
    if form == "conv" or (form == "auto" and (is_depthwise(weight, groups) or any(int(d) > 1 for d in dilation)
                                             or is_pointwise(weight, stride, padding))):
        flipped = _constant(functools.partial(_conv_weight_of_transposed, groups=groups), weight)
        grad_input = _transposed_as_conv(grad_output, flipped, list(stride), list(dilation), groups,
                                         list(padding), spatial)
        return grad_input, None, None
    full = aten.convolution(grad_output, weight, None, stride, [0] * n, dilation, True, [0] * n, groups)
    grad_input = _crop_or_pad(full, list(padding), spatial)
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
    *,
    form: str = "auto",
) -> torch.Tensor:
    """Gradient of 2-d average pooling: divide by each window's divisor, then scatter onto the
    input window with a depthwise kernel of ones: a depthwise convolution of the zero-inserted
    gradient (see `convolution_backward` for why), or with `form="transpose"` a depthwise
    transposed convolution, cropped to the input window."""
    kh, kw = _pair(kernel_size)
    sh, sw = _pair(stride) if len(stride) else (kh, kw)
    ph, pw = _pair(padding)
    h_in, w_in = _static(input.shape[-2:])
    h_out, w_out = _static(grad_output.shape[-2:])
    channels = int(input.shape[-3])
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
    ones = torch.ones(channels, 1, kh, kw, dtype=grad_output.dtype)  # its own flip
    if form == "transpose":
        full = aten.convolution(scaled, ones, None, [sh, sw], [0, 0], [1, 1], True, [0, 0], channels)
        return _crop_or_pad(full, [ph, pw], [h_in, w_in])
    return _transposed_as_conv(scaled, ones, [sh, sw], [1, 1], channels, [ph, pw], [h_in, w_in])


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
    """Gradient of 2-d max pooling that reads neither the Indices output nor scatters.

    `indices` is ignored: with it unread, the forward max pool is written as a MaxPool node
    with a single output, the only form TensorRT's ONNX parser accepts. Instead each window's
    maximum is found again from `input`:
    1. the K = kh·kw values of every window, one strided slice of the input per kernel offset,
       padded with -inf (N×C×K×h_out×w_out);
    2. the window's maximum (ReduceMax over K) and where each value equals it;
    3. of those, the first in the window's row-major order (a running count over K equal to 1),
       which is the element torch's kernels pick (`val > maxval` replaces, so a tie keeps the
       earlier one); positions in the padding never count, so a window of -inf values sends its
       gradient to its first real element, as torch does;
    4. the gradient kept there, then placed on the input grid: zero-inserted by the stride and
       summed over the K offsets by one dense convolution (N·C images of K channels, one output,
       flipped one-hot kernels, the pool's dilation), cropped to the input window. Windows
       sharing a maximum add up, as in the native kernel.
    Every step is a comparison, a selection or a sum with exact zeros, so on the CPU the result
    equals the native kernel's up to the order in which overlapping windows add up (a GPU
    convolution algorithm such as Winograd may add float32 rounding in step 4; it cannot move the
    gradient to another element). One difference: with a NaN in a window torch sends the gradient
    to its last NaN, this rule nowhere; the pooled value, and so the class score, is NaN then
    anyway.

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
    h_in, w_in = _static(input.shape[-2:])
    h_out, w_out = _static(grad_output.shape[-2:])
    channels = int(input.shape[-3])
    k = kh * kw
    # 1. Windows: rows ph..ph+h_in of the padded plane are the input; -inf wherever a window
    # reads past it (the padding, and a ceil_mode window cut by the border).
    reach_h, reach_w = (h_out - 1) * sh + (kh - 1) * dh + 1, (w_out - 1) * sw + (kw - 1) * dw + 1
    padded = _pad_edges(input, [ph, pw], [max(0, reach_h - ph - h_in), max(0, reach_w - pw - w_in)],
                        value=float("-inf"))
    windows = torch.stack([
        padded[:, :, a * dh: a * dh + (h_out - 1) * sh + 1: sh, b * dw: b * dw + (w_out - 1) * sw + 1: sw]
        for a in range(kh) for b in range(kw)
    ], dim=2)
    # 2. Where the maximum sits; padding positions never count.
    at_max = windows == windows.amax(dim=2, keepdim=True)
    valid = [[[0 <= i * sh - ph + a * dh < h_in and 0 <= j * sw - pw + b * dw < w_in for j in range(w_out)]
              for i in range(h_out)] for a in range(kh) for b in range(kw)]
    if not all(v for plane in valid for row in plane for v in row):
        at_max = at_max & torch.tensor(valid)
    # 3. The first maximum of each window.
    count = torch.cumsum(at_max.to(grad_output.dtype), dim=2)
    first = at_max & (count == 1)
    picked = torch.where(first, grad_output.unsqueeze(2), torch.zeros((), dtype=grad_output.dtype))
    # 4. Back onto the input grid: image n·C + c has K channels, one per offset.
    onehot = torch.eye(k, dtype=grad_output.dtype).reshape(1, k, kh, kw)
    flipped = onehot.flip([2, 3])
    grid = _transposed_as_conv(picked.reshape(-1, k, h_out, w_out), flipped, [sh, sw], [dh, dw], 1,
                               [ph, pw], [h_in, w_in])
    return grid.reshape(-1, channels, h_in, w_in)


def safe_softmax(x: torch.Tensor, dim: int, dtype: torch.dtype | None = None) -> torch.Tensor:
    """`aten._safe_softmax` (the softmax of scaled-dot-product attention's math backend, the
    backend camrt traces attention under) as the plain softmax it equals on every row that holds
    a finite score.

    ``_safe_softmax`` returns 0 on a row whose scores are all -inf (a query whose keys are all
    masked) where softmax returns NaN; it does so by a comparison with -inf, an all-reduction and a
    Where over the whole N×heads×T×T score tensor, which cost vit_b_16 13% of its forward time in
    ONNX Runtime. Vision transformers mask no key, or mask with a finite bias (Swin's -100), so
    their rows are never all -inf; a model that does mask a whole row gets NaN here, which the
    export's check against eager PyTorch (which returns 0) refuses, so no file is written with it.
    """
    return torch.softmax(x if dtype is None else x.to(dtype), dim)


OWN_RULES: dict[torch._ops.OpOverload, Callable] = {
    aten._safe_softmax.default: safe_softmax,
    aten.convolution_backward.default: convolution_backward,
    aten._adaptive_avg_pool2d_backward.default: adaptive_avg_pool2d_backward,
    aten.avg_pool2d_backward.default: avg_pool2d_backward,
    aten.max_pool2d_with_indices_backward.default: max_pool2d_with_indices_backward,
}


def backward_decompositions(form: str = "auto") -> dict:
    """The table given to make_fx: torch's decompositions of backward ops only (forward ops stay
    whole so ONNX Runtime can fuse them as in a plain export) and camrt's own rules, with
    convolution and average-pool backward written in `form` (`CONV_BACKWARD_FORMS`)."""
    if form not in CONV_BACKWARD_FORMS:
        raise ValueError(f"form must be one of {CONV_BACKWARD_FORMS}, not {form!r}")
    table = {k: v for k, v in core_aten_decompositions().items() if "backward" in str(k)}
    table.update(OWN_RULES)
    table[aten.convolution_backward.default] = functools.partial(convolution_backward, form=form)
    table[aten.avg_pool2d_backward.default] = functools.partial(avg_pool2d_backward, form=form)
    return table
