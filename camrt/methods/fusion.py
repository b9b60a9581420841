"""Multi-layer fusion of saliency maps, as LayerCAM combines its maps from several depths."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from camrt.errors import InputError
from camrt.methods._core import upsample


def _scaled_by_max(maps: np.ndarray) -> np.ndarray:
    """``M / max M`` per map; an all-zero (or non-positive) map stays zero."""
    top = maps.max(axis=(1, 2), keepdims=True)
    out = np.zeros_like(maps, dtype=np.result_type(maps.dtype, np.float32))
    np.divide(maps, top, out=out, where=top > 0)
    return out


def fuse(maps: Sequence[np.ndarray], size: Sequence[int], *, gamma: float = 2.0) -> np.ndarray:
    """Fuse the maps of several layers at input resolution, LayerCAM-style.

    Shallow maps (every map but the last) become ``tanh(γ · M / max M)``, which lifts their weak
    but sharp responses toward the range of the deep map; the deepest map (the last) becomes
    ``M / max M``. Each is upsampled bilinearly to `size` and the results are combined by the
    element-wise maximum. Scaling is applied at each map's own resolution, then upsampled.

    TorchCAM's ``LayerCAM.fuse_cams`` uses the same tanh scaling and element-wise maximum, but
    scales every map including the deepest, and expects maps already min-max normalised.

    Paper: https://ieeexplore.ieee.org/document/9462463 (Jiang et al., TIP 2021, Eq. 9)

    Args:
        maps: saliency maps after ReLU (non-negative), one ``(N, h_i, w_i)`` array per layer, ordered
            from shallow to deep.
        size: output size ``(H, W)``, normally the input's.
        gamma: the tanh scale factor γ.

    Returns:
        Fused maps of shape ``(N, H, W)`` with values in [0, 1].

    Raises:
        InputError: if `maps` is empty, a map is not 3-D, or the batch sizes differ.
    """
    if len(maps) == 0:
        raise InputError("fuse needs at least one map")
    if any(np.ndim(m) != 3 for m in maps) or len({np.shape(m)[0] for m in maps}) != 1:
        raise InputError(f"maps must be (N, h, w) arrays with the same N, got shapes {[np.shape(m) for m in maps]}")
    scaled = [np.tanh(gamma * _scaled_by_max(np.asarray(m))) for m in maps[:-1]]
    scaled.append(_scaled_by_max(np.asarray(maps[-1])))
    return np.maximum.reduce([upsample(m, size) for m in scaled])
