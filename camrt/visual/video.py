"""Explanations on video (OpenCV): `explain_frames`, a generator usable from any OpenCV loop, and
`explain_video`, the pipeline behind `camrt video`.

The pipeline runs three stages at once, joined by bounded queues, so memory stays flat on
endless streams: a decode thread (read, resize to the output size, preprocess for the model),
the calling thread (one graph run per batch of frames, the map; with `show` also the overlay
and the window, which belong to it), and an encode thread (overlay, write). OpenCV and ONNX
Runtime release the GIL, so the stages overlap.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import queue
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from camrt.engine import Engine
from camrt.errors import InputError
from camrt.methods import Method, check_options, get_method
from camrt.visual.overlay import COLORMAPS

logger = logging.getLogger("camrt")

# Container suffix → the codec written by default; `FALLBACK_CODECS` are tried in turn when the
# asked-for codec cannot be opened by this OpenCV build (with the suffix they need).
DEFAULT_CODECS = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "XVID"}
FALLBACK_CODECS = ("mp4v", "MJPG", "XVID")
# The containers each fallback codec can be written in; the first is used when the asked-for one is not among them.
_CONTAINERS = {"mp4v": (".mp4", ".m4v", ".mov", ".avi", ".mkv"), "MJPG": (".avi", ".mkv"), "XVID": (".avi", ".mkv")}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
_END = object()  # end of a queue's stream


@dataclass(frozen=True)
class FrameResult:
    """One explained frame, as `explain_frames` yields it.

    index: position of the frame in the input (0-based).
    frame: the input frame itself (not a copy).
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


def _positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _check_frame(frame: object, index: int) -> np.ndarray:
    f = np.asarray(frame)
    if f.dtype != np.uint8 or f.ndim != 3 or f.shape[2] != 3 or min(f.shape[:2]) < 1:
        raise InputError(f"frame {index} must be an H×W×3 uint8 image (BGR or RGB), got {f.dtype} {f.shape}")
    return f


