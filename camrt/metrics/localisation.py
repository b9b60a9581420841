"""Localisation against annotated objects: the pointing game (Zhang et al., IJCV 2018,
https://arxiv.org/abs/1608.00507) and the energy-based pointing game (Wang et al., Score-CAM,
CVPR Workshops 2020, https://arxiv.org/abs/1910.01279).

Pointing game: a hit (1) when the map's maximum lies within ``TOLERANCE = 15`` pixels (Euclidean)
of the object's mask or box, else a miss (0):

    hit = min_{q ∈ mask} ‖argmax s − q‖₂ ≤ 15.

The 15 pixels are measured at the model's input resolution (the maps and masks the metrics get),
not at the photo's original size as in the paper's benchmark; the maximum is the first in
row-major order when several pixels share it (`np.argmax`). The paper reports the accuracy per
class averaged over classes: the values here are per image (and class explained), and the record
says `per_class`, so that `camrt eval`'s table takes the mean of the classes' accuracies.

Energy-based pointing game: the share of the map's energy inside the object,

    E = Σ_{p ∈ mask} s_p / Σ_p s_p,

on the boxes in the paper (pass a rasterised box), on any mask here.

Both are NaN for an image without annotation (None in `MetricContext.masks`) or with an empty
mask; the energy is NaN for an all-zero map, whose maximum is undefined too.
"""

from __future__ import annotations

import numpy as np

from camrt.errors import InputError
from camrt.metrics.contract import Metric, MetricContext, MetricResult

TOLERANCE = 15.0


def _masks(ctx: MetricContext, name: str) -> list[np.ndarray | None]:
    if ctx.masks is None:
        raise InputError(f"metric '{name}' needs annotations: pass masks (one bool H×W mask or None per image)")
    return list(ctx.masks)


def pointing_hits(saliency: np.ndarray, masks: list[np.ndarray | None], tolerance: float = TOLERANCE) -> np.ndarray:
    """1.0 where the maximum of each map is within `tolerance` pixels of its mask, 0.0 where not,
    NaN without a mask (or with an empty one, or an all-zero map)."""
    out = np.full(len(saliency), np.nan)
    for i, (s, m) in enumerate(zip(saliency, masks, strict=True)):
        if m is None or not m.any() or not s.any():
            continue
        y, x = np.unravel_index(int(np.argmax(s)), s.shape)
        qy, qx = np.nonzero(m)
        out[i] = float(((qy - y) ** 2 + (qx - x) ** 2).min() <= tolerance ** 2)
    return out


def energy_inside(saliency: np.ndarray, masks: list[np.ndarray | None]) -> np.ndarray:
    """``Σ s inside / Σ s`` per map, NaN without a mask (or an empty one) or for an all-zero map."""
    out = np.full(len(saliency), np.nan)
    for i, (s, m) in enumerate(zip(saliency, masks, strict=True)):
        total = float(s.sum(dtype=np.float64))
        if m is None or not m.any() or total == 0:
            continue
        out[i] = float(s[m].sum(dtype=np.float64)) / total
    return out


def pointing_game(ctx: MetricContext) -> MetricResult:
    """Pointing game per image: 1 for a hit within 15 px of the object, 0 for a miss."""
    return MetricResult(pointing_hits(ctx.saliency, _masks(ctx, "pointing-game")))


def energy_pointing_game(ctx: MetricContext) -> MetricResult:
    """Energy-based pointing game per image: the share of the map's sum inside the object."""
    return MetricResult(energy_inside(ctx.saliency, _masks(ctx, "energy-pointing-game")))


METRICS = (
    Metric("pointing-game", "1 when the map's maximum is within 15 px of the object (model input size), else 0",
           "https://arxiv.org/abs/1608.00507", needs_annotations=True, higher_is_better=True, run=pointing_game,
           per_class=True),
    Metric("energy-pointing-game", "share of the map's energy inside the object's mask or box",
           "https://arxiv.org/abs/1910.01279", needs_annotations=True, higher_is_better=True,
           run=energy_pointing_game),
)
