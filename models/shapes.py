"""A ground-truth benchmark that needs no download: procedural shapes and a small CNN trained on them.

Every image holds exactly one object of one of eight shape classes (`CLASSES`), drawn at a random
place, size, rotation and colour on a cluttered textured background, among 2 to 6 distractors
(thick lines, polylines, elongated ellipses, lumpy blobs) that belong to no class. The object's
pixel mask and box are known exactly: the mask is the set of pixels painted with the object's
colour (no anti-aliasing), drawn away from every distractor, so nothing covers it.

Shortcuts removed by construction (the class must come from the outline, nowhere else):
- colour: the object's and the distractors' colours come from one distribution (uniform RGB,
  resampled until they stand out from the background under them by the same `MIN_CONTRAST`), and
  both are filled solid or striped with the same probability; colour is drawn after the class
  and independently of it;
- background, position, size, rotation and the number and kind of distractors are drawn
  independently of the class;
- size: every class's extent is set by one circumradius `R` from one range; distractors use the
  same range, so the object is not "the big one" either.
`tests/test_models_shapes.py` checks the colour shortcut: a classifier on colour histograms
alone stays near chance.

Images are generated per index from `numpy.random.default_rng([seed, i])`, so `generate(n, seed)`
is deterministic, and its first k images are `generate(k, seed)`. The CNN was trained only on
seeds `TRAIN_SEED0` and up (see tools/train_shapes.py); any seed below it is held out.

The CNN (`build`, `load_model`): five conv blocks (conv 3×3 (the first 5×5, stride 2), BatchNorm,
ReLU, max-pool after blocks 2 and 3) then global average pooling and one linear layer, so CAM
applies as well as the gradient methods; the last block, `LAYER`, is a 128×16×16 map (8 px
cells at 128 px). How `shapes_cnn.pt` was made (seed, epochs, time, held-out accuracy): models/README.md.

    python -m models.shapes write DIR --n 200 --seed 1
writes held-out images, their masks and `annotations.json` for `camrt eval` (format in `write`).
"""

from __future__ import annotations

import argparse
import csv
import json
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

if TYPE_CHECKING:
    import torch

CLASSES = ("disc", "ring", "square", "triangle", "cross", "star", "crescent", "frame")
SIZE = 128
# Preprocessing the CNN was trained with, on [0, 1] pixels (what `camrt export --mean/--std` takes).
MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)
LAYER = "block5"  # the last conv block: the target layer for CAMs
WEIGHTS = Path(__file__).with_name("shapes_cnn.pt")
TRAIN_SEED0 = 1000  # training images come from seeds >= TRAIN_SEED0; every seed below is held out

RADIUS = (11.0, 22.0)  # circumradius of objects and distractors, in pixels at SIZE
MIN_CONTRAST = 90.0  # RGB distance between a shape's colour and the mean background under it
DISTRACTORS = (2, 7)  # half-open range of distractor counts
STRIPED = 0.3  # probability that a shape (object or distractor) is filled with two-colour stripes


