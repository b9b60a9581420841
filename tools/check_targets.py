"""The issue-12 models in target mode at full size: torchvision's segmentation models and resnet50
as an embedding model (its fc removed), random weights, nothing downloaded. Each is exported with
`target=True` and its graph compared with float64 eager autograd on scikit-image's two photos for
the target the issue names: a class inside a mask (segmentation; pytorch-grad-cam's
`SemanticSegmentationTarget`) and the cosine similarity to a concept vector (embedding).

    python tools/check_targets.py [--models fcn_resnet50,...] [--workdir DIR]

Prints one row per model: export seconds, the largest relative error of the output, the relative
L2 error of the gradient, and the score against float64.
"""

from __future__ import annotations

import copy
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# name: (target layer, output picked, kind)
MODELS = {
    "fcn_resnet50": ("backbone.layer4", "out", "region"),
    "deeplabv3_mobilenet_v3_large": ("backbone.16", "out", "region"),
    "lraspp_mobilenet_v3_large": ("backbone.16", "out", "region"),
    "resnet50-embedding": ("layer4", None, "similarity"),
}


def build(name: str):
    import torch
    import torchvision

    torch.manual_seed(0)
    if name == "resnet50-embedding":
        model = torchvision.models.resnet50(weights=None)
        model.fc = torch.nn.Identity()
        return model.eval()
    return getattr(torchvision.models.segmentation, name)(weights=None, weights_backbone=None, num_classes=21).eval()


def check(name: str, work: Path) -> dict:
    import torch

    import camrt
    from camrt.engine import Engine
    from camrt.engine.targets import RegionTarget, SimilarityTarget
    from camrt.manifest import OUTPUT, SCORE, TARGET
    from tools.check_transformers import photos

    layer, picked, kind = MODELS[name]
    model = build(name)
    path = work / f"{name}.cam.onnx"
    t = time.perf_counter()
    manifest = camrt.export(model, layers=[layer], path=path, input_shape=(1, 3, 224, 224), output_index=picked,
                            target=True)
    seconds = time.perf_counter() - t
    x = photos()
    if kind == "region":
        mask = np.zeros(manifest.target_shape[1:], bool)
        h, w = mask.shape
        mask[h // 4:3 * h // 4, w // 3:2 * w // 3] = True
        target = RegionTarget(15, mask)  # "person" in VOC's order
    else:
        target = SimilarityTarget(np.random.default_rng(3).normal(size=manifest.target_shape[0]))
    p = Engine(path, device="cpu").forward(x, target=target)
    m = copy.deepcopy(model).double()
    acts = {}
    hook = dict(m.named_modules())[layer].register_forward_hook(lambda _m, _i, o: acts.__setitem__("a", o))
    out = m(torch.from_numpy(x).double())
    hook.remove()
    out = out[picked] if picked else out
    if kind == "region":
        score = (out * torch.from_numpy(np.array(p.outputs[TARGET])).double()).flatten(1).sum(1)  # (read-only: a copy)
    else:
        c = torch.from_numpy(np.asarray(target.concept)).double()
        score = torch.nn.functional.cosine_similarity(out, c[None], dim=1)
    (g,) = torch.autograd.grad(score.sum(), [acts["a"]])
    ref_out, ref_g = out.detach().numpy(), g.numpy()
    got_g = p.outputs[f"gradient.{layer}"]
    return {"model": name, "export s": seconds, "output": tuple(manifest.target_shape),
            "output error": float(np.abs(p.outputs[OUTPUT] - ref_out).max() / np.abs(ref_out).max()),
            "gradient error": float(np.linalg.norm(got_g - ref_g) / np.linalg.norm(ref_g)),
            "score": p.outputs[SCORE].tolist(), "score (float64)": score.detach().numpy().tolist()}


def main() -> None:
    from tools.check_transformers import report

    report(check, list(MODELS), "check_targets")


if __name__ == "__main__":
    main()
