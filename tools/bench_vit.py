"""Grad-CAM on torchvision's vit_b_16 on the CPU (issue 11, "Speed"), side by side in one run.

    python tools/bench_vit.py [--batch 8] [--rounds 3] [--workdir out/bench_vit] [--layer NAME]

vit_b_16 with random weights (seed 0, its zero-initialised head redrawn; nothing downloaded) is
exported twice: by `camrt export` at
`encoder.layers.encoder_layer_11.ln_1` (the input of the last block's attention: as
pytorch-grad-cam advises, the last place where the patch tokens still reach the class token), and
as a plain ONNX model (input → logits, torch.onnx.export with the dynamo exporter). Then, on one
batch of random 224×224 images, alternating, the best of `--rounds` calls each:

- plain: `session.run` of the plain model on ONNX Runtime's CPU provider (its inference);
- camrt: `Engine.explain(x, "gradcam")` on camrt's file (logits, activation, gradient in one run,
  then the numpy map and its upsampling);
- pytorch-grad-cam: `GradCAM(model, [layer], reshape_transform)` in eager PyTorch, with the
  reshape_transform its documentation gives for ViT.

Peak memory: each of plain and camrt runs in a fresh process that loads its session, runs the
batch twice, and reports its peak resident memory (VmHWM of /proc/self/status: ru_maxrss would
carry the benchmark's own peak across fork and exec) and its resident memory once the session was
loaded; the run's own peak is the difference.

Targets (issue 11): camrt ≤ 1.15× plain; pytorch-grad-cam ≥ 3× camrt; camrt's run peak ≤ 1.3×
plain's.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LAYER = "encoder.layers.encoder_layer_11.ln_1"


def build():
    import torch
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.vit_b_16(weights=None).eval()
    with torch.no_grad():  # torchvision initialises the head to zeros: every logit and gradient would be 0
        model.heads.head.weight.normal_(0.0, 0.02)
    return model


def export(work: Path, layer: str) -> tuple[Path, Path]:
    import torch

    import camrt

    cam, plain = work / "vit_b_16.cam.onnx", work / "vit_b_16.plain.onnx"
    model = build()
    if not cam.is_file():
        camrt.export(model, layers=[layer], path=cam)
    if not plain.is_file():
        batch = torch.export.Dim("batch", min=1, max=64)
        torch.onnx.export(model, (torch.randn(2, 3, 224, 224),), str(plain), dynamo=True, input_names=["input"],
                          output_names=["logits"], dynamic_shapes=({0: batch},), verbose=False)
    return cam, plain


def memory(kind: str, path: Path, batch: int) -> dict:
    """Peak memory of a fresh process (see the module docstring)."""
    code = f"""
import json, sys, numpy as np
sys.path.insert(0, {str(ROOT)!r})
def status(key):
    return next(int(line.split()[1]) * 1024 for line in open('/proc/self/status') if line.startswith(key + ':'))
x = np.random.default_rng(0).normal(size=({batch}, 3, 224, 224)).astype(np.float32)
if {kind!r} == "plain":
    import onnxruntime as ort
    s = ort.InferenceSession({str(path)!r}, providers=["CPUExecutionProvider"])
    run = lambda: s.run(None, {{"input": x}})
else:
    from camrt.engine.session import open_session
    s = open_session({str(path)!r}, "cpu")
    run = lambda: s.run(None, {{"input": x, "class_idx": np.full({batch}, -1, np.int64)}})
loaded = status('VmRSS')
run(); run()
print(json.dumps({{"loaded": loaded, "peak": status('VmHWM')}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def best_alternating(runs: dict[str, Callable[[], object]], rounds: int, reps: int = 1) -> dict[str, float]:
    """The fastest call of each function, in seconds, over `rounds` turns of `reps` calls each, the
    functions taking turns (in turned order every other round), so that the machine's drift
    reaches all of them. With `reps` > 1 a function's later calls in a turn do not follow another
    session's run (ONNX Runtime's worker threads spin for a while after a run, on the same cores)."""
    best = dict.fromkeys(runs, float("inf"))
    for r in range(rounds):
        for name, f in (runs.items() if r % 2 == 0 else reversed(runs.items())):
            for _ in range(reps):
                t = time.perf_counter()
                f()
                best[name] = min(best[name], time.perf_counter() - t)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--layer", default=LAYER)
    p.add_argument("--workdir", type=Path, default=ROOT / "out" / "bench_vit")
    a = p.parse_args()
    a.workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    cam, plain = export(a.workdir, a.layer)
    print(f"exports ready in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)

    import onnxruntime as ort
    import torch
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from camrt.engine import Engine
    from tools.bench_gradcam import machine

    torch.set_num_threads(2)
    x = np.random.default_rng(1).normal(size=(a.batch, 3, 224, 224)).astype(np.float32)
    sess = ort.InferenceSession(str(plain), providers=["CPUExecutionProvider"])
    engine = Engine(cam, device="cpu")
    model = build()
    module = dict(model.named_modules())[a.layer]

    def reshape(t):
        return t[:, 1:, :].reshape(t.size(0), 14, 14, t.size(2)).permute(0, 3, 1, 2)

    extractor = GradCAM(model=model, target_layers=[module], reshape_transform=reshape)
    classes = engine.explain(x, "gradcam").class_idx
    runs = {
        "plain": lambda: sess.run(None, {"input": x}),
        "camrt": lambda: engine.explain(x, "gradcam", class_idx=classes),
        "pytorch-grad-cam": lambda: extractor(input_tensor=torch.from_numpy(x),
                                              targets=[ClassifierOutputTarget(int(c)) for c in classes]),
    }
    best = best_alternating(runs, a.rounds)
    ours = engine.explain(x, "gradcam", class_idx=classes).saliency
    theirs = runs["pytorch-grad-cam"]()
    corr = min(float(np.corrcoef(ours[i].ravel(), theirs[i].ravel())[0, 1]) for i in range(a.batch))
    mem = {k: memory(k, path, a.batch) for k, path in (("plain", plain), ("camrt", cam))}
    run_peak = {k: (v["peak"] - v["loaded"]) / 2**20 for k, v in mem.items()}
    print(machine())
    print(f"vit_b_16 (random weights), batch {a.batch}, layer {a.layer}; best of {a.rounds} calls, seconds per batch")
    print("| measure | value | ratio | target |")
    print("|---|---|---|---|")
    print(f"| plain ONNX Runtime inference | {best['plain']:.2f} s | 1.00 | |")
    print(f"| camrt Grad-CAM (`Engine.explain`) | {best['camrt']:.2f} s | {best['camrt'] / best['plain']:.2f}× plain "
          f"| ≤ 1.15× |")
    print(f"| pytorch-grad-cam GradCAM (eager) | {best['pytorch-grad-cam']:.2f} s | "
          f"{best['pytorch-grad-cam'] / best['camrt']:.2f}× camrt | ≥ 3× |")
    print(f"| peak memory of the run (plain) | {run_peak['plain']:.0f} MiB (process {mem['plain']['peak'] / 2**20:.0f} "
          "MiB) | | |")
    print(f"| peak memory of the run (camrt) | {run_peak['camrt']:.0f} MiB (process {mem['camrt']['peak'] / 2**20:.0f} "
          f"MiB) | {run_peak['camrt'] / max(run_peak['plain'], 1e-9):.2f}× plain | ≤ 1.3× |")
    print(f"| maps: camrt against pytorch-grad-cam | lowest correlation over the batch {corr:.5f} | | |")


if __name__ == "__main__":
    main()
