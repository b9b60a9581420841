"""camrt.visual.frames and camrt.video: `explain_frames` against `Engine.explain` on the same frames,
the EMA by hand, gray and 4-channel frames converted as image files are, and `explain_video` on
videos written here with OpenCV (frame counts, rates, sizes, and each robustness case: not a
video, a camera or stream that does not exist, a source that never starts or stalls, an
unavailable codec, frames of changing size, odd sizes, a writer that loses frames, Ctrl-C,
bounded queues). A real full disk is in tests/test_video_cli.py."""

from __future__ import annotations

import logging
import os
import stat
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

import camrt
from camrt import video
from camrt.engine import Engine
from camrt.errors import InputError
from camrt.methods import METHODS
from camrt.video import VideoInterrupted, VideoWriteError, explain_video
from camrt.visual import videoio
from camrt.visual.frames import explain_frames, prepare_frames
from camrt.visual.overlay import read_image, render
from camrt.visual.videoio import open_writer
from tests.tiny import TinyNet, make

LABELS = ["cat", "dog", "bird", "fish", "frog"]
W, H, FPS, COUNT = 64, 48, 10.0, 12


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("video") / "tiny.cam.onnx"
    camrt.export(make(TinyNet, seed=11), layers=["layer1", "layer2"], path=path, input_shape=(1, 3, 32, 32),
                 labels=LABELS)
    return path


@pytest.fixture(scope="module")
def engine(model_path) -> Engine:
    return Engine(model_path, device="cpu")


def moving_square(count: int = COUNT, w: int = W, h: int = H, seed: int = 0) -> list[np.ndarray]:
    """BGR frames: noise, a coloured background per channel, and a bright square moving right."""
    rng = np.random.default_rng(seed)
    frames = []
    for t in range(count):
        f = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
        f[..., 0] += np.uint8(40)
        x = 4 + 3 * t
        f[h // 3:h // 3 + 14, x:x + 14] = (250, 240, 200)
        frames.append(f)
    return frames


def write_video(path: Path, frames: list[np.ndarray], fps: float = FPS, codec: str = "MJPG") -> Path:
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), fps, (w, h))
    assert writer.isOpened()
    for f in frames:
        writer.write(f)
    writer.release()
    return path


def read_video(path: str | Path) -> tuple[list[np.ndarray], float]:
    cap = cv2.VideoCapture(str(path))
    assert cap.isOpened(), path
    fps = cap.get(cv2.CAP_PROP_FPS)
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f)
    cap.release()
    return frames, fps


@pytest.fixture
def clip(tmp_path) -> Path:
    return write_video(tmp_path / "clip.avi", moving_square())


def oracle(engine: Engine, frames: list[np.ndarray], method: str = "gradcam", bgr: bool = True):
    """`Engine.explain` on each frame alone (batch of one), preprocessed as the video path does."""
    p = engine.manifest.preprocessing
    return [engine.explain(prepare_frames([f], engine.input_size, p.mean, p.std, bgr), method) for f in frames]


# --- explain_frames -----------------------------------------------------------------------------------------


def test_prepare_frames_is_resize_then_normalise_in_rgb(engine) -> None:
    frame = moving_square(1)[0]
    p = engine.manifest.preprocessing
    x = prepare_frames([frame], (32, 32), p.mean, p.std)
    small = cv2.resize(frame, (32, 32), interpolation=cv2.INTER_AREA)[:, :, ::-1].astype(np.float32) / 255
    expected = ((small - np.float32(p.mean)) / np.float32(p.std)).transpose(2, 0, 1)
    assert x.shape == (1, 3, 32, 32) and x.dtype == np.float32
    np.testing.assert_allclose(x[0], expected, atol=1e-6)
    np.testing.assert_array_equal(prepare_frames([frame[:, :, ::-1]], (32, 32), p.mean, p.std, bgr=False), x)