def generate(n: int, seed: int, size: int = SIZE) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """`n` images of the benchmark, deterministic in `seed`.

    Returns:
        images: uint8 N×H×W×3 RGB; labels: int64 (N,) indices into `CLASSES`; boxes: float64 (N, 4)
        x0, y0, x1, y1 in pixels, the tight box of the mask (x1, y1 exclusive: the mask lies in
        rows y0..y1-1 and columns x0..x1-1); masks: bool N×H×W, the object's pixels.
    """
    for name, value, low in (("n", n, 1), ("seed", seed, 0), ("size", size, 64)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    images = np.empty((n, size, size, 3), np.uint8)
    labels = np.empty(n, np.int64)
    masks = np.empty((n, size, size), bool)
    for i in range(n):
        images[i], labels[i], masks[i] = draw(np.random.default_rng([seed, i]), size)
    return images, labels, mask_boxes(masks), masks


def mask_boxes(masks: np.ndarray) -> np.ndarray:
    """Tight boxes (x0, y0, x1, y1), x1 and y1 exclusive, of N×H×W boolean masks."""
    boxes = np.empty((len(masks), 4))
    for i, m in enumerate(masks):
        ys, xs = np.nonzero(m)
        boxes[i] = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
    return boxes


def draw(rng: np.random.Generator, size: int = SIZE) -> tuple[np.ndarray, int, np.ndarray]:
    """One image: (uint8 H×W×3, class index, bool H×W object mask)."""
    scale = size / SIZE
    label = int(rng.integers(len(CLASSES)))
    image = background(rng, size)
    r = rng.uniform(*RADIUS) * scale
    cx, cy = rng.uniform(r + 2, size - r - 2, 2)
    mask = shape_mask(CLASSES[label], cx, cy, r, rng.uniform(0, 2 * np.pi), size)
    keep_out = grow(mask, int(4 * scale) + 1)
    for _ in range(int(rng.integers(*DISTRACTORS))):
        for _try in range(20):
            d = distractor_mask(rng, size, rng.uniform(*RADIUS) * scale)
            if d.any() and not (d & keep_out).any():
                paint(rng, image, d)
                keep_out |= d
                break
    paint(rng, image, mask)
    image += rng.normal(0, 5, image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), label, mask


def background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Float32 H×W×3: a smooth random colour field, with stripes and/or a checker texture."""
    grid = int(rng.integers(3, 8))
    field = cv2.resize(rng.uniform(-1, 1, (grid, grid, 3)).astype(np.float32), (size, size),
                       interpolation=cv2.INTER_CUBIC)
    image = rng.uniform(50, 205, 3).astype(np.float32) + rng.uniform(20, 60) * field
    y, x = np.mgrid[:size, :size].astype(np.float32)
    if rng.random() < 0.6:
        a, f = rng.uniform(0, np.pi), rng.uniform(1 / 16, 1 / 5)
        wave = np.sin(2 * np.pi * f * (x * np.cos(a) + y * np.sin(a)) + rng.uniform(0, 2 * np.pi))
        image += wave[..., None] * rng.uniform(-25, 25, 3).astype(np.float32)
    if rng.random() < 0.3:
        p = rng.uniform(6, 16)
        checker = np.sign(np.sin(np.pi * x / p)) * np.sign(np.sin(np.pi * y / p))
        image += checker[..., None] * rng.uniform(-15, 15, 3).astype(np.float32)
    return image


def paint(rng: np.random.Generator, image: np.ndarray, mask: np.ndarray) -> None:
    """Fill `mask` in place with a colour that stands out from the background under it (solid, or
    stripes of two such colours with probability `STRIPED`); objects and distractors alike."""
    under = image[mask].mean(axis=0)
    colours = [contrasting(rng, under) for _ in range(2)]
    if rng.random() < STRIPED:
        y, x = np.nonzero(mask)
        a, period = rng.uniform(0, np.pi), rng.uniform(4, 8)
        second = ((x * np.cos(a) + y * np.sin(a)) // (period / 2)).astype(int) % 2 == 1
        image[y, x] = np.where(second[:, None], colours[1], colours[0])
    else:
        image[mask] = colours[0]


def contrasting(rng: np.random.Generator, under: np.ndarray) -> np.ndarray:
    """A uniform random RGB colour at least `MIN_CONTRAST` from `under` (the farthest of 50 tries
    if none is)."""
    tries = rng.uniform(0, 255, (50, 3))
    distance = np.linalg.norm(tries - under, axis=1)
    ok = np.nonzero(distance >= MIN_CONTRAST)[0]
    return (tries[ok[0]] if len(ok) else tries[np.argmax(distance)]).astype(np.float32)


def shape_mask(name: str, cx: float, cy: float, r: float, angle: float, size: int) -> np.ndarray:
    """The pixels (centres at integer coordinates) of class `name` with circumradius about `r`,
    centred at (cx, cy) and rotated by `angle`."""
    if name not in CLASSES:
        raise ValueError(f"unknown shape {name!r}; the classes are {', '.join(CLASSES)}")
    return place(size, (cx - 1.1 * r, cy - 1.1 * r, cx + 1.1 * r, cy + 1.1 * r),
                 lambda x, y: class_shape(name, *rotate(x - cx, y - cy, angle, r)))


def rotate(dx: np.ndarray, dy: np.ndarray, angle: float, r: float) -> tuple[np.ndarray, np.ndarray]:
    """Offsets from a shape's centre in the shape's own frame (rotated by `angle`), in units of r."""
    c, s = np.cos(angle), np.sin(angle)
    return (dx * c + dy * s) / r, (-dx * s + dy * c) / r


def place(size: int, box: tuple[float, float, float, float],
          local: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> np.ndarray:
    """A size×size mask, False outside `box` (x0, y0, x1, y1) and `local(x, y)` inside it: shapes
    are computed on their own window only."""
    x0, y0 = max(int(np.floor(box[0])), 0), max(int(np.floor(box[1])), 0)
    x1, y1 = min(int(np.ceil(box[2])) + 1, size), min(int(np.ceil(box[3])) + 1, size)
    mask = np.zeros((size, size), bool)
    if x0 < x1 and y0 < y1:
        y, x = np.mgrid[y0:y1, x0:x1].astype(np.float64)
        mask[y0:y1, x0:x1] = local(x, y)
    return mask


def class_shape(name: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Whether the points (u, v) of the shape's own frame (circumradius about 1) are in `name`."""
    rho = np.hypot(u, v)
    if name == "disc":
        return rho <= 0.9
    if name == "ring":
        return (rho <= 0.95) & (rho >= 0.6)
    if name == "square":
        return (np.abs(u) <= 0.7) & (np.abs(v) <= 0.7)
    if name == "frame":
        return (np.maximum(np.abs(u), np.abs(v)) <= 0.75) & (np.maximum(np.abs(u), np.abs(v)) >= 0.42)
    if name == "cross":
        return ((np.abs(u) <= 0.3) & (np.abs(v) <= 0.95)) | ((np.abs(v) <= 0.3) & (np.abs(u) <= 0.95))
    if name == "crescent":
        return (rho <= 0.95) & (np.hypot(u - 0.45, v) > 0.75)
    if name == "triangle":
        corners = [(np.cos(t), np.sin(t)) for t in np.pi / 2 + 2 * np.pi / 3 * np.arange(3)]
        return in_polygon(u, v, corners)
    if name == "star":
        t = np.pi / 2 + np.pi / 5 * np.arange(10)
        radii = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        return in_polygon(u, v, list(zip(radii * np.cos(t), radii * np.sin(t), strict=True)))
    raise ValueError(f"unknown shape {name!r}; the classes are {', '.join(CLASSES)}")


def in_polygon(u: np.ndarray, v: np.ndarray, corners: list[tuple[float, float]]) -> np.ndarray:
    """Even-odd rule: whether each point (u, v) lies inside the polygon `corners`."""
    inside = np.zeros(u.shape, bool)
    for (u1, v1), (u2, v2) in zip(corners, corners[1:] + corners[:1], strict=True):
        crosses = (v1 > v) != (v2 > v)
        with np.errstate(divide="ignore", invalid="ignore"):
            inside ^= crosses & (u < (u2 - u1) * (v - v1) / (v2 - v1) + u1)
    return inside


def distractor_mask(rng: np.random.Generator, size: int, r: float) -> np.ndarray:
    """A shape of no class: a thick line, a polyline, an elongated ellipse or a lumpy blob."""
    cx, cy = rng.uniform(0, size, 2)
    kind = int(rng.integers(4))
    if kind <= 1:  # a thick line (one segment) or a polyline (three)
        points = [np.array([cx, cy])]
        heading = rng.uniform(0, 2 * np.pi)
        for _ in range(1 if kind == 0 else 3):
            heading += 0 if kind == 0 else rng.uniform(-1.5, 1.5)
            step = rng.uniform(1.5, 3.0) * r if kind == 0 else rng.uniform(0.6, 1.2) * r
            points.append(points[-1] + step * np.array([np.cos(heading), np.sin(heading)]))
        half = rng.uniform(1.0, 2.0)
        low, high = np.min(points, axis=0) - half, np.max(points, axis=0) + half
        return place(size, (*low, *high), lambda x, y: np.logical_or.reduce(
            [segment_distance(x, y, a, b) <= half for a, b in zip(points[:-1], points[1:], strict=True)]))
    angle = rng.uniform(0, 2 * np.pi)
    box = (cx - 1.7 * r, cy - 1.7 * r, cx + 1.7 * r, cy + 1.7 * r)
    if kind == 2:  # ellipse with axis ratio 2.2 to 3.5 (never disc-like)
        a = rng.uniform(0.7, 1.1)
        b = a / rng.uniform(2.2, 3.5)
        return place(size, box, lambda x, y: ellipse(*rotate(x - cx, y - cy, angle, r), a, b))
    # an oval with small random bumps: radius 0.7 (1 + e cos 2φ + Σ_k c_k cos(kφ + φ_k)), under 1.7
    terms = [(2, rng.uniform(0.15, 0.3), 0.0)]
    terms += [(k, float(np.clip(rng.normal(0, 0.06), -0.15, 0.15)), rng.uniform(0, 2 * np.pi)) for k in range(3, 7)]
    return place(size, box, lambda x, y: blob(*rotate(x - cx, y - cy, angle, r), terms))


def ellipse(u: np.ndarray, v: np.ndarray, a: float, b: float) -> np.ndarray:
    return (u / a) ** 2 + (v / b) ** 2 <= 1


def blob(u: np.ndarray, v: np.ndarray, terms: list[tuple[int, float, float]]) -> np.ndarray:
    phi = np.arctan2(v, u)
    return np.hypot(u, v) <= 0.7 * (1 + sum(c * np.cos(k * phi + p) for k, c, p in terms))


def segment_distance(x: np.ndarray, y: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = b - a
    t = np.clip(((x - a[0]) * d[0] + (y - a[1]) * d[1]) / max(d @ d, 1e-9), 0, 1)
    return np.hypot(x - a[0] - t * d[0], y - a[1] - t * d[1])


def grow(mask: np.ndarray, pixels: int) -> np.ndarray:
    """`mask` dilated by a square of side 2·pixels + 1."""
    kernel = np.ones((2 * pixels + 1, 2 * pixels + 1), np.uint8)
    return cv2.dilate(mask.astype(np.uint8), kernel).astype(bool)


def preprocess(images: np.ndarray) -> np.ndarray:
    """uint8 N×H×W×3 RGB -> float32 N×3×H×W, `(x / 255 - MEAN) / STD`: what the CNN was trained
    on, and what `camrt export --mean 0.5,0.5,0.5 --std 0.25,0.25,0.25` stores."""
    x = images.astype(np.float32) / 255
    x = (x - np.float32(MEAN)) / np.float32(STD)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def build() -> torch.nn.Module:
    """The CNN with random weights (what `camrt export --arch models.shapes:build` calls)."""
    from torch import nn

    def block(c_in: int, c_out: int, pool: bool, kernel: int = 3, stride: int = 1) -> nn.Sequential:
        layers = [nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(c_out),
                  nn.ReLU()]
        return nn.Sequential(*layers, *([nn.MaxPool2d(2)] if pool else []))

    return nn.Sequential(OrderedDict(
        block1=block(3, 24, False, kernel=5, stride=2),  # 64×64
        block2=block(24, 32, True),                      # 32×32
        block3=block(32, 64, True),                      # 16×16
        block4=block(64, 96, False),
        block5=block(96, 128, False),                    # LAYER: 128×16×16
        pool=nn.AdaptiveAvgPool2d(1),
        flatten=nn.Flatten(),
        head=nn.Linear(128, len(CLASSES)),
    ))


def blocks() -> torch.nn.Module:
    """The CNN's five convolutional blocks alone (random weights; keys block1..block5, as in the
    CNN's state dict): the backbone of the detector and of CALM on this benchmark."""
    from torch import nn

    cnn = build()
    return nn.Sequential(OrderedDict((f"block{i}", getattr(cnn, f"block{i}")) for i in range(1, 6)))


def load_model() -> torch.nn.Module:
    """The trained CNN in eval mode, weights from `WEIGHTS` (models/shapes_cnn.pt)."""
    import torch

    model = build()
    model.load_state_dict(torch.load(WEIGHTS, map_location="cpu", weights_only=True))
    return model.eval()


def write(directory: str | Path, n: int, seed: int, size: int = SIZE, annotate: str = "both") -> Path:
    """Write `generate(n, seed, size)` as files for `camrt eval`: `shape_0000.png` (RGB),
    `shape_0000.mask.png` (the mask, 0 or 255), `annotations.json`
    (`{"shape_0000.png": {"boxes": [[x0, y0, x1, y1]], "mask": "shape_0000.mask.png", "class": 2}}`,
    box corners in pixels, x1 and y1 exclusive, the true class as the model's class index, which
    `camrt eval` explains by default; `annotate` "both", "mask" or "boxes" says which of the
    object keys an entry holds: `camrt.annotations` takes the union of an entry's boxes and mask,
    which is the box), `labels.csv` (file, class_idx, class) and `labels.txt` (the class names in index
    order, for `camrt export --labels`). Returns the folder."""
    if annotate not in ("both", "mask", "boxes"):
        raise ValueError(f"annotate must be 'both', 'mask' or 'boxes', got {annotate!r}")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    images, labels, boxes, masks = generate(n, seed, size)
    annotations = {}
    rows = [("file", "class_idx", "class")]
    for i in range(n):
        name = f"shape_{i:04d}"
        if not cv2.imwrite(str(out / f"{name}.png"), images[i][..., ::-1]):
            raise OSError(f"cannot write {out / f'{name}.png'}")
        cv2.imwrite(str(out / f"{name}.mask.png"), masks[i].astype(np.uint8) * 255)
        entry = {"boxes": [[int(v) for v in boxes[i]]], "mask": f"{name}.mask.png"}
        annotations[f"{name}.png"] = {**{k: v for k, v in entry.items() if annotate in ("both", k)},
                                      "class": int(labels[i])}
        rows.append((f"{name}.png", int(labels[i]), CLASSES[labels[i]]))
    (out / "annotations.json").write_text(json.dumps(annotations, indent=1) + "\n", encoding="utf-8")
    with open(out / "labels.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)
    (out / "labels.txt").write_text("\n".join(CLASSES) + "\n", encoding="utf-8")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m models.shapes", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("write", help="write held-out images, masks and annotations.json to DIR")
    w.add_argument("directory")
    w.add_argument("--n", type=int, default=200)
    w.add_argument("--seed", type=int, default=1, help=f"held out when below {TRAIN_SEED0} (default 1)")
    w.add_argument("--size", type=int, default=SIZE)
    w.add_argument("--annotate", choices=("both", "mask", "boxes"), default="both",
                   help="the keys of each annotations.json entry (camrt eval uses their union)")
    args = parser.parse_args(argv)
    write(args.directory, args.n, args.seed, args.size, args.annotate)


if __name__ == "__main__":
    main()
