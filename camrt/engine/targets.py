"""Targets: what to explain of a model output, for models exported in target mode (issue 12).

A camrt graph computes a vector-Jacobian product: in target mode (`camrt export --target`) the
vector is the graph input ``target``, of the explained output's shape per image, and the graph
gives ``score[n] = Σ target[n] ⊙ output[n]`` and ``gradient.L = ∂ score / ∂ activation.L``. A
target builder turns what a user means ("class 3", "class 3 inside this mask", "how similar is
this embedding to that concept") into that vector, as pytorch-grad-cam's targets are callables in
eager PyTorch; the engine checks it against the model's output shape. Each builder has

- ``vector(output)``: the vector ``(N, *shape)`` for the images whose output (from a forward run)
  is `output`; builders whose vector does not depend on the output say ``needs_output = False``
  and get None, so the engine runs the graph once;
- ``score(output, vector)``: the scalar explained, per image, for any output, used by the
  perturbation methods to judge their copies (the same number the graph's ``score`` gives at the
  image itself). For a linear target it is ``Σ vector ⊙ output``; for the cosine similarity it is
  the similarity itself, whose gradient at the image is the vector.

Builders:

- `ClassTarget(k)`: class k's score; on an N×K×H×W output the sum of its logits over every pixel.
- `RegionTarget(k, mask)`: class k's logits summed inside a mask (pytorch-grad-cam's
  ``SemanticSegmentationTarget``: ``(output[k] * mask).sum()``), or with ``mask=None`` inside the
  region the model predicts as k (argmax over classes), read from the forward run.
- `SimilarityTarget(concept)`: the cosine similarity of an N×D embedding to a concept vector
  (``SimilarityToConceptTarget`` of pytorch-grad-cam's embeddings tutorial); its vector is the similarity's gradient
  ``c/(|e||c|) − (e·c) e/(|e|³|c|)`` at the image's embedding e.
- `BoxTarget(box, k)`: one detection of a raw single-stage head before non-maximum suppression
  (YOLO's, or models/shapes_detector.py's), an N×A×(4 + K) output whose rows are a decoded box
  ``(cx, cy, w, h)`` in input pixels then K class scores: class k's score summed over the anchors
  (cells) whose decoded box overlaps `box` (x0, y0, x1, y1 in input pixels) with IoU ≥ `iou`
  (0.5), read from the forward run; no such anchor is an error.
- a numpy array: the vector itself, one for all images or one per image.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

import numpy as np

from camrt.errors import InputError


class Target:
    """Base of the target builders (module docstring)."""

    needs_output: bool = False
    linear: bool = True  # score(output) = Σ vector ⊙ output: the graph's own `score` is the target's
    # vector() is finite by construction (its inputs checked in float32): the engine skips its own
    # check of the vector (a sum over N × the output's size per call)
    finite_vector: bool = False

    def check(self, shape: tuple[int, ...]) -> None:
        """InputError when the target cannot apply to an output of `shape` per image (before any run)."""

    def vector(self, output: np.ndarray | None, shape: tuple[int, ...], n: int) -> np.ndarray:
        """The vector ``(n, *shape)`` of the VJP for `n` images with model output `output`."""
        raise NotImplementedError

    def reuse_key(self, shape: tuple[int, ...], n: int) -> Hashable | None:
        """A value that determines ``vector(None, shape, n)`` entirely, by which the engine may reuse
        the last vector it built (frames of a stream explained for one target: a segmenter's vector
        is 22 MB at 4×21×256×256, a millisecond or more to build), or None: build it every call."""
        return None

    def score(self, output: np.ndarray, vector: np.ndarray) -> np.ndarray:
        """The explained scalar of each row of `output` (``(k, *shape)``); `vector` is the image's."""
        return (output.reshape(len(output), -1).astype(np.float64)
                * vector.reshape(1, -1).astype(np.float64)).sum(axis=1)


def _class(k: object, shape: tuple[int, ...]) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise InputError(f"a target class must be an integer, got {k!r}")
    if not 0 <= int(k) < shape[0]:
        raise InputError(f"target class {int(k)} is out of range: the output has {shape[0]} channels "
                         f"(0..{shape[0] - 1})")
    return int(k)


