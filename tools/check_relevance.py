"""Relevance-CAM on full-size models: export with `--relevance` and compare each layer's
`relevance.L` with zennit's LRP in float64 (the rules of `tests/test_exporter_relevance.py`) on
inputs other than the export example, for the top-1 class and a second class.

    python tools/check_relevance.py [--models lite0,resnet50] [--workdir DIR]

`lite0`: the demo's pretrained EfficientNet-Lite0 on the two photos (its same-padding
convolutions, batch norms with eps 1e-3, ReLU6), layers `_blocks.15` and `_head_act`. `resnet50`:
torchvision's, random weights (nothing is downloaded), on two random images, layers `layer2` and
`layer4` (Bottlenecks, residual sums, downsampling). zennit's batch-norm merge leaves each batch
norm computing x / √(1 + eps); the oracle's copy sets those eps to 0 after the merge, so it
computes the model exactly. Prints per model and layer: the export time, the largest error
relative to each image's largest relevance, and Σ R per image (the relevance of the class,
1/K for the contrastive start, up to what dead units drop).
"""

from __future__ import annotations

import copy
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tools.check_transformers import report  # noqa: E402


def zennit_relevance(model, x: np.ndarray, layer: str, classes: np.ndarray, merges) -> np.ndarray:
    """The relevance at `layer`'s output by zennit in float64 (see the module docstring)."""
    import torch
    from zennit.canonizers import NamedMergeBatchNorm
    from zennit.composites import LayerMapComposite
    from zennit.layer import Sum
    from zennit.rules import Norm, Pass, ZPlus
    from zennit.torchvision import ResNetBasicBlockCanonizer, ResNetBottleneckCanonizer
    from zennit.types import Activation, AvgPool, Convolution, Linear

    m = copy.deepcopy(model).double().eval()
    eps = 1e-300
    composite = LayerMapComposite(
        layer_map=[(Activation, Pass()), (Sum, Norm(eps)), (AvgPool, Norm(eps)),
                   (Convolution, ZPlus(eps, zero_params="bias")), (Linear, ZPlus(eps, zero_params="bias"))],
        canonizers=[NamedMergeBatchNorm(merges), ResNetBottleneckCanonizer(), ResNetBasicBlockCanonizer()])
    store = {}
    with composite.context(m) as modified:
        modules = dict(modified.named_modules())
        for _, bn in merges:
            modules[bn].eps = 0.0  # merged: now exactly the identity
        def keep(_m, _i, out) -> None:
            out.register_hook(lambda g: store.__setitem__("r", g))

        handle = modules[layer].register_forward_hook(keep)
        xx = torch.from_numpy(x).double().requires_grad_(True)
        out = modified(xx)
        onehot = torch.nn.functional.one_hot(torch.from_numpy(classes), out.shape[1]).double()
        torch.autograd.grad(out, xx, grad_outputs=onehot - (1 - onehot) / out.shape[1])
        handle.remove()
    return store["r"].numpy()


def _merges(model) -> list[tuple[list[str], str]]:
    """Every (convolution, batch norm that takes its output) pair, by running the model once."""
    import torch
    from torch import nn

    outputs, pairs, handles = {}, [], []
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(lambda _m, _i, o, n=name: outputs.__setitem__(id(o), n)))
        elif isinstance(m, nn.BatchNorm2d):
            handles.append(m.register_forward_pre_hook(
                lambda _m, i, n=name: pairs.append(([outputs[id(i[0])]], n)) if id(i[0]) in outputs else None))
    with torch.no_grad():
        model(torch.zeros(1, 3, 224, 224))
    for h in handles:
        h.remove()
    return pairs


def _inputs(name: str, engine) -> np.ndarray:
    if name == "lite0":
        from tools.write_photos import PHOTOS

        return engine.prepare([load() for load in PHOTOS.values()])
    return np.random.default_rng(5).normal(size=(2, 3, 224, 224)).astype(np.float32)


def check(name: str, workdir: Path) -> dict:
    import onnxruntime as ort
    import torch

    import camrt
    from camrt.engine import Engine
    from camrt.manifest import CLASS_IDX, INPUT, relevance_name

    if name == "lite0":
        from models.efficientnet_lite0 import LAYERS, MEAN, STD, pretrained

        model, layers, kw = pretrained().eval(), list(LAYERS), {"mean": MEAN, "std": STD}
    elif name == "resnet50":
        import torchvision

        torch.manual_seed(0)
        model, layers, kw = torchvision.models.resnet50(weights=None).eval(), ["layer2", "layer4"], {}
    else:
        raise ValueError(f"unknown model {name}; choose lite0 or resnet50")
    path = workdir / f"{name}.cam.onnx"
    t0 = time.perf_counter()
    camrt.export(model, layers=layers, path=path, relevance=True, **kw)
    row: dict = {"model": name, "export s": time.perf_counter() - t0}
    x = _inputs(name, Engine(path))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    merges = _merges(model)
    for cls in (np.full(len(x), -1, np.int64), np.array([1, 500], np.int64)):
        used, *rel = sess.run(["class_idx_used", *map(relevance_name, layers)], {INPUT: x, CLASS_IDX: cls})
        tag = "top-1" if cls[0] == -1 else "given"
        for layer, r in zip(layers, rel, strict=True):
            ref = zennit_relevance(model, x, layer, used, merges)
            n = len(x)
            err = np.abs(r - ref).reshape(n, -1).max(1) / np.abs(ref).reshape(n, -1).max(1)
            row[f"{tag} {layer} err"] = float(err.max())
            row[f"{tag} {layer} ΣR"] = " ".join(f"{v:.6f}" for v in ref.reshape(n, -1).sum(1))
    return row


def main() -> None:
    report(check, ["lite0", "resnet50"], "check_relevance")


if __name__ == "__main__":
    main()
