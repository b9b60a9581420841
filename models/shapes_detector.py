"""A small single-stage detector on the shapes benchmark (models/shapes.py), for issue 12's
detection targets: the trained shapes CNN's convolutional blocks (frozen) and a two-layer head
that predicts, at each cell of the 16×16 grid of `block5` (stride 8 at 128×128), a box and the
eight class logits. The output is the raw head before non-maximum suppression, as YOLO's is:

    output: N × A × (4 + K),  A = 16·16 cells in row-major order, K = 8 classes
    output[n, a, 0:4] = (cx, cy, w, h) in input pixels, decoded inside the network:
        cx = (j + 0.5 + tanh(t_x)) · 8,  cy = (i + 0.5 + tanh(t_y)) · 8   (cell a = i·16 + j)
        w = 32 · exp(t_w),               h = 32 · exp(t_h)
    output[n, a, 4 + k] = class k's logit at cell a (sigmoid: the cell's confidence that a k
        centred there; trained with binary cross-entropy, positive at the cells within 1.5 cells of
        the object's box centre)

`camrt.engine.targets.BoxTarget` explains one detection: class k's logits at the cells whose
decoded box overlaps the given box (IoU ≥ 0.5). `tools/train_shapes_detector.py` trains the head
(a few minutes on 2 CPU cores) and writes `shapes_detector.pt`.

    camrt export models/shapes_detector.pt --arch models.shapes_detector:build --layer backbone.block5 \\
        --input-shape 1,3,128,128 --mean 0.5,0.5,0.5 --std 0.25,0.25,0.25 --target -o det.cam.onnx
    camrt explain det.cam.onnx image.png --target-class 3 --box 40,30,80,70
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from models.shapes import CLASSES, SIZE, blocks

STRIDE = 8
GRID = SIZE // STRIDE  # 16
PRIOR = 32.0  # the box size that t_w = t_h = 0 decodes to, in pixels
WEIGHTS = Path(__file__).with_name("shapes_detector.pt")
LAYER = "backbone.block5"


class ShapesDetector(nn.Module):
    """The shapes CNN's blocks 1-5 (`backbone`) and a box-and-class head (module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = blocks()
        self.head = nn.Sequential(nn.Conv2d(128, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 4 + len(CLASSES), 1))
        ii, jj = torch.meshgrid(torch.arange(GRID), torch.arange(GRID), indexing="ij")
        self.register_buffer("cells", torch.stack([jj.reshape(-1), ii.reshape(-1)], dim=1).float() + 0.5)

    def decode(self, raw: torch.Tensor) -> torch.Tensor:
        """The head's N × (4 + K) × 16 × 16 output as N × A × (4 + K) boxes and logits."""
        t = raw.flatten(2).transpose(1, 2)
        centre = (self.cells + torch.tanh(t[..., 0:2])) * STRIDE
        size = PRIOR * torch.exp(t[..., 2:4].clamp(max=4.0))
        return torch.cat([centre, size, t[..., 4:]], dim=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.head(self.backbone(x)))


def build() -> ShapesDetector:
    """Random weights (what `camrt export --arch models.shapes_detector:build` calls)."""
    return ShapesDetector()


def load_model() -> ShapesDetector:
    """The trained detector in eval mode, weights from `WEIGHTS`."""
    model = build()
    model.load_state_dict(torch.load(WEIGHTS, map_location="cpu", weights_only=True))
    return model.eval()
