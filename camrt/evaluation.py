"""Evaluate CAM methods on a folder of images and write a report: the library behind `camrt eval`.

For each batch of images: every method's maps through `Engine.explain`, then every metric of
`camrt.metrics` on them (the same classes for all methods). Which class is explained (`classes`
of `evaluate_folder`): by default the class the annotations name for each object group of an
image (one row per image and class, scored against that class's objects, as the pointing game's
protocol does), and the image's top-1 class where they name none; or one class for every image;
or each image's top-1 against all its objects. The report (`output/`):

- `per_image.csv`: one row per image and method, one column per metric (empty where the metric
  does not apply: no annotation for a pointing game);
- `table.csv` and `report.md`: per method and metric the number of rows, the mean and its 95%
  confidence interval, a percentile bootstrap over the rows (10,000 resamples, seeded with
  `seed`: the same run gives the same interval); for the metrics averaged over classes (the
  pointing game: its paper's accuracy is the mean of the per-class accuracies) the mean of the
  classes' means, bootstrapped the same way; report.md adds the settings, what each metric
  measures, the skipped images and the notes;
- `curves.csv` and `curves-<metric>.png` for the metrics with curves (deletion, insertion, ROAD):
  the mean curve of each method; `table.png`: the table as bars with their intervals.

Every file is written completely or not at all (`camrt.atomic`). Plots need matplotlib
(`camrt[eval]`); it is drawn on a `Figure` of its own, never through pyplot's global state.
"""

from __future__ import annotations

import csv
import io
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path

import numpy as np

import camrt.metrics as camrt_metrics
from camrt import checks
from camrt.annotations import ANNOTATIONS_FILE, Annotation, read_annotations
from camrt.atomic import write_bytes, write_text
from camrt.engine import Engine
from camrt.errors import CamrtError, InputError
from camrt.explain import _method_names, expand_inputs, resolve_methods
from camrt.methods import METHODS

RESAMPLES = 10_000  # bootstrap resamples per interval
CLASS_MODES = ("auto", "annotated", "top1")  # evaluate_folder's classes, besides a class index
LEVEL = 0.95
CSV_FILES = ("per_image.csv", "table.csv", "curves.csv")


def resolve_metrics(metrics: str | Sequence[str]) -> list[str]:
    """A comma-separated string or a list of metric names, checked against `camrt.metrics.METRICS`;
    'all' stands for every metric at its place. Each metric runs once, at its first place.

    Raises:
        InputError: an unknown name (the message lists the metrics), or none given.
    """
    known = camrt_metrics.METRICS
    names = _method_names(metrics)
    unknown = [n for n in names if n not in known and n != "all"]
    if unknown or not names:
        raise InputError(f"unknown metric(s) {', '.join(unknown) or '(none given)'}; choose from "
                         f"{', '.join(known)} or 'all'")
    return list(dict.fromkeys(m for n in names for m in (known if n == "all" else [n])))


def class_mean(values: np.ndarray, classes: np.ndarray) -> float:
    """The mean over classes of each class's mean of `values` (NaN dropped); NaN without values."""
    v, c = np.asarray(values, np.float64), np.asarray(classes)
    ok = ~np.isnan(v)
    if not ok.any():
        return math.nan
    return float(np.mean([v[ok & (c == k)].mean() for k in np.unique(c[ok])]))


