"""Train LFI-CAM's branches on the shapes benchmark (models/shapes_lfi.py) and write models/shapes_lfi.pt.

    nice -n 10 python tools/train_shapes_lfi.py [--images 4000] [--epochs 5] [--threads 2]

The backbone is the trained shapes CNN, frozen: its block5 features of `generate(images,
TRAIN_SEED0)` are computed once (`tools/train_shapes_detector.frozen_features`); the attention
branch (the 1×1 reduction and the Feature Importance Network, which sees the images masked by the
reduced maps) and the perception branch's linear classifier are trained end to end by
cross-entropy (AdamW, lr 3e-3 with cosine decay, batch 64, torch seed 0). Prints the held-out
accuracy on `generate(500, 0)` with the time, for models/README.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from models.shapes import TRAIN_SEED0, generate, preprocess  # noqa: E402
from models.shapes_lfi import WEIGHTS, build  # noqa: E402
from tools.train_shapes_detector import frozen_features  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=4000)
    p.add_argument("--epochs", type=int, default=5)
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
    t_data = time.perf_counter() - t0
    params = [*model.reduce.parameters(), *model.fin.parameters(), *model.classifier.parameters()]
    opt = torch.optim.AdamW(params, lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, a.epochs * ((len(feats) + 63) // 64))
    for epoch in range(a.epochs):
        order, total = torch.randperm(len(feats)), 0.0
        for s in range(0, len(feats), 64):
            idx = order[s:s + 64]
            x = torch.from_numpy(preprocess(images[idx.numpy()]))
            loss = torch.nn.functional.cross_entropy(model.heads(x, feats[idx])["logits"], labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        print(f"epoch {epoch + 1}: loss {total / len(feats):.4f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model.heads(torch.from_numpy(preprocess(test_images[i:i + 100])),
                                        test_feats[i:i + 100])["logits"] for i in range(0, len(test_images), 100)])
    accuracy = (logits.argmax(1) == torch.from_numpy(test_labels)).float().mean()
    torch.save(model.state_dict(), WEIGHTS)
    print(json.dumps({"images": a.images, "epochs": a.epochs, "seed": 0, "data_s": round(t_data),
                      "total_s": round(time.perf_counter() - t0), "held_out_accuracy": round(float(accuracy), 3),
                      "torch": torch.__version__}))


if __name__ == "__main__":
    main()
