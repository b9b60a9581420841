"""The two method × metric tables of issue 13 ("Published tables"; docs/benchmarks.md, section
"Evaluation tables (camrt eval), issue 13").

    python tools/eval_tables.py shapes [--n 48] [--out out/eval] [--deadline SECONDS]
    python tools/eval_tables.py photos [--out out/eval] [--deadline SECONDS]

- shapes: the trained CNN `models/shapes_cnn.pt` exported at `block5` (with the input gradient,
  so that Opti-CAM runs too), on `--n` held-out images of `python -m models.shapes write DIR --seed 2
  --annotate mask` (seed 2 is never trained on), every metric, the true class of each image (the
  class its annotation names, as `camrt eval` explains by default; `--classes top1` for the top-1
  class instead); two maps no method made are scored beside the methods: a centred Gaussian
  (σ = 32 px) and uniform noise, as in tests/test_models_shapes.py.
- photos: the pretrained EfficientNet-Lite0 exported as tools/demo.sh does (layers `_blocks.15`
  and `_head_act`, maps from the last: `_head_act`, 1280×7×7), plus the input gradient, on the
  real photos that ship with scikit-image and scikit-learn and show ImageNet objects; the
  faithfulness metrics only (there are no annotations).

Every method of `camrt.methods.METHODS` runs, at its default options and on every image, except
where `PLANS` says otherwise (fewer images or cheaper options for the methods that re-run the
network thousands of times per image); the table says which. The numbers are those `camrt eval`
computes: the maps by `Engine.explain` (seed 0, the first method's classes for all), the metrics
by `camrt.metrics.evaluate` (the method's options passed on, so that ADCC re-explains with them;
seed 0; the unperturbed images' scores from the first method's `Result.scores`, as `camrt eval`),
the interval by `camrt.evaluation.bootstrap_interval` (95%, 10,000 resamples, seed 0), and for
the pointing game the mean of the classes' hit rates (`camrt.evaluation.class_mean`), as `camrt
eval` reports it. `--metrics` runs a subset.
`camrt eval` itself cannot take method options, hence this driver; for a method at its defaults
`camrt eval MODEL DIR --methods NAME --metrics all` on the same images gives the same numbers.

Images go in batches; after each batch the files under `OUT/table-<table>/` are rewritten
(`per_image.csv`, `table.csv`, `table.md`), so a run stopped by `--deadline` (no batch starts
after that many seconds) leaves a consistent table of the images done; each row says how many.
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import camrt.metrics as camrt_metrics  # noqa: E402
from camrt.annotations import read_annotations, union  # noqa: E402
from camrt.engine import Engine  # noqa: E402
from camrt.evaluation import bootstrap_interval, class_mean  # noqa: E402
from camrt.methods import METHODS  # noqa: E402
from camrt.visual.overlay import read_image  # noqa: E402

SEED = 0
FAITHFULNESS = ["deletion", "insertion", "average-drop", "increase-in-confidence", "adcc", "road-morf", "road-lerf"]
BASELINES = ("centre-prior", "uniform-random")


@dataclass(frozen=True)
class Plan:
    """A method's run in a table: its options (beyond the defaults) and the most images it sees."""

    options: dict = field(default_factory=dict)
    images: int | None = None  # None: every image


# Methods re-running the network thousands of times per image (and twice: ADCC re-explains).
PLANS = {
    "shapes": {"sscam": Plan(images=16), "rise": Plan(images=16)},
    "photos": {"scorecam": Plan(), "rise": Plan({"n": 1000}), "sscam": Plan({"n": 2}, images=4),
               "iscam": Plan({"n": 2}, images=4)},
}
PHOTOS = ("astronaut", "camera", "chelsea", "coffee", "motorcycle", "rocket")  # skimage.data; + sklearn's two


