"""`camrt.evaluation.evaluate_folder` on a tiny exported model and a folder of tiny images.

The numbers are checked against oracles: with stub metrics whose values are computed here from
`Engine.explain`'s maps (so that the report's bookkeeping is tested on its own: per-image rows,
the table's means and intervals, skipped images, annotations), and with camrt.metrics' own
metrics against `camrt.metrics.evaluate` called directly on the same batch.
"""

from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest

import camrt
from camrt.engine import Engine
from camrt.errors import InputError
from camrt.evaluation import bootstrap_interval, class_mean, evaluate_folder, resolve_metrics
from camrt.visual.overlay import read_image
from tests.tiny import TinyNet, make

SIZE = (32, 32)


@dataclass(frozen=True)
class StubResult:
    values: np.ndarray
    curves: np.ndarray | None = None
    fractions: np.ndarray | None = None


@dataclass(frozen=True)
class StubMetric:
    name: str
    description: str
    paper: str
    needs_annotations: bool
    higher_is_better: bool
    run: object
    per_class: bool = False


FRACTIONS = np.array([0.0, 0.5, 1.0])


def stub_mean(saliency: np.ndarray, mask: np.ndarray | None) -> tuple[float, np.ndarray | None]:
    return float(saliency.mean(dtype=np.float64)), None


def stub_curve(saliency: np.ndarray, mask: np.ndarray | None) -> tuple[float, np.ndarray | None]:
    curve = np.array([(saliency >= f).mean() for f in FRACTIONS], np.float64)
    return float(np.trapezoid(curve, FRACTIONS)), curve


def stub_inside(saliency: np.ndarray, mask: np.ndarray | None) -> tuple[float, np.ndarray | None]:
    if mask is None:
        return math.nan, None
    return float(saliency[mask].sum(dtype=np.float64) / max(saliency.sum(dtype=np.float64), 1e-12)), None


STUBS = {"mean-saliency": (stub_mean, False), "curve": (stub_curve, False), "inside": (stub_inside, True)}


def _stub_evaluate(engine, x, saliencies, class_idx, metrics, method_options=None, masks=None, seed=0,
                   progress=None, base=None):
    out = {}
    for method, sal in saliencies.items():
        for name in metrics:
            fn, needs = STUBS[name]
            if needs and masks is None:
                raise InputError(f"{name} needs masks")
            pairs = [fn(sal[i], None if masks is None else masks[i]) for i in range(len(x))]
            curves = np.stack([c for _, c in pairs]) if pairs[0][1] is not None else None
            out[(method, name)] = StubResult(np.array([v for v, _ in pairs]), curves,
                                             FRACTIONS if curves is not None else None)
            if progress is not None:
                progress(len(out), len(saliencies) * len(metrics))
    return out


@pytest.fixture
def stub_metrics(monkeypatch):
    """camrt.metrics' table and evaluate replaced by three stub metrics (one with curves, one needing
    annotations)."""
    import camrt.metrics

    monkeypatch.setattr(camrt.metrics, "METRICS", {n: StubMetric(n, f"stub {n}.", "(no paper)", needs, True, None)
                                                   for n, (_, needs) in STUBS.items()})
    monkeypatch.setattr(camrt.metrics, "evaluate", _stub_evaluate)


@pytest.fixture(scope="module")
def engine(tmp_path_factory) -> Engine:
    path = tmp_path_factory.mktemp("eval") / "tiny.cam.onnx"
    camrt.export(make(TinyNet, seed=11), layers=["layer2"], path=path, input_shape=(1, 3, *SIZE),
                 labels=["cat", "dog", "bird", "fish", "frog"])
    return Engine(path, device="cpu", chunk_size=8)


