"""Train CALM's heads on the shapes benchmark (models/shapes_calm.py) and write models/shapes_calm.pt.

    nice -n 10 python tools/train_shapes_calm.py [--images 4000] [--epochs 20] [--threads 2]

The backbone is the trained shapes CNN, frozen: its block5 features of `generate(images,
TRAIN_SEED0)` are computed once (`tools/train_shapes_detector.frozen_features`), then the cue and
class heads are trained by the marginal likelihood (the negative log of p(y | x), CALM-ML; AdamW,
lr 3e-3 with cosine decay, batch 64, torch seed 0). Prints the held-out accuracy on
`generate(500, 0)` with the time, for models/README.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from models.shapes import TRAIN_SEED0, generate  # noqa: E402
from models.shapes_calm import WEIGHTS, build  # noqa: E402
from tools.train_shapes_detector import frozen_features  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=4000)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = build()
    features = frozen_features(model.backbone)
    images, labels, _, _ = generate(a.images, TRAIN_SEED0)
    feats, labels = features(images), torch.from_numpy(labels)
    test_images, test_labels, _, _ = generate(500, 0)
    test_feats = features(test_images)
    params = [*model.cue.parameters(), *model.classes.parameters()]
    opt = torch.optim.AdamW(params, lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, a.epochs * ((len(feats) + 63) // 64))
    for epoch in range(a.epochs):
        order, total = torch.randperm(len(feats)), 0.0
        for s in range(0, len(feats), 64):
            idx = order[s:s + 64]
            loss = torch.nn.functional.nll_loss(model.heads(feats[idx])["logits"], labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        print(f"epoch {epoch + 1}: loss {total / len(feats):.4f}", flush=True)
    with torch.no_grad():
        accuracy = (model.heads(test_feats)["logits"].argmax(1) == torch.from_numpy(test_labels)).float().mean()
    torch.save(model.state_dict(), WEIGHTS)
    print(json.dumps({"images": a.images, "epochs": a.epochs, "seed": 0, "total_s": round(time.perf_counter() - t0),
                      "held_out_accuracy": round(float(accuracy), 3), "torch": torch.__version__}))


if __name__ == "__main__":
    main()
