#!/usr/bin/env bash
# A vision transformer through camrt: timm's vit_tiny_patch16_224 with RANDOM weights (no trained
# ViT ships inside a PyPI package, and nothing may be downloaded), exported at the last block's
# first layer norm (a token layer: 1 class token + a 14×14 grid), then Grad-CAM, Grad-CAM++,
# LayerCAM, Score-CAM and ViT-ReciproCAM on scikit-image's cat. The maps show that every method runs
# on a transformer's tokens, not what a trained ViT looks at.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-out/vit}
mkdir -p "$out"
python tools/write_photos.py "$out/photos"
python - "$out/vit_tiny.pt" <<'PY'
import sys

import timm
import torch

torch.manual_seed(0)
model = timm.create_model("vit_tiny_patch16_224", pretrained=False)
with torch.no_grad():  # a random head of a useful scale, so that the class scores differ
    model.head.weight.normal_(0.0, 0.5)
torch.save(model.state_dict(), sys.argv[1])
PY
camrt layers "$out/vit_tiny.pt" --arch timm:vit_tiny_patch16_224 | grep -E "blocks\.11\.(norm1|attn)$|^name" || true
camrt export "$out/vit_tiny.pt" --arch timm:vit_tiny_patch16_224 --layer blocks.11.norm1 \
    --mean 0.5,0.5,0.5 --std 0.5,0.5,0.5 -o "$out/vit_tiny.cam.onnx"
camrt explain "$out/vit_tiny.cam.onnx" "$out/photos/chelsea.png" \
    --method gradcam,gradcam++,layercam,scorecam,vitreciprocam -o "$out/explained"
echo "grid: $out/explained/chelsea.grid.png"
