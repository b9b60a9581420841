"""camrt.metrics' contract and `evaluate`, and `Engine.class_scores` against eager PyTorch: the
metric table's names, checked inputs, the unperturbed scores shared across methods and metrics,
progress over all runs, and memory bounded by the chunk (no engine call scores more rows)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import camrt
from camrt.engine import Engine
from camrt.errors import InputError
from camrt.metrics import METRICS, MetricContext, evaluate, get_metric
from tests.tiny import TinyNet, diverse_inputs, make

NAMES = ["deletion", "insertion", "average-drop", "increase-in-confidence", "adcc", "road-morf", "road-lerf",
         "pointing-game", "energy-pointing-game"]


_EXPORTED: list[tuple[torch.nn.Module, str]] = []


def export_tiny(tmp_path_factory) -> tuple[torch.nn.Module, str]:
    """TinyNet (32×32 inputs, 5 classes) exported at layer2: (model, path), exported once for all
    the metrics test modules (an export takes seconds)."""
    if not _EXPORTED:
        model = make(TinyNet)
        path = tmp_path_factory.getbasetemp() / "metrics_tiny.cam.onnx"
        camrt.export(model, layers=["layer2"], path=path, input_shape=(1, 3, 32, 32))
        _EXPORTED.append((model, str(path)))
    return _EXPORTED[0]


def explained(model: torch.nn.Module, engine: Engine, n: int = 3, seed: int = 0):
    """n inputs with different top classes and their Grad-CAM result."""
    x = diverse_inputs(model, (n, 3, 32, 32), seed)
    return x, engine.explain(x, "gradcam")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return export_tiny(tmp_path_factory)


def test_the_table_has_the_shared_names_and_papers() -> None:
    assert list(METRICS) == NAMES
    for name, m in METRICS.items():
        assert m.name == name and m.paper.startswith("https://arxiv.org/abs/") and m.description
        assert m.needs_annotations == name.endswith("pointing-game")
    with pytest.raises(InputError, match="unknown metric 'auc'.*deletion, insertion"):
        get_metric("auc")


def test_class_scores_are_eager_softmax_and_logits(tiny) -> None:
    model, path = tiny
    engine = Engine(path, device="cpu", chunk_size=2)
    x = diverse_inputs(model, (5, 3, 32, 32), 1)
    cls = np.array([0, 4, 2, 1, 3])
    with torch.no_grad():
        z = model(torch.from_numpy(x)).double()
    got = engine.class_scores(x, cls)
    assert got.dtype == np.float64 and got.shape == (5,)
    np.testing.assert_allclose(got, z.softmax(1).numpy()[np.arange(5), cls], rtol=1e-5)
    np.testing.assert_allclose(engine.class_scores(x, cls, probability=False), z.numpy()[np.arange(5), cls],
                               rtol=1e-5, atol=1e-5)
    top = z.softmax(1).max(1).values.numpy()
    np.testing.assert_allclose(engine.class_scores(x, -1), top, rtol=1e-5)


def test_inputs_are_checked(tiny) -> None:
    model, path = tiny
    engine = Engine(path, device="cpu")
    x, r = explained(model, engine)
    with pytest.raises(InputError, match="in \\[0, 1\\]"):
        MetricContext(engine, x, r.saliency * 2, r.class_idx)
    with pytest.raises(InputError, match="N×H×W = 3×32×32"):
        MetricContext(engine, x, r.saliency[:, :16], r.class_idx)
    with pytest.raises(InputError, match="not -1"):
        MetricContext(engine, x, r.saliency, -1)
    with pytest.raises(InputError, match="mask of image 1 must be bool 32×32"):
        MetricContext(engine, x, r.saliency, r.class_idx, masks=[None, np.zeros((16, 16), bool), None])
    with pytest.raises(InputError, match="unknown method"):
        MetricContext(engine, x, r.saliency, r.class_idx, method="gradcamm")
    with pytest.raises(InputError, match="need annotations"):
        evaluate(engine, x, {"gradcam": r.saliency}, r.class_idx, ["pointing-game"])
    with pytest.raises(InputError, match="needs annotations"):
        METRICS["pointing-game"].run(MetricContext(engine, x, r.saliency, r.class_idx))


def test_evaluate_shares_the_base_scores_and_streams_by_the_chunk(tiny, monkeypatch) -> None:
    model, path = tiny
    engine = Engine(path, device="cpu", chunk_size=4)
    x, r = explained(model, engine)
    calls: list[int] = []
    scores = engine.class_scores
    monkeypatch.setattr(engine, "class_scores", lambda xs, c, **k: calls.append(len(xs)) or scores(xs, c, **k))
    with pytest.raises(InputError, match="unknown metric"):  # before any run
        evaluate(engine, x, {"gradcam": r.saliency}, r.class_idx, ["deletion", "nope"])
    assert calls == []
    ticks: list[tuple[int, int]] = []
    maps = {"gradcam": r.saliency, "centre": np.full_like(r.saliency, 0.5)}
    names = ["deletion", "average-drop", "road-morf"]
    res = evaluate(engine, x, maps, r.class_idx, names, progress=lambda d, t: ticks.append((d, t)))
    assert set(res) == {(m, n) for m in maps for n in names}
    # one run of the unperturbed images for everything, then only perturbed ones
    rows = 3 + 2 * (3 * 49 + 3 + 3 * 9)
    assert sum(calls) == rows and max(calls) <= 4
    assert ticks[-1] == (rows, rows) and all(t == rows for _, t in ticks)
    assert all(a[0] <= b[0] for a, b in zip(ticks, ticks[1:], strict=False))
    # the same numbers as each metric run alone (which computes the base scores itself)
    alone = METRICS["deletion"].run(MetricContext(engine, x, r.saliency, r.class_idx))
    np.testing.assert_array_equal(alone.values, res["gradcam", "deletion"].values)
    assert np.isnan(evaluate(engine, x, maps, r.class_idx, ["adcc"])["centre", "adcc"].values).all()


def test_evaluate_takes_the_base_scores_of_the_explanation(tiny, monkeypatch) -> None:
    """Given `base` (Result.scores of the explaining run), `evaluate` runs no unperturbed batch and
    gives the numbers it gives when it scores the images itself (the two graphs' logits agree to
    float32 rounding)."""
    model, path = tiny
    engine = Engine(path, device="cpu", chunk_size=4)
    x, r = explained(model, engine)
    np.testing.assert_allclose(r.scores, engine.class_scores(x, r.class_idx), rtol=1e-5)
    own = evaluate(engine, x, {"gradcam": r.saliency}, r.class_idx, ["average-drop", "deletion"])
    calls: list[int] = []
    scores = engine.class_scores
    monkeypatch.setattr(engine, "class_scores", lambda xs, c, **k: calls.append(len(xs)) or scores(xs, c, **k))
    ticks: list[tuple[int, int]] = []
    given = evaluate(engine, x, {"gradcam": r.saliency}, r.class_idx, ["average-drop", "deletion"], base=r.scores,
                     progress=lambda d, t: ticks.append((d, t)))
    assert sum(calls) == 3 + 3 * 49 and ticks[-1] == (sum(calls), sum(calls))  # the masked and deleted images only
    for key in own:
        np.testing.assert_allclose(given[key].values, own[key].values, rtol=1e-5, atol=1e-7)
    with pytest.raises(InputError, match=r"base must hold one score per image \(3\), got shape \(2,\)"):
        evaluate(engine, x, {"gradcam": r.saliency}, r.class_idx, ["average-drop"], base=r.scores[:2])
