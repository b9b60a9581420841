"""The on-paper estimate of issue 15: what `camrt batch` would do on a cluster of GPU nodes with
resnet50 Grad-CAM, and which of decode, network and GPU would bound it.

    python tools/scale_estimate.py [--nodes 10] [--gpus 8] [--cores 64] [--nic-gbit 25]
                                   [--gpu-images-per-s 1590 6018] [--gradcam-ratio 1.02]

Measured here, per CPU core (one OpenCV thread): reading a JPEG of a photo (scikit-image's cat,
resized to 640×480 and to 1920×1080, quality 90) and preprocessing it to resnet50's 224×224 input
as `camrt batch` does (`decode_image`, `camrt.engine.preprocess`); its size on the wire. Given, not
measured (this project had no GPU): images per second of resnet50 plain inference on one GPU
(`--gpu-images-per-s`, one figure per scenario), and Grad-CAM's time over plain inference
(`--gradcam-ratio`, measured on the CPU in docs/benchmarks.md: 1.02 at batch 8: the gradient at
layer4 is the backward of the pooling and the classifier only). Prints, per scenario and image
size, the cluster's images per second under each bound and the bottleneck.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

INPUT_BYTES = 3 * 224 * 224 * 4  # a preprocessed float32 input, as decode tasks hand it to GPU actors
ROW_BYTES = 7 * 7 * 4 + 200  # one result row: resnet50's 7×7 layer4 map and the rest (key, label, timings)


def _decode_cost(size: tuple[int, int], repeat: int) -> tuple[float, int]:
    """Seconds per image (best of `repeat` rounds of 20) to decode a JPEG photo of `size` (w, h)
    and preprocess it to 224×224, on one core; and the JPEG's bytes."""
    import cv2
    from skimage import data

    from camrt.engine.preprocess import preprocess
    from camrt.manifest import Preprocessing
    from camrt.visual.overlay import decode_image, encode_image

    cv2.setNumThreads(1)
    photo = cv2.resize(data.chelsea(), size, interpolation=cv2.INTER_CUBIC)
    jpeg = encode_image(photo, ".jpg")
    prep = Preprocessing((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(20):
            image, _ = decode_image(jpeg)
            preprocess([image], (224, 224), prep)
        best = min(best, (time.perf_counter() - t0) / 20)
    return best, len(jpeg)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nodes", type=int, default=10)
    p.add_argument("--gpus", type=int, default=8, help="GPUs per node")
    p.add_argument("--cores", type=int, default=64, help="CPU cores per node")
    p.add_argument("--nic-gbit", type=float, default=25, help="network bandwidth per node, Gbit/s")
    p.add_argument("--gpu-images-per-s", type=float, nargs="+", default=[1590.0, 6018.0],
                   help="resnet50 plain inference on one GPU, images/s (one per scenario)")
    p.add_argument("--gradcam-ratio", type=float, default=1.02)
    p.add_argument("--repeat", type=int, default=5)
    a = p.parse_args()
    gpus = a.nodes * a.gpus
    cores_for_decode = a.cores - a.gpus  # one core per GPU actor feeding its GPU
    print(f"cluster: {a.nodes} nodes × {a.gpus} GPUs, {a.cores} cores and {a.nic_gbit:g} Gbit/s per node; "
          f"Grad-CAM {a.gradcam_ratio:.2f}× plain inference")
    for size in ((640, 480), (1920, 1080)):
        cost, nbytes = _decode_cost(size, a.repeat)
        decode_bound = a.nodes * cores_for_decode / cost
        network_bound = a.nodes * a.nic_gbit * 1e9 / 8 / nbytes
        print(f"\nJPEG {size[0]}×{size[1]}: {nbytes / 1e3:.0f} kB, decode + preprocess {cost * 1e3:.2f} ms per core "
              f"(measured here)")
        print(f"  decode bound: {cores_for_decode} cores × {a.nodes} nodes / {cost * 1e3:.2f} ms = "
              f"{decode_bound:,.0f} images/s")
        print(f"  network bound (images in): {network_bound:,.0f} images/s")
        for g in a.gpu_images_per_s:
            gpu_bound = gpus * g / a.gradcam_ratio
            rate = min(gpu_bound, decode_bound, network_bound)
            neck = {gpu_bound: "GPU", decode_bound: "decode", network_bound: "network"}[rate]
            node = rate / a.nodes
            print(f"  per GPU {g:,.0f} images/s: GPU bound {gpu_bound:,.0f}; cluster {rate:,.0f} images/s, "
                  f"bound by {neck}; per node {node:,.0f} images/s = {node * INPUT_BYTES / 1e9:.1f} GB/s of float32 "
                  f"inputs through the object store, {node * nbytes * 8 / 1e9:.1f} Gbit/s in; the driver writes "
                  f"{rate * ROW_BYTES / 1e6:.0f} MB/s of result rows")


if __name__ == "__main__":
    main()
