"""Train the shapes detector's head (models/shapes_detector.py) on the CPU and write
models/shapes_detector.pt.

    nice -n 10 python tools/train_shapes_detector.py [--images 4000] [--epochs 30] [--threads 2]

The backbone is the trained shapes CNN (models/shapes_cnn.pt), frozen: its block5 features of
`generate(images, TRAIN_SEED0)` are computed once, then the head is trained on them (AdamW, lr
3e-3 with cosine decay, batch 64, torch seed 0). Loss per image: binary cross-entropy of every
cell's K class logits against 1 for the object's class at the cells whose centre lies within 1.5
cells of the box centre (0 elsewhere, and for the other classes), plus the L1 distance of the
decoded box (x0, y0, x1, y1, over 32 px) to the object's box at those cells. Held out: on
`generate(500, 0)` (seeds never trained on), the share of images whose highest-scoring cell has
the right class and a box of IoU ≥ 0.5 with the object's (detection accuracy at one detection per
image), printed with the time and the machine for models/README.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from models.shapes import TRAIN_SEED0, generate, load_model, preprocess  # noqa: E402
from models.shapes_detector import GRID, STRIDE, WEIGHTS, build  # noqa: E402

HELD_OUT_SEED = 0


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of boxes (…, 4) x0, y0, x1, y1, elementwise."""
    lo = torch.maximum(a[..., :2], b[..., :2])
    hi = torch.minimum(a[..., 2:], b[..., 2:])
    inter = (hi - lo).clamp(min=0).prod(-1)
    area = (a[..., 2:] - a[..., :2]).prod(-1) + (b[..., 2:] - b[..., :2]).prod(-1) - inter
    return inter / area.clamp(min=1e-9)


def corners(out: torch.Tensor) -> torch.Tensor:
    """(cx, cy, w, h) → (x0, y0, x1, y1)."""
    return torch.cat([out[..., 0:2] - out[..., 2:4] / 2, out[..., 0:2] + out[..., 2:4] / 2], dim=-1)


def positives(boxes: torch.Tensor) -> torch.Tensor:
    """N × A booleans: the cells whose centre is within 1.5 cells of each box's centre."""
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2 / STRIDE  # in cells
    ii, jj = torch.meshgrid(torch.arange(GRID), torch.arange(GRID), indexing="ij")
    cells = torch.stack([jj.reshape(-1), ii.reshape(-1)], 1).float() + 0.5
    return (cells[None] - centre[:, None]).norm(dim=-1) <= 1.5


def frozen_features(backbone: torch.nn.Module) -> Callable[[np.ndarray], torch.Tensor]:
    """Load the trained shapes CNN's blocks 1-5 into `backbone`, freeze it (eval mode, no
    gradients), and return the function that gives its features of uint8 images, 256 at a time."""
    cnn = load_model()
    backbone.load_state_dict({k: v for k, v in cnn.state_dict().items()
                              if k.split(".")[0] in {f"block{i}" for i in range(1, 6)}})
    backbone.eval()
    for q in backbone.parameters():
        q.requires_grad_(False)

    def features(images: np.ndarray) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([backbone(torch.from_numpy(preprocess(images[i:i + 256])))
                              for i in range(0, len(images), 256)])

    return features


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=4000)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = build()
    features = frozen_features(model.backbone)
    images, labels, boxes, _ = generate(a.images, TRAIN_SEED0)
    feats, labels, boxes = features(images), torch.from_numpy(labels), torch.from_numpy(boxes).float()
    test_images, test_labels, test_boxes, _ = generate(500, HELD_OUT_SEED)
    test_feats = features(test_images)
    t_data = time.perf_counter() - t0
    head_params = list(model.head.parameters())
    opt = torch.optim.AdamW(head_params, lr=3e-3, weight_decay=1e-4)
    steps = a.epochs * ((len(feats) + 63) // 64)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    pos_all = positives(boxes)

    def decode(f: torch.Tensor) -> torch.Tensor:
        return model.decode(model.head(f))

    for epoch in range(a.epochs):
        order = torch.randperm(len(feats))
        total = 0.0
        model.head.train()
        for s in range(0, len(feats), 64):
            idx = order[s:s + 64]
            out = decode(feats[idx])
            pos = pos_all[idx]
            want = torch.zeros_like(out[..., 4:])
            want[pos] = torch.nn.functional.one_hot(labels[idx], want.shape[-1]).float()[:, None].expand(
                -1, pos.shape[1], -1)[pos]
            cls_loss = torch.nn.functional.binary_cross_entropy_with_logits(out[..., 4:], want, reduction="sum")
            cls_loss = cls_loss / pos.sum().clamp(min=1)
            box_err = (corners(out) - boxes[idx][:, None]).abs().sum(-1) / 32.0
            box_loss = (box_err * pos).sum() / pos.sum().clamp(min=1)
            loss = cls_loss + box_loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss) * len(idx)
        print(f"epoch {epoch + 1}: loss {total / len(feats):.4f}", flush=True)
    model.head.eval()
    with torch.no_grad():
        out = decode(test_feats)
    scores = out[..., 4:].sigmoid()
    best = scores.flatten(1).argmax(1)
    cell, cls = best // scores.shape[-1], best % scores.shape[-1]
    chosen = corners(out)[torch.arange(len(out)), cell]
    iou = box_iou(chosen, torch.from_numpy(test_boxes).float())
    hit = (cls == torch.from_numpy(test_labels)) & (iou >= 0.5)
    seconds = time.perf_counter() - t0
    torch.save(model.state_dict(), WEIGHTS)
    right_class = (cls == torch.from_numpy(test_labels)).float().mean()
    print(json.dumps({"images": a.images, "epochs": a.epochs, "seed": 0, "data_s": round(t_data),
                      "total_s": round(seconds), "held_out_detection_accuracy": round(float(hit.float().mean()), 3),
                      "held_out_class_accuracy": round(float(right_class), 3),
                      "median_iou": round(float(iou.median()), 3),
                      "machine": platform.processor() or platform.machine(), "torch": torch.__version__}))


if __name__ == "__main__":
    main()