@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
def test_frames_without_smoothing_are_engine_explain_per_frame(engine, method) -> None:
    frames = moving_square()
    got = list(explain_frames(engine, iter(frames), method=method, batch=5))
    assert [r.index for r in got] == list(range(COUNT))
    # Equal bit for bit on the development VM; a tolerance because ONNX Runtime may pick other
    # kernels for another batch size on another CPU.
    for r, f, ref in zip(got, frames, oracle(engine, frames, method), strict=True):
        assert r.frame is f
        assert r.saliency.shape == engine.input_size and r.saliency.dtype == np.float32
        np.testing.assert_allclose(r.saliency, ref.saliency[0], atol=1e-5)
        assert r.class_idx == int(ref.class_idx[0]) and r.label == LABELS[r.class_idx]
        assert r.score == pytest.approx(float(ref.scores[0]), rel=1e-5)
        assert set(r.seconds) == {"preprocess", "inference", "method"}
    # Not vacuous: the square moves, so each frame has a map of its own (a frame given its
    # neighbour's map, or a batch repeated, would fail the comparison above), and none is flat.
    maps = np.stack([r.saliency for r in got])
    assert min(np.abs(maps[i] - maps[j]).max() for i in range(COUNT) for j in range(i)) > 0.1
    assert all(np.ptp(m) > 0.5 for m in maps)


def test_batch_size_does_not_change_the_maps(engine) -> None:
    frames = moving_square()
    ones = list(explain_frames(engine, frames, batch=1))
    for batch in (4, 7, 32):
        for a, b in zip(ones, explain_frames(engine, frames, batch=batch), strict=True):
            np.testing.assert_allclose(b.saliency, a.saliency, atol=1e-5)
            assert (a.class_idx, a.index) == (b.class_idx, b.index)


def test_rgb_frames_with_bgr_false_give_the_same_maps(engine) -> None:
    frames = moving_square(4)
    bgr = list(explain_frames(engine, frames))
    rgb = list(explain_frames(engine, [np.ascontiguousarray(f[:, :, ::-1]) for f in frames], bgr=False))
    for a, b in zip(bgr, rgb, strict=True):
        np.testing.assert_array_equal(a.saliency, b.saliency)


def test_class_idx_is_explained_in_every_frame(engine) -> None:
    got = list(explain_frames(engine, moving_square(3), class_idx=2))
    assert [r.class_idx for r in got] == [2, 2, 2] and {r.label for r in got} == {"bird"}


def test_smoothing_is_an_ema_restarted_when_the_frame_size_changes(engine) -> None:
    a = 0.7
    frames = moving_square(6) + moving_square(5, w=80, h=60, seed=1)
    raw = [r.saliency for r in explain_frames(engine, frames, batch=4)]
    smooth = list(explain_frames(engine, frames, batch=4, smoothing=a))
    expected = []
    for t, m in enumerate(raw):
        expected.append(m if t in (0, 6) else a * expected[-1] + (1 - a) * m)
    for r, e in zip(smooth, expected, strict=True):
        np.testing.assert_allclose(r.saliency, e, atol=1e-6)
    np.testing.assert_array_equal(smooth[6].saliency, raw[6])  # restarted at the new size
    assert not np.allclose(smooth[3].saliency, raw[3])
    assert all(0.0 <= r.saliency.min() and r.saliency.max() <= 1.0 for r in smooth)


@pytest.mark.parametrize("kwargs, match", [
    ({"batch": 0}, "batch must be a positive integer"),
    ({"smoothing": 1.0}, r"smoothing must be a number in \[0, 1\)"),
    ({"method": "nope"}, "unknown method 'nope'"),
    ({"layer": "fc"}, "layer 'fc' was not exported"),
    ({"class_idx": 5}, "class_idx must be None, -1"),
    ({"method": "smoothgradcam++", "n": 0}, "option n must be a positive integer"),
    ({"method": "gradcam", "n": 2}, "method 'gradcam' has no option"),
])
def test_bad_arguments_fail_before_any_frame_is_read(engine, kwargs, match) -> None:
    def frames():
        raise AssertionError("a frame was read")
        yield

    with pytest.raises(InputError, match=match):
        explain_frames(engine, frames(), **kwargs)


