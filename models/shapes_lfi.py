"""LFI-CAM on the shapes benchmark (models/shapes.py): a second architecture trained to give its own
attribution map, served by camrt's `model-map` method (beside CALM, models/shapes_calm.py).

LFI-CAM (Lee et al., ICCV 2021, "LFI-CAM: Learning Feature Importance for Better Visual
Explanation", https://arxiv.org/abs/2105.00937) has an attention branch that learns the importance
of each feature map rather than the attention map itself. Its Feature Importance Network (FIN)
scores each feature map by the image it lets through:

    F̂_k = (F_k - min F_k) / (max F_k - min F_k)            each map min-max normalised to [0, 1]
    X_k = up(F̂_k) ⊙ x                                       the input masked by the upsampled map
    w = softmax_k(FIN(X_1), ..., FIN(X_C))                  one score per masked image
    M = ReLU(Σ_k w_k F̂_k) / max ReLU(Σ_k w_k F̂_k)           the attention map, class-agnostic

and a perception branch (as in Attention Branch Networks) classifies the features refined by the
map, ``logits = W · GAP(F ⊙ (1 + M)) + b``. We use ``F ⊙ (1 + M)``, the residual form of ABN and
of LFI-CAM's public code, rather than ``F ⊙ M``: the map then re-weights the features without
being able to switch any cell off, so an early, poor map does not starve the classifier of its
features while the map is learnt. Everything is trained end to end by cross-entropy.

Here the features are the trained shapes CNN's blocks 1-5, frozen (`backbone`, 128×16×16), and
the maps F_k the FIN scores are a 1×1 convolution of them to `CHANNELS` (16) channels followed by
a ReLU (`reduce`): 16 masked 128×128 images per input instead of 128 keep training within minutes
on two CPU cores (a documented simplification; the perception branch still refines all 128
channels of the backbone). The FIN is a small CNN (three strided 3-4 px convolutions, global
average pooling, one linear score). The model returns ``{"logits": N×K, "cam": M}`` (M N×16×16), so

    camrt export models/shapes_lfi.pt --arch models.shapes_lfi:build --layer backbone.block5 \\
        --output-index logits --map-output cam --input-shape 1,3,128,128 --mean 0.5,0.5,0.5 \\
        --std 0.25,0.25,0.25 -o lfi.cam.onnx
    camrt explain lfi.cam.onnx image.png --method model-map,gradcam

`tools/train_shapes_lfi.py` trains the reduction, the FIN and the classifier and writes `shapes_lfi.pt`.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from models.shapes import CLASSES, blocks

WEIGHTS = Path(__file__).with_name("shapes_lfi.pt")
LAYER = "backbone.block5"
CHANNELS = 16  # the feature maps the FIN scores (1×1 convolution of block5's 128)
EPS = 1e-6


class FeatureImportance(nn.Module):
    """The FIN: one importance score per masked image (N×3×H×W -> N)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 16, 4, stride=4), nn.ReLU(),               # 32×32 at 128 px
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),   # 16×16
            nn.Conv2d(32, 32, 3, stride=2, padding=1), nn.ReLU(),   # 8×8
        )
        self.score = nn.Linear(32, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.score(self.body(x).mean((2, 3)))[:, 0]


class ShapesLFI(nn.Module):
    """The shapes CNN's blocks 1-5 and LFI-CAM's attention and perception branches (module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = blocks()
        self.reduce = nn.Conv2d(128, CHANNELS, 1)
        self.fin = FeatureImportance()
        self.classifier = nn.Linear(128, len(CLASSES))

    def heads(self, x: torch.Tensor, f: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits and the attention map M from the preprocessed images `x` (N×3×H×W) and their
        features `f` (N×128×h×w)."""
        n, _, h, w = f.shape
        g = torch.relu(self.reduce(f))
        low = g.amin(dim=(2, 3), keepdim=True)
        g = (g - low) / (g.amax(dim=(2, 3), keepdim=True) - low + EPS)
        up = F.interpolate(g, size=x.shape[2:], mode="bilinear", align_corners=False)
        masked = (up.unsqueeze(2) * x.unsqueeze(1)).reshape(n * CHANNELS, *x.shape[1:])
        weights = torch.softmax(self.fin(masked).reshape(n, CHANNELS), dim=1)
        m = torch.relu((weights[:, :, None, None] * g).sum(1))
        m = m / (m.amax(dim=(1, 2), keepdim=True) + EPS)
        refined = f * (1 + m.unsqueeze(1))
        return {"logits": self.classifier(refined.mean((2, 3))), "cam": m}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.heads(x, self.backbone(x))


def build() -> ShapesLFI:
    """Random branches on a random backbone (what `camrt export --arch models.shapes_lfi:build` calls)."""
    return ShapesLFI()


def load_model() -> ShapesLFI:
    """The trained model in eval mode, weights from `WEIGHTS`."""
    model = build()
    model.load_state_dict(torch.load(WEIGHTS, map_location="cpu", weights_only=True))
    return model.eval()
