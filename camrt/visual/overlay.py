"""Colour-mapped saliency blended over images, side-by-side grids, and image file I/O (OpenCV)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from camrt.errors import InputError

COLORMAPS = {
    "jet": cv2.COLORMAP_JET, "turbo": cv2.COLORMAP_TURBO, "inferno": cv2.COLORMAP_INFERNO,
    "viridis": cv2.COLORMAP_VIRIDIS, "magma": cv2.COLORMAP_MAGMA, "hot": cv2.COLORMAP_HOT,
    "plasma": cv2.COLORMAP_PLASMA, "bone": cv2.COLORMAP_BONE,
}


def colorize(saliency: np.ndarray, colormap: str = "jet") -> np.ndarray:
    """An H×W map in [0, 1] as an H×W×3 RGB uint8 image."""
    if colormap not in COLORMAPS:
        raise InputError(f"unknown colormap '{colormap}'; choose one of {', '.join(COLORMAPS)}")
    s = np.asarray(saliency, dtype=np.float32)
    if s.ndim != 2:
        raise InputError(f"saliency must be one H×W map, got shape {s.shape}")
    u8 = (np.clip(s, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(u8, COLORMAPS[colormap]), cv2.COLOR_BGR2RGB)


def overlay(image: np.ndarray, saliency: np.ndarray, colormap: str = "jet", alpha: float = 0.5) -> np.ndarray:
    """Blend the colour-mapped `saliency` over `image`: `(1 - alpha) * image + alpha * heat`.

    Args:
        image: H×W×3 RGB uint8 (any size).
        saliency: h×w map in [0, 1] (any size; resized bilinearly to the image).
        colormap: a name from `COLORMAPS`.
        alpha: weight of the heat map, in [0, 1].

    Returns:
        H×W×3 RGB uint8.
    """
    img = np.asarray(image)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise InputError(f"image must be H×W×3 RGB uint8, got {img.dtype} {img.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"alpha must be in [0, 1], got {alpha}")
    s = np.asarray(saliency, dtype=np.float32)
    if s.ndim == 2 and s.shape != img.shape[:2]:
        s = cv2.resize(s, (img.shape[1], img.shape[0]), interpolation=cv2.INTER_LINEAR)
    heat = colorize(s, colormap)
    return cv2.addWeighted(img, 1.0 - alpha, heat, alpha, 0.0)


def grid(tiles: Sequence[np.ndarray], titles: Sequence[str], height: int = 224, columns: int = 4) -> np.ndarray:
    """RGB tiles resized to `height`, captioned, laid out `columns` per row (a side-by-side view)."""
    if len(tiles) != len(titles) or not tiles:
        raise InputError("grid needs one title per tile and at least one tile")
    cells = []
    for tile, title in zip(tiles, titles, strict=True):
        h, w = tile.shape[:2]
        t = cv2.resize(tile, (max(1, round(w * height / h)), height), interpolation=cv2.INTER_AREA)
        band = np.full((22, t.shape[1], 3), 255, np.uint8)
        cv2.putText(band, title[:40], (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
        cells.append(np.vstack([band, t]))
    width = max(c.shape[1] for c in cells)
    cells = [np.pad(c, ((0, 0), (0, width - c.shape[1]), (0, 0)), constant_values=255) for c in cells]
    while len(cells) % columns and len(cells) > columns:
        cells.append(np.full_like(cells[0], 255))
    rows = [np.hstack(cells[i:i + columns]) for i in range(0, len(cells), columns)]
    return np.vstack(rows)


def read_image(path: str | os.PathLike) -> tuple[np.ndarray, str | None]:
    """Read an image file as RGB uint8 H×W×3, converting what is well defined.

    Grayscale is replicated to RGB; RGBA is composited over white; 16-bit images are scaled to
    8 bits. Returns the image and a note saying what was converted (None if nothing).
    Raises InputError if the file is missing or not a readable image.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"image '{p}' does not exist")
    data = np.fromfile(p, dtype=np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if img is None:
        raise InputError(f"'{p}' is not a readable image (OpenCV could not decode it)")
    notes = []
    if img.dtype == np.uint16:
        img = (img.astype(np.float32) / 257.0 + 0.5).astype(np.uint8)
        notes.append("16-bit scaled to 8-bit")
    elif img.dtype != np.uint8:
        raise InputError(f"'{p}' has {img.dtype} pixels; only 8- and 16-bit images are supported")
    if img.ndim == 2 or img.shape[2] == 1:
        img = cv2.cvtColor(img.reshape(img.shape[0], img.shape[1]), cv2.COLOR_GRAY2RGB)
        notes.append("grayscale replicated to RGB")
    elif img.shape[2] == 4:
        rgba = cv2.cvtColor(img, cv2.COLOR_BGRA2RGBA).astype(np.float32)
        a = rgba[:, :, 3:] / 255.0
        img = (rgba[:, :, :3] * a + 255.0 * (1.0 - a) + 0.5).astype(np.uint8)
        notes.append("alpha composited over white")
    elif img.shape[2] == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    else:
        raise InputError(f"'{p}' has {img.shape[2]} channels; expected gray, RGB or RGBA")
    return img, "; ".join(notes) or None


def write_image(path: str | os.PathLike, image: np.ndarray) -> None:
    """Write an RGB uint8 image; the format follows the extension."""
    p = Path(path)
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    try:
        ok, buf = cv2.imencode(p.suffix or ".png", bgr)
    except cv2.error:  # OpenCV raises, rather than returning False, for an extension it has no encoder for
        ok = False
    if not ok:
        raise InputError(f"cannot encode an image as '{p.suffix}'")
    try:
        buf.tofile(p)
    except OSError as e:
        raise InputError(f"cannot write '{p}': {e.strerror}") from e
