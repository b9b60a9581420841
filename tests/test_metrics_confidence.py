"""Average Drop, Increase in Confidence and ADCC: against TorchCAM 0.5.0's `ClassificationMetric`
(the paper's Average Drop), pytorch-grad-cam 1.5.7's `DropInConfidence` (without the division by
the original score) and `IncreaseInConfidence`, and ADCC's formula by hand and from `explain`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from camrt.engine import Engine
from camrt.metrics import METRICS, MetricContext
from camrt.metrics.confidence import harmonic3, pearson
from tests.test_metrics_causal import _Maps
from tests.test_metrics_contract import explained, export_tiny


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    model, path = export_tiny(tmp_path_factory)
    engine = Engine(path, device="cpu", chunk_size=2)
    x, r = explained(model, engine, n=5, seed=2)
    with torch.no_grad():
        p = model(torch.from_numpy(x)).softmax(1)
        base = p.numpy()[np.arange(5), r.class_idx].astype(np.float64)
        q = model(torch.from_numpy(x * r.saliency[:, None])).softmax(1)
        masked = q.numpy()[np.arange(5), r.class_idx].astype(np.float64)
    return model, engine, x, r, base, masked


def test_average_drop_and_increase_by_hand(setup) -> None:
    _, engine, x, r, base, masked = setup
    ctx = MetricContext(engine, x, r.saliency, r.class_idx)
    drop = METRICS["average-drop"].run(ctx).values
    np.testing.assert_allclose(drop, np.maximum(base - masked, 0) / base, rtol=1e-5, atol=1e-7)
    assert (drop > 0).any()  # not vacuous
    np.testing.assert_array_equal(METRICS["increase-in-confidence"].run(ctx).values, (masked > base).astype(float))


def test_against_torchcam_classification_metric(setup) -> None:
    from torchcam.metrics import ClassificationMetric

    model, engine, x, r, _, _ = setup
    ctx = MetricContext(engine, x, r.saliency, r.class_idx)
    drop = METRICS["average-drop"].run(ctx).values
    increase = METRICS["increase-in-confidence"].run(ctx).values
    for i in range(len(x)):  # TorchCAM keeps only the mean: one image per update
        metric = ClassificationMetric(_Maps(model, r.saliency[i:i + 1]), lambda z: z.softmax(-1))
        metric.update(torch.from_numpy(x[i:i + 1]), class_idx=[int(r.class_idx[i])])
        summary = metric.summary()
        assert summary["avg_drop"] == pytest.approx(drop[i], rel=1e-4, abs=1e-6)  # TorchCAM divides by Y + 1e-7
        assert summary["conf_increase"] == increase[i]


def test_against_pytorch_grad_cam_variants(setup) -> None:
    from pytorch_grad_cam.metrics.cam_mult_image import DropInConfidence, IncreaseInConfidence
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    model, engine, x, r, base, _ = setup
    ctx = MetricContext(engine, x, r.saliency, r.class_idx)
    targets = [ClassifierOutputSoftmaxTarget(int(c)) for c in r.class_idx]
    theirs = DropInConfidence()(torch.from_numpy(x), r.saliency, targets, model)
    # pytorch-grad-cam's drop is max(0, Y − O), not divided by Y
    np.testing.assert_allclose(METRICS["average-drop"].run(ctx).values * base, theirs, rtol=1e-4, atol=1e-6)
    theirs = IncreaseInConfidence()(torch.from_numpy(x), r.saliency, targets, model)
    np.testing.assert_array_equal(METRICS["increase-in-confidence"].run(ctx).values, theirs)


def test_harmonic_mean_and_pearson_by_hand() -> None:
    np.testing.assert_allclose(harmonic3(np.array([0.5, 0.0, np.nan]), np.array([0.5, 1.0, 1.0]),
                                         np.array([1.0, 1.0, 1.0])), [3 / (2 + 2 + 1), 0.0, np.nan])
    a = np.array([[[1.0, 2.0], [3.0, 4.0]], [[1.0, 1.0], [1.0, 1.0]]])
    b = np.array([[[2.0, 4.0], [6.0, 8.5]], [[0.0, 1.0], [2.0, 3.0]]])
    expected = np.corrcoef([1, 2, 3, 4], [2, 4, 6, 8.5])[0, 1]
    np.testing.assert_allclose(pearson(a, b), [expected, np.nan])


@pytest.mark.parametrize("method", ["gradcam", "scorecam"])
def test_adcc_re_explains_the_masked_image(setup, method: str) -> None:
    model, engine, x, r, base, masked = setup
    s = engine.explain(x, method, class_idx=r.class_idx).saliency
    ctx = MetricContext(engine, x, s, r.class_idx, method=method)
    got = METRICS["adcc"].run(ctx).values
    again = engine.explain(x * s[:, None], method, class_idx=r.class_idx).saliency
    coherency = np.array([(np.corrcoef(a.ravel(), b.ravel())[0, 1] + 1) / 2 for a, b in zip(s, again, strict=True)])
    complexity = s.reshape(len(s), -1).mean(axis=1)
    with torch.no_grad():
        q = model(torch.from_numpy(x * s[:, None])).softmax(1).numpy()[np.arange(len(x)), r.class_idx]
    drop = np.maximum(base - q, 0) / base
    expected = 3 / (1 / coherency + 1 / (1 - complexity) + 1 / (1 - drop))
    np.testing.assert_allclose(got, expected, rtol=1e-4)
    assert np.isnan(METRICS["adcc"].run(MetricContext(engine, x, s, r.class_idx)).values).all()
