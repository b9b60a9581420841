"""Colour-mapped saliency blended over images and video frames, side-by-side grids, and image file
I/O (OpenCV).

One colour mapping (`colorize`) and one blend serve both channel orders: `overlay` for RGB images
(`camrt explain`, `camrt.overlay`) and `render` for BGR frames (`camrt video`), with `bgr=True`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from camrt import checks
from camrt.atomic import write_bytes
from camrt.errors import InputError

COLORMAPS = {name: getattr(cv2, f"COLORMAP_{name.upper()}") for name in checks.COLORMAP_NAMES}
# The files `camrt explain` picks from a directory and `camrt video` refuses as "an image, not a video".
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})
_JPEG = b"\xff\xd8\xff"


def colorize(saliency: np.ndarray, colormap: str = "jet", size: tuple[int, int] | None = None,
             bgr: bool = False) -> np.ndarray:
    """An h×w map in [0, 1] as an H×W×3 uint8 image, RGB (or BGR with `bgr`).

    Each value v becomes the colour map's entry ``round(255 · clip(v, 0, 1))``. With `size` (w, h)
    the map is coloured at its own size and the colours are resized to `size` (bilinear, half-pixel
    centres): colouring the small map is cheaper than colouring a frame-sized one, and the colours
    of neighbouring map pixels are close, so their interpolation stays on the colour map's ramp.
    """
    cmap = COLORMAPS[checks.colormap(colormap)]
    s = np.asarray(saliency, dtype=np.float32)
    if s.ndim != 2:
        raise InputError(f"saliency must be one H×W map, got shape {s.shape}")
    levels = np.clip(s, 0.0, 1.0)  # a new array: the in-place steps below leave the caller's alone
    levels *= 255.0
    levels += 0.5
    heat = cv2.applyColorMap(levels.astype(np.uint8), cmap)
    if not bgr:
        heat = cv2.cvtColor(heat, cv2.COLOR_BGR2RGB)
    if size is not None and size != (s.shape[1], s.shape[0]):
        heat = cv2.resize(heat, size, interpolation=cv2.INTER_LINEAR)
    return heat


def _blend(image: object, saliency: np.ndarray, colormap: str, alpha: float,
           bgr: bool) -> tuple[np.ndarray, np.ndarray]:
    """(`(1 - alpha) · image + alpha · heat`, rounded; the heat map at the image's size)."""
    img = np.asarray(image)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise InputError(f"image must be H×W×3 {'BGR' if bgr else 'RGB'} uint8, got {img.dtype} {img.shape}")
    weight = checks.alpha(alpha)
    heat = colorize(saliency, colormap, (img.shape[1], img.shape[0]), bgr)
    return cv2.addWeighted(img, 1.0 - weight, heat, weight, 0.0), heat


def overlay(image: np.ndarray, saliency: np.ndarray, colormap: str = "jet", alpha: float = 0.5,
            bgr: bool = False) -> np.ndarray:
    """Blend the colour-mapped `saliency` over `image`: `(1 - alpha) * image + alpha * heat`.

    Args:
        image: H×W×3 uint8 (any size), RGB (BGR with `bgr`).
        saliency: h×w map in [0, 1] (any size; its colours are resized to the image, see `colorize`).
        colormap: a name from `COLORMAPS`.
        alpha: weight of the heat map, in [0, 1].
        bgr: True when `image` is BGR (OpenCV's order); the result is then BGR too.

    Returns:
        H×W×3 uint8, in the image's channel order.
    """
    return _blend(image, saliency, colormap, alpha, bgr)[0]


def outline(image: np.ndarray, region: np.ndarray, colour: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
    """`image` (H×W×3 uint8) with the boundary of `region` (h×w, non-zero inside; any size, resized
    to the image by nearest neighbour) drawn over it: the segmentation region a map explains."""
    if region.ndim != 2:
        raise InputError(f"a region is an h×w array, got shape {region.shape}")
    h, w = image.shape[:2]
    inside = cv2.resize((np.asarray(region) != 0).astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST)
    contours, _ = cv2.findContours(inside, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    out = np.ascontiguousarray(image).copy()
    cv2.drawContours(out, contours, -1, colour, max(1, round(min(h, w) / 200)), cv2.LINE_8)
    return out


def render(frame: np.ndarray, saliency: np.ndarray, text: str | None = None, colormap: str = "jet",
           alpha: float = 0.5, panel: bool = False) -> np.ndarray:
    """A BGR video frame with the colour-mapped `saliency` blended in (`overlay` with `bgr=True`),
    `text` (the label and score) drawn at the top left, and with `panel` the colour-mapped map
    alone to its right (the result is then twice as wide)."""
    out, heat = _blend(frame, saliency, colormap, alpha, bgr=True)
    if text:
        h = out.shape[0]
        scale = max(0.35, h / 900)
        thick = max(1, round(scale * 2))
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
        pad = max(2, th // 3)
        cv2.rectangle(out, (0, 0), (tw + 2 * pad, th + base + 2 * pad), (0, 0, 0), cv2.FILLED)
        cv2.putText(out, text, (pad, th + pad), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thick, cv2.LINE_AA)
    return np.hstack([out, heat]) if panel else out


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


def three_channels(image: np.ndarray) -> tuple[np.ndarray, str | None]:
    """An 8-bit gray (H×W or H×W×1), 3- or 4-channel image as H×W×3, channels in the order given:
    gray is replicated, a fourth channel (alpha) composites the colours over white. Returns the
    image (the same array when it has 3 channels) and a note saying what was converted (or None).
    The one rule for image files (`read_image`) and video frames (`camrt.visual.frames`)."""
    if image.ndim == 2 or image.shape[2] == 1:
        gray = image.reshape(image.shape[0], image.shape[1], 1)
        return np.repeat(gray, 3, axis=2), "grayscale replicated to RGB"
    if image.shape[2] == 4:
        a = image[:, :, 3:] / np.float32(255.0)
        return (image[:, :, :3] * a + 255.0 * (1.0 - a) + 0.5).astype(np.uint8), "alpha composited over white"
    return image, None


def read_image(path: str | os.PathLike) -> tuple[np.ndarray, str | None]:
    """Read an image file as RGB uint8 H×W×3, converting what is well defined.

    Grayscale is replicated to RGB; RGBA is composited over white; 16-bit images are scaled to
    8 bits; a JPEG is turned upright by its EXIF orientation tag (camera photos are stored as the
    sensor saw them, with a tag saying how to turn them). Returns the image and a note saying what
    was converted (None if nothing). Raises InputError if the file is missing or not a readable image.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"image '{p}' does not exist")
    return decode_image(np.fromfile(p, dtype=np.uint8), str(p))


def decode_image(data: bytes | np.ndarray, name: str = "image") -> tuple[np.ndarray, str | None]:
    """`read_image` of an encoded image in memory (the bytes of a PNG, JPEG, ... file); `name` is
    what its errors call it."""
    data = np.frombuffer(data, dtype=np.uint8) if isinstance(data, (bytes, bytearray, memoryview)) else data
    p = name
    # IMREAD_UNCHANGED keeps alpha and 16 bits but ignores the orientation tag, which any other
    # flags apply; a JPEG has no alpha, so it is decoded with those (gray and depth still kept).
    jpeg = data[:3].tobytes() == _JPEG
    img = cv2.imdecode(data, cv2.IMREAD_ANYCOLOR | cv2.IMREAD_ANYDEPTH if jpeg else cv2.IMREAD_UNCHANGED) \
        if data.size else None
    if img is None:
        raise InputError(f"'{p}' is not a readable image (OpenCV could not decode it)")
    notes = []
    if img.dtype == np.uint16:
        img = (img.astype(np.float32) / 257.0 + 0.5).astype(np.uint8)
        notes.append("16-bit scaled to 8-bit")
    elif img.dtype != np.uint8:
        raise InputError(f"'{p}' has {img.dtype} pixels; only 8- and 16-bit images are supported")
    if img.ndim == 3 and img.shape[2] not in (1, 3, 4):
        raise InputError(f"'{p}' has {img.shape[2]} channels; expected gray, RGB or RGBA")
    img, note = three_channels(img)
    notes += [note] if note else []
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB), "; ".join(notes) or None


def write_image(path: str | os.PathLike, image: np.ndarray) -> None:
    """Write an RGB uint8 image, completely or not at all; the format follows the extension.

    The image is encoded in memory, then written through `camrt.atomic.write_bytes`: a write that
    fails part-way (a full disk, a file-size limit) leaves no truncated file, and a file already at
    `path` as it was. The new file gets the user's umask.

    Raises:
        InputError: no encoder for the extension, or the write failed (with its cause, such as
            "No space left on device").
    """
    p = Path(path)
    data = encode_image(image, p.suffix or ".png")
    try:
        write_bytes(p, data)
    except OSError as e:
        raise InputError(f"cannot write '{p}': {e.strerror or e}") from e


def encode_image(image: np.ndarray, suffix: str = ".png") -> bytes:
    """The bytes of `image` (RGB uint8 H×W×3, or gray H×W) encoded in the format of `suffix`.

    Raises:
        InputError: no encoder for the suffix.
    """
    img = np.asarray(image)
    bgr = cv2.cvtColor(img, cv2.COLOR_RGB2BGR) if img.ndim == 3 else img
    try:
        ok, buf = cv2.imencode(suffix, bgr)
    except cv2.error:  # OpenCV raises, rather than returning False, for an extension it has no encoder for
        ok = False
    if not ok:
        raise InputError(f"cannot encode an image as '{suffix}'")
    return buf.tobytes()


def gray(saliency: np.ndarray, size: tuple[int, int] | None = None) -> np.ndarray:
    """An h×w map in [0, 1] as an 8-bit gray image, ``round(255 · clip(v, 0, 1))``, resized to
    `size` (w, h) as `colorize` resizes its colours (bilinear, half-pixel centres)."""
    s = np.asarray(saliency, dtype=np.float32)
    if s.ndim != 2:
        raise InputError(f"saliency must be one H×W map, got shape {s.shape}")
    levels = (np.clip(s, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if size is not None and size != (s.shape[1], s.shape[0]):
        levels = cv2.resize(levels, size, interpolation=cv2.INTER_LINEAR)
    return levels
