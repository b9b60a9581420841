"""Shared work of every CAM method: input checks, weighted combination, ReLU, normalisation and
bilinear upsampling. Pure numpy; no state."""

from __future__ import annotations

import functools
from collections.abc import Generator, Iterable, Sequence

import numpy as np

from camrt.errors import InputError


def check_pair(activation: np.ndarray, gradient: np.ndarray | None = None) -> None:
    """Check that an activation (and its gradient) are floating arrays of shape (N, C, h, w).

    Args:
        activation: target-layer activation ``A``, shape ``(N, C, h, w)``.
        gradient: ``G = ∂y_c/∂A`` of the same shape, or None for methods that do not use it.

    Raises:
        InputError: if an array is not 4-D and floating, or the shapes differ.
    """
    arrays = {"activation": activation} if gradient is None else {"activation": activation, "gradient": gradient}
    for name, arr in arrays.items():
        if not isinstance(arr, np.ndarray) or arr.ndim != 4 or not np.issubdtype(arr.dtype, np.floating):
            got = f"{arr.dtype} array of shape {arr.shape}" if isinstance(arr, np.ndarray) else type(arr).__name__
            raise InputError(f"{name} must be a floating array of shape (N, C, h, w), got {got}")
    if gradient is not None and activation.shape != gradient.shape:
        raise InputError(f"activation {activation.shape} and gradient {gradient.shape} must have the same shape")


def check_samples(sample_activation: np.ndarray, sample_gradient: np.ndarray, activation: np.ndarray) -> None:
    """Check per-copy activations and gradients, shape (N, S, C, h, w), against the input's (N, C, h, w).

    Raises:
        InputError: if the arrays are not 5-D and floating, differ in shape, or do not match `activation`.
    """
    for name, arr in (("sample_activation", sample_activation), ("sample_gradient", sample_gradient)):
        if not isinstance(arr, np.ndarray) or arr.ndim != 5 or not np.issubdtype(arr.dtype, np.floating):
            got = f"{arr.dtype} array of shape {arr.shape}" if isinstance(arr, np.ndarray) else type(arr).__name__
            raise InputError(f"{name} must be a floating array of shape (N, S, C, h, w), got {got}")
    if sample_activation.shape != sample_gradient.shape:
        raise InputError(f"sample_activation {sample_activation.shape} and sample_gradient "
                         f"{sample_gradient.shape} must have the same shape")
    n, _, c, h, w = sample_activation.shape
    if (n, c, h, w) != activation.shape:
        raise InputError(f"samples {sample_activation.shape} do not match the activation {activation.shape}: "
                         "expected (N, S, C, h, w) with the same N, C, h, w")


def relu(x: np.ndarray) -> np.ndarray:
    """Element-wise ``max(x, 0)``.

    Args:
        x: any array.

    Returns:
        An array of the same shape and dtype.
    """
    return np.maximum(x, 0)


def combine(weights: np.ndarray, activation: np.ndarray) -> np.ndarray:
    """Channel-weighted sum of feature maps: ``M_n = Σ_k w_nk A_nk``.

    Args:
        weights: per-image channel weights, shape ``(N, C)``.
        activation: feature maps, shape ``(N, C, h, w)``.

    Returns:
        Maps of shape ``(N, h, w)`` (no ReLU applied).

    Raises:
        InputError: if the shapes do not match.
    """
    if weights.ndim != 2 or activation.ndim != 4 or weights.shape != activation.shape[:2]:
        raise InputError(f"weights {weights.shape} must be (N, C) for an activation (N, C, h, w) {activation.shape}")
    return np.einsum("nc,nchw->nhw", weights, activation)


def softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
    """``exp(z) / Σ exp(z)`` along `axis` (a vector's, or each row's of an N×K matrix of logits),
    shifted by the max for stability."""
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def normalize(maps: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Per-map min-max scaling to [0, 1]: ``(M - min M) / (max M - min M)``.

    A constant map becomes all zeros (never NaN).

    Args:
        maps: array whose first axis indexes the maps, e.g. ``(N, h, w)``.
        out: where to write the result (may be `maps` itself, for large maps: every fresh array
            of a few MB costs page faults that outweigh the arithmetic).

    Returns:
        An array of the same shape with every map in [0, 1] (`out` when given).
    """
    maps = np.asarray(maps)
    dtype = np.result_type(maps.dtype, np.float32)
    axes = tuple(range(1, maps.ndim))
    low = maps.min(axis=axes, keepdims=True).astype(dtype)
    span = maps.max(axis=axes, keepdims=True).astype(dtype) - low
    inverse = np.zeros_like(span)
    np.divide(1.0, span, out=inverse, where=span > 0)  # only N values: the slow masked divide is cheap here
    out = np.subtract(maps, low, dtype=dtype, out=out)
    out *= inverse  # a constant map is all zeros already; times 0 keeps it so
    return out


@functools.lru_cache(maxsize=64)
def _interpolation_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """1-D linear interpolation with half-pixel centres (align_corners=False): for each output
    pixel, its two source pixels and the weight of the second.

    The source coordinate of output pixel ``i`` is ``(i + 0.5) · n_in / n_out - 0.5``, clamped at 0 below and
    at the last pixel above, as torch.nn.functional.interpolate computes it when given an output size.
    """
    src = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    src = np.maximum(src, 0.0)
    lo = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = src - lo
    for a in (lo, hi, frac):
        a.setflags(write=False)  # cached: shared between calls
    return lo, hi, frac


def upsample(maps: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Bilinear resize of maps, matching ``torch.nn.functional.interpolate(mode="bilinear",
    align_corners=False)`` given an output size.

    Implemented as separable interpolation: ``R_h · M · R_wᵀ`` with one (out, in) matrix per axis.

    Args:
        maps: maps of shape ``(N, h, w)``.
        size: output size ``(H, W)``.

    Returns:
        Maps of shape ``(N, H, W)``, float32 for float32 or integer input, else the input's float dtype.

    Raises:
        InputError: if `maps` is not 3-D or `size` is not two positive integers.
    """
    maps = np.asarray(maps)
    if maps.ndim != 3:
        raise InputError(f"maps must have shape (N, h, w), got {maps.shape}")
    if len(size) != 2 or any(int(s) != s or s < 1 for s in size):
        raise InputError(f"size must be two positive integers (H, W), got {tuple(size)}")
    dtype = np.result_type(maps.dtype, np.float32)
    maps = maps.astype(dtype, copy=False)
    # Two taps per output pixel, applied as gathers and weighted sums rather than as a matrix
    # product: no BLAS call, whose spinning threads take the cores from the next ONNX Runtime run
    # (docs/benchmarks.md, Grad-CAM on EfficientNet-Lite0).
    lo, hi, frac = _interpolation_taps(maps.shape[1], int(size[0]))
    # np.take keeps the result C-contiguous (fancy indexing on the last axis does not, which made
    # the min/max of `normalize` 60 times slower).
    rows = np.take(maps, lo, axis=1)
    rows += (np.take(maps, hi, axis=1) - rows) * frac.astype(dtype)[None, :, None]
    lo, hi, frac = _interpolation_taps(maps.shape[2], int(size[1]))
    out = np.take(rows, lo, axis=2)
    step = np.take(rows, hi, axis=2)  # the full-size temporaries are two; each costs page faults when fresh
    step -= out
    step *= frac.astype(dtype)[None, None, :]
    out += step
    return out


def scores_of(batches: Iterable[np.ndarray]) -> Generator[np.ndarray, np.ndarray, np.ndarray]:
    """The streaming step of every perturbation method: yield each batch of perturbed copies, be
    sent back its class scores, and return all the scores in order once the batches run out.

    Use it inside a method's ``explore`` coroutine as ``scores = yield from scores_of(batches)``.
    """
    parts = []
    for batch in batches:
        scores = yield batch
        parts.append(np.asarray(scores))
    return np.concatenate(parts) if parts else np.zeros(0)
