"""Explanations of video frames from any OpenCV loop: `explain_frames`, and the pieces the
`camrt video` pipeline (`camrt.video`) reuses: `FramePlan` (the checked arguments, run on frames
or on frames preprocessed elsewhere), `resize_frame` and `prepare_frames`.

Frames are H×W×3 uint8, BGR by default (as `cv2.VideoCapture` gives them) or RGB; gray frames
(H×W or H×W×1) are replicated to 3 channels and 4-channel frames composited over white by their
alpha, the rule `camrt.visual.overlay.read_image` applies to image files.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from camrt import checks
from camrt.engine import Engine
from camrt.errors import InputError
from camrt.methods import check_options, get_method
from camrt.visual.overlay import three_channels

logger = logging.getLogger("camrt")
# A batch on its way to the model: its frames, their model inputs N×3×H×W, the seconds spent making those.
Batch = tuple[list[np.ndarray], np.ndarray, float]


@dataclass(frozen=True)
class FrameResult:
    """One explained frame, as `explain_frames` yields it.

    index: position of the frame in the input (0-based).
    frame: the frame explained: the input frame itself (not a copy) when it is H×W×3, else its
        3-channel conversion.
    saliency: h×w float32 in [0, 1] at the model's input size (`Engine.input_size`), smoothed when
        `smoothing > 0`; `camrt.overlay` (RGB) or `render` (BGR) resizes it to the frame.
    class_idx, label, score: the class explained, its label (the index as text when the model has
        no labels) and its softmax probability, for this frame (never smoothed).
    seconds: this frame's share of its batch's time: "preprocess", "inference", "method".
    """

    index: int
    frame: np.ndarray
    saliency: np.ndarray
    class_idx: int
    label: str
    score: float
    seconds: dict[str, float] = field(default_factory=dict)


def check_frame(frame: object, index: int) -> np.ndarray:
    """`frame` as an H×W×3 uint8 image (gray replicated, 4 channels composited over white), or an
    InputError naming frame `index`."""
    f = np.asarray(frame)
    if (f.dtype != np.uint8 or f.ndim not in (2, 3) or (f.ndim == 3 and f.shape[2] not in (1, 3, 4))
            or min(f.shape[:2]) < 1):
        raise InputError(f"frame {index} must be an H×W×3 uint8 image (BGR or RGB; gray H×W or H×W×1 and "
                         f"4-channel frames with alpha are converted), got {f.dtype} {f.shape}")
    return three_channels(f)[0]


def resize_frame(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`frame` at size (w, h). Shrinking both sides: area averaging; by 2× or more, in two steps,
    bilinear to twice the size and then exact 2×2 averaging, because OpenCV's area resize at a
    non-integer ratio is several times slower and the result is close to it (both close to an
    exact antialiased resize; figures in docs/benchmarks.md). Enlarging: bilinear."""
    w, h = size
    fh, fw = frame.shape[:2]
    if fw == w and fh == h:
        return frame
    if w > fw or h > fh:
        return cv2.resize(frame, (w, h), interpolation=cv2.INTER_LINEAR)
    if fw >= 2 * w and fh >= 2 * h:
        frame = cv2.resize(frame, (2 * w, 2 * h), interpolation=cv2.INTER_LINEAR)
    return cv2.resize(frame, (w, h), interpolation=cv2.INTER_AREA)


def prepare_frames(frames: Sequence[np.ndarray], size: tuple[int, int], mean: Sequence[float],
                   std: Sequence[float], bgr: bool = True) -> np.ndarray:
    """A float32 N×3×H×W batch for a model of input `size` (H, W): each frame (checked and
    converted by `check_frame`) resized with `resize_frame` (OpenCV, much faster than the engine's
    numpy resize on large frames; area averaging rather than antialiased bilinear, so maps differ
    slightly from `Engine.explain` on the same frames given as RGB images), its channels put in RGB
    order and normalised with `mean` and `std` (per RGB channel, on [0, 1] pixels)."""
    h, w = size
    scale = 1.0 / (255.0 * np.asarray(std, np.float32))
    offset = -np.asarray(mean, np.float32) / np.asarray(std, np.float32)
    out = np.empty((len(frames), 3, h, w), np.float32)
    for i, frame in enumerate(frames):
        small = resize_frame(check_frame(frame, i), (w, h))
        for c in range(3):
            src = 2 - c if bgr else c
            np.multiply(small[:, :, src], scale[c], out=out[i, c])
            out[i, c] += offset[c]
    return out


