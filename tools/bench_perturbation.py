"""Perturbation CAMs: camrt against pytorch-grad-cam, side by side in one run (CPU provider).

    python tools/bench_perturbation.py [--models resnet18,resnet50]

For each model at layer4 and one 224×224 image it times camrt's Score-CAM against grad-cam's
ScoreCAM at its best batch size (target: ≥ 2× faster), camrt's Ablation-CAM (tail re-runs only)
against grad-cam's AblationCAM (whole model re-runs; target ≥ 10×), and camrt's Recipro-CAM against
plain inference of the forward-only graph (target ≤ 1.5×); and it measures the peak resident
memory of a process running camrt's Score-CAM with the default chunk (target < 2 GB).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import camrt  # noqa: E402
from camrt.engine import Engine  # noqa: E402
from tools.bench_gradcam import machine  # noqa: E402

# VmHWM, not ru_maxrss: on Linux ru_maxrss carries over the forking parent's peak (torch and
# models loaded here) through exec, while VmHWM belongs to the new process's own memory.
PEAK_SCRIPT = """
import sys, numpy as np
from camrt.engine import Engine
e = Engine(sys.argv[1], device="cpu")
x = np.random.default_rng(0).normal(size=(1, 3, 224, 224)).astype(np.float32)
e.explain(x, "scorecam")
print([line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM")][0])
"""


def seconds(fn, repeat: int = 1, warmup: bool = True) -> float:
    if warmup:
        fn()
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    from pytorch_grad_cam import AblationCAM, ScoreCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="resnet18,resnet50")
    args = parser.parse_args()
    print(machine())
    x = np.random.default_rng(0).normal(size=(1, 3, 224, 224)).astype(np.float32)
    xt = torch.from_numpy(x)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            torch.manual_seed(0)
            model = getattr(torchvision.models, name)().eval()
            path = f"{tmp}/{name}.cam.onnx"
            camrt.export(model, layers=["layer4"], path=path)
            engine = Engine(path, device="cpu")
            cls = int(engine.forward(x).outputs["class_idx_used"][0])
            targets = [ClassifierOutputTarget(cls)]
            engine.explain(x, "reciprocam")  # builds the sub-graph sessions; then one timed run each
            ours = {m: seconds(lambda m=m, e=engine: e.explain(x, m), repeat=10 if m == "reciprocam" else 1,
                               warmup=m == "reciprocam")
                    for m in ("scorecam", "ablationcam", "reciprocam")}
            fwd = engine._forward_only()[0]  # the graph the input-perturbation passes use
            plain = min(seconds(lambda f=fwd: f.run(None, {"input": x})) for _ in range(5))
            theirs_score = {}
            for bs in (16, 32, 64):
                with ScoreCAM(model=model, target_layers=[model.layer4]) as ref:
                    ref.batch_size = bs
                    theirs_score[bs] = seconds(lambda ref=ref, t=targets: ref(input_tensor=xt, targets=t), warmup=False)
            best_bs = min(theirs_score, key=theirs_score.get)
            with AblationCAM(model=model, target_layers=[model.layer4]) as ref:
                theirs_ablation = seconds(lambda ref=ref, t=targets: ref(input_tensor=xt, targets=t), warmup=False)
            out = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, path], capture_output=True, text=True,
                                 check=True)
            peak_gb = int(out.stdout.split()[-1]) / 2**20  # VmHWM is in KiB
            print(f"{name}: Score-CAM camrt {ours['scorecam']:.1f} s, grad-cam {theirs_score[best_bs]:.1f} s "
                  f"(batch {best_bs}) -> {theirs_score[best_bs] / ours['scorecam']:.2f}x (target >= 2)")
            print(f"{name}: Ablation-CAM camrt {ours['ablationcam']:.2f} s, grad-cam {theirs_ablation:.1f} s "
                  f"-> {theirs_ablation / ours['ablationcam']:.1f}x (target >= 10)")
            print(f"{name}: Recipro-CAM {ours['reciprocam'] * 1e3:.0f} ms, plain inference {plain * 1e3:.0f} ms "
                  f"-> {ours['reciprocam'] / plain:.2f}x (target <= 1.5)")
            print(f"{name}: peak RSS of a process running camrt Score-CAM (chunk {engine.chunk_size}): "
                  f"{peak_gb:.2f} GB (target < 2)", flush=True)


if __name__ == "__main__":
    main()