def run(cmd: list[str]) -> None:
    print("$", " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def prepare_shapes(work: Path, n: int) -> tuple[Path, Path]:
    model, images = work / "shapes.cam.onnx", work / f"shapes_seed2_n{n}"
    if not images.is_dir():
        run([sys.executable, "-m", "models.shapes", "write", str(images), "--n", str(n), "--seed", "2",
             "--annotate", "mask"])
    if not model.is_file():
        run(["camrt", "export", "models/shapes_cnn.pt", "--arch", "models.shapes:build", "--layer", "block5",
             "--input-shape", "1,3,128,128", "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25",
             "--labels", str(images / "labels.txt"), "--input-gradient", "-o", str(model)])
    return model, images


def prepare_photos(work: Path) -> tuple[Path, Path]:
    model, images = work / "efficientnet_lite0.cam.onnx", work / "photos"
    if not images.is_dir():
        from skimage import data, io
        from sklearn.datasets import load_sample_images

        images.mkdir(parents=True)
        photos = {name: getattr(data, "stereo_motorcycle" if name == "motorcycle" else name)() for name in PHOTOS}
        photos["motorcycle"] = photos["motorcycle"][0]  # the left view of the stereo pair
        sample = load_sample_images()
        photos.update({Path(f).stem: im for f, im in zip(sample.filenames, sample.images, strict=True)})
        for name, im in photos.items():
            io.imsave(images / f"{name}.png", im, check_contrast=False)
    weights = work / "efficientnet_lite0.pt"
    if not model.is_file():
        if not weights.is_file():
            run([sys.executable, "models/efficientnet_lite0.py", str(work)])
        run(["camrt", "export", str(weights), "--arch", "models.efficientnet_lite0:build", "--layer", "_blocks.15",
             "--layer", "_head_act", "--mean", "0.5,0.5,0.5", "--std", "0.5,0.5,0.5", "--labels",
             str(work / "imagenet_labels.txt"), "--input-gradient", "-o", str(model)])
    return model, images


def baselines(n: int, size: tuple[int, int], seed: int) -> dict[str, np.ndarray]:
    """The centre prior (a Gaussian of σ = size/4 at the centre) and uniform noise, N×H×W in [0, 1]."""
    h, w = size
    yy, xx = np.mgrid[:h, :w]
    sigma = h / 4
    centre = np.exp(-(((yy - (h - 1) / 2) ** 2 + (xx - (w - 1) / 2) ** 2) / (2 * sigma**2)))
    rng = np.random.default_rng(seed)
    return {"centre-prior": np.repeat(centre[None], n, 0).astype(np.float32),
            "uniform-random": rng.random((n, h, w), dtype=np.float32)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("table", choices=("shapes", "photos"))
    p.add_argument("--n", type=int, default=48, help="shapes: held-out images (default 48)")
    p.add_argument("--out", type=Path, default=ROOT / "out" / "eval")
    p.add_argument("--batch", type=int, default=None, help="images per batch (shapes 8, photos 2)")
    p.add_argument("--deadline", type=float, default=None, help="start no batch after this many seconds")
    p.add_argument("--methods", default=None, help="comma-separated subset (default: every method)")
    p.add_argument("--metrics", default=None, help="comma-separated subset (default: every metric that applies)")
    p.add_argument("--classes", choices=("truth", "top1"), default="truth",
                   help="shapes: explain each image's true class (default) or its top-1")
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    if a.table == "shapes":
        model, folder = prepare_shapes(a.out, a.n)
        metrics, batch = list(camrt_metrics.METRICS), a.batch or 8
    else:
        model, folder = prepare_photos(a.out)
        metrics, batch = FAITHFULNESS, a.batch or 2
    if a.metrics:
        metrics = [k for k in a.metrics.split(",") if k in metrics]
    engine = Engine(model)
    plans = {name: PLANS[a.table].get(name, Plan()) for name in (a.methods.split(",") if a.methods else METHODS)}
    for name, plan in plans.items():
        engine.configure(METHODS[name], plan.options)  # fails now, not after an hour, on an unserved method
    paths = sorted(f for f in folder.glob("*.png") if not f.name.endswith(".mask.png"))
    ann = read_annotations(folder / "annotations.json").for_images(paths) if a.table == "shapes" else None
    truth = {}
    if (folder / "labels.csv").is_file():
        with open(folder / "labels.csv") as f:
            truth = {r["file"]: int(r["class_idx"]) for r in csv.DictReader(f)}
    rows = list(plans) + (list(BASELINES) if a.table == "shapes" else [])
    values = {(m, k): [] for m in rows for k in metrics}
    per_image: list[list[object]] = []
    seconds = dict.fromkeys(rows, 0.0)
    seen = dict.fromkeys(rows, 0)
    t0 = time.perf_counter()
    for start in range(0, len(paths), batch):
        if a.deadline is not None and time.perf_counter() - t0 > a.deadline:
            print(f"deadline: stopped after {start} images", file=sys.stderr)
            break
        chunk = paths[start:start + batch]
        pixels = [read_image(f)[0] for f in chunk]
        x = engine.prepare(pixels)
        masks = None if ann is None else [union(n).mask(im.shape[:2], engine.input_size) for n, im in zip(
            ann[start:start + batch], pixels, strict=True)]
        maps, options, scores = {}, {}, None
        cls = np.array([truth[f.name] for f in chunk]) if truth and a.classes == "truth" else None
        for name, plan in plans.items():
            if plan.images is not None and start >= plan.images:
                continue
            t1 = time.perf_counter()
            r = engine.explain(x, name, class_idx=cls, seed=SEED, **plan.options)
            seconds[name] += time.perf_counter() - t1
            if scores is None:
                cls, scores, top1 = r.class_idx, r.scores, r.logits.argmax(axis=1)
            maps[name], options[name] = r.saliency, dict(plan.options)
        if a.table == "shapes":
            maps.update(baselines(len(chunk), engine.input_size, SEED + start))
        t1 = time.perf_counter()
        results = camrt_metrics.evaluate(engine, x, maps, cls, metrics, method_options=options, masks=masks, seed=SEED,
                                         base=scores)
        share = (time.perf_counter() - t1) / len(maps)
        for name in maps:
            seen[name] += len(chunk)
            seconds[name] += share
            for k in metrics:
                values[name, k] += list(results[name, k].values)
            for i, f in enumerate(chunk):
                per_image.append([f.name, int(cls[i]), int(top1[i]), truth.get(f.name, ""), name,
                                  *(repr(float(results[name, k].values[i])) for k in metrics)])
        write(a.out / f"table-{a.table}", a.table, rows, metrics, values, seen, seconds, plans, per_image, engine,
              time.perf_counter() - t0)
        print(f"{start + len(chunk)}/{len(paths)} images, {time.perf_counter() - t0:.0f} s", file=sys.stderr,
              flush=True)


def write(out: Path, table: str, rows: list[str], metrics: list[str], values: dict, seen: dict, seconds: dict,
          plans: dict, per_image: list, engine: Engine, elapsed: float) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "per_image.csv", "w", newline="") as f:
        csv.writer(f).writerows([["image", "class_idx", "top1", "true_class", "method", *metrics], *per_image])
    cells = {}
    for m in rows:
        classes = np.array([r[1] for r in per_image if r[4] == m], np.int64)
        for k in metrics:
            v = np.asarray(values[m, k], np.float64)
            ok = ~np.isnan(v)
            by = classes if camrt_metrics.METRICS[k].per_class else None
            mean = class_mean(v, by) if by is not None else float(v[ok].mean()) if ok.any() else np.nan
            low, high = bootstrap_interval(v, SEED, classes=by)
            cells[m, k] = (int(ok.sum()), mean, low, high)
    with open(out / "table.csv", "w", newline="") as f:
        csv.writer(f).writerows([["method", "metric", "n", "mean", "ci95_low", "ci95_high"]]
                                + [[m, k, *cells[m, k]] for m in rows for k in metrics])
    arrow = {k: "↑" if camrt_metrics.METRICS[k].higher_is_better else "↓" for k in metrics}

    def fmt(c: tuple) -> str:
        return "–" if c[0] == 0 else f"{c[1]:.3f} [{c[2]:.3f}, {c[3]:.3f}]"

    lines = [f"{table}: {engine.path.name}, {max(seen.values())} images, {elapsed:.0f} s; "
             "mean [95% bootstrap interval]",
             "", "| method | images | s/image | " + " | ".join(f"{k} {arrow[k]}" for k in metrics) + " |",
             "|---|---|---|" + "---|" * len(metrics)]
    for m in rows:
        opts = plans[m].options if m in plans else {}
        name = m + (" (" + ", ".join(f"{k}={v}" for k, v in opts.items()) + ")" if opts else "")
        per = seconds[m] / seen[m] if seen[m] else np.nan
        lines.append(f"| {name} | {seen[m]} | {per:.2f} | " + " | ".join(fmt(cells[m, k]) for k in metrics) + " |")
    cls = [int(r[1]) for r in per_image if r[4] == rows[0]]
    top1 = [int(r[2]) for r in per_image if r[4] == rows[0]]
    truth = [r[3] for r in per_image if r[4] == rows[0]]
    if truth and all(t != "" for t in truth):
        lines += ["", f"top-1 accuracy on these images: {np.mean(np.array(top1) == np.array(truth)):.3f}; class "
                  f"explained: {'the true class' if cls == truth else 'the top-1'}"]
    labels = engine.manifest.labels
    if labels and table == "photos":
        names = [r[0] for r in per_image if r[4] == rows[0]]
        lines += ["", "classes explained (top-1): " + ", ".join(
            f"{n} → {labels[c]}" for n, c in zip(names, cls, strict=True))]
    (out / "table.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
