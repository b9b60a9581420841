"""From RGB images of any size to the model's preprocessed input, with numpy only."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from camrt.errors import InputError
from camrt.manifest import Preprocessing


def _resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) bilinear resampling weights with antialiasing when shrinking: a triangle
    filter widened by the scale factor, as PIL and torchvision's `antialias=True` do."""
    scale = n_in / n_out
    support = max(scale, 1.0)
    centers = (np.arange(n_out) + 0.5) * scale
    src = np.arange(n_in) + 0.5
    w = np.maximum(0.0, 1.0 - np.abs(src[None, :] - centers[:, None]) / support)
    w /= w.sum(axis=1, keepdims=True)
    return w


def _taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """The non-zero entries of `_resize_matrix` per output row: indices and weights, (n_out, K)."""
    m = _resize_matrix(n_in, n_out)
    k = int((m > 0).sum(axis=1).max())
    idx = np.argsort(m <= 0, axis=1, kind="stable")[:, :k]  # the non-zero columns first, in order
    return idx, np.take_along_axis(m, idx, axis=1).astype(np.float32)


def _resize(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """H×W×C float32 resized to size (h, w) with the taps of `_resize_matrix`, as gathers and
    weighted sums: no BLAS call, whose spinning threads would slow the ONNX Runtime run that
    follows on a small machine, and no dense (out × in) product."""
    (ri, rw), (ci, cw) = _taps(img.shape[0], size[0]), _taps(img.shape[1], size[1])
    rows = np.einsum("hk,hkwc->hwc", rw, img[ri])
    return np.einsum("wk,hwkc->hwc", cw, rows[:, ci])


def to_rgb_float(image: np.ndarray) -> np.ndarray:
    """An H×W×3 float32 image in [0, 1] from uint8 or uint16 RGB, grayscale (H×W or H×W×1,
    replicated) or RGBA (alpha dropped). Anything else is an InputError."""
    img = np.asarray(image)
    if img.dtype == np.uint8:
        scale = 255.0
    elif img.dtype == np.uint16:
        scale = 65535.0
    else:
        raise InputError(f"images must be uint8 or uint16 arrays (got {img.dtype}); pass a preprocessed float32 "
                         "N×C×H×W batch instead if you normalised them yourself")
    if img.ndim == 2:
        img = img[:, :, None]
    if img.ndim != 3 or img.shape[2] not in (1, 3, 4) or min(img.shape[:2]) < 1:
        raise InputError(f"an image must be H×W (gray), H×W×3 (RGB) or H×W×4 (RGBA); got shape {img.shape}")
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    elif img.shape[2] == 4:
        img = img[:, :, :3]
    return img.astype(np.float32) / np.float32(scale)


def preprocess(images: Sequence[np.ndarray], size: tuple[int, int], prep: Preprocessing) -> np.ndarray:
    """Resize each image to `size` (H, W) and normalise it: a float32 N×3×H×W batch."""
    mean = np.asarray(prep.mean, np.float32)[:, None, None]
    std = np.asarray(prep.std, np.float32)[:, None, None]
    h, w = size
    out = np.empty((len(images), 3, h, w), np.float32)
    for i, image in enumerate(images):
        rgb = to_rgb_float(image)
        out[i] = (_resize(rgb, (h, w)).transpose(2, 0, 1) - mean) / std
    return out