@pytest.mark.parametrize("bad", [np.zeros((H, W, 2), np.uint8), np.zeros((H, W, 3), np.float32),
                                 np.zeros((H, W, 3), np.uint16), np.zeros((0, W, 3), np.uint8)])
def test_a_frame_that_is_not_uint8_bgr_is_named(engine, bad) -> None:
    frames = moving_square(2) + [bad]
    with pytest.raises(InputError, match=r"frame 2 must be an H×W×3 uint8 image"):
        list(explain_frames(engine, frames))


def test_gray_frames_are_replicated_to_three_channels(engine, tmp_path) -> None:
    gray = [f[:, :, 1].copy() for f in moving_square(3)]
    want = list(explain_frames(engine, [np.repeat(g[:, :, None], 3, axis=2) for g in gray]))
    for frames in (gray, [g[:, :, None] for g in gray]):  # H×W and H×W×1
        for a, b in zip(explain_frames(engine, frames), want, strict=True):
            np.testing.assert_array_equal(a.frame, b.frame)
            np.testing.assert_array_equal(a.saliency, b.saliency)
    s = explain_video(engine, gray, tmp_path / "gray.avi")
    assert s.frames_written == 3 and len(read_video(tmp_path / "gray.avi")[0]) == 3


def test_four_channel_frames_are_composited_over_white_as_image_files_are(engine, tmp_path) -> None:
    frames = moving_square(3)
    alpha = np.random.default_rng(5).integers(0, 256, (H, W, 1), dtype=np.uint8)
    bgra = [np.concatenate([f, alpha], axis=2) for f in frames]
    assert cv2.imwrite(str(tmp_path / "f.png"), bgra[0])
    from_file = read_image(tmp_path / "f.png")[0][:, :, ::-1]  # read_image composites, in RGB
    got = list(explain_frames(engine, bgra))
    np.testing.assert_array_equal(got[0].frame, from_file)
    for r, f in zip(got, frames, strict=True):  # light where transparent, the frame where opaque
        opaque = alpha[:, :, 0] == 255
        np.testing.assert_array_equal(r.frame[opaque], f[opaque])
        assert (r.frame[alpha[:, :, 0] == 0] == 255).all()
    want = list(explain_frames(engine, [r.frame.copy() for r in got]))
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a.saliency, b.saliency)


def test_perturbation_methods_work_with_a_warning(engine, caplog) -> None:
    name = next(n for n, m in METHODS.items() if m.family in ("feature", "input"))
    with caplog.at_level(logging.WARNING, logger="camrt"):
        got = list(explain_frames(engine, moving_square(2), method=name))
    assert len(got) == 2 and got[0].saliency.shape == engine.input_size
    assert any("perturbation method" in r.message and "per frame" in r.message for r in caplog.records)


# --- render ---------------------------------------------------------------------------------------------------


