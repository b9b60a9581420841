"""The issue-11 transformers at full size: export each at two target depths and compare its graph
with float64 eager autograd on fresh inputs (not the export's example; one image explained for a
class that is not its top-1), and ViT-ReciproCAM's map against Recipro-CAM's where both apply.

    python tools/check_transformers.py [--models vit_b_16,timm:vit_tiny_patch16_224,...] [--workdir DIR]

Random weights (nothing is downloaded), each classifier redrawn at a scale where the classes
differ between inputs. Prints one row per model: export seconds, the largest relative error of
the logits and of each layer's activation, the relative L2 error of each gradient, the
operator domains of the file and what TensorRT's parser would refuse (camrt.graph.tensorrt; the
class_idx default, a property of camrt's contract, left out). The slow test
`tests/test_exporter_transformers_full.py` runs the ViT and DeiT rows; Swin and MaxViT take
minutes each to export and are run here by hand (docs/benchmarks.md records the run).
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _tv(name: str) -> Callable:
    def build():
        import torchvision

        return getattr(torchvision.models, name)(weights=None)
    return build


def _timm(name: str) -> Callable:
    def build():
        import timm

        return timm.create_model(name, pretrained=False)
    return build


# name: (builder, the two target layers (an earlier and the last block), the classifier's Linear)
MODELS: dict[str, tuple[Callable, tuple[str, str], str]] = {
    "vit_b_16": (_tv("vit_b_16"), ("encoder.layers.encoder_layer_5.ln_1", "encoder.layers.encoder_layer_11.ln_1"),
                 "heads.head"),
    "swin_t": (_tv("swin_t"), ("features.5", "features.7.1.norm1"), "head"),
    "maxvit_t": (_tv("maxvit_t"), ("blocks.2", "blocks.3"), "classifier.5"),
    "timm:vit_tiny_patch16_224": (_timm("vit_tiny_patch16_224"), ("blocks.5.norm1", "blocks.11.norm1"), "head"),
    "timm:deit_tiny_patch16_224": (_timm("deit_tiny_patch16_224"), ("blocks.5.norm1", "blocks.11.norm1"), "head"),
    "timm:swin_tiny_patch4_window7_224": (_timm("swin_tiny_patch4_window7_224"),
                                          ("layers.2", "layers.3.blocks.1.norm1"), "head.fc"),
}


def build(name: str):
    """The model `name` with random weights and its classifier redrawn (torchvision zero-initialises
    ViT's head, and default scales give near-equal logits), in eval mode."""
    import torch

    builder, _, head = MODELS[name]
    torch.manual_seed(0)
    model = builder().eval()
    with torch.no_grad():
        dict(model.named_modules())[head].weight.normal_(0.0, 0.5)
    return model


def photos() -> np.ndarray:
    """scikit-image's cat and cup at 224×224, scaled to [-1, 1]: inputs unlike the export's example."""
    from skimage import data
    from skimage.transform import resize

    images = [resize(f(), (224, 224), anti_aliasing=True) for f in (data.chelsea, data.coffee)]
    return (np.stack(images).transpose(0, 3, 1, 2) * 2 - 1).astype(np.float32)


def eager64(model, layers, x: np.ndarray, classes: list[int]) -> dict[str, np.ndarray]:
    """Float64 logits, and each target's map and gradient (camrt's layout rule, `to_map`)."""
    import torch

    from camrt.exporter.tokens import to_map

    m = copy.deepcopy(model).double()
    modules = dict(m.named_modules())
    outs = {}
    hooks = [modules[la.name].register_forward_hook(lambda _m, _i, o, n=la.name: outs.__setitem__(n, o))
             for la in layers]
    try:
        logits = m(torch.from_numpy(x).double())
        score = logits[torch.arange(len(classes)), torch.tensor(classes)].sum()
        grads = torch.autograd.grad(score, [outs[la.name] for la in layers])
    finally:
        for h in hooks:
            h.remove()
    res = {"logits": logits.detach().numpy()}
    for la, g in zip(layers, grads, strict=True):
        res[f"activation.{la.name}"] = to_map(la, outs[la.name].detach()).numpy()
        res[f"gradient.{la.name}"] = to_map(la, g).numpy()
    return res


def check(name: str, work: Path) -> dict:
    """Export `name` into `work` and compare it with float64 autograd; the row's numbers."""
    import onnx

    import camrt
    from camrt.engine.session import open_session
    from camrt.graph.tensorrt import check_tensorrt

    model = build(name)
    layers = MODELS[name][1]
    path = work / f"{name.replace(':', '_')}.cam.onnx"
    t = time.perf_counter()
    manifest = camrt.export(model, layers=list(layers), path=path)
    seconds = time.perf_counter() - t
    sess = open_session(str(path), device="cpu")
    names = [o.name for o in sess.get_outputs()]
    x = photos()

    def run(classes):
        return dict(zip(names, sess.run(None, {"input": x, "class_idx": np.array(classes, np.int64)}), strict=True))

    top1 = run([-1, -1])["class_idx_used"]
    classes = [int(top1[0]), int((top1[1] + 1) % manifest.num_classes)]
    got, ref = run(classes), eager64(model, manifest.layers, x, classes)
    row = {"model": name, "export s": seconds,
           "top-1 (fp32, fp64)": f"{top1.tolist()}, {ref['logits'].argmax(1).tolist()}", "explained": classes,
           "logits": float(np.abs(got["logits"] - ref["logits"]).max() / np.abs(ref["logits"]).max())}
    for la in manifest.layers:
        a, ra = got[f"activation.{la.name}"], ref[f"activation.{la.name}"]
        g, rg = got[f"gradient.{la.name}"], ref[f"gradient.{la.name}"]
        row[f"layout {la.name}"] = la.layout
        row[f"activation {la.name}"] = float(np.abs(a - ra).max() / np.abs(ra).max())
        row[f"gradient {la.name}"] = float(np.linalg.norm(g - rg) / np.linalg.norm(rg))
    proto = onnx.load(str(path), load_external_data=False)
    row["domains"] = sorted({n.domain or "ai.onnx" for n in proto.graph.node})
    row["tensorrt problems"] = [str(p) for p in check_tensorrt(proto) if (p.kind, p.where) != ("constant-input",
                                                                                              "class_idx")]
    return row


def report(check_one: Callable[[str, Path], dict], models: Sequence[str], default_workdir: str) -> None:
    """The command line of the check tools: `--models` (default `models`, comma-separated) and
    `--workdir`; one printed row per model, a failure being its row (this tool and check_targets)."""
    p = argparse.ArgumentParser(description=(sys.modules["__main__"].__doc__ or "").split("\n")[0])
    p.add_argument("--models", default=",".join(models))
    p.add_argument("--workdir", type=Path, default=ROOT / "out" / default_workdir)
    a = p.parse_args()
    a.workdir.mkdir(parents=True, exist_ok=True)
    for name in a.models.split(","):
        try:
            row = check_one(name, a.workdir)
        except Exception as e:  # noqa: BLE001 - one model's failure is a row of the report, not the end
            row = {"model": name, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
        print(" | ".join(f"{k}: {v:.3g}" if isinstance(v, float) else f"{k}: {v}" for k, v in row.items()), flush=True)


def main() -> None:
    report(check, list(MODELS), "check_transformers")


if __name__ == "__main__":
    main()
