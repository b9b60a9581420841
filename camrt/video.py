"""The pipeline behind `camrt video`: `explain_video`, its `VideoSummary` and `VideoInterrupted`.

Three stages run at once, joined by bounded queues, so memory stays flat on endless streams: a
decode thread (read, resize to the output size, preprocess for the model), the calling thread
(one graph run per batch of frames, the map; with `show` also the overlay and the window, which
belong to it), and an encode thread (overlay, write). OpenCV and ONNX Runtime release the GIL, so
the stages overlap. Each stage counts its work in its own record (`DecodeStats`, `ExplainStats`,
`EncodeStats`), written by that stage's thread only.

This module does not import cv2: its OpenCV calls are in `camrt.visual` (`videoio`: sources,
writers, the window; `overlay.render`; `frames`: the model inputs and the maps). It is longer
than the ~350 lines the project aims for because the three stages, their stats records and the
summary they fill are one mechanism, read together; what each stage does to a frame is elsewhere.

Nothing is reported as written that does not play: the output is written under a temporary name
and read back when it is closed (`camrt.visual.videoio.VideoOutput`), and `VideoWriteError` is
raised when fewer frames decode from it than were written.
"""

from __future__ import annotations

import itertools
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from camrt import checks
from camrt.engine import Engine
from camrt.errors import CamrtError, InputError
from camrt.visual.frames import FramePlan, FrameResult, check_frame, plan_frames, resize_frame
from camrt.visual.overlay import render
from camrt.visual.videoio import (
    FrameSource,
    VideoOutput,
    Written,
    check_window,
    close_window,
    open_source,
    open_writer,
    show_frame,
    single_threaded,
)

_END = object()  # end of a queue's stream
Progress = Callable[[int, int | None, float], None]


