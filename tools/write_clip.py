"""Write a 640×480 demo clip: a camera panning across scikit-image's cat and espresso photos.

    python tools/write_clip.py out/clip.mp4 [--frames 150]

Used by the demo (`camrt video` on a real model) and by tools/bench_video.py.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

SIZE = (640, 480)
FPS = 25.0


def write_clip(path: Path, count: int) -> None:
    """A camera panning across the cat and the espresso, 640×480, `count` frames, mp4v."""
    from skimage import data

    h = SIZE[1]
    strip = np.hstack([cv2.resize(img, (round(img.shape[1] * h / img.shape[0]), h), interpolation=cv2.INTER_AREA)
                       for img in (data.chelsea(), data.coffee())])
    strip = cv2.cvtColor(strip, cv2.COLOR_RGB2BGR)
    travel = strip.shape[1] - SIZE[0]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), FPS, SIZE)
    for t in range(count):
        x = round(travel * (0.5 - 0.5 * np.cos(2 * np.pi * t / count)))  # there and back
        writer.write(np.ascontiguousarray(strip[:, x:x + SIZE[0]]))
    writer.release()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("path", type=Path)
    parser.add_argument("--frames", type=int, default=150)
    args = parser.parse_args()
    args.path.parent.mkdir(parents=True, exist_ok=True)
    write_clip(args.path, args.frames)
    print(f"wrote {args.path}: {args.frames} frames, {SIZE[0]}×{SIZE[1]}, {FPS:g} fps")


if __name__ == "__main__":
    main()
