"""Image preprocessing: the streamed resize against the one it replaced, side by side in one run.

    python tools/bench_preprocess.py [--rounds 3] [--repeat 5] [--explain MODEL.cam.onnx]

For a 6000×6000 and a 1920×1080 random RGB uint8 image, resized to 224×224 with ImageNet
normalisation, it measures:
  - time per call of the old preprocessing (copied below: the image converted whole to float32,
    then a K-tap gather of its rows and columns) and of `camrt.engine.preprocess.preprocess`,
    repeated in this process, alternating old and new for `--rounds` rounds; each figure is the
    lowest round median (the shared 2-core VM has slow spells);
  - the time of the first call in a fresh process (one image per process, as `camrt explain` on
    one photo): there the old preprocessing also pays for the kernel handing it fresh memory
    (median of `--fresh` processes);
  - peak extra memory: tracemalloc's peak of one call (numpy's allocations), and the rise of the
    peak resident set (VmHWM) over the resident set with the image loaded, in that fresh process
    (peak reset through /proc/self/clear_refs);
  - the largest and mean absolute difference between old and new on [0, 1] pixels;
and prints the ratios old/new. numpy only: no torch or onnxruntime in the processes measured.

With `--explain` (an exported model, e.g. from tools/demo.sh), it also times one whole
`Engine("...", device="cpu").explain([image], "gradcam")` call and its VmHWM rise, in a fresh
process per algorithm and size, with the engine's preprocessing swapped for the old one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from camrt.engine.preprocess import preprocess  # noqa: E402
from camrt.manifest import Preprocessing  # noqa: E402

SIZES = {"6000x6000": (6000, 6000), "1920x1080": (1080, 1920)}
OUT = (224, 224)


# --- the old preprocessing (camrt/engine/preprocess.py at e0e970b), the baseline ------------------------


def old_resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    scale = n_in / n_out
    support = max(scale, 1.0)
    centers = (np.arange(n_out) + 0.5) * scale
    src = np.arange(n_in) + 0.5
    w = np.maximum(0.0, 1.0 - np.abs(src[None, :] - centers[:, None]) / support)
    w /= w.sum(axis=1, keepdims=True)
    return w


def old_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    m = old_resize_matrix(n_in, n_out)
    k = int((m > 0).sum(axis=1).max())
    idx = np.argsort(m <= 0, axis=1, kind="stable")[:, :k]
    return idx, np.take_along_axis(m, idx, axis=1).astype(np.float32)


def old_resize(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    (ri, rw), (ci, cw) = old_taps(img.shape[0], size[0]), old_taps(img.shape[1], size[1])
    rows = np.einsum("hk,hkwc->hwc", rw, img[ri])
    return np.einsum("wk,hwkc->hwc", cw, rows[:, ci])


def old_to_rgb_float(img: np.ndarray) -> np.ndarray:
    scale = 255.0 if img.dtype == np.uint8 else 65535.0
    if img.ndim == 2:
        img = img[:, :, None]
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    elif img.shape[2] == 4:
        img = img[:, :, :3]
    return img.astype(np.float32) / np.float32(scale)


def old_preprocess(images: Sequence[np.ndarray], size: tuple[int, int], prep: Preprocessing) -> np.ndarray:
    mean = np.asarray(prep.mean, np.float32)[:, None, None]
    std = np.asarray(prep.std, np.float32)[:, None, None]
    h, w = size
    out = np.empty((len(images), 3, h, w), np.float32)
    for i, image in enumerate(images):
        out[i] = (old_resize(old_to_rgb_float(image), (h, w)).transpose(2, 0, 1) - mean) / std
    return out


ALGORITHMS = {"old": old_preprocess, "new": preprocess}


# --- measurements -----------------------------------------------------------------------------------------


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, nproc {os.cpu_count()}, load average {os.getloadavg()[0]:.2f}; numpy {np.__version__}, "
            f"Python {platform.python_version()}")


def image(name: str) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (*SIZES[name], 3), dtype=np.uint8)


def status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def child(algorithm: str, name: str, model: str | None) -> None:
    """In a fresh process: the peak resident set of one call above the resident set before it, and
    the call's time; the call is `preprocess`, or with a model `Engine.explain` on that preprocessing."""
    fn, img = ALGORITHMS[algorithm], image(name)
    if model is None:
        def call(x: np.ndarray) -> object:
            return fn([x], OUT, Preprocessing())
    else:
        import camrt.engine.engine as engine_module
        from camrt.engine import Engine

        calls = []
        engine_module.preprocess = lambda *a: calls.append(1) or fn(*a)  # the name Engine.prepare calls
        engine = Engine(model, device="cpu")

        def call(x: np.ndarray) -> object:
            return engine.explain([x], "gradcam")
    call(img[:64, :64])  # code paths loaded, one-off allocations made
    if model is not None and not calls:
        raise RuntimeError("Engine.explain no longer calls camrt.engine.engine.preprocess: update the swap")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    before = status_kb("VmRSS")
    t = time.perf_counter()
    call(img)
    seconds = time.perf_counter() - t
    print(json.dumps({"rss_rise_mb": (status_kb("VmHWM") - before) / 1024, "seconds": seconds}))