@dataclass
class VideoSummary:
    """What `explain_video` did.

    frames_read: frames decoded from the source (with `every > 1`, skipped ones included);
    frames_explained: frames through the model; frames_sent: frames given to the writer;
    frames_written: frames that play back from the output file, counted by reading it back
    (fewer than frames_sent when the write failed: `VideoWriteError`; 0: no file was left).
    input_size, output_size: (w, h) of the first input frame and of the written frames, read back
    from the file (twice as wide with `panel`, odd sides padded to even; None when no file was
    left); input_fps, output_fps: frame rates (output: input / `every`).
    codec: the codec written (None without an output); output: the file written, which differs
    from the path asked for when a fallback codec needed another container; notes: what was
    changed on the way and why (codec fallback, padding, resized frames, unknown frame rate).
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
    frames_sent: int = 0
    input_size: tuple[int, int] | None = None
    output_size: tuple[int, int] | None = None
    input_fps: float | None = None
    output_fps: float | None = None
    notes: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    interrupted: bool = False

    def fps(self) -> dict[str, float]:
        """Frames per second of each stage (frames it handled / its seconds) and end to end ("total")."""
        counts = {"decode": self.frames_read, "encode": self.frames_sent}
        return {k: counts.get(k, self.frames_explained) / s for k, s in self.seconds.items() if s > 0}


class VideoInterrupted(KeyboardInterrupt):
    """Ctrl-C during `explain_video`; the output file was closed first. `summary` says what was done."""

    def __init__(self, summary: VideoSummary) -> None:
        super().__init__("interrupted")
        self.summary = summary


class VideoWriteError(CamrtError):
    """The output holds fewer playable frames than were written to it: a full disk, a file-size
    limit (OpenCV's writer reports neither, so `explain_video` reads the file back). The message
    names the cause where it can be known; `summary.frames_written` counts the frames that play,
    and with none the file was removed."""

    def __init__(self, message: str, summary: VideoSummary) -> None:
        super().__init__(message)
        self.summary = summary


@dataclass
class DecodeStats:
    """The decode thread's work: frames read from the source (skipped ones included), seconds
    reading and resizing them, the first frame's size (w, h), frames resized to it because their
    size differed, and seconds preprocessing frames for the model."""

    frames: int = 0
    seconds: float = 0.0
    first_size: tuple[int, int] | None = None
    resized: int = 0
    preprocess_seconds: float = 0.0


@dataclass
class ExplainStats:
    """The calling thread's work: frames explained and their seconds per step (`FrameResult.seconds`),
    and seconds drawing overlays for the window."""

    frames: int = 0
    preprocess_seconds: float = 0.0
    inference_seconds: float = 0.0
    method_seconds: float = 0.0
    overlay_seconds: float = 0.0

    def add(self, r: FrameResult) -> None:
        self.frames += 1
        self.preprocess_seconds += r.seconds["preprocess"]
        self.inference_seconds += r.seconds["inference"]
        self.method_seconds += r.seconds["method"]


@dataclass
class EncodeStats:
    """The encode thread's work: frames given to the writer, seconds drawing overlays and encoding,
    and the error that stopped it (the calling thread raises it)."""

    written: int = 0
    overlay_seconds: float = 0.0
    encode_seconds: float = 0.0
    error: BaseException | None = None


@dataclass(frozen=True)
class _Settings:
    """The checked arguments of `explain_video` besides the source and the output."""

    plan: FramePlan
    every: int
    size: tuple[int, int] | None
    panel: bool
    show: bool
    codec: str | None
    colormap: str
    alpha: float
    fps: float | None
    timeout: float


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
    progress: Progress | None = None,
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
            iterable of BGR frames as `explain_frames` takes them (frame rate `fps`, default 25).
        output: the video file to write (None: write nothing). Codec: `codec` or the suffix's
            default, with a fallback when unavailable (see `camrt.visual.videoio.open_writer`).
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
        VideoWriteError: fewer frames play back from the output than were written (a full disk, a
            file-size limit); the file holds those that do, or was removed when none does.
        VideoInterrupted (a KeyboardInterrupt): Ctrl-C; the output is closed first and is playable.
    """
    settings = _check_arguments(engine, method, every, size, panel, show, smoothing, batch, layer, class_idx,
                                codec, colormap, alpha, fps, timeout, seed, options)  # before a source opens
    pipeline = _Pipeline(open_source(source, settings.timeout), output, settings)
    try:
        with single_threaded(), pipeline:
            pipeline.run(progress)
    except KeyboardInterrupt:
        pipeline.summary.interrupted = True
        raise VideoInterrupted(pipeline.summary) from None
    except CamrtError as e:  # a stalled source, say, and the frames before it failed to write too
        if pipeline.write_error is None:
            raise
        raise VideoWriteError(f"{e}; but {pipeline.write_error}", pipeline.summary) from e
    finally:
        pipeline.summarise()
    if pipeline.write_error is not None:
        raise VideoWriteError(pipeline.write_error, pipeline.summary)
    return pipeline.summary


def _check_arguments(engine: Engine, method: str, every: int, size: tuple[int, int] | None, panel: bool,
                     show: bool, smoothing: float, batch: int, layer: str | Sequence[str] | None,
                     class_idx: int | None, codec: str | None, colormap: str, alpha: float, fps: float | None,
                     timeout: float, seed: int, options: Mapping[str, object]) -> _Settings:
    """`explain_video`'s arguments checked (InputError for a bad one), the window probed with `show`."""
    every = checks.positive_int(every, "every")
    if size is not None:
        try:
            width, height = size
        except (TypeError, ValueError):
            raise InputError(f"size must be (width, height) in pixels, got {size!r}") from None
        size = (checks.positive_int(width, "size width"), checks.positive_int(height, "size height"))
    colormap = checks.colormap(colormap)
    alpha = checks.alpha(alpha)
    timeout = checks.number(timeout, "timeout", positive=True, note=" (seconds)")
    fps = None if fps is None else checks.number(fps, "fps", positive=True)
    plan = plan_frames(engine, method, batch, layer, class_idx, smoothing, seed, options)
    if show:
        check_window()
    return _Settings(plan, every, size, panel, show, codec, colormap, alpha, fps, timeout)


class _Pipeline:
    """One run of `explain_video`: the threads, their queues and stats, the writer and the summary.
    Used as a context manager: leaving it stops the threads and closes the output and the source."""

    def __init__(self, source: FrameSource, output: str | os.PathLike | None, settings: _Settings) -> None:
        self.source, self.output, self.settings = source, output, settings
        self.summary = VideoSummary(source.name)
        rate = settings.fps if settings.fps is not None else source.fps
        if settings.fps is None and not 0 < rate < 1000:
            rate = 25.0
            self.summary.notes.append(f"the source does not report its frame rate; {rate:g} fps assumed")
        self.summary.input_fps, self.summary.output_fps = rate, rate / settings.every
        self.total = -(-source.count // settings.every) if source.count else None
        self.decoding, self.explaining, self.encoding = DecodeStats(), ExplainStats(), EncodeStats()
        self.stop = threading.Event()
        self.decoded: queue.Queue = queue.Queue(maxsize=2 * settings.plan.batch)
        self.rendered: queue.Queue = queue.Queue(maxsize=2 * settings.plan.batch)
        self.decoder = threading.Thread(target=_decode, args=(source, settings, self.decoded, self.stop,
                                                              self.decoding), daemon=True, name="camrt-decode")
        self.encoder: threading.Thread | None = None
        self.writer: VideoOutput | None = None
        self.written: Written | None = None  # what closing the writer found in the file
        self.start = time.perf_counter()

    def run(self, progress: Progress | None) -> None:
        """Explain the frames as the decode thread delivers them and hand them on for writing."""
        self.start = time.perf_counter()
        self.decoder.start()
        frames = _queued(self.decoded, self.settings.timeout, self.summary.source, self.decoding)
        for r in self.settings.plan.explain_prepared(frames):
            self.explaining.add(r)
            self.summary.frames_explained = self.explaining.frames
            if not self._deliver(r):
                break
            if progress is not None:
                progress(self.explaining.frames, self.total, time.perf_counter() - self.start)
        if self.decoding.first_size is None:
            raise InputError(f"'{self.summary.source}' has no frames that OpenCV can decode")

    def _deliver(self, r: FrameResult) -> bool:
        """`r` to the output (rendered by the encode thread) and the window; False to stop (q or Esc)."""
        s = self.settings
        text = f"{r.label} {r.score:.1%}"
        if self.output is not None and self.encoder is None:
            self._open_output(r.frame)
        if not s.show:
            if self.encoder is not None:  # rendered there, so that this thread goes back to the model
                self._send((r.frame, r.saliency, text))
            return True
        t = time.perf_counter()
        image = render(r.frame, r.saliency, text, s.colormap, s.alpha, s.panel)
        self.explaining.overlay_seconds += time.perf_counter() - t
        if self.encoder is not None:
            self._send(image)
        return not show_frame(image)

    def _open_output(self, frame: np.ndarray) -> None:
        """The writer, for frames like `frame` (twice as wide with a panel), and the encode thread."""
        s = self.settings
        h, w = frame.shape[0], frame.shape[1] * (2 if s.panel else 1)
        self.writer = open_writer(self.output, self.summary.output_fps, (w, h), s.codec)
        self.summary.codec, self.summary.output = self.writer.codec, str(self.writer.path)
        self.summary.notes.extend(self.writer.notes)
        self.encoder = threading.Thread(target=_encode, args=(self.writer, self.rendered, self.encoding,
                                                              (s.colormap, s.alpha, s.panel)),
                                        daemon=True, name="camrt-encode")
        self.encoder.start()

    def _send(self, item: object) -> None:
        """Put `item` for the encode thread; an InputError if it failed (instead of waiting forever)."""
        if not _put(self.rendered, item, lambda: self.encoding.error is not None or not self.encoder.is_alive()):
            raise InputError(f"writing '{self.summary.output}' failed: {self.encoding.error}")

    def __enter__(self) -> _Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        interrupted = False
        try:
            if self.encoder is not None:
                self.rendered.put(_END)  # the encoder drains the queue, so this cannot block for long
                while self.encoder.is_alive():  # Ctrl-C waits for it too: the writer is closed after it
                    try:
                        self.encoder.join()
                    except KeyboardInterrupt:
                        interrupted = True
            if self.writer is not None:
                self.written = self.writer.close()  # reads the file back
            if interrupted:
                raise KeyboardInterrupt
        finally:
            if self.decoder.ident is not None:
                self.decoder.join(timeout=1.0)
            if not self.decoder.is_alive():  # a capture stuck in read() is left to its daemon thread
                self.source.release()
            if self.settings.show:
                close_window()

    @property
    def write_error(self) -> str | None:
        """Why fewer frames play back from the output than were written (None when all do)."""
        return self.written.error if self.written is not None else None

    def summarise(self) -> None:
        """The stages' counts and seconds into the summary."""
        s, d, x, e = self.summary, self.decoding, self.explaining, self.encoding
        s.frames_read, s.frames_explained, s.frames_sent = d.frames, x.frames, e.written
        s.frames_written = e.written
        if d.first_size is not None:
            s.input_size = d.first_size
            if self.writer is None:  # the frames shown
                w, h = self.settings.size or d.first_size
                s.output_size = (w * (2 if self.settings.panel else 1), h)
        if self.written is not None:
            s.frames_written, s.output_size = self.written.frames, self.written.size
            if self.written.size not in (None, self.writer.size):
                s.notes.append(f"the codec wrote {self.written.size[0]}×{self.written.size[1]} frames, not the "
                               f"{self.writer.size[0]}×{self.writer.size[1]} given to it")
            if s.interrupted and self.written.error:
                s.notes.append(self.written.error)
        elif self.writer is not None:  # closing it was interrupted, or failed
            s.output_size = self.writer.size
            s.notes.append(f"the output was not read back, so its {e.written} frames are not known to play")
        if d.resized:
            s.notes.append(f"{d.resized} frames differed in size from the first "
                           f"({d.first_size[0]}×{d.first_size[1]}) and were resized to it")
        s.seconds = {"decode": d.seconds,
                     "preprocess": d.preprocess_seconds + x.preprocess_seconds,  # here: stacking batches
                     "inference": x.inference_seconds, "method": x.method_seconds,
                     "overlay": x.overlay_seconds + e.overlay_seconds, "encode": e.encode_seconds,
                     "total": time.perf_counter() - self.start}


def _put(q: queue.Queue, item: object, stopped: Callable[[], bool]) -> bool:
    """Put `item`, waiting while the queue is full until `stopped()`; False when stopped."""
    while not stopped():
        try:
            q.put(item, timeout=0.05)
            return True
        except queue.Full:
            continue
    return False


def _decode(source: FrameSource, settings: _Settings, q: queue.Queue, stop: threading.Event,
            stats: DecodeStats) -> None:
    """The decode thread: every `every`-th frame of `source` (resized to `size`, else to the first
    frame's size) and its model input into `q`, then `_END`; an exception is passed on through `q`."""
    try:
        for i in itertools.count():
            t = time.perf_counter()
            ok, frame = source.read(keep=i % settings.every == 0)
            stats.seconds += time.perf_counter() - t
            if not ok:
                break
            stats.frames += 1
            if frame is None:
                continue
            frame = check_frame(frame, stats.frames - 1)
            t = time.perf_counter()
            if stats.first_size is None:
                stats.first_size = (frame.shape[1], frame.shape[0])
            elif (frame.shape[1], frame.shape[0]) != stats.first_size:
                stats.resized += 1
            frame = resize_frame(frame, settings.size or stats.first_size)
            t1 = time.perf_counter()
            row = settings.plan.model_input([frame])[0]
            stats.seconds += t1 - t
            stats.preprocess_seconds += time.perf_counter() - t1
            if not _put(q, (frame, row), stop.is_set):
                return
    except BaseException as e:  # noqa: BLE001 - handed to the calling thread, which raises it
        _put(q, e, stop.is_set)
        return
    _put(q, _END, stop.is_set)


def _encode(writer: object, q: queue.Queue, stats: EncodeStats, style: tuple[str, float, bool]) -> None:
    """The encode thread: items from `q` into `writer` until `_END`. An item is a rendered frame,
    or (frame, saliency, text) to `render` here with `style` (colormap, alpha, panel) first."""
    while (item := q.get()) is not _END:
        if stats.error is not None:
            continue  # keep draining so that the producer never blocks
        try:
            if isinstance(item, tuple):
                t = time.perf_counter()
                item = render(*item, *style)
                stats.overlay_seconds += time.perf_counter() - t
            t = time.perf_counter()
            writer.write(item)
            stats.encode_seconds += time.perf_counter() - t
        except BaseException as e:  # noqa: BLE001 - reported by the calling thread
            stats.error = e
            continue
        stats.written += 1


def _queued(q: queue.Queue, timeout: float, source: str, stats: DecodeStats) -> Iterator[tuple[np.ndarray,
                                                                                                np.ndarray]]:
    """The decoded frames, from the decode thread's queue; InputError when none comes for `timeout` s."""
    while True:
        try:
            item = q.get(timeout=timeout)
        except queue.Empty:
            if stats.first_size is None:
                raise InputError(f"no frame from '{source}' within {timeout:g} s: the source did not start") from None
            raise InputError(f"no frame from '{source}' for {timeout:g} s after {stats.frames} frames: the source "
                             "stalled (the frames explained so far were written)") from None
        if item is _END:
            return
        if isinstance(item, BaseException):
            raise item
        yield item
