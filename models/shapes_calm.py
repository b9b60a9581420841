"""CALM on the shapes benchmark (models/shapes.py), for issue 14: an architecture trained to give
its own attribution map, served by camrt's `model-map` method.

CALM (Kim et al., ICCV 2021, "Keep CALM and Improve Visual Feature Attribution",
https://arxiv.org/abs/2106.07861) makes the location of the class cue a latent variable z over
the cells of the last feature map: ``p(z | x)`` (a softmax over the 16×16 cells of one 1×1
convolution of the features) and ``p(y | z, x)`` (a softmax over the classes at each cell, another
1×1 convolution), trained by the marginal likelihood ``p(y | x) = Σ_z p(y | z, x) p(z | x)``
(CALM-ML). The attribution map of class c is the joint ``p(y = c, z | x)`` over z.

Here the features are the trained shapes CNN's blocks 1-5, frozen (`backbone`); the model returns
``{"logits": log p(y | x), "cam": p(y, z | x)}`` (N×K and N×K×16×16), so

    camrt export models/shapes_calm.pt --arch models.shapes_calm:build --layer backbone.block5 \\
        --output-index logits --map-output cam --input-shape 1,3,128,128 --mean 0.5,0.5,0.5 \\
        --std 0.25,0.25,0.25 -o calm.cam.onnx
    camrt explain calm.cam.onnx image.png --method model-map,gradcam

`tools/train_shapes_calm.py` trains the two 1×1 heads and writes `shapes_calm.pt`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from models.shapes import CLASSES, blocks

WEIGHTS = Path(__file__).with_name("shapes_calm.pt")
LAYER = "backbone.block5"


class ShapesCALM(nn.Module):
    """The shapes CNN's blocks 1-5 and CALM's cue-location and class heads (module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = blocks()
        self.cue = nn.Conv2d(128, 1, 1)
        self.classes = nn.Conv2d(128, len(CLASSES), 1)

    def heads(self, f: torch.Tensor) -> dict[str, torch.Tensor]:
        """log p(y | x) and p(y, z | x) from the features `f` (N×128×h×w)."""
        n, _, h, w = f.shape
        p_z = torch.softmax(self.cue(f).flatten(1), dim=1).reshape(n, 1, h, w)
        p_y_given_z = torch.softmax(self.classes(f), dim=1)
        joint = p_z * p_y_given_z
        return {"logits": torch.log(joint.sum(dim=(2, 3)).clamp_min(1e-30)), "cam": joint}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.heads(self.backbone(x))


def build() -> ShapesCALM:
    """Random heads on a random backbone (what `camrt export --arch models.shapes_calm:build` calls)."""
    return ShapesCALM()


def load_model() -> ShapesCALM:
    """The trained model in eval mode, weights from `WEIGHTS`."""
    model = build()
    model.load_state_dict(torch.load(WEIGHTS, map_location="cpu", weights_only=True))
    return model.eval()