def resize_frame(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`frame` at size (w, h). Shrinking both sides: area averaging; by 2× or more, in two steps,
    bilinear to twice the size and then exact 2×2 averaging, because OpenCV's area resize at a
    non-integer ratio is slow (640×480 → 224×224: 0.7 ms instead of 2.7; 1920×1080: 1.3 ms
    instead of 14.6) and the result is close to it (mean difference from an exact antialiased
    resize 1.1-1.3× that of the area resize). Enlarging: bilinear."""
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
    """A float32 N×3×H×W batch for a model of input `size` (H, W): each frame resized with
    `resize_frame` (OpenCV, much faster than the engine's numpy resize on large frames; area
    averaging rather than antialiased bilinear, so maps differ slightly from `Engine.explain` on
    the same frames given as RGB images), its channels put in RGB order and normalised with `mean` and
    `std` (per RGB channel, on [0, 1] pixels)."""
    h, w = size
    scale = 1.0 / (255.0 * np.asarray(std, np.float32))
    offset = -np.asarray(mean, np.float32) / np.asarray(std, np.float32)
    out = np.empty((len(frames), 3, h, w), np.float32)
    for i, frame in enumerate(frames):
        small = resize_frame(_check_frame(frame, i), (w, h))
        for c in range(3):
            src = 2 - c if bgr else c
            np.multiply(small[:, :, src], scale[c], out=out[i, c])
            out[i, c] += offset[c]
    return out


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
        frames: any iterable of H×W×3 uint8 frames (sizes may vary).
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
            not H×W×3 uint8 (raised when it is reached).
    """
    spec = _check_frame_args(engine, method, batch, layer, class_idx, smoothing, options)
    return _explain_frames(engine, iter(frames), spec, batch, layer, class_idx, float(smoothing), seed, bgr, options)


def _check_frame_args(engine: Engine, method: str, batch: int, layer: str | Sequence[str] | None,
                      class_idx: int | None, smoothing: float, options: dict) -> Method:
    """The method, once the arguments of `explain_frames` are checked; warns about perturbation methods."""
    spec = get_method(method)
    check_options(spec.name, options)
    layers = engine.resolve_layers(layer)
    _positive_int(batch, "batch")
    if isinstance(smoothing, bool) or not isinstance(smoothing, (int, float)) or not 0.0 <= smoothing < 1.0:
        raise InputError(f"smoothing must be a number in [0, 1) (0 is off), got {smoothing!r}")
    k = engine.manifest.num_classes
    if class_idx is not None and (isinstance(class_idx, bool) or not isinstance(class_idx, (int, np.integer))
                                  or not -1 <= class_idx < k):
        raise InputError(f"class_idx must be None, -1 (top-1) or a class in 0..{k - 1}, got {class_idx!r}")
    if spec.family in ("feature", "input"):
        shape = engine.manifest.layer(layers[-1]).shape
        runs = max(shape[0], shape[1] * shape[2])
        logger.warning("'%s' is a perturbation method: it re-runs the network up to %d times per frame "
                       "(layer %s, %s), so expect seconds per frame, not frames per second; "
                       "gradient methods such as gradcam need one run per batch", spec.name, runs, layers[-1],
                       "×".join(map(str, shape)))
    return spec


def _explain_frames(engine: Engine, frames: Iterator, spec: Method, batch: int,
                    layer: str | Sequence[str] | None, class_idx: int | None, smoothing: float, seed: int,
                    bgr: bool, options: dict, prepared: bool = False) -> Iterator[FrameResult]:
    """`explain_frames` after its checks; with `prepared`, `frames` yields (frame, its model input
    C×H×W) pairs, preprocessed elsewhere (the pipeline's decode thread)."""
    prep = engine.manifest.preprocessing
    labels = engine.manifest.labels
    state: np.ndarray | None = None
    state_shape: tuple[int, ...] | None = None
    index = 0
    while chunk := list(itertools.islice(frames, batch)):
        t0 = time.perf_counter()
        if prepared:
            x = np.stack([row for _, row in chunk])
            chunk = [f for f, _ in chunk]
        else:
            chunk = [_check_frame(f, index + i) for i, f in enumerate(chunk)]
            x = prepare_frames(chunk, engine.input_size, prep.mean, prep.std, bgr)
        t1 = time.perf_counter()
        p = engine.forward(x, class_idx, gradient=spec.uses_gradient)
        r = engine.explain_pass(p, spec.name, layer, seed, **options)
        t2 = time.perf_counter()
        n = len(chunk)
        seconds = {"preprocess": (t1 - t0) / n, "inference": r.timings["inference"] / n,
                   "method": (t2 - t1 - r.timings["inference"]) / n}
        for i, frame in enumerate(chunk):
            saliency = r.saliency[i]
            if smoothing:
                if state is None or frame.shape != state_shape:
                    state, state_shape = saliency, frame.shape
                else:
                    state = smoothing * state + (1.0 - smoothing) * saliency
                saliency = state
            c = int(r.class_idx[i])
            yield FrameResult(index, frame, saliency, c, labels[c] if labels else str(c), float(r.scores[i]),
                              dict(seconds))
            index += 1


def render(frame: np.ndarray, saliency: np.ndarray, text: str | None = None, colormap: str = "jet",
           alpha: float = 0.5, panel: bool = False) -> np.ndarray:
    """A BGR frame with the colour-mapped `saliency` blended in (`(1 - alpha) · frame + alpha · heat`),
    `text` (the label and score) drawn at the top left, and with `panel` the colour-mapped map
    alone to its right (the result is then twice as wide). The map is coloured at its own size and
    the colours resized to the frame (bilinear), which is cheaper than resizing the map."""
    h, w = frame.shape[:2]
    u8 = np.empty(saliency.shape, np.uint8)
    np.multiply(saliency, 255.0, out=u8, casting="unsafe")  # saliency is in [0, 1]
    heat = cv2.resize(cv2.applyColorMap(u8, COLORMAPS[colormap]), (w, h), interpolation=cv2.INTER_LINEAR)
    out = cv2.addWeighted(frame, 1.0 - alpha, heat, alpha, 0.0)
    if text:
        scale = max(0.35, h / 900)
        thick = max(1, round(scale * 2))
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
        pad = max(2, th // 3)
        cv2.rectangle(out, (0, 0), (tw + 2 * pad, th + base + 2 * pad), (0, 0, 0), cv2.FILLED)
        cv2.putText(out, text, (pad, th + pad), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thick, cv2.LINE_AA)
    return np.hstack([out, heat]) if panel else out


# --- the pipeline behind `camrt video` ----------------------------------------------------------------------


@dataclass
class VideoSummary:
    """What `explain_video` did.

    frames_read: frames decoded from the source (with `every > 1`, skipped ones included);
    frames_explained: frames through the model; frames_written: frames in the output file.
    input_size, output_size: (w, h) of the first input frame and of the written frames (twice as
    wide with `panel`); input_fps, output_fps: frame rates (output: input / `every`).
    codec: the codec written (None without an output); output: the file written, which differs
    from the path asked for when a fallback codec needed another container; notes: what was
    changed on the way and why (codec fallback, resized frames, unknown frame rate).
    seconds: time spent per stage ("decode", "preprocess", "inference", "method", "overlay",
    "encode") and "total" (wall clock, from the first frame); `fps` gives frames per second of each.
    interrupted: True when Ctrl-C stopped the run (the output holds the frames written until then).
    """

    source: str
    output: str | None = None
    codec: str | None = None
    frames_read: int = 0
    frames_explained: int = 0
    frames_written: int = 0
    input_size: tuple[int, int] | None = None
    output_size: tuple[int, int] | None = None
    input_fps: float | None = None
    output_fps: float | None = None
    notes: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    interrupted: bool = False

    def fps(self) -> dict[str, float]:
        """Frames per second of each stage (frames it handled / its seconds) and end to end ("total")."""
        counts = {"decode": self.frames_read, "encode": self.frames_written}
        return {k: counts.get(k, self.frames_explained) / s for k, s in self.seconds.items() if s > 0}


class VideoInterrupted(KeyboardInterrupt):
    """Ctrl-C during `explain_video`; the output file was closed first. `summary` says what was done."""

    def __init__(self, summary: VideoSummary) -> None:
        super().__init__("interrupted")
        self.summary = summary


@contextlib.contextmanager
def _quiet_opencv() -> Iterator[None]:
    """OpenCV's own log silenced while a capture or writer is opened (a failed open is reported as
    an InputError instead); the previous level is put back."""
    old = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        yield
    finally:
        cv2.utils.logging.setLogLevel(old)


def open_capture(source: str | int | os.PathLike, timeout: float = 10.0) -> tuple[cv2.VideoCapture, str]:
    """An opened `cv2.VideoCapture` and its kind ("camera", "stream" or "file") for a camera index
    (an int, or a string of digits such as "0"), a URL (rtsp://, http://, ...; `timeout` seconds
    to connect and per read) or a video file. Raises InputError with what to check."""
    text = str(source)
    if isinstance(source, int) or text.isdigit():
        with _quiet_opencv():
            cap = cv2.VideoCapture(int(text))
        if not cap.isOpened():
            raise InputError(f"camera {text} could not be opened: no such camera, or it is in use "
                             "(cameras are numbered from 0)")
        return cap, "camera"
    if _URL.match(text):
        ms = int(timeout * 1000)
        with _quiet_opencv():
            cap = cv2.VideoCapture(text, cv2.CAP_FFMPEG,
                                   [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms])
        if not cap.isOpened():
            raise InputError(f"stream '{text}' could not be opened (unreachable, refused, or not a video stream "
                             f"within {timeout:g} s); check the URL and that the server is sending")
        return cap, "stream"
    path = Path(text)
    if not path.is_file():
        raise InputError(f"video file '{path}' does not exist (a camera is a number such as 0, a stream a URL)")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        raise InputError(f"'{path}' is an image, not a video; `camrt explain` explains images")
    with _quiet_opencv():
        cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise InputError(f"'{path}' is not a readable video (OpenCV could not open it)")
    return cap, "file"


def open_writer(path: str | os.PathLike, fps: float, size: tuple[int, int],
                codec: str | None = None) -> tuple[cv2.VideoWriter, str, Path, str | None]:
    """A `cv2.VideoWriter` for frames of `size` (w, h): (writer, codec, path, note). The codec is
    `codec` (a FourCC such as "mp4v", "avc1", "MJPG", "XVID") or the default for the suffix
    (`DEFAULT_CODECS`). When this OpenCV build cannot write it, the `FALLBACK_CODECS` are tried
    (an .avi file next to the one asked for where the codec needs it), and `note` says what was
    written instead (also logged as a warning). Raises InputError when nothing can be written."""
    target = Path(path)
    if not target.parent.is_dir():
        raise InputError(f"output directory '{target.parent}' does not exist")
    if not os.access(target.parent, os.W_OK) or target.is_dir():
        raise InputError(f"cannot write '{target}': not a writable file path")
    if codec is None:
        codec = DEFAULT_CODECS.get(target.suffix.lower())
        if codec is None:
            raise InputError(f"no default codec for '{target.suffix or '(no suffix)'}'; name the file "
                             f"{', '.join(DEFAULT_CODECS)} or give a codec (FourCC, e.g. mp4v)")
    if len(codec) != 4 or not codec.isascii():
        raise InputError(f"a codec is a four-character FourCC such as mp4v, avc1, MJPG or XVID; got '{codec}'")
    tried = []
    candidates = [(codec, target)] + [
        (c, target if target.suffix.lower() in _CONTAINERS[c] else target.with_suffix(_CONTAINERS[c][0]))
        for c in FALLBACK_CODECS if c != codec]
    for c, p in candidates:
        writer = _video_writer(p, c, fps, size)
        if writer.isOpened():
            note = None
            if tried:
                note = f"codec {codec} is not available in this OpenCV build; wrote {c} to {p} instead"
                logger.warning("%s", note)
            return writer, c, p, note
        writer.release()
        tried.append(f"{c} ({p.suffix})")
    raise InputError(f"no codec could write '{target}' (tried {', '.join(tried)}); install an OpenCV build "
                     "with FFmpeg (opencv-python-headless) or choose another file type")


def _video_writer(path: Path, codec: str, fps: float, size: tuple[int, int]) -> cv2.VideoWriter:
    with _quiet_opencv():
        return cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), fps, size)


