"""Grad-CAM cost against plain inference, side by side in one run (CPU provider).

    python tools/bench_gradcam.py [--repeat 10]

For resnet50 at layer4 and the pretrained EfficientNet-Lite0 at its head activation, batch 1 and
8, it times:
  (a) plain ONNX Runtime inference of the original model (torch.onnx.export, forward only);
  (b) camrt Grad-CAM through the exported graph (Engine.explain: one run + the map, upsampled);
  (c) pytorch-grad-cam's GradCAM in eager PyTorch (same model, layer, input);
and prints the times per call and the ratios b/a (target <= 1.15) and c/b (target >= 3). Each
time is the lowest of several block medians (see `median_times`).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import camrt  # noqa: E402
from camrt.engine import Engine  # noqa: E402


def median_times(fns, repeat: int, warmup: int = 2, rounds: int = 5) -> list[float]:
    """Seconds per call of each function: the median of a block of `repeat` calls, blocks of the
    functions alternating for `rounds` rounds, and of those block medians the lowest (the
    quietest period; this shared 2-core VM has slow spells that shift a whole block by 10-20%).
    Blocks, not call-by-call alternation: ONNX Runtime's threads spin after a run and would slow
    the other session's next call."""
    best = [float("inf")] * len(fns)
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            for _ in range(warmup):
                fn()
            ts = []
            for _ in range(repeat):
                t = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t)
            best[i] = min(best[i], statistics.median(ts))
    return best


def plain_onnx(model: torch.nn.Module, path: str) -> ort.InferenceSession:
    x = torch.randn(2, 3, 224, 224)
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), path, dynamo=True, input_names=["input"], output_names=["logits"],
                          dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},), opset_version=20)
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"])


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo (else what `platform` knows)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def machine() -> str:
    return (f"{cpu_name()}, {os.cpu_count()} cores; torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"onnxruntime {ort.__version__}, Python {platform.python_version()}")


def models():
    from models.efficientnet_lite0 import pretrained

    torch.manual_seed(0)
    yield "resnet50", torchvision.models.resnet50().eval(), "layer4"
    yield "efficientnet-lite0", pretrained().eval(), "_head_act"


def main() -> None:
    from pytorch_grad_cam import GradCAM

    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()
    print(machine())
    print(f"{'model':<20}{'batch':>6}{'(a) ORT ms':>12}{'(b) camrt ms':>14}{'(c) grad-cam ms':>17}"
          f"{'b/a':>7}{'c/b':>7}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, model, layer in models():
            plain = plain_onnx(model, f"{tmp}/{name}.onnx")
            cam_path = f"{tmp}/{name}.cam.onnx"
            camrt.export(model, layers=[layer], path=cam_path)
            engine = Engine(cam_path, device="cpu", chunk_size=64)
            module = dict(model.named_modules())[layer]
            for batch in (1, 8):
                x = np.random.default_rng(batch).normal(size=(batch, 3, 224, 224)).astype(np.float32)
                xt = torch.from_numpy(x)
                a, b = median_times([lambda s=plain, x=x: s.run(None, {"input": x}),
                                     lambda e=engine, x=x: e.explain(x, "gradcam")], args.repeat * (8 // batch))
                with GradCAM(model=model, target_layers=[module]) as ref:
                    c = median_times([lambda r=ref, xt=xt: r(input_tensor=xt, targets=None)], 3, warmup=1,
                                     rounds=3)[0]
                rows.append((name, batch, a, b, c))
                print(f"{name:<20}{batch:>6}{a * 1e3:>12.1f}{b * 1e3:>14.1f}{c * 1e3:>17.1f}{b / a:>7.2f}{c / b:>7.2f}",
                      flush=True)
    worst_ba = max(r[3] / r[2] for r in rows)
    worst_cb = min(r[4] / r[3] for r in rows)
    print(f"worst b/a {worst_ba:.2f} (target <= 1.15): {'met' if worst_ba <= 1.15 else 'NOT met'}; "
          f"worst c/b {worst_cb:.2f} (target >= 3): {'met' if worst_cb >= 3 else 'NOT met'}")


if __name__ == "__main__":
    main()
