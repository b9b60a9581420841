"""Read a camrt model with nothing but onnxruntime: predictions, gradients and (where the model has
map heads) saliency maps for real photos.

    python tools/read_outputs.py model.cam.onnx
Exits non-zero if a photo's top-1 class is not among the expected ones.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import onnxruntime as ort
from skimage import data, transform

EXPECTED = {"chelsea": {"tabby", "tiger cat", "Egyptian cat"}, "coffee": {"espresso", "cup"}}


def preprocess(image: np.ndarray, manifest: dict) -> np.ndarray:
    _, _, h, w = manifest["input_shape"]
    x = transform.resize(image, (h, w), order=1, anti_aliasing=False).astype(np.float32)  # HWC in [0, 1]
    p = manifest["preprocessing"]
    x = (x - np.array(p["mean"], np.float32)) / np.array(p["std"], np.float32)
    return x.transpose(2, 0, 1)[None]


def main(path: str) -> int:
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    manifest = json.loads(sess.get_modelmeta().custom_metadata_map["camrt"])
    labels = manifest["labels"]
    ok = True
    for name in EXPECTED:
        x = preprocess(getattr(data, name)(), manifest)
        outputs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"input": x}), strict=True))
        logits, used = outputs["logits"][0], int(outputs["class_idx_used"][0])
        top = np.argsort(logits)[::-1][:3]
        print(f"{name}: " + ", ".join(f"{labels[k]} ({logits[k]:.1f})" for k in top))
        for layer in manifest["layers"]:
            a, g = outputs[f"activation.{layer['name']}"][0], outputs[f"gradient.{layer['name']}"][0]
            cam = np.maximum((g.mean(axis=(1, 2))[:, None, None] * a).sum(0), 0)  # Grad-CAM, by hand
            i, j = np.unravel_index(cam.argmax(), cam.shape)
            print(f"  {layer['name']}: activation {a.shape}, |gradient| mean {np.abs(g).mean():.2e}, "
                  f"Grad-CAM peak at ({i}, {j}) of {cam.shape}")
        for method in manifest.get("maps", []):  # map heads: the saliency map itself, from session.run
            s = outputs.get(f"saliency.{method}")
            if s is not None:
                i, j = np.unravel_index(s[0].argmax(), s[0].shape)
                print(f"  saliency.{method}: {s[0].shape} in [{s[0].min():.0f}, {s[0].max():.0f}], peak at ({i}, {j})")
        ok &= labels[used] in EXPECTED[name]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
