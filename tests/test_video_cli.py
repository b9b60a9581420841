"""`camrt video` through click's CliRunner on a tiny model and videos written here with OpenCV:
the written file, the summary, and the exit codes of its error cases (2) and of Ctrl-C (130); a
full disk in a real process, under a file-size limit."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

import camrt
from camrt import video
from camrt.cli import main
from camrt.visual import videoio
from tests.cli_checks import assert_one_line_error
from tests.test_visual_video import COUNT, FPS, LABELS, H, W, moving_square, read_video, write_video
from tests.tiny import TinyNet, make

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("video_cli") / "tiny.cam.onnx"
    camrt.export(make(TinyNet, seed=11), layers=["layer1", "layer2"], path=path, input_shape=(1, 3, 32, 32),
                 labels=LABELS)
    return path


@pytest.fixture
def clip(tmp_path) -> Path:
    return write_video(tmp_path / "clip.avi", moving_square())


def invoke(*args) -> object:
    return CliRunner().invoke(main, [str(a) for a in args])


def test_video_writes_the_explained_clip_and_a_summary(model_path, clip, tmp_path) -> None:
    out = tmp_path / "explained.mp4"
    result = invoke("video", model_path, clip, "-o", out, "--method", "gradcam", "--batch", "3", "--device", "cpu")
    assert result.exit_code == 0, (result.output, result.stderr)
    assert result.stderr == ""
    frames, fps = read_video(out)
    assert len(frames) == COUNT and fps == pytest.approx(FPS) and frames[0].shape == (H, W, 3)
    lines = result.stdout.splitlines()
    assert lines[0] == "tiny.cam.onnx: provider CPUExecutionProvider; gradcam, batch 3"
    assert lines[1] == f"{clip}: 64×48 at 10 fps; {COUNT} frames read, {COUNT} explained"
    assert lines[2] == f"wrote {out} (mp4v): {COUNT} frames, 64×48 at 10 fps"
    assert lines[3].startswith("fps: decode ") and "inference" in lines[3] and "end to end" in lines[3]
    assert "\r" not in result.stdout  # no progress line when stdout is not a terminal


def test_every_size_panel_and_smoothing(model_path, clip, tmp_path) -> None:
    out = tmp_path / "small.avi"
    result = invoke("video", model_path, clip, "-o", out, "--every", "2", "--size", "40x30", "--panel",
                    "--smooth", "0.5", "--layer", "layer1", "--class-idx", "1", "--colormap", "turbo")
    assert result.exit_code == 0, (result.output, result.stderr)
    frames, fps = read_video(out)
    assert len(frames) == COUNT // 2 and fps == pytest.approx(FPS / 2) and frames[0].shape == (30, 80, 3)
    assert f"wrote {out} (MJPG): {COUNT // 2} frames, 80×30 at 5 fps" in result.stdout


def test_an_unavailable_codec_is_replaced_and_reported(model_path, clip, tmp_path, monkeypatch) -> None:
    real = videoio._video_writer
    monkeypatch.setattr(videoio, "_video_writer",
                        lambda path, codec, *a: cv2.VideoWriter() if codec == "avc1" else real(path, codec, *a))
    out = tmp_path / "out.mp4"
    result = invoke("video", model_path, clip, "-o", out, "--codec", "avc1")
    assert result.exit_code == 0, (result.output, result.stderr)
    note = f"codec avc1 is not available in this OpenCV build; wrote mp4v to {out} instead"
    assert f"note: {note}" in result.stdout.splitlines()
    assert len(read_video(out)[0]) == COUNT


def test_method_options_and_seed_reach_the_method(model_path, clip, tmp_path) -> None:
    frames = {}
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        out = tmp_path / f"{name}.avi"
        result = invoke("video", model_path, clip, "-o", out, "-m", "rise", "-O", "n=8", "-O", "cells=3",
                        "--seed", seed)
        assert result.exit_code == 0, (result.output, result.stderr)
        frames[name] = np.stack(read_video(out)[0])
    assert len(frames["a"]) == COUNT
    np.testing.assert_array_equal(frames["a"], frames["b"])  # same seed, same masks, same frames
    assert not np.array_equal(frames["a"], frames["c"])


@pytest.mark.parametrize("args, match", [
    ((), "give -o OUT to write a video, --show to watch it, or both"),
    (("-o", "{tmp}/o.mp4", "--size", "40by30"), "'40by30' is not WIDTHxHEIGHT"),
    (("-o", "{tmp}/o.mp4", "--smooth", "1"), r"smoothing must be a number in \[0, 1\)"),
    (("-o", "{tmp}/o.mp4", "--method", "nope"), "unknown method 'nope'"),
    (("-o", "{tmp}/missing/o.mp4",), "output directory '.*missing' does not exist"),
    (("-o", "{tmp}/o.mp4", "--codec", "x264x"), "four-character FourCC"),
    (("-o", "{tmp}/o.mp4", "-m", "smoothgradcam++", "-O", "n=0"), "option n must be a positive integer"),
    (("-o", "{tmp}/o.mp4", "-O", "n=2"), "method 'gradcam' has no option"),
])
def test_bad_options_are_one_line(model_path, clip, tmp_path, args, match) -> None:
    result = invoke("video", model_path, clip, *(a.format(tmp=tmp_path) for a in args))
    line = assert_one_line_error(result)
    assert re.search(match, line), line


@pytest.mark.parametrize("source, match", [
    ("{tmp}/notes.txt", "is not a readable video"),
    ("{tmp}/nothing.mp4", "does not exist"),
    ("98", "camera 98 could not be opened"),
    ("http://127.0.0.1:9/live.mjpg", "stream 'http://127.0.0.1:9/live.mjpg' could not be opened"),
])
def test_bad_sources_are_one_line(model_path, tmp_path, source, match) -> None:
    (tmp_path / "notes.txt").write_text("not a video")
    result = invoke("video", model_path, source.format(tmp=tmp_path), "-o", tmp_path / "o.mp4", "--timeout", "2")
    assert match in assert_one_line_error(result)


def test_show_without_a_gui_build_is_one_line(model_path, clip) -> None:
    try:
        cv2.namedWindow("probe")
        cv2.destroyWindow("probe")
        pytest.skip("this OpenCV build has a GUI")
    except cv2.error:
        pass
    assert "needs OpenCV with GUI support" in assert_one_line_error(invoke("video", model_path, clip, "--show"))


def test_ctrl_c_keeps_a_playable_file_and_exits_130(model_path, clip, tmp_path, monkeypatch) -> None:
    real = video._queued

    def queued(*args):  # Ctrl-C while the fifth frame is awaited (the first batch of 4 is out)
        for i, frame in enumerate(real(*args)):
            if i == 4:
                raise KeyboardInterrupt
            yield frame

    monkeypatch.setattr(video, "_queued", queued)
    out = tmp_path / "cut.mp4"
    result = invoke("video", model_path, clip, "-o", out, "--batch", "4")
    assert result.exit_code == 130, (result.output, result.stderr)
    assert result.stderr == "camrt: interrupted\n"
    assert f"wrote {out} (mp4v): 4 frames" in result.stdout
    frames, fps = read_video(out)
    assert len(frames) == 4 and fps == pytest.approx(FPS)


def test_an_odd_size_is_padded_to_even_and_the_summary_says_so(model_path, clip, tmp_path) -> None:
    out = tmp_path / "odd.mp4"
    result = invoke("video", model_path, clip, "-o", out, "--size", "41x31")
    assert result.exit_code == 0, (result.output, result.stderr)
    assert read_video(out)[0][0].shape == (32, 42, 3)
    lines = result.stdout.splitlines()
    assert f"wrote {out} (mp4v): {COUNT} frames, 42×32 at 10 fps" in lines
    assert ("note: 41×31 has an odd side, which the codecs OpenCV writes would cut off; the frames were padded to "
            "42×32 by repeating their last column or row") in lines


def limited(args: list, limit: int) -> subprocess.CompletedProcess:
    """`camrt video ARGS` in a real process whose files may not grow past `limit` bytes: the kernel
    refuses the write with EFBIG as a full disk does with ENOSPC (SIGXFSZ ignored, so the write
    fails instead of killing the process). OpenCV's writer reports neither."""

    def limit_file_size() -> None:
        import resource
        import signal

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return subprocess.run([sys.executable, "-m", "camrt.cli", "video", *map(str, args)], capture_output=True,
                          text=True, cwd=ROOT, timeout=300, preexec_fn=limit_file_size,
                          env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})


