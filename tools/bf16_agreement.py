"""The maps under bf16 (ONNX Runtime's OpenVINO provider) against float32, on the demo's photos.

    python tools/bf16_agreement.py [--venv-ov /work/venv-ov] [--workdir out/bf16_agreement]

Runs with the main environment (torch) to export the pretrained EfficientNet-Lite0 as
tools/demo.sh does (layers `_blocks.15` and `_head_act`, its preprocessing), then itself in the
onnxruntime-openvino environment (`--venv-ov`) to explain scikit-image's chelsea and coffee with
every method `--method all` serves (gradient and sampled families) and Recipro-CAM, on the last
layer, three ways: ONNX Runtime's CPU provider (float32, the reference), the OpenVINO provider at
float32 and at `precision="bf16"`. Printed per method: whether the top-1 class is unchanged, and
the lowest Pearson correlation over the photos of the saliency map (input resolution, as
returned) and of the low-resolution map with the reference's. Target (issue 17): top-1 unchanged,
correlation ≥ 0.99 per method.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RUNS = {"ov-f32": ("openvino", None), "ov-bf16": ("openvino", "bf16")}


def worker(model: str, photos: str) -> None:
    from camrt import Engine
    from camrt.methods import METHODS
    from tools.bench_peers import CamrtWorker, _corr

    images = list(np.load(photos, allow_pickle=False).values()) if photos.endswith(".npz") else []
    ref = Engine(model, device="cpu")
    engines = {k: CamrtWorker().engine({"model": model, "device": d, "precision": p}) for k, (d, p) in RUNS.items()}
    rows = []
    served = [n for n, m in METHODS.items() if m.family in ("gradient", "sampled")]  # explain.served_methods
    for method in [*served, "reciprocam"]:  # (camrt.explain imports cv2, absent from this environment)
        want = ref.explain(images, method)
        row = {"method": method}
        for key, engine in engines.items():
            got = engine.explain(images, method)
            row[key] = {"top1_same": bool(np.array_equal(got.class_idx, want.class_idx)),
                        "corr": min(_corr(g, w) for g, w in zip(got.saliency, want.saliency, strict=True)),
                        "corr_low_res": min(_corr(g, w) for g, w in zip(got.low_res, want.low_res, strict=True)),
                        "logits_rel": float(np.abs(got.logits - want.logits).max() / np.abs(want.logits).max())}
        rows.append(row)
    print("@@" + json.dumps({"classes": want.class_idx.tolist(), "rows": rows}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--venv-ov", default="/work/venv-ov")
    ap.add_argument("--workdir", default=str(ROOT / "out" / "bf16_agreement"))
    args = ap.parse_args()
    if args.worker:
        worker(*args.worker)
        return
    from skimage import data

    import camrt
    from models.efficientnet_lite0 import LAYERS, MEAN, STD, imagenet_labels, pretrained

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    model = work / "efficientnet_lite0.cam.onnx"
    if not model.exists():
        camrt.export(pretrained().eval(), layers=list(LAYERS), path=model, mean=MEAN, std=STD,
                     labels=imagenet_labels())
    photos = work / "photos.npz"
    np.savez(photos, chelsea=data.chelsea(), coffee=data.coffee())
    done = subprocess.run([str(Path(args.venv_ov) / "bin" / "python"), __file__, "--worker", str(model), str(photos)],
                          capture_output=True, text=True, cwd=ROOT)
    line = next((s for s in done.stdout.splitlines() if s.startswith("@@")), None)
    if line is None:
        sys.exit(f"worker failed:\n{done.stderr[-2000:]}")
    result = json.loads(line[2:])
    labels = imagenet_labels()
    print(f"EfficientNet-Lite0, chelsea and coffee: top-1 on the CPU provider "
          f"{', '.join(labels[c] for c in result['classes'])}; layer {LAYERS[-1]}")
    print("| method | bf16: top-1 same | bf16: correlation (saliency / low-res) | OpenVINO f32: correlation |")
    print("|---|---|---|---|")
    ok = True
    for r in result["rows"]:
        b, f = r["ov-bf16"], r["ov-f32"]
        ok &= b["top1_same"] and b["corr"] >= 0.99
        print(f"| {r['method']} | {'yes' if b['top1_same'] else 'NO'} | {b['corr']:.4f} / {b['corr_low_res']:.4f} "
              f"| {f['corr']:.6f} |")
    lg = max(r["ov-bf16"]["logits_rel"] for r in result["rows"])
    print(f"logits under bf16: within {lg:.1e} of the largest float32 logit")
    print(f"target (top-1 unchanged, correlation ≥ 0.99 for every method): {'holds' if ok else 'MISSED'}")
    (work / "results.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
