"""The pointing game and the energy-based pointing game by hand: the 15-pixel tolerance at its
edge, ties, images without annotation, and the metrics through their records."""

from __future__ import annotations

import numpy as np
import pytest

from camrt.engine import Engine
from camrt.metrics import METRICS, MetricContext, evaluate
from camrt.metrics.localisation import TOLERANCE, energy_inside, pointing_hits
from tests.test_metrics_contract import explained, export_tiny


def peak(y: int, x: int, size: int = 40) -> np.ndarray:
    s = np.zeros((size, size), np.float32)
    s[y, x] = 1.0
    return s


def test_tolerance_is_15_pixels_euclidean() -> None:
    assert TOLERANCE == 15
    box = np.zeros((40, 40), bool)
    box[0:5, 0:5] = True  # nearest mask pixel to (4 + d, 4) is (4, 4)
    maps = np.stack([peak(19, 4), peak(20, 4), peak(4 + 9, 4 + 12), peak(4 + 10, 4 + 12), peak(2, 2)])
    np.testing.assert_array_equal(pointing_hits(maps, [box] * 5), [1, 0, 1, 0, 1])  # 15, 16, 15, 15.6, inside


def test_ties_take_the_first_maximum_and_missing_annotations_are_nan() -> None:
    s = np.zeros((2, 40, 40), np.float32)
    s[:, 0, 39] = s[:, 39, 0] = 1.0  # two maxima: (0, 39) comes first in row-major order
    box = np.zeros((40, 40), bool)
    box[0:3, 30:40] = True
    empty = np.zeros((40, 40), bool)
    np.testing.assert_array_equal(pointing_hits(s, [box, empty]), [1, np.nan])
    np.testing.assert_array_equal(pointing_hits(np.zeros((1, 40, 40)), [box]), [np.nan])


def test_energy_is_the_share_inside() -> None:
    s = np.zeros((3, 4, 4), np.float32)
    s[0, 0, 0], s[0, 3, 3] = 0.75, 0.25
    s[1] = 1.0
    mask = np.zeros((4, 4), bool)
    mask[0:2, 0:2] = True
    np.testing.assert_allclose(energy_inside(s, [mask, mask, None]), [0.75, 4 / 16, np.nan])


def test_through_the_records(tmp_path_factory) -> None:
    model, path = export_tiny(tmp_path_factory)
    engine = Engine(path, device="cpu")
    x, r = explained(model, engine, n=3)
    masks = [r.saliency[0] > 0.5, None, np.ones((32, 32), bool)]
    res = evaluate(engine, x, {"gradcam": r.saliency}, r.class_idx, ["pointing-game", "energy-pointing-game"],
                   masks=masks)
    np.testing.assert_array_equal(res["gradcam", "pointing-game"].values, [1, np.nan, 1])
    energy = res["gradcam", "energy-pointing-game"].values
    assert energy[0] == pytest.approx(r.saliency[0][masks[0]].sum() / r.saliency[0].sum())
    assert np.isnan(energy[1]) and energy[2] == pytest.approx(1.0)
    assert METRICS["pointing-game"].needs_annotations
    ctx = MetricContext(engine, x, r.saliency, r.class_idx, masks=np.stack([m if m is not None else masks[0]
                                                                            for m in masks]))
    assert METRICS["energy-pointing-game"].run(ctx).values.shape == (3,)
