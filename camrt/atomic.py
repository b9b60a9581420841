"""Write a file completely or not at all.

A write that fails part-way (disk full, a file-size limit, a quota, an I/O error) must not leave a
truncated file that looks like a result, nor destroy the file that was there before. So the data
goes to a temporary file beside the target (same directory, hence same file system), is flushed
and fsync'ed, its size is checked against what was written, and only then is it renamed over the
target (`os.replace`, atomic on POSIX and Windows). On any failure the temporary file is removed
and the target is left as it was.

The temporary file is created with mode 0o666 like `open(path, "w")` would, so the kernel applies
the user's umask (and any default ACL) exactly as for a file written by any other tool;
`tempfile.mkstemp` would give 0o600.

Writers that open the file by name themselves (OpenCV's VideoWriter, which also picks the
container from the suffix) use the same two halves: `create_temp` makes the temporary file, with
the suffix they need, and `publish` moves it onto the target once the caller has checked it.

Pure Python, standard library only: any camrt module may use it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO

__all__ = ["atomic_write", "create_temp", "publish", "write_bytes", "write_text"]

_MODES = ("wb", "w")


def _open_temp(target: Path, suffix: str = "") -> tuple[int, Path]:
    """Create a new, empty temporary file beside `target`, named `.NAME.XXXXXXXX.partial` +
    `suffix`: (descriptor, path)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.partial{suffix}")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no unused temporary file name", str(target.parent))


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable where the platform allows it (not on Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", encoding: str = "utf-8") -> Iterator[IO]:
    """Open a temporary file beside `path` for writing; on a clean exit of the block, flush,
    fsync, check its size and rename it to `path`. If the block or any of these steps raises,
    the temporary file is removed, `path` is left as it was, and the exception propagates
    (`OSError` with the real cause, for example ENOSPC or EFBIG).

    Args:
        path: the file to write (its directory must exist).
        mode: "wb" (bytes) or "w" (text, in `encoding`, newlines written as given).
        encoding: the text encoding for mode "w".

    Yields:
        The open temporary file.

    Raises:
        ValueError: a mode other than "wb" or "w".
        OSError: creating, writing, syncing or renaming failed.
    """
    if mode not in _MODES:
        raise ValueError(f"atomic_write mode must be one of {', '.join(_MODES)}, got {mode!r}")
    target = Path(path)
    fd, tmp = _open_temp(target)
    try:
        if mode == "wb":
            f = os.fdopen(fd, "wb")
        else:
            f = os.fdopen(fd, "w", encoding=encoding, newline="")
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    try:
        with f:
            yield f
            f.flush()
            written = (f if mode == "wb" else f.buffer).tell()
            os.fsync(f.fileno())
            size = os.fstat(f.fileno()).st_size
            if size != written:  # a short write that no call reported
                raise OSError(errno.EIO, f"short write: {size} of {written} bytes reached the disk", str(target))
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_directory(target.parent)


def create_temp(path: str | os.PathLike, suffix: str = "") -> Path:
    """Create a new, empty file beside `path` for a writer that opens files by name, and return
    its path: `.NAME.XXXXXXXX.partial` + `suffix` (give the target's suffix where the writer picks
    the format from it). Created with mode 0o666, so it gets the user's umask as any new file
    does; a writer that truncates it keeps that mode. Hand it to `publish` when it is complete,
    or remove it.

    Raises:
        OSError: the file could not be created (the directory is missing or not writable).
    """
    fd, tmp = _open_temp(Path(path), suffix)
    os.close(fd)
    return tmp


def publish(temp: str | os.PathLike, path: str | os.PathLike) -> None:
    """Move the complete file `temp` (from `create_temp`) onto `path`: fsync it, so that an error
    the file system deferred (a full disk, a quota) is raised here, rename it (`os.replace`,
    atomic) and make the rename durable. On failure `temp` is removed, `path` is left as it was,
    and the OSError propagates.
    """
    temp, target = Path(temp), Path(path)
    try:
        fd = os.open(temp, os.O_RDWR | getattr(os, "O_BINARY", 0))  # Windows syncs writable files only
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    _fsync_directory(target.parent)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` completely or not at all (see `atomic_write`)."""
    with atomic_write(path, "wb") as f:
        f.write(data)


def write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    """Write `text` to `path` completely or not at all (see `atomic_write`)."""
    with atomic_write(path, "w", encoding=encoding) as f:
        f.write(text)
