#!/usr/bin/env bash
# The main job on a real model: export the pretrained EfficientNet-Lite0 with its class-score
# gradient, then read predictions and gradients for two real photos with plain onnxruntime.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-out}
python models/efficientnet_lite0.py "$out"
camrt layers "$out/efficientnet_lite0.pt" --arch models.efficientnet_lite0:build | tail -n 8
camrt export "$out/efficientnet_lite0.pt" --arch models.efficientnet_lite0:build \
    --layer _blocks.15 --layer _bn1 --mean 0.5,0.5,0.5 --std 0.5,0.5,0.5 \
    --labels "$out/imagenet_labels.txt" -o "$out/efficientnet_lite0.cam.onnx"
python tools/read_outputs.py "$out/efficientnet_lite0.cam.onnx"