FULL = "the file reached this process's file-size limit of 20000 bytes (ulimit -f)"
LONG = 600  # frames: enough for OpenCV to print a warning per failed write, which the one error line replaces


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory) -> Path:
    return write_video(tmp_path_factory.mktemp("long") / "long.avi", moving_square(LONG))


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX resource limits")
@pytest.mark.parametrize("previous", [None, b"an earlier result"])
def test_a_full_disk_with_no_playable_frame_is_an_error_and_saves_nothing(model_path, long_clip, tmp_path,
                                                                           previous) -> None:
    """An .mp4 keeps its index at the end: cut short, none of its frames plays. The run used to
    print "wrote ... 600 frames" and exit 0."""
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "explained.mp4"
    if previous is not None:
        out.write_bytes(previous)
    proc = limited([model_path, long_clip, "-o", out], limit=20_000)  # the frames take about 390 kB
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert proc.stderr.splitlines() == [f"camrt: error: writing '{out}' failed: {FULL}; none of the {LONG} frames "
                                        "sent could be played back, so nothing was saved"]
    assert f"wrote nothing to {out} (mp4v): none of the {LONG} frames sent could be played back" in proc.stdout
    assert f"wrote {out}" not in proc.stdout
    if previous is None:
        assert list(out_dir.iterdir()) == []  # neither a truncated file nor a temporary one
    else:
        assert [p.name for p in out_dir.iterdir()] == [out.name] and out.read_bytes() == previous


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX resource limits")
def test_a_full_disk_with_some_playable_frames_keeps_them_and_counts_them(model_path, long_clip, tmp_path) -> None:
    """An .avi cut short still plays up to where the disk filled: the file keeps those frames, and
    the summary and the error say how many there are."""
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "explained.avi"
    proc = limited([model_path, long_clip, "-o", out], limit=20_000)  # the frames take about 880 kB
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    found = re.fullmatch(rf"camrt: error: writing '{re.escape(str(out))}' failed: {re.escape(FULL)}; only (\d+) of "
                         rf"the {LONG} frames sent can be played back, and the file holds those", lines[0])
    assert found, lines[0]
    playable = int(found[1])
    assert 0 < playable < LONG
    frames, fps = read_video(out)
    assert len(frames) == playable and fps == pytest.approx(FPS)
    assert f"wrote {out} (MJPG): {playable} of {LONG} frames playable, 64×48 at 10 fps" in proc.stdout.splitlines()
    assert [p.name for p in out_dir.iterdir()] == [out.name]