def bootstrap_interval(values: np.ndarray, seed: int, resamples: int = RESAMPLES,
                       level: float = LEVEL, classes: np.ndarray | None = None) -> tuple[float, float]:
    """The percentile bootstrap interval of the mean of `values` (NaN dropped): the means of
    `resamples` resamples of the values with replacement, drawn by `np.random.default_rng(seed)`,
    and their `(1 − level)/2` and `(1 + level)/2` quantiles. With `classes` (one per value) the
    statistic is `class_mean` (each resample's mean over the classes it holds of their means).
    (NaN, NaN) without values."""
    v = np.asarray(values, np.float64)
    ok = ~np.isnan(v)
    v = v[ok]
    if v.size == 0:
        return math.nan, math.nan
    c = None if classes is None else np.unique(np.asarray(classes)[ok], return_inverse=True)[1]
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    step = max(1, (1 << 22) // v.size)  # index blocks of at most 4M entries
    for s in range(0, resamples, step):
        k = min(step, resamples - s)
        idx = rng.integers(0, v.size, (k, v.size))
        if c is None:
            means[s:s + k] = v[idx].mean(axis=1)
            continue
        m = int(c.max()) + 1
        cell = (np.arange(k)[:, None] * m + c[idx]).ravel()  # (resample, class) of each draw
        sums = np.bincount(cell, v[idx].ravel(), k * m).reshape(k, m)
        counts = np.bincount(cell, None, k * m).reshape(k, m)
        with np.errstate(invalid="ignore", divide="ignore"):
            means[s:s + k] = np.nanmean(sums / counts, axis=1)  # 0/0 for a class a resample lacks
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


@dataclass(frozen=True)
class Cell:
    """One method and metric: the images with a value, their mean and its bootstrap interval."""

    method: str
    metric: str
    n: int
    mean: float
    low: float
    high: float


@dataclass
class Report:
    """What `evaluate_folder` did. `values[(method, metric)]` holds one number per evaluated
    image (NaN where the metric does not apply); `curves[(method, metric)]` the images' curves
    over `fractions[metric]`."""

    output: Path
    methods: list[str]
    metrics: list[str]
    images: list[Path] = field(default_factory=list)
    class_idx: list[int] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    annotations: Path | None = None
    classes: int | str = "auto"
    values: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)
    curves: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)
    fractions: dict[str, np.ndarray] = field(default_factory=dict)
    table: list[Cell] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)  # seconds: each method's maps, all the metrics


def _annotation_file(annotations: str | os.PathLike | None, images: Sequence[str | os.PathLike]) -> Path | None:
    """The file given, or `annotations.json` in the one folder given, if there is one."""
    if annotations is not None:
        return Path(annotations)
    folders = [Path(p) for p in images if Path(p).is_dir()]
    if len(images) == 1 and folders and (folders[0] / ANNOTATIONS_FILE).is_file():
        return folders[0] / ANNOTATIONS_FILE
    return None


def _annotate(paths: list[Path], ann_file: Path | None) -> tuple[list[Path], list[tuple[Annotation, ...]], list[str]]:
    """The images to evaluate (the inputs less the mask files the annotations name), each one's
    annotations (one per class, () for none), and a note when mask files were left out."""
    if ann_file is None:
        return paths, [()] * len(paths), []
    ann = read_annotations(ann_file)
    named = ann.mask_files()
    images = [p for p in paths if p.resolve() not in named]
    if not images:
        raise InputError(f"the inputs hold only the mask files that '{ann_file}' names; give the images")
    left = len(paths) - len(images)
    notes = [f"{left} mask files named by {ann_file.name} are not evaluated"] if left else []
    return images, ann.for_images(images), notes


@dataclass(frozen=True)
class _Row:
    """One image and class to evaluate: the objects scored against (none: no annotation) and the
    class explained (-1: the image's top-1)."""

    path: Path
    objects: tuple[Annotation, ...]
    class_idx: int


def _check_classes(classes: int | str, model: Engine) -> int | str:
    if isinstance(classes, str):
        if classes not in CLASS_MODES:
            raise InputError(f"classes must be one of {', '.join(CLASS_MODES)} or a class index, got '{classes}'")
        return classes
    c = int(model.check_class_idx(classes, 1)[0])
    return "top1" if c == -1 else c


def _class_of(label: int | str, where: str, model: Engine) -> int:
    """The model's class index for an annotation's class (an index, or one of the model's labels)."""
    labels = model.manifest.labels
    if isinstance(label, str):
        if not labels or label not in labels:
            known = f"the model's labels are {', '.join(labels[:5])}, ..." if labels else (
                "the model has no labels (camrt export --labels FILE), so give class indices")
            raise InputError(f"{where}: class '{label}' is not one of the model's labels; {known}")
        return labels.index(label)
    k = model.manifest.num_classes
    if not 0 <= label < k:
        raise InputError(f"{where}: class {label} is out of range: the model has {k} classes (0..{k - 1})")
    return int(label)


