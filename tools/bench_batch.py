"""`camrt batch` against a plain loop over `Engine.explain` on one machine (issue 15), side by side
in one run: images per second and the ratio, with 1 worker and with the default (one per core).

    python tools/bench_batch.py [--images 2000] [--batch 16] [--workdir out/bench_batch]

The model is the demo's pretrained EfficientNet-Lite0 (Grad-CAM at `_head_act`); the images are
224×224 PNG files of smooth random colour fields written once into the workdir. Both sides read
and decode every file, preprocess it and explain it with Grad-CAM in batches of `--batch`; the
loop keeps the maps in memory, `camrt batch` writes its Parquet shards. Ray's start (a local
cluster in this process) is timed apart and reported, not counted in the batch figures: it is paid
once per job.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _images(folder: Path, n: int) -> list[Path]:
    from camrt.visual.overlay import write_image

    folder.mkdir(parents=True, exist_ok=True)
    paths = sorted(folder.glob("img*.png"))
    if len(paths) >= n:
        return paths[:n]
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:224, 0:224] / 224.0
    for i in range(len(paths), n):
        f = rng.normal(size=(3, 3))
        img = np.stack([np.sin(6 * (f[c, 0] * x + f[c, 1] * y) + f[c, 2]) for c in range(3)], -1)
        write_image(folder / f"img{i:05d}.png", ((img + 1) * 127.5).astype(np.uint8))
    return sorted(folder.glob("img*.png"))[:n]


def _loop(model: Path, paths: list[Path], size: int) -> float:
    from camrt.engine import Engine
    from camrt.visual.overlay import read_image

    t0 = time.perf_counter()
    engine = Engine(model)  # as each batch actor builds one
    maps = []
    for i in range(0, len(paths), size):
        r = engine.explain([read_image(p)[0] for p in paths[i:i + size]], "gradcam")
        maps.append(r.low_res)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--workdir", type=Path, default=ROOT / "out" / "bench_batch")
    a = p.parse_args()
    import os

    os.environ.setdefault("RAY_DATA_LOG_LEVEL", "ERROR")
    import camrt
    from camrt.scale import batch
    from models.efficientnet_lite0 import LAYERS, MEAN, STD, pretrained

    a.workdir.mkdir(parents=True, exist_ok=True)
    model = a.workdir / "lite0.cam.onnx"
    if not model.is_file():
        camrt.export(pretrained().eval(), layers=list(LAYERS), path=model, mean=MEAN, std=STD)
    paths = _images(a.workdir / "images", a.images)
    listing = a.workdir / "images.txt"
    listing.write_text("".join(f"{p}\n" for p in paths))
    import ray

    t0 = time.perf_counter()
    ray.init(include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    ray.data.DataContext.get_current().enable_progress_bars = False
    start = time.perf_counter() - t0
    print(f"{len(paths)} images, batch {a.batch}, {os.cpu_count()} CPUs; Ray's start {start:.1f} s (not counted below)",
          flush=True)
    rows = {}
    for rnd in range(2):  # alternating rounds; the best of each kept
        rows.setdefault("loop", []).append(_loop(model, paths, a.batch))
        for w in (1, None):  # one worker (with every core's thread), and the default (one per core)
            out = a.workdir / f"out{w}"
            shutil.rmtree(out, ignore_errors=True)
            s = batch(model, listing, out, "gradcam", workers=w, batch_size=a.batch)
            assert s.explained == len(paths), s
            label = f"batch, {s.workers} worker{'s' if s.workers > 1 else ''}{' (default)' if w is None else ''}"
            rows.setdefault(label, []).append(s.seconds)
        print(f"round {rnd + 1}: " + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in rows.items()), flush=True)
    ray.shutdown()
    base = min(rows["loop"])
    for k, v in rows.items():
        best = min(v)
        print(f"{k:<20} {len(paths) / best:7.1f} images/s  {best:6.1f} s  ratio to loop {best / base:.3f}")


if __name__ == "__main__":
    main()
