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
# Models that give their own map (CALM, LFI-CAM, trained on the shapes benchmark): the map they
# serve beside Grad-CAM's, on held-out images (out/own-maps/*/shape_*.grid.png).
python -m models.shapes write "$out/shapes" --n 3 --seed 4
for m in calm lfi; do
    camrt export "models/shapes_$m.pt" --arch "models.shapes_$m:build" --layer backbone.block5 --output-index logits \
        --map-output cam --input-shape 1,3,128,128 --mean 0.5,0.5,0.5 --std 0.25,0.25,0.25 \
        --labels "$out/shapes/labels.txt" -o "$out/shapes_$m.cam.onnx"
    camrt explain "$out/shapes_$m.cam.onnx" "$out"/shapes/shape_000?.png --method model-map,gradcam -o "$out/own-maps/$m"
done
python tools/write_clip.py "$out/clip.mp4" --frames 100
camrt video "$out/efficientnet_lite0.cam.onnx" "$out/clip.mp4" -o "$out/explained.mp4" --method gradcam --batch 4
echo "overlays: $out/explained/*.png and $out/perturbation/*.png (one per photo and method; *.grid.png side by"
echo "side); own maps of CALM and LFI-CAM: $out/own-maps/; video: $out/explained.mp4"