def _rows(paths: list[Path], found: list[tuple[Annotation, ...]], classes: int | str, model: Engine
          ) -> tuple[list[_Row], list[tuple[Path, str]]]:
    """The (image, class) rows to evaluate (see `evaluate_folder`'s `classes`), and the images
    skipped for having no class to explain under 'annotated', with the reason."""
    rows: list[_Row] = []
    skipped: list[tuple[Path, str]] = []
    for path, groups in zip(paths, found, strict=True):
        named: dict[int, list[Annotation]] = {}
        for g in groups:
            if g.label is not None:
                named.setdefault(_class_of(g.label, g.where, model), []).append(g)
        plain = tuple(g for g in groups if g.label is None)
        if classes == "top1":
            rows.append(_Row(path, groups, -1))
        elif isinstance(classes, int):
            mine = (*named.get(classes, ()), *plain)
            rows.append(_Row(path, mine, classes))
        else:
            rows += [_Row(path, tuple(gs), c) for c, gs in named.items()]
            if not named and classes == "annotated":
                skipped.append((path, "its annotation names no class (classes='annotated')"))
            elif plain or not named:  # 'auto': objects of no named class, explained as the top-1
                rows.append(_Row(path, plain, -1))
    return rows, skipped


def _output_files(metrics: Sequence[str], plots: bool) -> list[str]:
    names = [*CSV_FILES, "report.md"]
    return names + (["table.png", *(f"curves-{m}.png" for m in metrics)] if plots else [])


def _check_plots() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise InputError("the report's plots need matplotlib: pip install 'camrt[eval]', or leave the plots out "
                         "(plots=False, `camrt eval --no-plots`)") from None