@dataclass(frozen=True)
class ClassTarget(Target):
    """Class `k`'s score: ``output[k]`` (summed over every pixel of a dense output)."""

    k: int
    finite_vector = True

    def check(self, shape: tuple[int, ...]) -> None:
        _class(self.k, shape)

    def vector(self, output: np.ndarray | None, shape: tuple[int, ...], n: int) -> np.ndarray:
        v = np.zeros((n, *shape), np.float32)
        v[:, _class(self.k, shape)] = 1.0
        return v

    def reuse_key(self, shape: tuple[int, ...], n: int) -> Hashable | None:
        return ("class", int(self.k), shape, n)


@dataclass(frozen=True)
class RegionTarget(Target):
    """Class `k`'s logits summed inside `mask` (H×W, bool or weights, the output's spatial size),
    or inside the region predicted as `k` when `mask` is None."""

    k: int
    mask: np.ndarray | None = None
    finite_vector = True

    @property
    def needs_output(self) -> bool:  # type: ignore[override]
        return self.mask is None

    def check(self, shape: tuple[int, ...]) -> None:
        # (without building a vector: one of a segmenter's outputs is 5.5 MB at 21×256×256)
        self._class_in(shape)
        if self.mask is not None:
            self._weights(shape)

    def vector(self, output: np.ndarray | None, shape: tuple[int, ...], n: int) -> np.ndarray:
        k = self._class_in(shape)
        if self.mask is None and output is None:
            raise InputError("a region target without a mask reads the predicted region from the output")
        weights = None if self.mask is None else self._weights(shape)
        v = np.zeros((n, *shape), np.float32)
        v[:, k] = output.argmax(axis=1) == k if weights is None else weights
        return v

    def reuse_key(self, shape: tuple[int, ...], n: int) -> Hashable | None:
        if self.mask is None:  # the region is read from each run's output
            return None
        mask = np.asarray(self.mask)  # its values, not the object: a mask changed in place is a new target
        return ("region", int(self.k), shape, n, mask.dtype.str, mask.shape, mask.tobytes())

    def _class_in(self, shape: tuple[int, ...]) -> int:
        if len(shape) != 3:
            raise InputError(f"a region target needs a K×H×W output per image (segmentation); this model's "
                             f"output is {'×'.join(map(str, shape))}")
        return _class(self.k, shape)

    def _weights(self, shape: tuple[int, ...]) -> np.ndarray:
        """The mask as float32 weights of the output's H×W, checked."""
        mask = np.asarray(self.mask)
        if mask.shape != shape[1:]:
            raise InputError(f"the mask is {'×'.join(map(str, mask.shape))} and the model's output is "
                             f"{shape[1]}×{shape[2]}; give a mask of the output's size")
        numeric = mask.dtype == bool or np.issubdtype(mask.dtype, np.number)
        if not numeric or not np.isfinite(mask.astype(float)).all():
            raise InputError("the mask must hold booleans or finite numbers")
        with np.errstate(over="ignore"):  # an overflow is refused just below, not warned about
            weights = mask.astype(np.float32)
        if not np.isfinite(weights).all():
            raise InputError("the mask's values overflow float32 (the model's precision); give weights of at most "
                             "about 3.4e38")
        return weights


