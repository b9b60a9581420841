"""Video in and out with OpenCV, for the `camrt video` pipeline (`camrt.video`): sources (a file,
a camera, a stream, or any iterable of frames) read one frame at a time, writers with a codec
fallback, the preview window, and OpenCV's own thread count."""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from camrt.errors import InputError
from camrt.visual.overlay import IMAGE_SUFFIXES

logger = logging.getLogger("camrt")

# Container suffix → the codec written by default; `FALLBACK_CODECS` are tried in turn when the
# asked-for codec cannot be opened by this OpenCV build (with the suffix they need).
DEFAULT_CODECS = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "XVID"}
FALLBACK_CODECS = ("mp4v", "MJPG", "XVID")
# The containers each fallback codec can be written in; the first is used when the asked-for one is not among them.
_CONTAINERS = {"mp4v": (".mp4", ".m4v", ".mov", ".avi", ".mkv"), "MJPG": (".avi", ".mkv"), "XVID": (".avi", ".mkv")}
_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
_WINDOW = "camrt"
_END = object()  # the end of an iterable source


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


@contextlib.contextmanager
def single_threaded() -> Iterator[None]:
    """OpenCV's worker threads off while the block runs (its resize, colour map and encoder then
    stay on the thread that calls them), put back after: in the pipeline they only contend with
    ONNX Runtime's threads for the cores (docs/benchmarks.md)."""
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        cv2.setNumThreads(threads)


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


@dataclass
class FrameSource:
    """Frames read one at a time from a capture or an iterable (`open_source`).

    name: the source as given ("frames" for an iterable); kind: "camera", "stream", "file" or
    "frames"; fps: the frame rate the source reports (0.0 when it reports none); count: the frames
    in a file (0 when unknown: cameras, streams, iterables).
    """

    name: str
    kind: str
    fps: float = 0.0
    count: int = 0
    capture: cv2.VideoCapture | None = None
    frames: Iterator[np.ndarray] | None = None

    def read(self, keep: bool = True) -> tuple[bool, np.ndarray | None]:
        """(False, None) at the end; else (True, the next frame), or with `keep` False (True, None):
        a frame skipped, which a capture only grabs (it is not converted)."""
        if self.capture is not None:
            return self.capture.read() if keep else (self.capture.grab(), None)
        frame = next(self.frames, _END) if self.frames is not None else _END
        if frame is _END:
            return False, None
        return True, frame if keep else None

    def release(self) -> None:
        if self.capture is not None:
            self.capture.release()


def open_source(source: str | int | os.PathLike | Iterable[np.ndarray], timeout: float = 10.0) -> FrameSource:
    """A `FrameSource` for a camera index, a URL or a video file (`open_capture`), or an iterable of frames."""
    if not isinstance(source, (str, int, os.PathLike)):
        return FrameSource("frames", "frames", frames=iter(source))
    cap, kind = open_capture(source, timeout)
    count = cap.get(cv2.CAP_PROP_FRAME_COUNT) if kind == "file" else 0.0
    return FrameSource(str(source), kind, cap.get(cv2.CAP_PROP_FPS) or 0.0, int(count) if 0 < count < 1e9 else 0,
                       capture=cap)


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


def check_window() -> None:
    """InputError unless this OpenCV build can show a window (probed by opening and closing one)."""
    try:
        cv2.namedWindow(_WINDOW, cv2.WINDOW_NORMAL)
        cv2.destroyWindow(_WINDOW)
    except cv2.error:
        raise InputError("showing a window needs OpenCV with GUI support (pip install opencv-python; "
                         "this build is headless)") from None


def show_frame(image: np.ndarray) -> bool:
    """Show `image` in the preview window; True when q or Esc was pressed (stop)."""
    cv2.imshow(_WINDOW, image)
    return cv2.waitKey(1) & 0xFF in (ord("q"), 27)


def close_window() -> None:
    with contextlib.suppress(cv2.error):
        cv2.destroyWindow(_WINDOW)