@pytest.fixture
def folder(tmp_path) -> Path:
    """Five images of different sizes (one grayscale), an unreadable .png, and a text file."""
    rng = np.random.default_rng(3)
    d = tmp_path / "images"
    d.mkdir()
    for i, shape in enumerate([(40, 50, 3), (32, 32, 3), (24, 24), (64, 32, 3), (30, 45, 3)]):
        assert cv2.imwrite(str(d / f"im{i}.png"), rng.integers(0, 256, shape, dtype=np.uint8))
    (d / "broken.png").write_bytes(b"not a png")
    (d / "notes.txt").write_text("not an image")
    return d


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_report_numbers_match_the_maps_and_the_table_the_rows(engine, folder, tmp_path, stub_metrics) -> None:
    (folder / "annotations.json").write_text(json.dumps({"im0.png": {"boxes": [[0, 0, 25, 20]]},
                                                         "im3.png": {"boxes": [[5, 30, 30, 60]]}}))
    calls = []
    report = evaluate_folder(engine, folder, "gradcam,layercam", "all", tmp_path / "out", batch=2, seed=5,
                             plots=False, progress=lambda d, t: calls.append((d, t)))
    names = [f"im{i}.png" for i in range(5)]
    assert [p.name for p in report.images] == names
    assert [(p.name, "not a readable image" in why) for p, why in report.skipped] == [("broken.png", True)]
    assert report.annotations == folder / "annotations.json"
    assert calls[-1][0] == calls[-1][1] and all(a[0] <= b[0] for a, b in zip(calls, calls[1:], strict=False))
    images = [read_image(folder / n)[0] for n in names]
    rows = read_csv(tmp_path / "out" / "per_image.csv")
    assert len(rows) == 10
    for method in ("gradcam", "layercam"):
        r = engine.explain(images, method)
        masks = {0: np.zeros(SIZE, bool), 3: np.zeros(SIZE, bool)}
        masks[0][:16, :16] = True  # 25×20 px of a 50×40 image → 16×16 of 32×32
        masks[3][15:30, 5:30] = True  # 5..30 of 32 columns, 30..60 of 64 rows → 15..30
        got = [row for row in rows if row["method"] == method]
        assert [Path(row["image"]).name for row in got] == names
        assert [int(row["class_idx"]) for row in got] == r.class_idx.tolist()
        for i, row in enumerate(got):
            assert float(row["mean-saliency"]) == pytest.approx(stub_mean(r.saliency[i], None)[0], rel=1e-12)
            assert float(row["curve"]) == pytest.approx(stub_curve(r.saliency[i], None)[0], rel=1e-12)
            if i in masks:
                assert float(row["inside"]) == pytest.approx(stub_inside(r.saliency[i], masks[i])[0], rel=1e-12)
            else:
                assert row["inside"] == ""
    table = read_csv(tmp_path / "out" / "table.csv")
    assert len(table) == 6
    for cell in table:
        column = [float(row[cell["metric"]]) for row in rows if row["method"] == cell["method"] and row[cell["metric"]]]
        assert int(cell["n"]) == len(column) == (2 if cell["metric"] == "inside" else 5)
        assert float(cell["mean"]) == pytest.approx(np.mean(column), rel=1e-12)
        assert float(cell["ci95_low"]) <= float(cell["mean"]) <= float(cell["ci95_high"])
        assert (float(cell["ci95_low"]), float(cell["ci95_high"])) == bootstrap_interval(np.array(column), 5)
    curves = read_csv(tmp_path / "out" / "curves.csv")
    assert {(c["metric"], c["method"]) for c in curves} == {("curve", "gradcam"), ("curve", "layercam")}
    md = (tmp_path / "out" / "report.md").read_text()
    assert "broken.png" in md and "inside: only the 2 of 5 rows with objects count" in md
    assert "percentile bootstrap" in md and "| gradcam |" in md


def test_plots_are_png_files(engine, folder, tmp_path, stub_metrics) -> None:
    pytest.importorskip("matplotlib")
    report = evaluate_folder(engine, [folder / "im0.png", folder / "im1.png"], "gradcam", "mean-saliency,curve",
                             tmp_path / "out")
    assert sorted(p.name for p in report.written) == sorted(
        ["per_image.csv", "table.csv", "curves.csv", "report.md", "table.png", "curves-curve.png"])
    for name in ("table.png", "curves-curve.png"):
        image, _ = read_image(tmp_path / "out" / name)
        assert image.shape[0] > 100 and image.std() > 0
    assert "![table.png](table.png)" in (tmp_path / "out" / "report.md").read_text()


def test_given_class_is_explained_in_every_image(engine, folder, tmp_path, stub_metrics) -> None:
    report = evaluate_folder(engine, folder, "gradcam", "mean-saliency", tmp_path / "out", classes=3, plots=False)
    assert report.class_idx == [3] * 5
    rows = read_csv(tmp_path / "out" / "per_image.csv")
    assert {row["label"] for row in rows} == {"fish"}