@dataclass(frozen=True)
class SimilarityTarget(Target):
    """The cosine similarity of the N×D output to `concept` (D values)."""

    concept: np.ndarray
    needs_output = True
    linear = False

    def _concept(self, shape: tuple[int, ...]) -> np.ndarray:
        c = np.asarray(self.concept, np.float64).reshape(-1)
        if len(shape) != 1:
            raise InputError(f"a similarity target needs an N×D output (an embedding); this model's output is "
                             f"{'×'.join(map(str, shape))} per image")
        if c.size != shape[0]:
            raise InputError(f"the concept vector has {c.size} values and the embedding {shape[0]}; give one of "
                             f"{shape[0]} values")
        if not np.isfinite(c).all() or not np.any(c):
            raise InputError("the concept vector must be finite and not all zero")
        return c

    def check(self, shape: tuple[int, ...]) -> None:
        self._concept(shape)

    def vector(self, output: np.ndarray | None, shape: tuple[int, ...], n: int) -> np.ndarray:
        c = self._concept(shape)
        if output is None:
            raise InputError("a similarity target reads the embedding from the output")
        e = output.reshape(n, -1).astype(np.float64)
        ne, nc = np.linalg.norm(e, axis=1, keepdims=True), np.linalg.norm(c)
        ne = np.where(ne == 0, 1.0, ne)
        return (c / (ne * nc) - (e @ c)[:, None] * e / (ne ** 3 * nc)).astype(np.float32)

    def score(self, output: np.ndarray, vector: np.ndarray) -> np.ndarray:
        c = np.asarray(self.concept, np.float64).reshape(-1)
        e = output.reshape(len(output), -1).astype(np.float64)
        ne = np.linalg.norm(e, axis=1)
        return (e @ c) / (np.where(ne == 0, 1.0, ne) * np.linalg.norm(c))


def _corners(cxcywh: np.ndarray) -> np.ndarray:
    return np.concatenate([cxcywh[..., :2] - cxcywh[..., 2:4] / 2, cxcywh[..., :2] + cxcywh[..., 2:4] / 2], axis=-1)


def box_iou(boxes: np.ndarray, box: np.ndarray) -> np.ndarray:
    """IoU of each of `boxes` (…, 4) with `box` (4,), all x0, y0, x1, y1."""
    lo = np.maximum(boxes[..., :2], box[:2])
    hi = np.minimum(boxes[..., 2:], box[2:])
    inter = np.clip(hi - lo, 0, None).prod(-1)
    union = np.clip(boxes[..., 2:] - boxes[..., :2], 0, None).prod(-1) + np.prod(box[2:] - box[:2]) - inter
    return inter / np.maximum(union, 1e-12)


@dataclass(frozen=True)
class BoxTarget(Target):
    """Class `k` at the anchors whose decoded box overlaps `box` with IoU ≥ `iou` (module
    docstring). `within`: the input's (H, W), to refuse a box outside it."""

    box: tuple[float, float, float, float]
    k: int
    iou: float = 0.5
    within: tuple[int, int] | None = None
    needs_output = True

    def _box(self) -> np.ndarray:
        b = np.asarray(self.box, np.float64).reshape(-1)
        if b.size != 4 or not np.isfinite(b).all() or b[2] <= b[0] or b[3] <= b[1]:
            raise InputError(f"a box is x0,y0,x1,y1 with x0 < x1 and y0 < y1, got {self.box!r}")
        if self.within is not None:
            h, w = self.within
            if b[0] < 0 or b[1] < 0 or b[2] > w or b[3] > h:
                raise InputError(f"the box {','.join(f'{v:g}' for v in b)} lies outside the {w}×{h} image")
        return b

    def check(self, shape: tuple[int, ...]) -> None:
        if len(shape) != 2 or shape[1] <= 4:
            raise InputError(f"a box target needs an N×A×(4+K) detection output (boxes then class scores per "
                             f"anchor); this model's output is {'×'.join(map(str, shape))} per image")
        _class(self.k, (shape[1] - 4,))
        if not 0 < float(self.iou) <= 1:
            raise InputError(f"the IoU threshold must be in (0, 1], got {self.iou!r}")
        self._box()

    def scaled(self, image_hw: tuple[int, int], input_hw: tuple[int, int]) -> BoxTarget:
        """This box given in an image's pixels (checked inside it), in the model input's pixels."""
        BoxTarget(self.box, self.k, self.iou, image_hw)._box()
        sy, sx = input_hw[0] / image_hw[0], input_hw[1] / image_hw[1]
        x0, y0, x1, y1 = (float(v) for v in self.box)
        return BoxTarget((x0 * sx, y0 * sy, x1 * sx, y1 * sy), self.k, self.iou, input_hw)

    def anchors(self, output: np.ndarray) -> np.ndarray:
        """N × A booleans: the anchors of each image whose decoded box overlaps the box enough."""
        return box_iou(_corners(output[..., :4].astype(np.float64)), self._box()) >= float(self.iou)

    def vector(self, output: np.ndarray | None, shape: tuple[int, ...], n: int) -> np.ndarray:
        self.check(shape)
        if output is None:
            raise InputError("a box target reads the decoded boxes from the output")
        chosen = self.anchors(output)
        empty = [i for i in range(n) if not chosen[i].any()]
        if empty:
            best = box_iou(_corners(output[empty[0], :, :4].astype(np.float64)), self._box()).max()
            raise InputError(f"no anchor's box overlaps the given box with IoU ≥ {self.iou:g} in image {empty[0]} "
                             f"(the best overlaps {best:.2f}); give the box of a detection, or a lower IoU")
        v = np.zeros((n, *shape), np.float32)
        v[:, :, 4 + int(self.k)] = chosen
        return v


