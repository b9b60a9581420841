"""ROAD: the noisy linear imputation by hand and against pytorch-grad-cam 1.5.7's
`NoisyLinearImputer` (noise off), and the MoRF/LeRF scores against its `ROADMostRelevantFirst` /
`ROADLeastRelevantFirst` at percentages where its percentile threshold removes the same pixels as
camrt's exact count; the seeded noise; scipy's absence as a one-line error."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from camrt.engine import Engine
from camrt.errors import InputError
from camrt.metrics import METRICS, MetricContext
from camrt.metrics.road import dissection, impute, removal_counts, road
from tests.test_metrics_contract import explained, export_tiny


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return export_tiny(tmp_path_factory)


def test_one_pixel_is_the_weighted_mean_of_its_neighbours() -> None:
    image = np.arange(9, dtype=np.float32).reshape(1, 3, 3) ** 2
    removed = np.zeros((3, 3), bool)
    removed[1, 1] = True
    direct = (1 + 9 + 25 + 49) / 6
    diagonal = (0 + 4 + 36 + 64) / 12
    out = impute(image, removed, noise=0)
    assert out[0, 1, 1] == pytest.approx(direct + diagonal, rel=1e-6)  # the weights sum to 1 inside
    np.testing.assert_array_equal(out[0][~removed], image[0][~removed])
    removed[1, 1], removed[0, 0] = False, True  # a corner: weights 1/6, 1/6, 1/12 renormalised
    assert impute(image, removed, noise=0)[0, 0, 0] == pytest.approx((1 / 6 + 9 / 6 + 16 / 12) / (5 / 12), rel=1e-6)


def test_dissection_is_a_permutation() -> None:
    rng = np.random.default_rng(0)
    idx = np.flatnonzero(rng.random(64 * 48) < 0.7)
    r, c = np.divmod(idx, 48)
    assert sorted(dissection(r, c)) == list(range(len(idx)))


def test_imputation_equals_pytorch_grad_cam() -> None:
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer

    rng = np.random.default_rng(1)
    image = rng.normal(size=(3, 40, 33)).astype(np.float32)
    removed = rng.random((40, 33)) < 0.6
    removed[5:25, 3:30] = True  # a large hole besides scattered pixels
    theirs = NoisyLinearImputer(noise=0)(torch.from_numpy(image), torch.from_numpy((~removed).astype(np.float32)))
    np.testing.assert_allclose(impute(image, removed, noise=0), theirs.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("most_relevant_first", [True, False])
def test_against_pytorch_grad_cam_road(tiny, most_relevant_first: bool) -> None:
    from pytorch_grad_cam.metrics.road import ROADLeastRelevantFirst, ROADMostRelevantFirst
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    model, path = tiny
    engine = Engine(path, device="cpu", chunk_size=4)
    x, r = explained(model, engine, n=3)
    s = r.saliency + np.random.default_rng(0).random(r.saliency.shape).astype(np.float32) * 1e-3  # no ties
    s /= s.max()
    percentages = (0.25, 0.5, 0.75)
    # grad-cam's percentile q removes the pixels at or above np.percentile(map, q): 1024 − ceil(q/100 · 1023)
    assert list(removal_counts(1024, percentages)) == [1024 - int(np.ceil((1 - p) * 1023)) for p in percentages]
    ours = road(MetricContext(engine, x, s, r.class_idx), most_relevant_first, percentages, noise=0)
    base = engine.class_scores(x, r.class_idx)
    targets = [ClassifierOutputSoftmaxTarget(int(c)) for c in r.class_idx]
    kind = ROADMostRelevantFirst if most_relevant_first else ROADLeastRelevantFirst
    for j, p in enumerate(percentages):
        metric = kind(percentile=round(100 * (1 - p)))
        metric.perturbation.imputer.noise = 0
        theirs = metric(torch.from_numpy(x), s, targets, model)  # the score after imputation minus before
        np.testing.assert_allclose(ours.curves[:, j] - base, theirs, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ours.values, ours.curves.mean(axis=1))
    assert np.ptp(ours.curves) > 1e-3


def test_noise_is_seeded(tiny) -> None:
    model, path = tiny
    engine = Engine(path, device="cpu")
    x, r = explained(model, engine, n=2)
    run = METRICS["road-morf"].run
    a = run(MetricContext(engine, x, r.saliency, r.class_idx, seed=3))
    b = run(MetricContext(engine, x, r.saliency, r.class_idx, seed=3))
    c = run(MetricContext(engine, x, r.saliency, r.class_idx, seed=4))
    np.testing.assert_array_equal(a.curves, b.curves)
    assert not np.array_equal(a.curves, c.curves)
    np.testing.assert_allclose(a.fractions, np.arange(1, 10) / 10)
    removed = np.zeros((32, 32), bool)
    removed[4:28, 4:28] = True
    noisy = impute(x[0], removed, 0.01, np.random.default_rng(0)) - impute(x[0], removed, 0)
    assert noisy[:, ~removed].max() == 0 and np.std(noisy[:, removed]) == pytest.approx(0.01, rel=0.05)


def test_without_scipy_a_one_line_error(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "scipy.sparse", None)
    with pytest.raises(InputError, match=r"camrt\[metrics\]"):
        impute(np.zeros((1, 4, 4), np.float32), np.eye(4, dtype=bool), 0)