def test_checks_before_any_work(engine, folder, tmp_path, stub_metrics) -> None:
    out = tmp_path / "out"
    cases = [
        (dict(methods="gradcam,nosuch"), "unknown method(s) nosuch"),
        (dict(metrics="curve,nosuch"), "unknown metric(s) nosuch; choose from mean-saliency, curve, inside or 'all'"),
        (dict(metrics="inside"), "metric(s) inside need boxes or masks, and no annotations given"),
        (dict(batch=0), "batch must be a positive integer"),
        (dict(seed=-1), "seed must be a non-negative integer"),
        (dict(classes=9), "class_idx 9 is out of range"),
        (dict(annotations=tmp_path / "missing.json"), "cannot read annotations"),
    ]
    for kwargs, message in cases:
        args = dict(methods="gradcam", metrics="all", plots=False) | kwargs
        with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
            evaluate_folder(engine, folder, args.pop("methods"), args.pop("metrics"), out, **args)
        assert not out.exists()
    (folder / "other.json").write_text(json.dumps({"elsewhere.png": {"boxes": [[0, 0, 1, 1]]}}))
    with pytest.raises(InputError, match="'.*other.json' annotates none of the 6 images"):
        evaluate_folder(engine, folder, "gradcam", "curve,inside", out, folder / "other.json", plots=False)
    (folder / "im0.png").rename(folder / "table.png")
    with pytest.raises(InputError, match="table.png' is an input and would be overwritten by the report"):
        evaluate_folder(engine, folder / "table.png", "gradcam", "curve", folder)
    (tmp_path / "file").write_text("")
    with pytest.raises(InputError, match="is a file"):
        evaluate_folder(engine, folder, "gradcam", "curve", tmp_path / "file", plots=False)


def test_all_without_annotations_skips_those_metrics_with_a_note(engine, folder, tmp_path, stub_metrics) -> None:
    report = evaluate_folder(engine, folder, "gradcam", "all", tmp_path / "out", plots=False)
    assert report.metrics == ["mean-saliency", "curve", "inside"]
    assert np.isnan(report.values[("gradcam", "inside")]).all()
    assert [c.n for c in report.table] == [5, 5, 0]
    assert any(n.startswith("inside: only the 0 of 5 rows with objects") for n in report.notes)


def test_resolve_metrics(stub_metrics) -> None:
    assert resolve_metrics("curve, all") == ["curve", "mean-saliency", "inside"]
    assert resolve_metrics(["inside"]) == ["inside"]
    with pytest.raises(InputError, match=r"unknown metric\(s\) \(none given\)"):
        resolve_metrics(" , ")


def test_bootstrap_interval() -> None:
    v = np.random.default_rng(0).normal(2.0, 1.0, 400)
    low, high = bootstrap_interval(v, 0)
    half = 1.96 * v.std(ddof=1) / math.sqrt(len(v))  # the normal approximation, for a large sample
    assert low < v.mean() < high
    assert low == pytest.approx(v.mean() - half, abs=0.02) and high == pytest.approx(v.mean() + half, abs=0.02)
    assert bootstrap_interval(v, 0) == (low, high)  # seeded
    assert bootstrap_interval(np.array([3.0, np.nan]), 0) == (3.0, 3.0)
    assert all(math.isnan(b) for b in bootstrap_interval(np.array([np.nan]), 0))


def test_mask_files_beside_the_images_are_not_evaluated(engine, tmp_path, stub_metrics) -> None:
    from camrt.annotations import resize_mask

    d = tmp_path / "shapes"
    d.mkdir()
    rng = np.random.default_rng(4)
    mask = np.zeros((48, 40), np.uint8)
    mask[10:30, 4:20] = 255
    for name in ("a", "b"):
        assert cv2.imwrite(str(d / f"{name}.png"), rng.integers(0, 256, (48, 40, 3), dtype=np.uint8))
        assert cv2.imwrite(str(d / f"{name}.mask.png"), mask)
    (d / "annotations.json").write_text(json.dumps({"a.png": {"mask": "a.mask.png"}, "b.png": {"mask": "b.mask.png"}}))
    report = evaluate_folder(engine, d, "gradcam", "inside", tmp_path / "out", plots=False)
    assert [p.name for p in report.images] == ["a.png", "b.png"]
    assert "2 mask files named by annotations.json are not evaluated" in report.notes
    r = engine.explain([read_image(d / n)[0] for n in ("a.png", "b.png")], "gradcam")
    inside = [stub_inside(r.saliency[i], resize_mask(mask > 0, SIZE))[0] for i in range(2)]
    np.testing.assert_allclose(report.values[("gradcam", "inside")], inside, rtol=1e-12)


