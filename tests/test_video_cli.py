"""`camrt video` through click's CliRunner on a tiny model and videos written here with OpenCV:
the written file, the summary, and the exit codes of its error cases (2) and of Ctrl-C (130)."""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

import camrt
from camrt import video
from camrt.cli import main
from camrt.visual import videoio
from tests.test_visual_video import COUNT, FPS, LABELS, H, W, moving_square, read_video, write_video
from tests.tiny import TinyNet, make


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


def one_error_line(result, exit_code: int = 2) -> str:
    assert result.exit_code == exit_code, (result.output, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("camrt: error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


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
    line = one_error_line(result)
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
    assert match in one_error_line(result)


def test_show_without_a_gui_build_is_one_line(model_path, clip) -> None:
    try:
        cv2.namedWindow("probe")
        cv2.destroyWindow("probe")
        pytest.skip("this OpenCV build has a GUI")
    except cv2.error:
        pass
    assert "needs OpenCV with GUI support" in one_error_line(invoke("video", model_path, clip, "--show"))


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
