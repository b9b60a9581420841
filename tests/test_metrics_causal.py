"""Deletion and insertion: the steps, ranks and trapezoid by hand, and the curves and AUCs against
TorchCAM 0.5.0's `DeletionInsertionMetric` (the same steps, baseline 0 for deletion and camrt's
blurred copy as the insertion baseline) on the tiny model."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch

from camrt.engine import Engine
from camrt.methods.masking import gaussian_blur
from camrt.metrics import MetricContext
from camrt.metrics.causal import BLUR_KERNEL, BLUR_SIGMA, STEPS, auc, causal, counts, ranks
from tests.test_metrics_contract import explained, export_tiny


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return export_tiny(tmp_path_factory)


def test_counts_ranks_and_trapezoid_by_hand() -> None:
    np.testing.assert_array_equal(counts(10, 4), [0, 3, 6, 9, 10])  # ceil(10/4) = 3 per step, last step 1
    np.testing.assert_array_equal(counts(8, 4), [0, 2, 4, 6, 8])
    s = np.array([[[0.2, 0.9], [0.2, 0.5]]])
    np.testing.assert_array_equal(ranks(s), [[2, 0, 3, 1]])  # ties in row-major order
    f = np.array([0.0, 0.3, 0.6, 0.9, 1.0])
    c = np.array([[1.0, 0.5, 0.5, 0.0, 0.0]])
    np.testing.assert_allclose(auc(c, f), [0.3 * 0.75 + 0.3 * 0.5 + 0.3 * 0.25])


def test_a_step_deletes_exactly_the_top_pixels(tiny, monkeypatch) -> None:
    model, path = tiny
    engine = Engine(path, device="cpu", chunk_size=5)
    x, r = explained(model, engine, n=1)
    seen = []
    scores = engine.class_scores
    monkeypatch.setattr(engine, "class_scores", lambda xs, c, **k: seen.append(xs.copy()) or scores(xs, c, **k))
    res = causal(MetricContext(engine, x, r.saliency, r.class_idx), insertion=False, steps=4)
    first = np.concatenate(seen[1:])[0]  # seen[0] is the unperturbed image
    top = (ranks(r.saliency)[0] < 256).reshape(32, 32)
    np.testing.assert_array_equal(first[:, top], 0)
    np.testing.assert_array_equal(first[:, ~top], x[0][:, ~top])
    np.testing.assert_allclose(res.fractions, [0, 0.25, 0.5, 0.75, 1])


class _Maps:
    """A TorchCAM CAM extractor that returns given maps (TorchCAM's metrics take an extractor)."""

    def __init__(self, model: torch.nn.Module, maps: np.ndarray) -> None:
        self.model, self.maps = model, torch.from_numpy(maps)

    def __call__(self, class_idx, scores=None, normalized=True, **kwargs):
        return [self.maps]

    def fuse_cams(self, cams):
        return cams[0]

    def _hooks_off(self):
        return contextlib.nullcontext()


@pytest.mark.parametrize("insertion", [False, True])
def test_against_torchcam(tiny, insertion: bool) -> None:
    from torchcam.metrics import DeletionInsertionMetric

    model, path = tiny
    engine = Engine(path, device="cpu", chunk_size=16)
    x, r = explained(model, engine, n=3)
    ours = causal(MetricContext(engine, x, r.saliency, r.class_idx), insertion=insertion)
    blurred = torch.from_numpy(np.stack([gaussian_blur(i, BLUR_KERNEL, BLUR_SIGMA) for i in x]))
    values = []
    for i in range(len(x)):  # TorchCAM keeps only the mean: one image per update
        metric = DeletionInsertionMetric(_Maps(model, r.saliency[i:i + 1]), lambda z: z.softmax(-1), steps=STEPS,
                                         baseline=blurred[i:i + 1] if insertion else None)
        metric.update(torch.from_numpy(x[i:i + 1]), class_idx=[int(r.class_idx[i])])
        values.append(metric.summary()["insertion_auc" if insertion else "deletion_auc"])
    assert np.ptp(ours.values) > 1e-3  # the images differ: the comparison is not vacuous
    np.testing.assert_allclose(ours.values, values, rtol=1e-5, atol=1e-6)
