"""Segmentation Grad-CAM on the CPU (issue 12, "Speed"), side by side in one run.

    python tools/bench_segmentation.py [--model deeplabv3_mobilenet_v3_large] [--size 256] [--batch 4]
                                       [--rounds 5] [--reps 3] [--workdir out/bench_segmentation]
                                       [--layer backbone|head|NAME]

A torchvision segmentation model with random weights (21 classes; nothing downloaded), exported
twice: by `camrt export --target --output-index out` at its backbone's last block (the layer
pytorch-grad-cam's segmentation tutorial targets; `--layer head`: the head's last feature maps before
its 1×1 classifier, as Grad-CAM reads a classifier's last convolutional layer), and as a plain ONNX model (input → out,
torch.onnx.export with the dynamo exporter). Then, on one batch of random images, the best call
each of `--rounds` rounds in which plain and camrt take turns, `--reps` calls in a row each
(pytorch-grad-cam after them, `--rounds`/2 calls):

- plain: `session.run` of the plain model on ONNX Runtime's CPU provider;
- camrt: `Engine.explain(x, "gradcam", target=RegionTarget(k, mask))`: the output, the activation
  and the gradient of class k's logits summed over a mask in one run, then the map;
- pytorch-grad-cam: `GradCAM` with `SemanticSegmentationTarget(k, mask)` in eager PyTorch.

Target (issue 12): camrt ≤ 1.15× plain inference at batch 4.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LAYERS = {"deeplabv3_mobilenet_v3_large": "backbone.16", "lraspp_mobilenet_v3_large": "backbone.16",
          "fcn_resnet50": "backbone.layer4"}
# `--layer head`: the head's last feature maps before its final 1×1 classifier convolution, the
# segmentation analogue of the last convolutional layer Grad-CAM reads in a classifier.
HEAD_LAYERS = {"deeplabv3_mobilenet_v3_large": "classifier.3", "lraspp_mobilenet_v3_large": "classifier.cbr",
               "fcn_resnet50": "classifier.2"}


def build(name: str):
    import torch
    import torchvision

    torch.manual_seed(0)
    return getattr(torchvision.models.segmentation, name)(weights=None, weights_backbone=None, num_classes=21).eval()


class Out:
    """The model's "out" tensor, for the plain export and pytorch-grad-cam (its tutorial's wrapper)."""

    def __new__(cls, model):
        import torch

        class Wrapper(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, x):
                return self.model(x)["out"]

        return Wrapper().eval()


def export(work: Path, name: str, size: int, layer: str) -> tuple[Path, Path]:
    import torch

    import camrt

    cam, plain = work / f"{name}_{size}_{layer}.cam.onnx", work / f"{name}_{size}.plain.onnx"
    model = build(name)
    if not cam.is_file():
        camrt.export(model, layers=[layer], path=cam, input_shape=(1, 3, size, size), output_index="out",
                     target=True)
    if not plain.is_file():
        batch = torch.export.Dim("batch", min=1, max=64)
        torch.onnx.export(Out(model), (torch.randn(2, 3, size, size),), str(plain), dynamo=True,
                          input_names=["input"], output_names=["out"], dynamic_shapes=({0: batch},), verbose=False)
    return cam, plain


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="deeplabv3_mobilenet_v3_large", choices=sorted(LAYERS))
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--reps", type=int, default=3, help="calls of plain (then camrt) in a row per round")
    p.add_argument("--workdir", type=Path, default=ROOT / "out" / "bench_segmentation")
    p.add_argument("--layer", default="backbone", help="backbone (pytorch-grad-cam's tutorial layer), head (the "
                   "head's last feature maps, HEAD_LAYERS) or a module name")
    a = p.parse_args()
    layer = {"backbone": LAYERS, "head": HEAD_LAYERS}.get(a.layer, {a.model: a.layer})[a.model]
    a.workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    cam, plain = export(a.workdir, a.model, a.size, layer)
    print(f"exports ready in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)

    import onnxruntime as ort
    import torch
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget

    from camrt.engine import Engine
    from camrt.engine.targets import RegionTarget
    from tools.bench_gradcam import machine
    from tools.bench_vit import best_alternating

    torch.set_num_threads(2)
    x = np.random.default_rng(1).normal(size=(a.batch, 3, a.size, a.size)).astype(np.float32)
    mask = np.zeros((a.size, a.size), np.float32)
    mask[a.size // 4:3 * a.size // 4, a.size // 4:3 * a.size // 4] = 1
    k = 3
    sess = ort.InferenceSession(str(plain), providers=["CPUExecutionProvider"])
    engine = Engine(cam, device="cpu")
    model = build(a.model)
    module = dict(model.named_modules())[layer]
    extractor = GradCAM(model=Out(model), target_layers=[module])
    runs = {
        "plain": lambda: sess.run(None, {"input": x}),
        "camrt": lambda: engine.explain(x, "gradcam", target=RegionTarget(k, mask)),
        "pytorch-grad-cam": lambda: extractor(input_tensor=torch.from_numpy(x),
                                              targets=[SemanticSegmentationTarget(k, mask)] * a.batch),
    }
    # The target compares camrt with plain inference: those two alternate; pytorch-grad-cam (a column
    # for information) runs apart, after them, so that PyTorch's thread pool does not share the cores
    # with their runs. (Three-way alternation gave the same ratios within noise on 2026-12-04.)
    best = best_alternating({k: runs[k] for k in ("plain", "camrt")}, a.rounds, a.reps)
    best |= best_alternating({"pytorch-grad-cam": runs["pytorch-grad-cam"]}, max(2, a.rounds // 2))
    ours = engine.explain(x, "gradcam", target=RegionTarget(k, mask)).saliency
    theirs = runs["pytorch-grad-cam"]()
    corr = [float(np.corrcoef(ours[i].ravel(), theirs[i].ravel())[0, 1]) for i in range(a.batch)
            if ours[i].std() > 0 and theirs[i].std() > 0]
    print(machine())
    print(f"{a.model} (random weights, 21 classes), {a.size}×{a.size}, batch {a.batch}, layer {layer}, "
          f"class {k} inside a centred square; best call of {a.rounds} rounds of {a.reps} (plain, camrt), "
          "seconds per batch")
    print("| measure | value | ratio | target |")
    print("|---|---|---|---|")
    print(f"| plain ONNX Runtime inference | {best['plain']:.3f} s | 1.00 | |")
    print(f"| camrt Grad-CAM (`Engine.explain`, RegionTarget) | {best['camrt']:.3f} s | "
          f"{best['camrt'] / best['plain']:.2f}× plain | ≤ 1.15× |")
    print(f"| pytorch-grad-cam GradCAM (SemanticSegmentationTarget) | {best['pytorch-grad-cam']:.3f} s | "
          f"{best['pytorch-grad-cam'] / best['camrt']:.2f}× camrt | |")
    low = f"{min(corr):.5f} over {len(corr)} non-flat maps" if corr else "every map flat"
    print(f"| maps: camrt against pytorch-grad-cam | lowest correlation {low} | | |")


if __name__ == "__main__":
    main()
