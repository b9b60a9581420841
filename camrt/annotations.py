"""Where the objects are in a folder of images: boxes and masks for the pointing games of
`camrt eval`, mapped to the model's input resolution as the engine maps the image.

Two formats, told apart by their content:

- camrt's own (`annotations.json` beside the images): an object keyed by image file name, each
  entry holding `boxes` (a list of `[x0, y0, x1, y1]` in the image's pixels), `mask` (a PNG,
  path relative to the JSON file, white where the object is), or both, and optionally `class`:
  the class of the objects, as the model's class index (an integer) or one of its labels (a
  string, as `camrt export --labels` wrote them). An image with objects of several classes has a
  list of such entries::

      {"cat.jpg": {"boxes": [[12, 30, 200, 180]], "class": 281},
       "dog.png": {"mask": "dog.mask.png"},
       "both.jpg": [{"boxes": [[0, 0, 50, 60]], "class": "tabby"}, {"boxes": [[60, 0, 99, 40]], "class": 207}]}

- COCO-style: an object with `images` (`id`, `file_name`, optional `width` and `height`) and
  `annotations` (`image_id`, `bbox` as `[x, y, width, height]`, optional `segmentation` as
  polygons `[[x1, y1, x2, y2, ...], ...]` or RLE `{"counts": ..., "size": [h, w]}`, compressed
  or not). An annotation's segmentation is used when it has one, its box otherwise. The class of
  an annotation is the `name` of its `category_id` in `categories` (matched against the model's
  labels); without a `categories` list that names it, the `category_id` itself is taken as the
  model's class index.

Coordinates are in the pixels of the image as camrt reads it (turned upright by a JPEG's EXIF
tag): x to the right, y down, (0, 0) the top-left corner of the top-left pixel, so a pixel's
centre is at (column + 0.5, row + 0.5). An image's objects are grouped by class, one `Annotation`
per class (`label`, None where the file names none), each the union of its objects; `union`
merges the groups into one mask. A key names an image by its file name, or by a path ending in it
(`sub/cat.jpg`); a key that names no image given is ignored, one that could name two is an error.

The engine resizes the whole image to the model's H×W (no crop, aspect not kept), so a point
(x, y) of a w×h image lands at (x·W/w, y·H/h). Boxes and polygons are scaled so and a pixel of
the input is inside when its centre is; a shape too small to hold a pixel centre marks the pixel
holding its centre, so that no object vanishes. Masks (PNG or RLE) are resized with the engine's
own resize (`camrt.engine.preprocess`, antialiased bilinear) and kept where ≥ 0.5.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from camrt.errors import InputError, first_line

ANNOTATIONS_FILE = "annotations.json"  # what `camrt eval` looks for beside the images

_ENTRY_KEYS = ("boxes", "mask", "class")

Label = int | str  # a class: the model's class index, or one of its labels


@dataclass(frozen=True)
class Rle:
    """A COCO run-length mask: alternating counts of 0s and 1s, column by column, over h×w."""

    counts: tuple[int, ...]
    size: tuple[int, int]  # (h, w)

    def decode(self) -> np.ndarray:
        h, w = self.size
        values = np.arange(len(self.counts)) % 2 == 1
        return np.repeat(values, self.counts).reshape(w, h).T


@dataclass(frozen=True)
class Annotation:
    """The objects of one class in one image, in that image's pixel coordinates (see the module
    docstring).

    `where` names the file and key it came from, for messages; `size` is the (h, w) the file says
    the image has (COCO's `height`, `width`), checked against the image when it is read; `label`
    is the objects' class (the model's class index or one of its labels), None when not given."""

    where: str
    boxes: tuple[tuple[float, float, float, float], ...] = ()
    polygons: tuple[np.ndarray, ...] = ()  # each k×2 (x, y), k ≥ 3
    rles: tuple[Rle, ...] = ()
    mask_files: tuple[Path, ...] = ()
    size: tuple[int, int] | None = None
    label: Label | None = None

    def mask(self, image_size: tuple[int, int], input_size: tuple[int, int]) -> np.ndarray:
        """The union of the objects as a bool H×W mask at `input_size` (H, W), for an image of
        `image_size` (h, w) pixels.

        Raises:
            InputError: the image's size is not the one the file states, a box lies wholly outside
                the image, or a mask file cannot be read or has another size than the image.
        """
        h, w = image_size
        if self.size is not None and tuple(self.size) != (h, w):
            raise InputError(f"{self.where}: the annotation is for a {self.size[1]}×{self.size[0]} image, and the "
                             f"image is {w}×{h} (width×height; a JPEG turned by its EXIF tag?)")
        out = np.zeros(input_size, bool)
        sy, sx = input_size[0] / h, input_size[1] / w
        for box in self.boxes:
            x0, y0, x1, y1 = box
            if x1 <= 0 or y1 <= 0 or x0 >= w or y0 >= h:
                raise InputError(f"{self.where}: box {list(box)} lies outside the {w}×{h} image")
            _fill_box(out, x0 * sx, y0 * sy, x1 * sx, y1 * sy)
        for poly in self.polygons:
            if poly[:, 0].max() <= 0 or poly[:, 1].max() <= 0 or poly[:, 0].min() >= w or poly[:, 1].min() >= h:
                raise InputError(f"{self.where}: a polygon lies outside the {w}×{h} image")
            _fill_polygon(out, poly * (sx, sy))
        masks = [r.decode() for r in self.rles] + [_read_mask(p, self.where) for p in self.mask_files]
        for m in masks:
            if m.shape != (h, w):
                raise InputError(f"{self.where}: a mask of {m.shape[1]}×{m.shape[0]} pixels for a {w}×{h} image")
            out |= resize_mask(m, input_size)
        return out


@dataclass(frozen=True)
class Annotations:
    """The annotations of one file, keyed as written (image file names or paths): per image its
    objects grouped by class, one `Annotation` per label (see `group`)."""

    path: Path
    format: str  # "camrt" or "coco"
    entries: dict[str, tuple[Annotation, ...]] = field(default_factory=dict)

    def mask_files(self) -> set[Path]:
        """The mask images the entries name (resolved): not images to evaluate when they lie
        beside them."""
        return {p.resolve() for groups in self.entries.values() for a in groups for p in a.mask_files}

    def labels(self) -> set[Label]:
        """Every class the file names."""
        return {a.label for groups in self.entries.values() for a in groups if a.label is not None}

    def for_images(self, images: Sequence[str | os.PathLike]) -> list[tuple[Annotation, ...]]:
        """Each image's annotations (one per class), () where the file has none. A key matches an
        image whose path ends with the key's parts (`cat.jpg`, `sub/cat.jpg`).

        Raises:
            InputError: a key that matches more than one of the images.
        """
        found: list[tuple[Annotation, ...]] = [()] * len(images)
        parts = [Path(p).parts for p in images]
        index: dict[str, list[int]] = {}
        for i, p in enumerate(parts):
            index.setdefault(p[-1], []).append(i)
        for key, groups in self.entries.items():
            kp = PurePosixPath(key.replace("\\", "/")).parts
            hits = [i for i in index.get(kp[-1], []) if parts[i][-len(kp):] == kp] if kp else []
            if len(hits) > 1:
                raise InputError(f"'{self.path}': key '{key}' matches {len(hits)} images ({Path(images[hits[0]])}, "
                                 f"{Path(images[hits[1]])}, ...); write a longer path in the key")
            if hits:
                found[hits[0]] = groups
        return found


def union(annotations: Sequence[Annotation], label: Label | None = None) -> Annotation:
    """One `Annotation` holding every object of `annotations` (of one image), with `label`."""
    if not annotations:
        raise ValueError("union of no annotations")
    first = annotations[0]
    sizes = {a.size for a in annotations if a.size is not None}
    return Annotation(first.where, tuple(b for a in annotations for b in a.boxes),
                      tuple(p for a in annotations for p in a.polygons), tuple(r for a in annotations for r in a.rles),
                      tuple(m for a in annotations for m in a.mask_files), next(iter(sizes), None), label)


def group(annotations: Sequence[Annotation]) -> tuple[Annotation, ...]:
    """`annotations` of one image merged per label, in the order the labels first appear."""
    labels = list(dict.fromkeys(a.label for a in annotations))
    return tuple(union([a for a in annotations if a.label == lab], lab) for lab in labels)


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A bool h×w mask resized to `size` (H, W) by the engine's image resize, kept where ≥ 0.5."""
    from camrt.engine.preprocess import preprocess  # numpy only: no onnxruntime
    from camrt.manifest import Preprocessing

    unit = Preprocessing(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    return preprocess([mask.astype(np.uint8) * np.uint8(255)], size, unit)[0, 0] >= 0.5


def _fill_box(out: np.ndarray, x0: float, y0: float, x1: float, y1: float) -> None:
    """Mark the pixels of `out` whose centres lie in [x0, x1) × [y0, y1), or the one holding the
    box's centre if none does."""
    h, w = out.shape
    c0, c1 = max(0, math.ceil(x0 - 0.5)), min(w, math.ceil(x1 - 0.5))
    r0, r1 = max(0, math.ceil(y0 - 0.5)), min(h, math.ceil(y1 - 0.5))
    if c1 > c0 and r1 > r0:
        out[r0:r1, c0:c1] = True
    else:
        _fill_centre(out, (x0 + x1) / 2, (y0 + y1) / 2)


def _fill_centre(out: np.ndarray, x: float, y: float) -> None:
    h, w = out.shape
    out[min(max(int(math.floor(y)), 0), h - 1), min(max(int(math.floor(x)), 0), w - 1)] = True


def _fill_polygon(out: np.ndarray, poly: np.ndarray) -> None:
    """Mark the pixels of `out` whose centres lie inside `poly` (k×2, x and y in `out`'s pixels;
    even-odd rule, a scan line per row), or the one holding its bounding box's centre if none does."""
    h, w = out.shape
    x, y = poly[:, 0], poly[:, 1]
    xn, yn = np.roll(x, -1), np.roll(y, -1)
    inside = np.zeros((h, w), bool)
    cols = np.arange(w) + 0.5
    for r in range(max(0, math.floor(y.min())), min(h, math.ceil(y.max()) + 1)):
        yc = r + 0.5
        crosses = (y <= yc) != (yn <= yc)  # edges crossing the row's centre line, half-open in y
        if not crosses.any():
            continue
        t = (yc - y[crosses]) / (yn[crosses] - y[crosses])
        xs = x[crosses] + t * (xn[crosses] - x[crosses])
        inside[r] = (np.searchsorted(np.sort(xs), cols, side="right") % 2) == 1
    if inside.any():
        out |= inside
    else:
        _fill_centre(out, (x.min() + x.max()) / 2, (y.min() + y.max()) / 2)


def _read_mask(path: Path, where: str) -> np.ndarray:
    """A mask image as bool h×w: white (grey level ≥ 128 of 255) is the object."""
    from camrt.visual.overlay import read_image  # cv2: loaded only when a mask file is read

    try:
        image, _ = read_image(path)
    except InputError as e:
        raise InputError(f"{where}: mask {e}") from None
    return image.max(axis=2) >= 128


def read_annotations(path: str | os.PathLike) -> Annotations:
    """Read an annotation file in camrt's format or COCO-style (told apart by COCO's `images` list).
    Mask files are checked to exist here and read when their image is evaluated.

    Raises:
        InputError: the file cannot be read or is not JSON, or an entry is malformed (the message
            names the file, the entry and the key).
    """
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8-sig"))
    except OSError as e:
        raise InputError(f"cannot read annotations '{p}': {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise InputError(f"annotations '{p}' are not UTF-8 text: {first_line(e)}") from None
    except json.JSONDecodeError as e:
        raise InputError(f"annotations '{p}' are not JSON: {e.msg} (line {e.lineno}, column {e.colno})") from None
    if isinstance(data, dict) and isinstance(data.get("images"), list):
        return Annotations(p, "coco", _read_coco(p, data))
    if not isinstance(data, dict):
        raise InputError(f"annotations '{p}' must hold a JSON object: image file names mapped to "
                         "{\"boxes\": [[x0, y0, x1, y1], ...], \"mask\": \"FILE.png\"}, "
                         "or COCO's images and annotations")
    return Annotations(p, "camrt", {str(k): _read_entries(p, str(k), v) for k, v in data.items()})


def _read_entries(path: Path, key: str, entry: object) -> tuple[Annotation, ...]:
    """An entry (an object) or a list of them, one per class."""
    if not isinstance(entry, list):
        return (_read_entry(path, key, entry),)
    if not entry:
        raise InputError(f"'{path}', entry '{key}': an empty list; leave images without objects out of the file")
    return group([_read_entry(path, f"{key}[{i}]", e) for i, e in enumerate(entry)])


def _read_entry(path: Path, key: str, entry: object) -> Annotation:
    where = f"'{path}', entry '{key}'"
    if not isinstance(entry, dict):
        raise InputError(f"{where}: must be an object with 'boxes' and/or 'mask' (and optionally 'class'), or a "
                         f"list of them, got {_kind(entry)}")
    unknown = sorted(set(entry) - set(_ENTRY_KEYS))
    if unknown:
        raise InputError(f"{where}: unknown key '{unknown[0]}'; an entry holds 'boxes' and/or 'mask', and "
                         "optionally 'class'")
    label = entry.get("class")
    if "class" in entry and not (isinstance(label, str) and label or isinstance(label, int)
                                 and not isinstance(label, bool) and label >= 0):
        raise InputError(f"{where}: 'class' must be the model's class index (an integer ≥ 0) or one of its labels "
                         f"(a string), got {json.dumps(label)[:40]}")
    raw = entry.get("boxes", [])
    if not isinstance(raw, list):
        raise InputError(f"{where}: 'boxes' must be a list of [x0, y0, x1, y1], got {_kind(raw)}")
    boxes = tuple(_corners(b, f"{where}, boxes[{i}]") for i, b in enumerate(raw))
    masks: tuple[Path, ...] = ()
    if "mask" in entry:
        m = entry["mask"]
        if not isinstance(m, str) or not m:
            raise InputError(f"{where}: 'mask' must be the file name of a mask image, got {m!r}")
        mask_path = path.parent / m
        if not mask_path.is_file():
            raise InputError(f"{where}: mask file '{mask_path}' does not exist (paths are relative to the "
                             "annotation file's folder)")
        masks = (mask_path,)
    if not boxes and not masks:
        raise InputError(f"{where}: no boxes and no mask; leave images without objects out of the file")
    return Annotation(where, boxes=boxes, mask_files=masks, label=label)


def _corners(box: object, where: str) -> tuple[float, float, float, float]:
    """[x0, y0, x1, y1], finite, with x1 > x0 and y1 > y0."""
    values = _numbers(box, 4, where, "[x0, y0, x1, y1]")
    x0, y0, x1, y1 = values
    if not (x1 > x0 and y1 > y0):
        raise InputError(f"{where}: {list(values)} is not [x0, y0, x1, y1] with x1 > x0 and y1 > y0")
    return x0, y0, x1, y1


def _numbers(value: object, count: int | None, where: str, form: str) -> tuple[float, ...]:
    ok = isinstance(value, list) and (count is None or len(value) == count) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
    if not ok:
        raise InputError(f"{where}: must be {form} (finite numbers), got {json.dumps(value)[:80]}")
    return tuple(float(v) for v in value)


def _kind(value: object) -> str:
    return {dict: "an object", list: "a list", str: "a string"}.get(type(value), json.dumps(value)[:40])


def _read_coco(path: Path, data: dict) -> dict[str, tuple[Annotation, ...]]:
    """COCO's images and annotations, keyed by `file_name`; images without annotations left out."""
    images: dict[object, tuple[str, tuple[int, int] | None]] = {}
    for i, im in enumerate(data["images"]):
        where = f"'{path}', images[{i}]"
        if not isinstance(im, dict) or "id" not in im or not isinstance(im.get("file_name"), str):
            raise InputError(f"{where}: an image needs 'id' and 'file_name'")
        size = None
        if "width" in im or "height" in im:
            w, h = im.get("width"), im.get("height")
            if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (w, h)):
                raise InputError(f"{where}: 'width' and 'height' must be positive integers, got {w!r} and {h!r}")
            size = (h, w)
        images[im["id"]] = (im["file_name"], size)
    anns = data.get("annotations")
    if not isinstance(anns, list):
        raise InputError(f"'{path}': COCO-style annotations need an 'annotations' list")
    names = _coco_categories(path, data.get("categories"))
    found: dict[tuple[object, Label | None], dict[str, list]] = {}
    for i, a in enumerate(anns):
        where = f"'{path}', annotations[{i}]"
        if not isinstance(a, dict) or a.get("image_id") not in images:
            raise InputError(f"{where}: 'image_id' must be the id of an entry of 'images', got "
                             f"{a.get('image_id') if isinstance(a, dict) else a!r}")
        cat = a.get("category_id")
        if cat is not None and (isinstance(cat, bool) or not isinstance(cat, int) or cat < 0):
            raise InputError(f"{where}: 'category_id' must be an integer ≥ 0, got {json.dumps(cat)[:40]}")
        label = names.get(cat, cat)
        parts = found.setdefault((a["image_id"], label), {"boxes": [], "polygons": [], "rles": []})
        seg = a.get("segmentation")
        if seg:  # COCO writes [] for "none"
            size = images[a["image_id"]][1]
            _coco_segmentation(seg, f"{where}, segmentation", size, parts)
        elif "bbox" in a:
            x, y, bw, bh = _numbers(a["bbox"], 4, f"{where}, bbox", "[x, y, width, height]")
            if bw <= 0 or bh <= 0:
                raise InputError(f"{where}, bbox: width and height must be positive, got {[x, y, bw, bh]}")
            parts["boxes"].append((x, y, x + bw, y + bh))
        else:
            raise InputError(f"{where}: needs a 'bbox' or a 'segmentation'")
    out: dict[str, tuple[Annotation, ...]] = {}
    for (k, label), v in found.items():
        name, size = images[k]
        out[name] = (*out.get(name, ()), Annotation(f"'{path}', image '{name}'", tuple(v["boxes"]),
                                                    tuple(v["polygons"]), tuple(v["rles"]), size=size, label=label))
    return out


def _coco_categories(path: Path, categories: object) -> dict[int, str]:
    """COCO's `categories`: id → name (an absent list names none)."""
    if categories is None:
        return {}
    if not isinstance(categories, list):
        raise InputError(f"'{path}': 'categories' must be a list of {{\"id\": ..., \"name\": ...}}")
    names = {}
    for i, c in enumerate(categories):
        if not (isinstance(c, dict) and isinstance(c.get("id"), int) and isinstance(c.get("name"), str) and c["name"]):
            raise InputError(f"'{path}', categories[{i}]: a category needs an integer 'id' and a 'name'")
        names[c["id"]] = c["name"]
    return names


def _coco_segmentation(seg: object, where: str, size: tuple[int, int] | None, parts: dict[str, list]) -> None:
    """Polygons (a list of flat coordinate lists) or an RLE (an object with counts and size)."""
    if isinstance(seg, list):
        for j, flat in enumerate(seg):
            values = _numbers(flat, None, f"{where}[{j}]", "[x1, y1, x2, y2, ...]")
            if len(values) < 6 or len(values) % 2:
                raise InputError(f"{where}[{j}]: a polygon needs at least 3 (x, y) points, got {len(values)} numbers")
            parts["polygons"].append(np.asarray(values, np.float64).reshape(-1, 2))
        return
    if not isinstance(seg, dict) or "counts" not in seg or "size" not in seg:
        raise InputError(f"{where}: must be a list of polygons or an RLE object with 'counts' and 'size'")
    hw = seg["size"]
    if not (isinstance(hw, list) and len(hw) == 2 and all(isinstance(v, int) and v > 0 for v in hw)):
        raise InputError(f"{where}: 'size' must be [height, width], got {hw!r}")
    counts = seg["counts"]
    if isinstance(counts, str):
        counts = _rle_from_string(counts, where)
    elif not (isinstance(counts, list) and all(isinstance(c, int) and c >= 0 for c in counts)):
        raise InputError(f"{where}: 'counts' must be a list of non-negative integers or a compressed RLE string")
    if sum(counts) != hw[0] * hw[1]:
        raise InputError(f"{where}: the counts add up to {sum(counts)} pixels, and size {hw} has {hw[0] * hw[1]}")
    parts["rles"].append(Rle(tuple(counts), (hw[0], hw[1])))


def _rle_from_string(text: str, where: str) -> list[int]:
    """COCO's compressed RLE (pycocotools' `rleFrString`): each count in 5-bit groups, low first,
    as characters from '0' (48); bit 5 says another group follows; the last group's bit 4 is the
    sign; from the third count on, each is stored as its difference from the count two before."""
    counts: list[int] = []
    p = 0
    while p < len(text):
        x, k, more = 0, 0, True
        while more:
            if p >= len(text):
                raise InputError(f"{where}: 'counts' is a truncated compressed RLE string")
            c = ord(text[p]) - 48
            if not 0 <= c < 64:
                raise InputError(f"{where}: 'counts' holds {text[p]!r}, not a compressed RLE character")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        if x < 0:
            raise InputError(f"{where}: 'counts' decodes to a negative run length")
        counts.append(x)
    return counts