@dataclass(frozen=True)
class MethodFacts:
    """What the frame code needs to know about a method: its name, whether it is a perturbation
    method (it re-runs the network many times per frame), and whether it needs the gradient."""

    name: str
    perturbation: bool
    uses_gradient: bool


def method_facts(method: str, options: Mapping[str, object]) -> MethodFacts:
    """The method `method`, its `options` checked: the one place the video code reads the method
    contract of `camrt.methods` (InputError for an unknown method or a bad option)."""
    spec = get_method(method)
    check_options(spec.name, options)
    return MethodFacts(spec.name, spec.perturbation, spec.uses_gradient)


@dataclass(frozen=True)
class FramePlan:
    """The checked arguments of `explain_frames` (made by `plan_frames`), ready to run: `explain`
    on frames, `explain_prepared` on (frame, model input) pairs made elsewhere with `model_input`
    (the pipeline's decode thread)."""

    engine: Engine
    method: MethodFacts
    batch: int
    layer: str | Sequence[str] | None
    class_idx: int | None
    smoothing: float
    seed: int
    options: Mapping[str, object]

    def model_input(self, frames: Sequence[np.ndarray], bgr: bool = True) -> np.ndarray:
        """`prepare_frames` for this plan's model."""
        prep = self.engine.manifest.preprocessing
        return prepare_frames(frames, self.engine.input_size, prep.mean, prep.std, bgr)

    def explain(self, frames: Iterable[np.ndarray], bgr: bool = True) -> Iterator[FrameResult]:
        """One `FrameResult` per frame of `frames`, in order."""
        return self._results(self._batches(iter(frames), bgr))

    def explain_prepared(self, pairs: Iterable[tuple[np.ndarray, np.ndarray]]) -> Iterator[FrameResult]:
        """`explain` for (frame, its model input C×H×W) pairs; frames are taken as they are."""
        return self._results(self._prepared_batches(iter(pairs)))

    def _batches(self, frames: Iterator[np.ndarray], bgr: bool) -> Iterator[Batch]:
        index = 0
        while chunk := list(itertools.islice(frames, self.batch)):
            t = time.perf_counter()
            chunk = [check_frame(f, index + i) for i, f in enumerate(chunk)]
            yield chunk, self.model_input(chunk, bgr), time.perf_counter() - t
            index += len(chunk)

    def _prepared_batches(self, pairs: Iterator[tuple[np.ndarray, np.ndarray]]) -> Iterator[Batch]:
        while chunk := list(itertools.islice(pairs, self.batch)):
            t = time.perf_counter()
            x = np.stack([row for _, row in chunk])
            yield [f for f, _ in chunk], x, time.perf_counter() - t

    def _results(self, batches: Iterator[Batch]) -> Iterator[FrameResult]:
        """One graph run per batch, the maps smoothed over time (``s_t = a · s_{t-1} + (1 - a) · m_t``,
        restarted when the frame size changes)."""
        labels = self.engine.manifest.labels
        state: np.ndarray | None = None
        state_shape: tuple[int, ...] | None = None
        index = 0
        for chunk, x, prep_seconds in batches:
            t1 = time.perf_counter()
            p = self.engine.forward(x, self.class_idx, gradient=self.method.uses_gradient)
            r = self.engine.explain_pass(p, self.method.name, self.layer, self.seed, **self.options)
            t2 = time.perf_counter()
            n = len(chunk)
            seconds = {"preprocess": prep_seconds / n, "inference": r.timings["inference"] / n,
                       "method": (t2 - t1 - r.timings["inference"]) / n}
            for i, frame in enumerate(chunk):
                saliency = r.saliency[i]
                if self.smoothing:
                    if state is None or frame.shape != state_shape:
                        state, state_shape = saliency, frame.shape
                    else:
                        state = self.smoothing * state + (1.0 - self.smoothing) * saliency
                    saliency = state
                c = int(r.class_idx[i])
                yield FrameResult(index, frame, saliency, c, labels[c] if labels else str(c), float(r.scores[i]),
                                  dict(seconds))
                index += 1