def in_child(algorithm: str, name: str, runs: int, model: str | None = None) -> dict[str, float]:
    """`child`'s figures, each the median over `runs` fresh processes."""
    cmd = [sys.executable, __file__, "--child", algorithm, name] + (["--explain", model] if model else [])
    got = [json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout) for _ in range(runs)]
    return {k: statistics.median(g[k] for g in got) for k in got[0]}


def traced_peak(fn, img: np.ndarray) -> float:
    fn([img[:64, :64]], OUT, Preprocessing())
    tracemalloc.start()
    try:
        fn([img], OUT, Preprocessing())
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def times(img: np.ndarray, rounds: int, repeat: dict[str, int]) -> dict[str, float]:
    """Seconds per call: per round, the median of `repeat[alg]` calls of each algorithm in turn; the
    lowest round median."""
    best = dict.fromkeys(ALGORITHMS, float("inf"))
    for _ in range(rounds):
        for alg, fn in ALGORITHMS.items():
            ts = []
            for _ in range(repeat[alg]):
                t = time.perf_counter()
                fn([img], OUT, Preprocessing())
                ts.append(time.perf_counter() - t)
            best[alg] = min(best[alg], statistics.median(ts))
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=5, help="calls per round of the new preprocessing "
                        "(and of the old one on the small image; once per round on the large one)")
    parser.add_argument("--fresh", type=int, default=3, help="fresh processes per figure (median)")
    parser.add_argument("--explain", metavar="MODEL", help="also time Engine.explain on this .cam.onnx")
    parser.add_argument("--child", nargs=2, metavar=("ALGORITHM", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child, args.explain)
        return
    print(machine())
    prep = Preprocessing()
    std = np.array(prep.std)[:, None, None]
    for name in SIZES:
        img = image(name)
        old_out, new_out = old_preprocess([img], OUT, prep)[0], preprocess([img], OUT, prep)[0]
        diff = np.abs((old_out - new_out) * std)  # on [0, 1] pixels: (x − mean)/std undone
        big = img.nbytes > 50e6
        t = times(img, args.rounds, {"old": 1 if big else args.repeat, "new": args.repeat})
        traced = {alg: traced_peak(fn, img) for alg, fn in ALGORITHMS.items()}
        fresh = {alg: in_child(alg, name, args.fresh) for alg in ALGORITHMS}
        first = {alg: fresh[alg]["seconds"] for alg in ALGORITHMS}
        rss = {alg: fresh[alg]["rss_rise_mb"] for alg in ALGORITHMS}
        print(f"\n{name} RGB uint8 ({img.nbytes / 2**20:.0f} MiB) -> {OUT[0]}x{OUT[1]}")
        print(f"  time, repeated old {t['old'] * 1e3:8.0f} ms   new {t['new'] * 1e3:6.1f} ms   "
              f"old/new {t['old'] / t['new']:6.1f}")
        print(f"  time, 1st call old {first['old'] * 1e3:8.0f} ms   new {first['new'] * 1e3:6.1f} ms   "
              f"old/new {first['old'] / first['new']:6.1f}   (fresh process)")
        print(f"  tracemalloc    old {traced['old']:8.0f} MiB  new {traced['new']:6.1f} MiB  "
              f"old/new {traced['old'] / traced['new']:6.1f}")
        print(f"  VmHWM rise     old {rss['old']:8.0f} MiB  new {rss['new']:6.1f} MiB  "
              f"old/new {rss['old'] / max(rss['new'], 0.1):6.1f}")
        print(f"  |old − new| on [0, 1] pixels: max {diff.max():.2e}, mean {diff.mean():.2e}")
        if args.explain:
            e = {alg: in_child(alg, name, args.fresh, args.explain) for alg in ALGORITHMS}
            (old_s, old_mb), (new_s, new_mb) = ((e[a]["seconds"], e[a]["rss_rise_mb"]) for a in ("old", "new"))
            print(f"  explain, 1st   old {old_s * 1e3:8.0f} ms   new {new_s * 1e3:6.1f} ms   "
                  f"old/new {old_s / new_s:6.1f}   (one call, fresh process)")
            print(f"  explain VmHWM  old {old_mb:8.0f} MiB  new {new_mb:6.1f} MiB  "
                  f"old/new {old_mb / max(new_mb, 0.1):6.1f}")
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