def test_real_metrics_are_camrt_metrics_evaluate_on_each_batch(engine, folder, tmp_path) -> None:
    """The report holds what `camrt.metrics.evaluate` gives for the same batches, maps and classes."""
    from camrt.metrics import evaluate

    (folder / "annotations.json").write_text(json.dumps({"im1.png": {"boxes": [[2, 2, 20, 20]]}}))
    metrics = ["deletion", "average-drop", "road-morf", "energy-pointing-game"]
    report = evaluate_folder(engine, folder, "gradcam,reciprocam", ",".join(metrics), tmp_path / "out", batch=3,
                             seed=2, plots=False)
    assert report.metrics == metrics and len(report.images) == 5
    images = [read_image(folder / f"im{i}.png")[0] for i in range(5)]
    for start in (0, 3):
        x = engine.prepare(images[start:start + 3])
        maps = {m: engine.explain(x, m, seed=2) for m in ("gradcam", "reciprocam")}
        masks = [None] * len(x)
        if start == 0:
            masks[1] = np.zeros(SIZE, bool)
            masks[1][2:20, 2:20] = True  # im1 is 32×32, the input's size
        expected = evaluate(engine, x, {m: r.saliency for m, r in maps.items()}, maps["gradcam"].class_idx, metrics,
                            masks=masks, seed=2,
                            base=maps["gradcam"].scores)
        for (method, metric), r in expected.items():
            got = report.values[(method, metric)][start:start + len(x)]
            np.testing.assert_array_equal(got, r.values, err_msg=f"{method} {metric}")
            if r.curves is not None:
                np.testing.assert_array_equal(report.curves[(method, metric)][start:start + len(x)], r.curves)
    assert np.count_nonzero(~np.isnan(report.values[("gradcam", "energy-pointing-game")])) == 1


def _hand_class_mean(values, classes) -> float:
    sums: dict[int, list[float]] = {}
    for v, c in zip(values, classes, strict=True):
        if not math.isnan(v):
            sums.setdefault(int(c), []).append(float(v))
    return sum(sum(s) / len(s) for s in sums.values()) / len(sums)


def test_bootstrap_interval_over_classes_is_the_mean_of_class_means() -> None:
    rng = np.random.default_rng(1)
    v = rng.integers(0, 2, 30).astype(float)
    v[[3, 7]] = np.nan
    c = rng.integers(0, 4, 30) * 7  # class numbers need not be 0..K-1
    assert class_mean(v, c) == pytest.approx(_hand_class_mean(v, c), rel=1e-12)
    low, high = bootstrap_interval(v, 4, resamples=500, classes=c)
    ok = ~np.isnan(v)
    draws = np.random.default_rng(4).integers(0, ok.sum(), (500, ok.sum()))  # the same draws, one block
    means = [_hand_class_mean(v[ok][d], c[ok][d]) for d in draws]
    assert (low, high) == pytest.approx(tuple(np.quantile(means, [0.025, 0.975])), rel=1e-12)
    assert bootstrap_interval(v, 4, resamples=500) != (low, high)


CLASSY = {"im0.png": [{"boxes": [[0, 0, 25, 20]], "class": "dog"}, {"boxes": [[25, 20, 50, 40]], "class": 3}],
          "im1.png": {"boxes": [[2, 2, 20, 20]], "class": 2}, "im3.png": {"boxes": [[5, 30, 30, 60]]}}


