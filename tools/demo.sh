#!/usr/bin/env bash
# The main job on a real model: export the pretrained EfficientNet-Lite0 with its class-score
# gradient, its layer-wise relevance and Grad-CAM/LayerCAM map heads, read predictions, gradients
# and maps with plain onnxruntime, then explain two real photos with every gradient method and
# Relevance-CAM (overlays in out/explained/) and five perturbation methods, and explain a video clip.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-out}
python models/efficientnet_lite0.py "$out"
python tools/write_photos.py "$out/photos"
camrt layers "$out/efficientnet_lite0.pt" --arch models.efficientnet_lite0:build | tail -n 6
camrt export "$out/efficientnet_lite0.pt" --arch models.efficientnet_lite0:build \
    --layer _blocks.15 --layer _head_act --mean 0.5,0.5,0.5 --std 0.5,0.5,0.5 \
    --labels "$out/imagenet_labels.txt" --maps gradcam,layercam --relevance -o "$out/efficientnet_lite0.cam.onnx"
python tools/read_outputs.py "$out/efficientnet_lite0.cam.onnx"
camrt explain "$out/efficientnet_lite0.cam.onnx" "$out/photos" --method all,relevancecam -o "$out/explained"
camrt explain "$out/efficientnet_lite0.cam.onnx" "$out/photos" --method scorecam,abscam-final,ablationcam,reciprocam,groupcam \
    -o "$out/perturbation"
python tools/write_clip.py "$out/clip.mp4" --frames 100
camrt video "$out/efficientnet_lite0.cam.onnx" "$out/clip.mp4" -o "$out/explained.mp4" --method gradcam --batch 4
echo "overlays: $out/explained/*.png and $out/perturbation/*.png (one per photo and method; *.grid.png side by"
echo "side); video: $out/explained.mp4"