def _capture_frames(cap: cv2.VideoCapture, every: int, stats: dict) -> Iterator[np.ndarray]:
    """Every `every`-th frame of `cap`; the others are only grabbed (not converted). Counts
    `stats["read"]` and the seconds in `stats["decode"]`."""
    for i in itertools.count():
        t = time.perf_counter()
        if i % every:
            ok, frame = cap.grab(), None
        else:
            ok, frame = cap.read()
        stats["decode"] += time.perf_counter() - t
        if not ok:
            return
        stats["read"] += 1
        if frame is not None:
            yield frame


def _iterable_frames(frames: Iterable[np.ndarray], every: int, stats: dict) -> Iterator[np.ndarray]:
    it = iter(frames)
    for i in itertools.count():
        t = time.perf_counter()
        frame = next(it, _END)
        stats["decode"] += time.perf_counter() - t
        if frame is _END:
            return
        stats["read"] += 1
        if i % every == 0:
            yield frame


def _put(q: queue.Queue, item: object, stop: threading.Event) -> bool:
    """Put `item`, waiting while the queue is full unless `stop` is set; False when stopped."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.05)
            return True
        except queue.Full:
            continue
    return False


def _decode(frames: Iterator[np.ndarray], q: queue.Queue, stop: threading.Event, size: tuple[int, int] | None,
            engine: Engine, stats: dict) -> None:
    """The decode thread: frames (resized to `size`, else to the first frame's size) and their model
    inputs into `q`, then `_END`; an exception is passed on through the queue."""
    prep = engine.manifest.preprocessing
    try:
        for frame in frames:
            if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
                raise InputError(f"frame {stats['read'] - 1} is not an H×W×3 uint8 image: {frame.dtype} {frame.shape}")
            if stats["first"] is None:
                stats["first"] = (frame.shape[1], frame.shape[0])
            elif (frame.shape[1], frame.shape[0]) != stats["first"]:
                stats["resized"] += 1
            t = time.perf_counter()
            frame = resize_frame(frame, size or stats["first"])
            t1 = time.perf_counter()
            row = prepare_frames([frame], engine.input_size, prep.mean, prep.std)[0]
            stats["decode"] += t1 - t
            stats["preprocess"] += time.perf_counter() - t1
            if not _put(q, (frame, row), stop):
                return
    except BaseException as e:  # noqa: BLE001 - handed to the calling thread, which raises it
        _put(q, e, stop)
        return
    _put(q, _END, stop)


def _encode(writer: cv2.VideoWriter, q: queue.Queue, stats: dict, style: tuple[str, float, bool]) -> None:
    """The encode thread: items from `q` into `writer` until `_END`. An item is a rendered frame,
    or (frame, saliency, text) to `render` here with `style` (colormap, alpha, panel) first."""
    while (item := q.get()) is not _END:
        if stats["error"] is not None:
            continue  # keep draining so that the producer never blocks
        try:
            if isinstance(item, tuple):
                t = time.perf_counter()
                item = render(*item, *style)
                stats["overlay"] += time.perf_counter() - t
            t = time.perf_counter()
            writer.write(item)
            stats["encode"] += time.perf_counter() - t
        except BaseException as e:  # noqa: BLE001 - reported by the calling thread
            stats["error"] = e
            continue
        stats["written"] += 1


def _send(q: queue.Queue, item: object, encoder: threading.Thread, stats: dict, output: str | None) -> None:
    """Put `item` for the encode thread; an InputError if it failed (instead of waiting forever)."""
    while True:
        if stats["error"] is not None or not encoder.is_alive():
            raise InputError(f"writing '{output}' failed: {stats['error']}")
        try:
            q.put(item, timeout=0.1)
            return
        except queue.Full:
            continue


def _queued(q: queue.Queue, timeout: float, source: str, stats: dict) -> Iterator[np.ndarray]:
    """The decoded frames, from the decode thread's queue; InputError when none comes for `timeout` s."""
    while True:
        try:
            item = q.get(timeout=timeout)
        except queue.Empty:
            if stats["first"] is None:
                raise InputError(f"no frame from '{source}' within {timeout:g} s: the source did not start") from None
            raise InputError(f"no frame from '{source}' for {timeout:g} s after {stats['read']} frames: the source "
                             "stalled (the frames explained so far were written)") from None
        if item is _END:
            return
        if isinstance(item, BaseException):
            raise item
        yield item


def explain_video(
    engine: Engine,
    source: str | int | os.PathLike | Iterable[np.ndarray],
    output: str | os.PathLike | None = None,
    method: str = "gradcam",
    every: int = 1,
    size: tuple[int, int] | None = None,
    panel: bool = False,
    show: bool = False,
    smoothing: float = 0.0,
    batch: int = 4,
    layer: str | Sequence[str] | None = None,
    class_idx: int | None = None,
    codec: str | None = None,
    colormap: str = "jet",
    alpha: float = 0.5,
    fps: float | None = None,
    timeout: float = 10.0,
    progress: Callable[[int, int | None, float], None] | None = None,
    seed: int = 0,
    **options: object,
) -> VideoSummary:
    """Explain every `every`-th frame of `source` and write the frames with their overlays to `output`.

    Each written frame is `render(frame, saliency, "label score", colormap, alpha, panel)`: the
    colour-mapped map blended in, the top-1 label and its probability drawn (or the class asked
    for with `class_idx`), with `panel` the map alone beside it. The output has the input's frame
    count, frame rate and size unless `every` (1 frame in N, at 1/N of the rate) or `size` (w, h)
    say otherwise. Frames whose size differs from the first frame's are resized to it (a note
    says how many). With `show`, frames are also shown in a window (q or Esc stops the run;
    needs an OpenCV build with GUI support).

    Args:
        source: a video file, a camera index (int or "0"), a URL (rtsp://, http://, ...), or an
            iterable of BGR H×W×3 uint8 frames (frame rate `fps`, default 25).
        output: the video file to write (None: write nothing). Codec: `codec` or the suffix's
            default, with a fallback when unavailable (see `open_writer`).
        timeout: seconds to wait for the first frame, and for any later one, before giving up.
        progress: called as progress(frames explained, expected total or None, seconds since the
            run started) after each frame; raising from it stops the run like Ctrl-C does.
        seed, options: the seed and the options of the method, as for `explain_frames`.
        Others: as for `explain_frames` and `render`.

    Returns:
        A `VideoSummary`. Memory is bounded: at most `2 · batch` frames wait in each queue.

    Raises:
        InputError: a bad argument or source (not a video, a camera that does not exist, a stream
            that does not start or stalls, no usable codec); output written so far is closed first.
        VideoInterrupted (a KeyboardInterrupt): Ctrl-C; the output is closed first and is playable.
    """
    every = _positive_int(every, "every")
    if size is not None:
        if len(size) != 2 or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1 for v in size):
            raise InputError(f"size must be (width, height) in pixels, got {size!r}")
        size = (int(size[0]), int(size[1]))
    if colormap not in COLORMAPS:
        raise InputError(f"unknown colormap '{colormap}'; choose one of {', '.join(COLORMAPS)}")
    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"alpha must be in [0, 1], got {alpha}")
    if not timeout > 0:
        raise InputError(f"timeout must be positive (seconds), got {timeout}")
    if fps is not None and not fps > 0:
        raise InputError(f"fps must be positive, got {fps}")
    spec = _check_frame_args(engine, method, batch, layer, class_idx, smoothing, options)  # before a source opens
    if show:
        try:  # probe only: imshow opens the window again
            cv2.namedWindow("camrt", cv2.WINDOW_NORMAL)
            cv2.destroyWindow("camrt")
        except cv2.error:
            raise InputError("showing a window needs OpenCV with GUI support (pip install opencv-python; "
                             "this build is headless)") from None

    stats: dict = {"read": 0, "decode": 0.0, "preprocess": 0.0, "overlay": 0.0, "encode": 0.0, "written": 0,
                   "first": None, "resized": 0, "error": None}
    if isinstance(source, (str, int, os.PathLike)):
        cap, kind = open_capture(source, timeout)
        name = str(source)
        src_fps = cap.get(cv2.CAP_PROP_FPS)
        count = cap.get(cv2.CAP_PROP_FRAME_COUNT) if kind == "file" else 0
        frames = _capture_frames(cap, every, stats)
    else:
        cap, kind, name, src_fps, count = None, "frames", "frames", 0.0, 0
        frames = _iterable_frames(source, every, stats)
    summary = VideoSummary(name)
    if fps is not None:
        src_fps = fps
    elif not (src_fps and 0 < src_fps < 1000):
        src_fps = 25.0
        summary.notes.append(f"the source does not report its frame rate; {src_fps:g} fps assumed")
    summary.input_fps, summary.output_fps = src_fps, src_fps / every
    total = -(-int(count) // every) if 0 < count < 1e9 else None

    stop = threading.Event()
    decoded: queue.Queue = queue.Queue(maxsize=2 * batch)
    rendered: queue.Queue = queue.Queue(maxsize=2 * batch)
    decoder = threading.Thread(target=_decode, args=(frames, decoded, stop, size, engine, stats), daemon=True,
                               name="camrt-decode")
    encoder: threading.Thread | None = None
    writer = None
    seconds = {"preprocess": 0.0, "inference": 0.0, "method": 0.0, "overlay": 0.0}
    start = time.perf_counter()
    threads = cv2.getNumThreads()
    # OpenCV's own worker threads only contend with ONNX Runtime's for the cores (measured on 2
    # cores: overlay 2.2 → 1.0 ms, encode 2.6 → 1.6 ms per 640×480 frame); put back afterwards.
    cv2.setNumThreads(1)
    try:
        decoder.start()
        results = _explain_frames(engine, _queued(decoded, timeout, name, stats), spec, batch, layer, class_idx,
                                  float(smoothing), seed, True, options, prepared=True)
        for r in results:
            for k, v in r.seconds.items():
                seconds[k] += v
            summary.frames_explained += 1
            text = f"{r.label} {r.score:.1%}"
            if output is not None and encoder is None:
                h, w = r.frame.shape[:2]
                w *= 2 if panel else 1
                writer, summary.codec, out_path, note = open_writer(output, summary.output_fps, (w, h), codec)
                summary.output, summary.output_size = str(out_path), (w, h)
                if note:
                    summary.notes.append(note)
                encoder = threading.Thread(target=_encode, args=(writer, rendered, stats, (colormap, alpha, panel)),
                                           daemon=True, name="camrt-encode")
                encoder.start()
            if show:
                t = time.perf_counter()
                image = render(r.frame, r.saliency, text, colormap, alpha, panel)
                seconds["overlay"] += time.perf_counter() - t
                if encoder is not None:
                    _send(rendered, image, encoder, stats, summary.output)
                cv2.imshow("camrt", image)
                if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
                    break
            elif encoder is not None:  # rendered by the encode thread, so this thread goes back to the model
                _send(rendered, (r.frame, r.saliency, text), encoder, stats, summary.output)
            if progress is not None:
                progress(summary.frames_explained, total, time.perf_counter() - start)
        if stats["first"] is None:
            raise InputError(f"'{name}' has no frames that OpenCV can decode")
    except KeyboardInterrupt:
        summary.interrupted = True
        raise VideoInterrupted(summary) from None
    finally:
        stop.set()
        if encoder is not None:
            rendered.put(_END)  # the encoder drains the queue, so this cannot block for long
            encoder.join()
        if writer is not None:
            writer.release()
        decoder.join(timeout=1.0)
        if cap is not None and not decoder.is_alive():  # a capture stuck in read() is left to its daemon thread
            cap.release()
        cv2.setNumThreads(threads)
        if show:
            with contextlib.suppress(cv2.error):
                cv2.destroyWindow("camrt")
        summary.frames_read, summary.frames_written = stats["read"], stats["written"]
        if stats["first"] is not None:
            summary.input_size = stats["first"]
            if summary.output_size is None:
                summary.output_size = (size or stats["first"])[0] * (2 if panel else 1), (size or stats["first"])[1]
        if stats["resized"]:
            summary.notes.append(f"{stats['resized']} frames differed in size from the first "
                                 f"({stats['first'][0]}×{stats['first'][1]}) and were resized to it")
        seconds["overlay"] += stats["overlay"]
        seconds["preprocess"] += stats["preprocess"]  # in the decode thread; the stacking of batches here
        summary.seconds = {"decode": stats["decode"], **seconds, "encode": stats["encode"],
                           "total": time.perf_counter() - start}
    return summary