@dataclass(frozen=True)
class ArrayTarget(Target):
    """A vector given as an array: ``shape`` (one for all images) or ``(n, *shape)``."""

    array: np.ndarray
    finite_vector = True

    def vector(self, output: np.ndarray | None, shape: tuple[int, ...], n: int) -> np.ndarray:
        a = np.asarray(self.array)
        if not np.issubdtype(a.dtype, np.number) or not np.isfinite(a).all():
            raise InputError("the target array must hold finite numbers")
        if a.shape not in (shape, (n, *shape)):
            raise InputError(f"the target has shape {a.shape}; the model's output is {shape} per image: give one "
                             f"of that shape, or {n} of them ({(n, *shape)})")
        with np.errstate(over="ignore"):  # an overflow is refused just below, not warned about
            v = a.astype(np.float32)
        if not np.isfinite(v).all():
            raise InputError("the target array's values overflow float32 (the model's precision); give values of "
                             "at most about 3.4e38")
        return np.broadcast_to(v, (n, *shape)).copy() if a.shape == shape else v


def box_region(box: tuple[float, float, float, float], size: tuple[int, int]) -> np.ndarray:
    """The pixels of `box` (x0, y0, x1, y1) on an H×W grid, to draw it (`camrt.visual.overlay.outline`)."""
    region = np.zeros(size, bool)
    x0, y0, x1, y1 = (round(float(v)) for v in box)
    region[max(y0, 0):max(y1, 0), max(x0, 0):max(x1, 0)] = True
    return region


def target_for(shape: tuple[int, ...], target_class: int | None = None, mask: np.ndarray | None = None,
               concept: np.ndarray | None = None, box: tuple[float, float, float, float] | None = None) -> Target:
    """The target the command line's options mean for an output of `shape` per image: `concept`,
    the cosine similarity to it; `mask`, class `target_class` inside it; `box`, the detection of
    class `target_class` there; `target_class` alone, the class's predicted region on a K×H×W
    output, else the class's score. Checked against `shape`."""
    if concept is not None:
        if target_class is not None or mask is not None or box is not None:
            raise InputError("--concept explains an embedding's similarity; it takes no --target-class, --mask "
                             "or --box")
        built: Target = SimilarityTarget(np.asarray(concept))
    elif target_class is None:
        raise InputError("this model was exported in target mode: say what to explain with --target-class K "
                         "(and --mask FILE for a region, --box x0,y0,x1,y1 for a detection) or --concept FILE")
    elif box is not None:
        if mask is not None:
            raise InputError("give --mask (a region) or --box (a detection), not both")
        built = BoxTarget(tuple(box), target_class)
    elif mask is not None:
        built = RegionTarget(target_class, mask)
    else:
        built = RegionTarget(target_class) if len(shape) == 3 else ClassTarget(target_class)
    built.check(shape)
    return built


def as_target(target: Target | np.ndarray | object) -> Target:
    """`target` as a builder: builders as they are, arrays wrapped (`ArrayTarget`)."""
    if isinstance(target, Target):
        return target
    if isinstance(target, np.ndarray) or isinstance(target, (list, tuple)):
        return ArrayTarget(np.asarray(target))
    raise InputError(f"target must be a camrt.engine.targets builder (ClassTarget, RegionTarget, SimilarityTarget) "
                     f"or an array of the output's shape, got {type(target).__name__}")
