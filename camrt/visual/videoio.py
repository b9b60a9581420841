"""Video in and out with OpenCV, for the `camrt video` pipeline (`camrt.video`): sources (a file,
a camera, a stream, or any iterable of frames) read one frame at a time, outputs (`VideoOutput`:
a codec fallback, even frame sizes, a temporary file checked before it takes the output's name),
the preview window, and OpenCV's own thread count."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from camrt.atomic import create_temp, publish
from camrt.errors import InputError
from camrt.visual.overlay import IMAGE_SUFFIXES

try:
    import resource
except ImportError:  # Windows: no file-size limit to find
    resource = None

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
# A file this close to the file-size limit, or a disk with this little room, is taken to be why a
# write failed: the writer gives up on the first refused write, up to a buffer short of the limit.
_NEAR_FULL = 1 << 20


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


@dataclass
class Written:
    """What `VideoOutput.close` found in the file its writer produced.

    path: the file (None when no frame of it could be played back: it was removed, and a file
    that was already at the output path was left as it was); frames: the frames that decode from
    it; sent: the frames given to the writer; size: (w, h) of the frames in the file, read back
    (None without a file); error: why fewer frames than were sent can be played back, as one
    sentence naming the file (None when all can).
    """

    path: Path | None
    frames: int
    sent: int
    size: tuple[int, int] | None = None
    error: str | None = None


@dataclass
class VideoOutput:
    """A video being written (`open_writer`): the frames go to a temporary file beside `path` with
    the same suffix (`camrt.atomic.create_temp`, so the same container, and the user's umask), and
    `close` reads it back before it takes `path`'s name.

    path: the output file; codec: the codec written; size: (w, h) of the frames written: the size
    asked for, padded to even sides (`write` pads each frame); notes: what was changed on the way
    and why (codec fallback, padding); sent: the frames written so far.
    """

    writer: cv2.VideoWriter
    path: Path
    temp: Path
    codec: str
    size: tuple[int, int]
    notes: list[str] = field(default_factory=list)
    sent: int = 0

    def write(self, frame: np.ndarray) -> None:
        """Write one H×W×3 frame of the size asked for (padded here to `size`)."""
        dw, dh = self.size[0] - frame.shape[1], self.size[1] - frame.shape[0]
        if dw or dh:
            frame = cv2.copyMakeBorder(frame, 0, dh, 0, dw, cv2.BORDER_REPLICATE)
        self.writer.write(frame)
        self.sent += 1

    def close(self) -> Written:
        """Release the writer and check what it produced: OpenCV's writer reports no error (a full
        disk included; the file then lacks its index or its last frames), so the frames that
        decode from the file are counted (`count_frames`). The file takes `path`'s name when any
        frame plays (`camrt.atomic.publish`), with an error when fewer than were sent do; when
        none does it is removed. Ctrl-C while counting leaves the file at `path`, unchecked."""
        self.writer.release()
        try:
            frames, size = count_frames(self.temp)
        except BaseException:
            with contextlib.suppress(OSError):
                publish(self.temp, self.path)
            raise
        error = None
        if frames < self.sent:
            cause = _write_failure(self.temp, frames, self.sent)
            error = (f"writing '{self.path}' failed: {cause}; " + (
                f"none of the {self.sent} frames sent could be played back, so nothing was saved" if not frames else
                f"only {frames} of the {self.sent} frames sent can be played back, and the file holds those"))
        if not frames:
            self.temp.unlink(missing_ok=True)
            return Written(None, 0, self.sent, None, error)
        try:
            publish(self.temp, self.path)
        except OSError as e:
            return Written(None, 0, self.sent, None, f"writing '{self.path}' failed: {e.strerror or e}; "
                                                     "nothing was saved")
        return Written(self.path, frames, self.sent, size, error)


def count_frames(path: str | os.PathLike) -> tuple[int, tuple[int, int] | None]:
    """The frames that decode from the video file `path` and their size (w, h); (0, None) for a
    missing or empty file or one that OpenCV cannot open. Each frame is grabbed, which decodes it
    without converting it to BGR: the file is read once more, at a fraction of the encoding time."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return 0, None
    with _quiet_opencv():
        cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            return 0, None
        frames = 0
        while cap.grab():
            frames += 1
        size = (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
        return frames, size if frames else None
    finally:
        cap.release()


def _write_failure(path: Path, frames: int, sent: int) -> str:
    """Why the video file `path` holds only `frames` playable frames of the `sent` ones, where it
    can be known: the process's file-size limit reached, or a full disk."""
    size = path.stat().st_size if path.is_file() else 0
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0] if resource is not None else None
    if limit is not None and limit != resource.RLIM_INFINITY and size + _NEAR_FULL >= limit:
        return f"the file reached this process's file-size limit of {limit} bytes (ulimit -f)"
    free = shutil.disk_usage(path.parent).free
    if free < _NEAR_FULL:
        return f"the disk is full ({free} bytes free in '{path.parent}')"
    return (f"OpenCV's writer produced {frames} of {sent} frames without reporting an error (the disk may have "
            "been full for a while)")


def even_size(size: tuple[int, int]) -> tuple[int, int]:
    """`size` (w, h) with odd sides rounded up: the codecs OpenCV writes (mp4v, MJPG, XVID) store
    4:2:0 colour, two pixels per sample, and silently drop the last column or row of an odd side."""
    return size[0] + size[0] % 2, size[1] + size[1] % 2


def open_writer(path: str | os.PathLike, fps: float, size: tuple[int, int],
                codec: str | None = None) -> VideoOutput:
    """A `VideoOutput` for frames of `size` (w, h). The codec is `codec` (a FourCC such as "mp4v",
    "avc1", "MJPG", "XVID") or the default for the suffix (`DEFAULT_CODECS`). When this OpenCV
    build cannot write it, the `FALLBACK_CODECS` are tried (an .avi file next to the one asked for
    where the codec needs it), and a note says what was written instead (also logged as a
    warning). An odd side is padded to even (`even_size`), with a note. Raises InputError when
    nothing can be written."""
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
    written = even_size(size)
    tried = []
    candidates = [(codec, target)] + [
        (c, target if target.suffix.lower() in _CONTAINERS[c] else target.with_suffix(_CONTAINERS[c][0]))
        for c in FALLBACK_CODECS if c != codec]
    for c, p in candidates:
        try:
            temp = create_temp(p, p.suffix)
        except OSError as e:  # os.access is only a hint (root, read-only mounts)
            raise InputError(f"cannot write '{p}': {e.strerror or e}") from None
        writer = _video_writer(temp, c, fps, written)
        if writer.isOpened():
            out = VideoOutput(writer, p, temp, c, written)
            if tried:
                out.notes.append(f"codec {codec} is not available in this OpenCV build; wrote {c} to {p} instead")
                logger.warning("%s", out.notes[-1])
            if written != size:
                out.notes.append(f"{size[0]}×{size[1]} has an odd side, which the codecs OpenCV writes would cut "
                                 f"off; the frames were padded to {written[0]}×{written[1]} by repeating their last "
                                 "column or row")
            return out
        writer.release()
        temp.unlink(missing_ok=True)
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