def evaluate_folder(
    model: Engine,
    images: str | os.PathLike | Sequence[str | os.PathLike],
    methods: str | Sequence[str],
    metrics: str | Sequence[str],
    output: str | os.PathLike,
    annotations: str | os.PathLike | None = None,
    batch: int = 8,
    seed: int = 0,
    classes: int | str = "auto",
    plots: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> Report:
    """Run `methods` on the images and score their maps with `metrics`; write the report to
    `output` (see the module docstring) and return it.

    Args:
        model: the engine to explain with (its `chunk_size` bounds the perturbed copies per run).
        images: a folder (its image files, as `camrt explain` lists them), files, or several.
        methods, metrics: names, comma-separated or as a list; 'all' as in `camrt explain` for
            methods, every metric for metrics.
        annotations: an annotation file (`camrt.annotations`); None reads `annotations.json` in
            the images' folder when one folder is given and it has one.
        batch: (image, class) rows per `Engine.explain` call (memory grows with it).
        seed: seeds the randomised methods and metrics and the bootstrap.
        classes: which class each map explains. 'auto': each class the image's annotations name
            (one row per class, scored against that class's objects), and the top-1 class for an
            image whose annotations name none (scored against its unnamed objects, if any).
            'annotated': only the classes the annotations name; an image with none is skipped.
            'top1': each image's top-1 class, scored against all its objects. An int: that class
            in every image, scored against its objects and the unnamed ones.
        plots: draw the PNG plots (needs matplotlib).
        progress: called as progress(done, total) as the work advances (row × method or metric
            steps).

    Every check that holds for all images runs before any image is read: methods and metrics
    (unknown names), a metric needing annotations asked for by name with no annotation for any
    image, the annotation file itself and the classes it names, batch, seed, classes,
    matplotlib, the output folder. An image that cannot be read (or whose annotation does not fit
    it) is skipped and listed in the report; metrics needing annotations are left empty for rows
    without objects, and the report says so.

    Raises:
        InputError: any of the checks above, or a method that fails on the model.
    """
    t0 = time.perf_counter()
    names = resolve_methods(methods)
    for name in names:
        model.configure(METHODS[name])  # a gradient method on a file without gradients: before any work
    wanted = resolve_metrics(metrics)
    known = camrt_metrics.METRICS
    named = set(_method_names(metrics))
    batch = checks.positive_int(batch, "batch")
    seed = checks.non_negative_int(seed, "seed")
    classes = _check_classes(classes, model)
    if plots:
        _check_plots()
    inputs = [images] if isinstance(images, (str, os.PathLike)) else list(images)
    paths = expand_inputs(inputs)
    ann_file = _annotation_file(annotations, inputs)
    paths, found, notes = _annotate(paths, ann_file)
    if classes == "annotated" and not any(g.label is not None for gs in found for g in gs):
        raise InputError("classes='annotated' needs annotations that name each object's class ('class' in camrt's "
                         "JSON, 'category_id' in COCO's); " + (f"'{ann_file}' names none for these images"
                                                            if ann_file else "no annotations given"))
    count = sum(bool(a) for a in found)
    need = [m for m in wanted if known[m].needs_annotations]
    why = ("the others have none" if count else f"'{ann_file}' annotates none of the {len(paths)} images"
           if ann_file is not None else "no annotations given: --annotations FILE, or annotations.json beside them")
    explicit = [m for m in need if m in named]
    if count == 0 and explicit:
        raise InputError(f"metric(s) {', '.join(explicit)} need boxes or masks, and {why}")
    rows, unnamed = _rows(paths, found, classes, model)  # the classes the annotations name: checked here
    out = Path(output)
    _check_output(out, paths, _output_files(wanted, plots))

    report = Report(out, names, wanted, annotations=ann_file, notes=notes, classes=classes, skipped=unnamed)
    annotated = 0
    per_row = len(names) * (1 + len(wanted))
    total, done = len(rows) * per_row, 0
    for kept, pixels, masks, unread in _batches(model, rows, batch, report):
        done += unread * per_row
        if not kept:
            continue
        x = model.prepare(pixels)
        saliencies, cls, scores = {}, np.array([r.class_idx for r in kept], np.int64), None
        for name in names:
            t1 = time.perf_counter()
            r = model.explain(x, name, class_idx=cls, seed=seed)
            report.timings[name] = report.timings.get(name, 0.0) + time.perf_counter() - t1
            cls, scores = (r.class_idx, r.scores) if scores is None else (cls, scores)
            saliencies[name] = r.saliency
            done += len(kept)
            if progress is not None:
                progress(done, total)
        base, share = done, len(kept) * len(names) * len(wanted)
        inner = None if progress is None else (
            lambda d, t, base=base, share=share: progress(base + (share * d) // max(t, 1), total))
        use = [m for m in wanted if not known[m].needs_annotations or any(mk is not None for mk in masks)]
        t1 = time.perf_counter()
        results = camrt_metrics.evaluate(model, x, saliencies, cls, use, masks=masks if need else None,
                                         seed=seed, progress=inner, base=scores)
        report.timings["metrics"] = report.timings.get("metrics", 0.0) + time.perf_counter() - t1
        done = base + share
        if progress is not None:
            progress(done, total)
        _collect(report, [r.path for r in kept], cls, results, names, wanted, masks, known)
        annotated += sum(m is not None for m in masks)
    if need and annotated < len(report.images):
        others = why if ann_file is None or count == 0 else "the others have no annotation, or none of their class"
        report.notes.append(f"{', '.join(need)}: only the {annotated} of {len(report.images)} rows with objects "
                            f"count ({others})")
    _summarise(report, seed)
    report.seconds = time.perf_counter() - t0
    _write(report, model, plots, seed)
    return report


def _check_output(out: Path, paths: Sequence[Path], names: Sequence[str]) -> None:
    """Refuse an output folder that is a file or whose files would replace an input; create it."""
    if out.exists() and not out.is_dir():
        raise InputError(f"output folder '{out}' is a file; give a folder with -o")
    inputs = {p.resolve(): p for p in paths}
    for name in names:
        if (out.resolve() / name) in inputs:
            raise InputError(f"'{inputs[out.resolve() / name]}' is an input and would be overwritten by the "
                             "report; write to another folder (-o)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot create output folder '{out}': {e.strerror or e}") from e


def _batches(model: Engine, rows: list[_Row], batch: int, report: Report
             ) -> Iterator[tuple[list[_Row], list[np.ndarray], list[np.ndarray | None], int]]:
    """Batches of `batch` rows of readable images (the last may be smaller), with their images,
    their objects' masks at the input size (None: no objects) and the number of rows skipped since
    the last batch. An image that cannot be read, or whose annotation does not fit it, is skipped
    with all its rows and goes to `report.skipped` with the reason. Whole batches of readable
    rows: a batch is the same whatever files fail."""
    from camrt.visual.overlay import read_image  # cv2, as `camrt explain`

    kept, pixels, masks, unread = [], [], [], 0
    for path, group in groupby(rows, key=lambda r: r.path):  # an image's rows are consecutive
        mine = list(group)
        try:
            image, _ = read_image(path)
            found = [_mask(row.objects, image.shape[:2], model.input_size) for row in mine]
        except CamrtError as e:
            report.skipped.append((path, str(e)))
            unread += len(mine)
            continue
        for row, mask in zip(mine, found, strict=True):
            kept.append(row)
            pixels.append(image)
            masks.append(mask)
            if len(kept) == batch:
                yield kept, pixels, masks, unread
                kept, pixels, masks, unread = [], [], [], 0
    if kept or unread:
        yield kept, pixels, masks, unread


def _mask(objects: tuple[Annotation, ...], image_size: tuple[int, int], input_size: tuple[int, int]
          ) -> np.ndarray | None:
    """The union of the objects' masks at the input size; None without objects."""
    if not objects:
        return None
    return np.logical_or.reduce([a.mask(image_size, input_size) for a in objects])


def _collect(report: Report, kept: list[Path], cls: np.ndarray, results: dict, names: list[str],
             wanted: list[str], masks: list[np.ndarray | None], known: dict) -> None:
    """Append a batch's numbers to the report (NaN for the metrics not run on it, and for a metric
    needing annotations on an image without)."""
    report.images += kept
    report.class_idx += [int(c) for c in cls]
    missing = np.array([m is None for m in masks])
    for name in names:
        for metric in wanted:
            r = results.get((name, metric))
            v = np.full(len(kept), np.nan) if r is None else np.asarray(r.values, np.float64).copy()
            if known[metric].needs_annotations:
                v[missing] = np.nan
            key = (name, metric)
            report.values[key] = np.concatenate([report.values.get(key, np.empty(0)), v])
            if r is not None and r.curves is not None:
                curves = np.asarray(r.curves, np.float64)[~np.isnan(v)]
                report.fractions[metric] = np.asarray(r.fractions, np.float64)
                prev = report.curves.get(key)
                report.curves[key] = curves if prev is None else np.concatenate([prev, curves])


def _summarise(report: Report, seed: int) -> None:
    """Each method and metric's mean and interval: over the rows, or over the classes for a
    `per_class` metric (the mean of the classes' means)."""
    known = camrt_metrics.METRICS
    classes = np.asarray(report.class_idx, np.int64)
    for name in report.methods:
        for metric in report.metrics:
            v = report.values.get((name, metric), np.empty(0))
            by = classes if known[metric].per_class else None
            ok = ~np.isnan(v)
            mean = (float(v[ok].mean()) if ok.any() else math.nan) if by is None else class_mean(v, by)
            low, high = bootstrap_interval(v, seed, classes=by)
            report.table.append(Cell(name, metric, int(ok.sum()), mean, low, high))


def _number(v: float) -> str:
    return "" if math.isnan(v) else repr(float(v))


def _csv(rows: list[list[object]]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue()


def _write(report: Report, model: Engine, plots: bool, seed: int) -> None:
    """Write the report's files, each atomically; an OSError becomes an InputError with its cause."""
    labels = model.manifest.labels
    files: dict[str, str | bytes] = {}
    rows: list[list[object]] = [["image", "class_idx", "label", "method", *report.metrics]]
    for i, (path, c) in enumerate(zip(report.images, report.class_idx, strict=True)):
        for name in report.methods:
            rows.append([str(path), c, labels[c] if labels else "", name,
                         *(_number(report.values[(name, m)][i]) for m in report.metrics)])
    files["per_image.csv"] = _csv(rows)
    files["table.csv"] = _csv([["method", "metric", "n", "mean", "ci95_low", "ci95_high"]] + [
        [c.method, c.metric, c.n, _number(c.mean), _number(c.low), _number(c.high)] for c in report.table])
    curve_rows: list[list[object]] = [["metric", "method", "fraction", "mean", "n"]]
    for (name, metric), curves in report.curves.items():
        mean = curves.mean(axis=0) if len(curves) else np.full(len(report.fractions[metric]), np.nan)
        curve_rows += [[metric, name, _number(f), _number(m), len(curves)]
                       for f, m in zip(report.fractions[metric], mean, strict=True)]
    files["curves.csv"] = _csv(curve_rows)
    if plots:
        files.update(_plots(report))
    files["report.md"] = _markdown(report, model, seed, [f for f in files if f.endswith(".png")])
    for name, data in files.items():
        target = report.output / name
        try:
            (write_text if isinstance(data, str) else write_bytes)(target, data)
        except OSError as e:
            raise InputError(f"cannot write '{target}': {e.strerror or e}") from e
        report.written.append(target)


def _fmt(v: float) -> str:
    return "–" if math.isnan(v) else f"{v:.3f}"


_CLASS_TEXT = {"auto": "the classes the annotations name, else each image’s top-1",
               "annotated": "the classes the annotations name", "top1": "each image’s top-1"}


def _markdown(report: Report, model: Engine, seed: int, pngs: list[str]) -> str:
    known = camrt_metrics.METRICS
    cells = {(c.method, c.metric): c for c in report.table}
    arrow = {m: "↑" if known[m].higher_is_better else "↓" for m in report.metrics}
    lines = [f"# camrt eval: {model.path.name}", "",
             f"{len(report.images)} rows (image and class) evaluated on {len(set(report.images))} images, "
             f"{len(report.skipped)} skipped; class explained: "
             f"{_CLASS_TEXT.get(report.classes, report.classes)}; seed {seed}; provider {model.provider}; "
             f"annotations: {report.annotations or 'none'}; {report.seconds:.1f} s (maps: "
             + ", ".join(f"{k} {v:.1f} s" for k, v in report.timings.items() if k != "metrics")
             + f"; metrics {report.timings.get('metrics', 0.0):.1f} s).", "",
             "Mean over the rows [95% confidence interval: percentile bootstrap over the rows, "
             f"{RESAMPLES:,} resamples, seed {seed}]; for " + (", ".join(
                 f"`{m}`" for m in report.metrics if known[m].per_class) or "no metric here") + ", the mean over the "
             "classes of each class's mean, as its paper reports it; ↑ higher is better, ↓ lower is better.", "",
             "| method | " + " | ".join(f"{m} {arrow[m]}" for m in report.metrics) + " |",
             "|---|" + "---|" * len(report.metrics)]
    for name in report.methods:
        lines.append(f"| {name} | " + " | ".join(
            f"{_fmt(c.mean)} [{_fmt(c.low)}, {_fmt(c.high)}]" for c in (cells[(name, m)] for m in report.metrics))
            + " |")
    counts = {m: sorted({cells[(n, m)].n for n in report.methods}) for m in report.metrics}
    lines += ["", "Rows per metric: " + ", ".join(f"{m} {'/'.join(map(str, counts[m]))}" for m in report.metrics)
              + ".", "", "## Metrics", ""]
    lines += [f"- `{m}` ({arrow[m]}): {known[m].description.rstrip('.')}; {known[m].paper}" for m in report.metrics]
    if pngs:
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in pngs]
    if report.notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in report.notes]
    if report.skipped:
        lines += ["", "## Skipped images", ""] + [f"- `{p}`: {why}" for p, why in report.skipped]
    return "\n".join(lines) + "\n"


def _png(fig) -> bytes:  # noqa: ANN001 - a matplotlib Figure
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _plots(report: Report) -> dict[str, bytes]:
    """`table.png` (a bar per method and metric, with its interval) and `curves-<metric>.png`
    (the mean curve of each method), on Figures of their own (no pyplot)."""
    from matplotlib.figure import Figure

    known = camrt_metrics.METRICS
    cells = {(c.method, c.metric): c for c in report.table}
    out: dict[str, bytes] = {}
    cols = min(3, len(report.metrics))
    rows = -(-len(report.metrics) // cols)
    fig = Figure(figsize=(4.2 * cols, 3.2 * rows), layout="constrained")
    pos = np.arange(len(report.methods))
    for k, metric in enumerate(report.metrics):
        ax = fig.add_subplot(rows, cols, k + 1)
        c = [cells[(n, metric)] for n in report.methods]
        mean = np.array([x.mean for x in c])
        err = np.array([[x.mean - x.low for x in c], [x.high - x.mean for x in c]])
        ax.bar(pos, np.nan_to_num(mean), yerr=np.nan_to_num(err), capsize=3, color="tab:blue")
        ax.set_xticks(pos, report.methods, rotation=45, ha="right", fontsize=8)
        ax.set_title(f"{metric} ({'higher' if known[metric].higher_is_better else 'lower'} is better)", fontsize=9)
    out["table.png"] = _png(fig)
    for metric in report.metrics:
        if metric not in report.fractions:
            continue
        fig = Figure(figsize=(5, 3.6), layout="constrained")
        ax = fig.add_subplot()
        for name in report.methods:
            curves = report.curves.get((name, metric))
            if curves is not None and len(curves):
                label = f"{name} ({cells[(name, metric)].mean:.3f})"
                ax.plot(report.fractions[metric], curves.mean(axis=0), label=label)
        ax.set_xlabel("fraction of pixels")
        ax.set_ylabel("class score (mean over images)")
        ax.set_title(metric)
        ax.legend(fontsize=8)
        out[f"curves-{metric}.png"] = _png(fig)
    return out