def test_render_blends_the_colour_mapped_map_and_adds_a_panel() -> None:
    frame = moving_square(1)[0]
    sal = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    # Rounded to the nearest level, like `colorize` (it once truncated), then resized as colours.
    heat = cv2.resize(cv2.applyColorMap((sal * 255 + 0.5).astype(np.uint8), cv2.COLORMAP_JET), (W, H))
    np.testing.assert_array_equal(render(frame, sal, alpha=0.0), frame)
    np.testing.assert_array_equal(render(frame, sal, alpha=1.0), heat)
    both = render(frame, sal, "cat 90.0%", panel=True)
    assert both.shape == (H, 2 * W, 3)
    np.testing.assert_array_equal(both[:, W:], heat)
    labelled = both[:, :W]
    assert (labelled != render(frame, sal)).any()  # the label is drawn
    np.testing.assert_array_equal(labelled[H // 2:], render(frame, sal)[H // 2:])  # at the top only


# --- explain_video --------------------------------------------------------------------------------------------


def test_video_keeps_frame_count_rate_and_size(engine, clip, tmp_path) -> None:
    out = tmp_path / "out.mp4"
    s = explain_video(engine, str(clip), out, batch=3)
    frames, fps = read_video(out)
    assert len(frames) == COUNT and fps == pytest.approx(FPS) and frames[0].shape == (H, W, 3)
    assert (s.frames_read, s.frames_explained, s.frames_written) == (COUNT, COUNT, COUNT)
    assert (s.input_size, s.output_size, s.codec, s.output) == ((W, H), (W, H), "mp4v", str(out))
    assert s.input_fps == pytest.approx(FPS) and not s.notes and not s.interrupted
    assert set(s.fps()) == {"decode", "preprocess", "inference", "method", "overlay", "encode", "total"}
    # Each written frame is the overlay of the library's map on the decoded frame, up to the codec's
    # loss (about 5 levels on these noisy frames), which is well below the change a wrong map makes.
    decoded, _ = read_video(clip)
    for got, r in zip(frames, explain_frames(engine, decoded), strict=True):
        text = f"{r.label} {r.score:.1%}"
        error = np.abs(got.astype(int) - render(r.frame, r.saliency, text)).mean()
        flipped = np.abs(got.astype(int) - render(r.frame, r.saliency[::-1, ::-1], text)).mean()
        assert error < 8 and error < 0.6 * flipped


def test_every_halves_the_frames_and_the_rate(engine, clip, tmp_path) -> None:
    s = explain_video(engine, clip, tmp_path / "half.avi", every=2)
    frames, fps = read_video(tmp_path / "half.avi")
    assert len(frames) == COUNT // 2 == s.frames_written and fps == pytest.approx(FPS / 2)
    assert s.frames_read == COUNT and s.codec == "MJPG"


def test_size_and_panel_set_the_output_size(engine, clip, tmp_path) -> None:
    s = explain_video(engine, clip, tmp_path / "big.mp4", size=(80, 60), panel=True)
    frames, _ = read_video(tmp_path / "big.mp4")
    assert len(frames) == COUNT and frames[0].shape == (60, 160, 3) and s.output_size == (160, 60)


def test_smoothing_in_the_pipeline_matches_explain_frames(engine, clip, tmp_path, monkeypatch) -> None:
    seen = []
    real = video.render
    monkeypatch.setattr(video, "render", lambda frame, sal, *a, **k: seen.append(sal) or real(frame, sal, *a, **k))
    explain_video(engine, clip, tmp_path / "smooth.avi", smoothing=0.5)
    decoded, _ = read_video(clip)
    for got, r in zip(seen, explain_frames(engine, decoded, smoothing=0.5), strict=True):
        np.testing.assert_allclose(got, r.saliency, atol=1e-6)


def test_frames_of_changing_size_are_resized_to_the_first(engine, tmp_path) -> None:
    frames = moving_square(4) + moving_square(3, w=80, h=60) + moving_square(2, w=40, h=30)
    s = explain_video(engine, frames, tmp_path / "mixed.mp4", fps=12.0)
    out, fps = read_video(tmp_path / "mixed.mp4")
    assert len(out) == 9 and {f.shape for f in out} == {(H, W, 3)} and fps == pytest.approx(12.0)
    assert any("5 frames differed in size from the first (64×48)" in n for n in s.notes)


def test_an_iterable_without_a_rate_gets_25_fps_and_a_note(engine, tmp_path) -> None:
    s = explain_video(engine, moving_square(2), tmp_path / "x.avi")
    assert s.output_fps == 25.0 and any("frame rate" in n for n in s.notes)


@pytest.mark.parametrize("name, content, match", [
    ("notes.txt", b"not a video", "is not a readable video"),
    ("broken.mp4", bytes(range(256)) * 8, "is not a readable video|has no frames"),
    ("photo.png", None, "is an image, not a video"),
    ("missing.mp4", "", "does not exist"),
])
def test_a_file_that_is_not_a_video_is_one_clear_error(engine, tmp_path, name, content, match) -> None:
    path = tmp_path / name
    if content is None:
        cv2.imwrite(str(path), moving_square(1)[0])
    elif content:
        path.write_bytes(content)
    with pytest.raises(InputError, match=match):
        explain_video(engine, path, tmp_path / "out.mp4")
    assert not (tmp_path / "out.mp4").exists()


def test_a_camera_that_does_not_exist(engine, tmp_path) -> None:
    with pytest.raises(InputError, match="camera 99 could not be opened"):
        explain_video(engine, "99", tmp_path / "out.mp4")


def test_a_stream_that_cannot_be_reached(engine, tmp_path) -> None:
    with pytest.raises(InputError, match=r"stream 'rtsp://127\.0\.0\.1:9/none' could not be opened"):
        explain_video(engine, "rtsp://127.0.0.1:9/none", tmp_path / "out.mp4", timeout=2.0)


def test_a_source_that_never_starts_times_out(engine, tmp_path) -> None:
    def late():
        time.sleep(2.0)
        yield from moving_square(1)

    with pytest.raises(InputError, match="within 0.2 s: the source did not start"):
        explain_video(engine, late(), tmp_path / "out.mp4", timeout=0.2)


def test_a_source_that_stalls_keeps_the_frames_so_far(engine, tmp_path) -> None:
    def stalls():
        yield from moving_square(5)
        time.sleep(2.0)
        yield from moving_square(1)

    out = tmp_path / "stalled.mp4"
    with pytest.raises(InputError, match="for 0.3 s after 5 frames: the source stalled"):
        explain_video(engine, stalls(), out, batch=2, timeout=0.3)
    frames, _ = read_video(out)
    assert len(frames) == 4  # two full batches; the fifth frame waited for its batch


def test_an_unavailable_codec_falls_back_and_says_so(engine, clip, tmp_path, monkeypatch, caplog) -> None:
    real = videoio._video_writer
    monkeypatch.setattr(videoio, "_video_writer",
                        lambda path, codec, *a: cv2.VideoWriter() if codec == "mp4v" else real(path, codec, *a))
    with caplog.at_level(logging.WARNING, logger="camrt"):
        s = explain_video(engine, clip, tmp_path / "out.mp4")
    assert (s.codec, s.output) == ("MJPG", str(tmp_path / "out.avi"))
    assert s.notes == [f"codec mp4v is not available in this OpenCV build; wrote MJPG to {tmp_path / 'out.avi'} "
                       "instead"]
    assert [r.message for r in caplog.records] == s.notes
    assert len(read_video(tmp_path / "out.avi")[0]) == COUNT and not (tmp_path / "out.mp4").exists()


def test_no_codec_at_all_is_an_error(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(videoio, "_video_writer", lambda *a: cv2.VideoWriter())
    with pytest.raises(InputError, match=r"no codec could write .*tried mp4v \(\.mp4\), MJPG \(\.avi\), XVID"):
        open_writer(tmp_path / "out.mp4", 10.0, (W, H))


@pytest.mark.parametrize("path, codec, match", [
    ("nodir/out.mp4", None, "output directory .* does not exist"),
    ("out.xyz", None, "no default codec for '.xyz'"),
    ("out.mp4", "h264x", "four-character FourCC"),
])
def test_bad_output_arguments(tmp_path, path, codec, match) -> None:
    with pytest.raises(InputError, match=match):
        open_writer(tmp_path / path, 10.0, (W, H), codec)


def test_ctrl_c_leaves_a_playable_file(engine, clip, tmp_path) -> None:
    def progress(done, total, elapsed):
        assert total == COUNT and elapsed >= 0
        if done == 6:
            raise KeyboardInterrupt

    out = tmp_path / "cut.mp4"
    with pytest.raises(VideoInterrupted) as info:
        explain_video(engine, clip, out, batch=4, progress=progress)
    s = info.value.summary
    assert isinstance(info.value, KeyboardInterrupt) and s.interrupted
    assert s.frames_explained == s.frames_written == 6
    frames, fps = read_video(out)
    assert len(frames) == 6 and fps == pytest.approx(FPS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.avi", "cut.mp4"]  # no temporary file left


def test_queues_are_bounded_on_a_long_source(engine) -> None:
    produced = [0]
    backlog = []

    def endless():
        frame = moving_square(1)[0]
        while True:
            produced[0] += 1
            yield frame.copy()

    def progress(done, total, elapsed):
        backlog.append(produced[0] - done)
        if done == 120:
            raise KeyboardInterrupt

    batch = 3
    with pytest.raises(VideoInterrupted):
        explain_video(engine, endless(), None, batch=batch, progress=progress)
    # At most: 2·batch in the queue, one in the decode thread's hands, one batch being explained.
    assert max(backlog) <= 3 * batch + 1
    assert max(backlog) >= 2 * batch  # the decoder was ahead: the bound was what held it back


# --- what is written: odd sizes, frames the writer loses, permissions --------------------------------------------


@pytest.mark.parametrize("name, size, panel, written", [
    ("odd.mp4", (41, 31), False, (42, 32)),
    ("odd.avi", (41, 31), False, (42, 32)),
    ("panel.mp4", (40, 31), True, (80, 32)),
])
def test_odd_sizes_are_padded_to_even(engine, clip, tmp_path, name, size, panel, written) -> None:
    """OpenCV's writers (mp4v, MJPG, XVID) cut an odd side down to even without a word: 641×481 is
    read back as 640×480. camrt pads instead, repeating the last column and row, and says so."""
    out = tmp_path / name
    s = explain_video(engine, clip, out, size=size, panel=panel)
    frames, _ = read_video(out)
    w, h = written
    assert len(frames) == COUNT and {f.shape for f in frames} == {(h, w, 3)} and s.output_size == written
    sent = (size[0] * (2 if panel else 1), size[1])
    assert s.notes == [f"{sent[0]}×{sent[1]} has an odd side, which the codecs OpenCV writes would cut off; the "
                       f"frames were padded to {w}×{h} by repeating their last column or row"]
    f = frames[3].astype(int)  # the padding repeats the last row (and column), up to the codec's loss
    assert np.abs(f[h - 1] - f[h - 2]).mean() < 8 < np.abs(f[h - 1] - f[h // 2]).mean()


def test_output_size_is_read_back_from_the_file(engine, clip, tmp_path, monkeypatch) -> None:
    """Without the padding OpenCV cuts 41×31 to 40×30: the summary gives what the file holds."""
    monkeypatch.setattr(videoio, "even_size", lambda size: size)
    s = explain_video(engine, clip, tmp_path / "cut.mp4", size=(41, 31))
    assert read_video(tmp_path / "cut.mp4")[0][0].shape == (30, 40, 3)
    assert s.output_size == (40, 30) and s.notes == ["the codec wrote 40×30 frames, not the 41×31 given to it"]


class LosingWriter:
    """A VideoWriter that silently drops every frame after the first `keep`, as OpenCV's does when
    the disk is full."""

    def __init__(self, writer: cv2.VideoWriter, keep: int) -> None:
        self.writer, self.keep = writer, keep

    def isOpened(self) -> bool:  # noqa: N802 - cv2's name
        return self.writer.isOpened()

    def write(self, frame: np.ndarray) -> None:
        if self.keep > 0:
            self.writer.write(frame)
        self.keep -= 1

    def release(self) -> None:
        self.writer.release()


def losing(monkeypatch, keep: int) -> None:
    real = videoio._video_writer
    monkeypatch.setattr(videoio, "_video_writer", lambda *a: LosingWriter(real(*a), keep))


def test_a_writer_that_loses_frames_is_an_error_with_the_playable_count(engine, clip, tmp_path, monkeypatch) -> None:
    losing(monkeypatch, 5)
    out = tmp_path / "out.mp4"
    with pytest.raises(VideoWriteError) as info:
        explain_video(engine, clip, out)
    assert str(info.value) == (f"writing '{out}' failed: OpenCV's writer produced 5 of {COUNT} frames without "
                               "reporting an error (the disk may have been full for a while); only 5 of the "
                               f"{COUNT} frames sent can be played back, and the file holds those")
    s = info.value.summary
    assert (s.frames_explained, s.frames_sent, s.frames_written, s.output_size) == (COUNT, COUNT, 5, (W, H))
    assert len(read_video(out)[0]) == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.avi", "out.mp4"]


def test_a_full_disk_with_nothing_playable_saves_nothing(engine, clip, tmp_path, monkeypatch) -> None:
    losing(monkeypatch, 0)
    monkeypatch.setattr(videoio.shutil, "disk_usage", lambda path: SimpleNamespace(free=4096))
    out = tmp_path / "out.mp4"
    with pytest.raises(VideoWriteError) as info:
        explain_video(engine, clip, out)
    assert str(info.value) == (f"writing '{out}' failed: the disk is full (4096 bytes free in '{tmp_path}'); none "
                               f"of the {COUNT} frames sent could be played back, so nothing was saved")
    s = info.value.summary
    assert (s.frames_sent, s.frames_written, s.output_size) == (COUNT, 0, None)
    assert [p.name for p in tmp_path.iterdir()] == ["clip.avi"]


def test_a_stalled_source_and_a_failed_write_are_both_reported(engine, tmp_path, monkeypatch) -> None:
    def stalls():
        yield from moving_square(5)
        time.sleep(2.0)

    losing(monkeypatch, 0)
    with pytest.raises(VideoWriteError, match=r"the source stalled .*; but writing .* failed: .*none of the 4 "
                                              "frames sent could be played back"):
        explain_video(engine, stalls(), tmp_path / "out.mp4", batch=2, timeout=0.3)
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_with_a_failed_write_says_so_in_the_summary(engine, clip, tmp_path, monkeypatch) -> None:
    def progress(done, total, elapsed):
        if done == 6:
            raise KeyboardInterrupt

    losing(monkeypatch, 0)
    with pytest.raises(VideoInterrupted) as info:
        explain_video(engine, clip, tmp_path / "cut.mp4", batch=4, progress=progress)
    s = info.value.summary
    assert (s.frames_sent, s.frames_written) == (6, 0) and s.interrupted
    assert any(n.startswith(f"writing '{tmp_path / 'cut.mp4'}' failed") for n in s.notes)
    assert [p.name for p in tmp_path.iterdir()] == ["clip.avi"]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX umask")
@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_the_output_has_the_umask_permissions(engine, clip, tmp_path, umask) -> None:
    old = os.umask(umask)
    try:
        explain_video(engine, clip, tmp_path / "out.avi")
        (tmp_path / "ref").write_bytes(b"")  # what any other tool would create
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "out.avi").stat().st_mode)
    assert mode == 0o666 & ~umask == stat.S_IMODE((tmp_path / "ref").stat().st_mode)


def test_ctrl_c_while_the_output_is_read_back_keeps_it_unchecked(engine, clip, tmp_path, monkeypatch) -> None:
    def interrupted(path):
        raise KeyboardInterrupt

    monkeypatch.setattr(videoio, "count_frames", interrupted)
    with pytest.raises(VideoInterrupted) as info:
        explain_video(engine, clip, tmp_path / "out.mp4")
    s = info.value.summary
    assert (s.frames_sent, s.frames_written, s.output_size) == (COUNT, COUNT, (W, H))
    assert s.notes == [f"the output was not read back, so its {COUNT} frames are not known to play"]
    assert len(read_video(tmp_path / "out.mp4")[0]) == COUNT
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.avi", "out.mp4"]
