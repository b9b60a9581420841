"""camrt.atomic: a file is written completely or not at all, with the user's umask.

Real failures come from a file-size limit (RLIMIT_FSIZE) in a child process, where the kernel
refuses writes past the limit with EFBIG exactly as a full disk refuses them with ENOSPC.
"""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from camrt import atomic
from camrt.atomic import atomic_write, write_bytes, write_text

ROOT = Path(__file__).resolve().parents[1]
posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX resource limits and umask")


def limited(code: str, limit: int, cwd: Path) -> subprocess.CompletedProcess:
    """Run `code` in a child Python whose files may not grow past `limit` bytes (SIGXFSZ ignored,
    so an oversized write fails with EFBIG instead of killing the process)."""
    prelude = textwrap.dedent(f"""
        import resource, signal, sys
        sys.path.insert(0, {str(ROOT)!r})
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
    """)
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], capture_output=True, text=True,
                          cwd=cwd, timeout=60, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})


@posix_only
def test_write_past_a_size_limit_leaves_nothing(tmp_path) -> None:
    proc = limited("""
        from camrt.atomic import write_bytes
        try:
            write_bytes("big.bin", b"x" * 100_000)
        except OSError as e:
            print(e.errno, e.strerror)
    """, limit=10_000, cwd=tmp_path)
    assert proc.stdout.split(maxsplit=1) == [str(errno.EFBIG), "File too large\n"], proc.stderr
    assert list(tmp_path.iterdir()) == []


@posix_only
def test_failed_write_keeps_the_previous_file(tmp_path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"previous")
    proc = limited("""
        from camrt.atomic import atomic_write
        try:
            with atomic_write("model.onnx") as f:
                f.write(b"y" * 50_000)
        except OSError as e:
            print(e.errno)
    """, limit=10_000, cwd=tmp_path)
    assert proc.stdout.strip() == str(errno.EFBIG), proc.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]
    assert (tmp_path / "model.onnx").read_bytes() == b"previous"


def test_exception_in_the_block_leaves_nothing(tmp_path) -> None:
    with pytest.raises(RuntimeError, match="stop"), atomic_write(tmp_path / "a.bin") as f:
        f.write(b"half")
        assert len(list(tmp_path.iterdir())) == 1  # only the temporary file exists meanwhile
        raise RuntimeError("stop")
    assert list(tmp_path.iterdir()) == []


def test_failed_sync_leaves_nothing_and_keeps_the_target(tmp_path, monkeypatch) -> None:
    (tmp_path / "a.bin").write_bytes(b"old")

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", full)
    with pytest.raises(OSError, match="No space left on device"):
        write_bytes(tmp_path / "a.bin", b"new content")
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"] and (tmp_path / "a.bin").read_bytes() == b"old"


def test_rename_failure_leaves_no_temporary_file(tmp_path) -> None:
    (tmp_path / "d").mkdir()
    with pytest.raises(OSError):
        write_bytes(tmp_path / "d", b"data")  # a directory cannot be replaced by a file
    assert [p.name for p in tmp_path.iterdir()] == ["d"] and list((tmp_path / "d").iterdir()) == []


def test_success_replaces_the_target(tmp_path) -> None:
    (tmp_path / "a.bin").write_bytes(b"old, longer content")
    write_bytes(tmp_path / "a.bin", b"new")
    assert (tmp_path / "a.bin").read_bytes() == b"new"
    write_text(tmp_path / "t.txt", "ü\r\nline\n")
    assert (tmp_path / "t.txt").read_bytes() == "ü\r\nline\n".encode()  # newlines as given
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "t.txt"]


@posix_only
@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_new_file_has_the_umask_permissions(tmp_path, umask) -> None:
    old = os.umask(umask)
    try:
        write_bytes(tmp_path / "m.onnx", b"data")
        (tmp_path / "ref").write_bytes(b"data")  # what any other tool would create
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "m.onnx").stat().st_mode)
    assert mode == 0o666 & ~umask == stat.S_IMODE((tmp_path / "ref").stat().st_mode)


def test_only_write_modes() -> None:
    with pytest.raises(ValueError, match="mode must be one of wb, w"), atomic_write("x", "ab"):
        pass


# --- create_temp and publish: for writers that open the file by name (OpenCV's VideoWriter) ---


def test_create_temp_is_a_new_hidden_file_beside_the_target_with_its_suffix(tmp_path) -> None:
    a = atomic.create_temp(tmp_path / "clip.mp4", ".mp4")
    b = atomic.create_temp(tmp_path / "clip.mp4", ".mp4")
    assert a != b and a.parent == b.parent == tmp_path
    for p in (a, b):
        assert p.name.startswith(".clip.mp4.") and p.name.endswith(".partial.mp4") and p.suffix == ".mp4"
        assert p.read_bytes() == b""
    assert atomic.create_temp(tmp_path / "m.onnx").name.endswith(".partial")
    with pytest.raises(FileNotFoundError):
        atomic.create_temp(tmp_path / "missing" / "clip.mp4", ".mp4")


@posix_only
@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_create_temp_has_the_umask_permissions_and_publish_keeps_them(tmp_path, umask) -> None:
    old = os.umask(umask)
    try:
        tmp = atomic.create_temp(tmp_path / "v.avi", ".avi")
        with open(tmp, "wb") as f:  # a writer opening it by name truncates it; the mode stays
            f.write(b"frames")
        atomic.publish(tmp, tmp_path / "v.avi")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "v.avi").stat().st_mode) == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["v.avi"] and (tmp_path / "v.avi").read_bytes() == b"frames"


def test_publish_replaces_the_target(tmp_path) -> None:
    (tmp_path / "v.mp4").write_bytes(b"old")
    tmp = atomic.create_temp(tmp_path / "v.mp4", ".mp4")
    tmp.write_bytes(b"new")
    atomic.publish(tmp, tmp_path / "v.mp4")
    assert [p.name for p in tmp_path.iterdir()] == ["v.mp4"] and (tmp_path / "v.mp4").read_bytes() == b"new"


def test_failed_publish_removes_the_temporary_file_and_keeps_the_target(tmp_path, monkeypatch) -> None:
    (tmp_path / "v.mp4").write_bytes(b"old")
    tmp = atomic.create_temp(tmp_path / "v.mp4", ".mp4")
    tmp.write_bytes(b"new")

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", full)
    with pytest.raises(OSError, match="No space left on device"):
        atomic.publish(tmp, tmp_path / "v.mp4")
    assert [p.name for p in tmp_path.iterdir()] == ["v.mp4"] and (tmp_path / "v.mp4").read_bytes() == b"old"