def _box(r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    m = np.zeros(SIZE, bool)
    m[r0:r1, c0:c1] = True
    return m


@pytest.mark.parametrize("classes", ["auto", "annotated", "top1", 3])
def test_classes_choose_the_rows_their_classes_and_objects(engine, folder, tmp_path, stub_metrics, classes) -> None:
    """Which (image, class) rows are evaluated, which class each explains and which objects it is
    scored against, for each `classes` mode; class names resolved through the model's labels."""
    (folder / "annotations.json").write_text(json.dumps(CLASSY))
    report = evaluate_folder(engine, folder, "gradcam", "inside", tmp_path / "out", plots=False, classes=classes)
    images = {f"im{i}.png": read_image(folder / f"im{i}.png")[0] for i in range(5)}
    top1 = dict(zip(images, engine.explain(list(images.values()), "gradcam").class_idx.tolist(), strict=True))
    dog, three, im1, im3 = _box(0, 16, 0, 16), _box(16, 32, 16, 32), _box(2, 20, 2, 20), _box(15, 30, 5, 30)
    expected = {  # (image, class, mask)
        "auto": [("im0.png", 1, dog), ("im0.png", 3, three), ("im1.png", 2, im1), ("im2.png", -1, None),
                 ("im3.png", -1, im3), ("im4.png", -1, None)],
        "annotated": [("im0.png", 1, dog), ("im0.png", 3, three), ("im1.png", 2, im1)],
        "top1": [("im0.png", -1, dog | three), ("im1.png", -1, im1), ("im2.png", -1, None), ("im3.png", -1, im3),
                 ("im4.png", -1, None)],
        3: [(f"im{i}.png", 3, {0: three, 3: im3}.get(i)) for i in range(5)],
    }[classes]
    assert [(p.name, c) for p, c in zip(report.images, report.class_idx, strict=True)] == [
        (n, top1[n] if c == -1 else c) for n, c, _ in expected]
    skipped = sorted(p.name for p, _ in report.skipped)
    assert skipped == (["broken.png", "im2.png", "im3.png", "im4.png"] if classes == "annotated" else ["broken.png"])
    rows = [(n, c) for n, c, _ in expected]
    batch = engine.explain([images[n] for n, _ in rows], "gradcam", class_idx=[c for _, c in rows])
    want = [math.nan if m is None else stub_inside(s, m)[0] for s, (_, _, m) in zip(batch.saliency, expected,
                                                                                      strict=True)]
    np.testing.assert_allclose(report.values[("gradcam", "inside")], want, rtol=1e-12)
    per_image = read_csv(tmp_path / "out" / "per_image.csv")
    assert [(Path(r["image"]).name, int(r["class_idx"]), r["label"]) for r in per_image] == [
        (p.name, c, ["cat", "dog", "bird", "fish", "frog"][c]) for p, c in zip(report.images, report.class_idx,
                                                                               strict=True)]


@pytest.mark.parametrize(("data", "classes", "message"), [
    ({"im0.png": {"boxes": [[0, 0, 5, 5]], "class": "zebra"}}, "auto",
     "entry 'im0.png': class 'zebra' is not one of the model's labels; the model's labels are cat, dog"),
    ({"im0.png": {"boxes": [[0, 0, 5, 5]], "class": 7}}, "top1",
     "entry 'im0.png': class 7 is out of range: the model has 5 classes"),
    ({"im0.png": {"boxes": [[0, 0, 5, 5]]}}, "annotated",
     "classes='annotated' needs annotations that name each object's class"),
    ({}, "best", "classes must be one of auto, annotated, top1 or a class index, got 'best'"),
])
def test_bad_classes_are_refused_before_any_work(engine, folder, tmp_path, data, classes, message) -> None:
    (folder / "annotations.json").write_text(json.dumps(data))
    with pytest.raises(InputError, match=re.escape(message)):
        evaluate_folder(engine, folder, "gradcam", "deletion", tmp_path / "out", plots=False, classes=classes)
    assert not (tmp_path / "out").exists()


def test_pointing_game_table_is_the_mean_of_class_accuracies(engine, folder, tmp_path) -> None:
    """The pointing game's table cell: the mean over classes of the per-class hit rates, its
    interval the bootstrap of that statistic; the energy game's the plain mean over rows."""
    (folder / "annotations.json").write_text(json.dumps(CLASSY))
    report = evaluate_folder(engine, folder, "gradcam", "pointing-game,energy-pointing-game", tmp_path / "out",
                             plots=False, classes="annotated", seed=3)
    cells = {c.metric: c for c in report.table}
    hits, cls = report.values[("gradcam", "pointing-game")], np.array(report.class_idx)
    assert cells["pointing-game"].mean == pytest.approx(_hand_class_mean(hits, cls), rel=1e-12)
    assert (cells["pointing-game"].low, cells["pointing-game"].high) == bootstrap_interval(hits, 3, classes=cls)
    energy = report.values[("gradcam", "energy-pointing-game")]
    assert cells["energy-pointing-game"].mean == pytest.approx(np.nanmean(energy), rel=1e-12)
    assert "`pointing-game`, the mean over the classes" in (tmp_path / "out" / "report.md").read_text()