def plan_frames(engine: Engine, method: str = "gradcam", batch: int = 4, layer: str | Sequence[str] | None = None,
                class_idx: int | None = None, smoothing: float = 0.0, seed: int = 0,
                options: Mapping[str, object] | None = None) -> FramePlan:
    """The arguments of `explain_frames` checked (InputError for a bad one), as a `FramePlan`;
    warns on the `camrt` logger about perturbation methods."""
    options = dict(options or {})
    facts = method_facts(method, options)
    layers = engine.resolve_layers(layer)
    batch = checks.positive_int(batch, "batch")
    smoothing = checks.number(smoothing, "smoothing", 0.0, 1.0, high_open=True, note=" (0 is off)")
    k = engine.manifest.num_classes
    if class_idx is not None and (isinstance(class_idx, bool) or not isinstance(class_idx, (int, np.integer))
                                  or not -1 <= class_idx < k):
        raise InputError(f"class_idx must be None, -1 (top-1) or a class in 0..{k - 1}, got {class_idx!r}")
    if facts.perturbation:
        shape = engine.manifest.layer(layers[-1]).shape
        runs = max(shape[0], shape[1] * shape[2])
        logger.warning("'%s' is a perturbation method: it re-runs the network up to %d times per frame "
                       "(layer %s, %s), so expect seconds per frame, not frames per second; "
                       "gradient methods such as gradcam need one run per batch", facts.name, runs, layers[-1],
                       "×".join(map(str, shape)))
    return FramePlan(engine, facts, batch, layer, class_idx, smoothing, seed, options)


def explain_frames(
    engine: Engine,
    frames: Iterable[np.ndarray],
    method: str = "gradcam",
    batch: int = 4,
    layer: str | Sequence[str] | None = None,
    class_idx: int | None = None,
    smoothing: float = 0.0,
    seed: int = 0,
    bgr: bool = True,
    **options: object,
) -> Iterator[FrameResult]:
    """Explain a stream of frames, `batch` frames per graph run: one `FrameResult` per frame, in order.

    Usable from any OpenCV loop (frames are BGR by default, as `cv2.VideoCapture` gives them).
    Frames are preprocessed with `prepare_frames`. Frames are read `batch` at a time before the
    first of them is yielded, so a live source sees up to `batch` frames of latency.

    Temporal smoothing: with `smoothing = a > 0` the maps are an exponential moving average
    ``s_t = a · s_{t-1} + (1 - a) · m_t`` (`m_t` the frame's own map), restarted (``s_t = m_t``)
    whenever the frame size changes; 0 (the default) is off. Classes and scores are per frame.

    Args:
        engine: the model.
        frames: any iterable of H×W×3 uint8 frames (sizes may vary); gray frames (H×W or H×W×1)
            are replicated to 3 channels, 4-channel ones composited over white by their alpha.
        method: a name from `camrt.methods.METHODS`. Perturbation methods work but re-run the
            network hundreds of times per frame; a warning on the `camrt` logger says so.
        batch: frames per graph run. It does not change the maps of deterministic methods;
            randomised ones (Smooth Grad-CAM++) draw their noise per batch from `seed`.
        layer, class_idx, seed, options: as for `Engine.explain` (class_idx: None for each frame's
            top-1 class, or one class for all frames).
        smoothing: the EMA weight `a`, in [0, 1).
        bgr: True for BGR frames (OpenCV), False for RGB.

    Raises:
        InputError: a bad argument (raised here, before any frame is read), or a frame that is
            not a uint8 image of 1, 3 or 4 channels (raised when it is reached).
    """
    return plan_frames(engine, method, batch, layer, class_idx, smoothing, seed, options).explain(frames, bgr)
