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
        rh, rw = _resize_matrix(rgb.shape[0], h), _resize_matrix(rgb.shape[1], w)
        resized = np.einsum("hH,HWc,wW->chw", rh, rgb, rw, optimize=True)
        out[i] = (resized - mean) / std
    return out
