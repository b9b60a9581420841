"""camrt.visual.overlay: blending arithmetic, colour maps in RGB and BGR, grids, and image file I/O
with OpenCV (channel order, gray, alpha, 16 bits, EXIF orientation)."""

from __future__ import annotations

import os
import stat
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest

from camrt.errors import InputError
from camrt.methods import upsample
from camrt.visual.overlay import COLORMAPS, colorize, grid, overlay, read_image, render, write_image

ROOT = Path(__file__).resolve().parents[1]

# OpenCV's jet in RGB: 0 → dark blue, 1 → dark red (cv2 returns BGR; camrt converts).
JET_0 = (0, 0, 128)
JET_1 = (128, 0, 0)


def random_rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# --- colorize / overlay -----------------------------------------------------------------------------------


def test_colorize_is_rgb_and_clipped() -> None:
    heat = colorize(np.array([[0.0, 1.0, -3.0, 7.0]]))
    assert heat.shape == (1, 4, 3) and heat.dtype == np.uint8
    assert [tuple(p) for p in heat[0]] == [JET_0, JET_1, JET_0, JET_1]
    for name in COLORMAPS:  # every colour map gives an RGB ramp that changes with the value
        ramp = colorize(np.linspace(0, 1, 16)[None], name)
        assert ramp.shape == (1, 16, 3) and len({tuple(p) for p in ramp[0]}) > 8


def test_alpha_zero_returns_the_image_and_alpha_one_the_heat_map() -> None:
    image = random_rgb(12, 9, seed=1)
    saliency = np.random.default_rng(2).random((12, 9)).astype(np.float32)
    np.testing.assert_array_equal(overlay(image, saliency, alpha=0.0), image)
    np.testing.assert_array_equal(overlay(image, saliency, alpha=1.0), colorize(saliency))
    np.testing.assert_array_equal(overlay(image, saliency, colormap="viridis", alpha=1.0),
                                  colorize(saliency, "viridis"))


def test_blend_by_hand() -> None:
    image = np.array([[[100, 52, 200], [0, 0, 0]]], np.uint8)
    saliency = np.array([[1.0, 0.0]], np.float32)
    got = overlay(image, saliency, alpha=0.25)
    # 0.75 * (100, 52, 200) + 0.25 * (128, 0, 0) and 0.75 * 0 + 0.25 * (0, 0, 128)
    assert tuple(got[0, 0]) == (107, 39, 150)
    assert tuple(got[0, 1]) == (0, 0, 32)
    half = overlay(image, saliency, alpha=0.5)
    assert tuple(half[0, 0]) == (114, 26, 100)


def test_the_colours_are_resized_to_the_image() -> None:
    image = np.zeros((10, 20, 3), np.uint8)  # H×W = 10×20, a low-res map 2×2
    saliency = np.array([[1.0, 0.0], [0.3, 0.6]], np.float32)
    got = overlay(image, saliency, alpha=1.0)
    assert got.shape == (10, 20, 3)
    assert tuple(got[0, 0]) == JET_1 and tuple(got[0, -1]) == JET_0  # corners keep their values
    # The map is coloured at its own size and the colours resized: bilinear with half-pixel centres,
    # as camrt.methods.upsample (torch's interpolate) computes it, up to OpenCV's fixed-point rounding.
    colours = colorize(saliency).transpose(2, 0, 1).astype(np.float32)
    assert np.abs(got.transpose(2, 0, 1) - upsample(colours, (10, 20))).max() < 1
    odd = np.random.default_rng(3).random((7, 9)).astype(np.float32)
    got = overlay(random_rgb(50, 37), odd, alpha=1.0)
    assert np.abs(got.transpose(2, 0, 1) - upsample(colorize(odd).transpose(2, 0, 1).astype(np.float32),
                                                    (50, 37))).max() < 1


def test_rgb_and_bgr_give_the_same_pixels_up_to_channel_order() -> None:
    saliency = np.random.default_rng(4).random((7, 5)).astype(np.float32)
    rgb = random_rgb(15, 11, seed=5)
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    for name in COLORMAPS:
        for size in (None, (11, 15)):
            np.testing.assert_array_equal(colorize(saliency, name, size, bgr=True),
                                          colorize(saliency, name, size)[:, :, ::-1])
        np.testing.assert_array_equal(overlay(bgr, saliency, name, 0.3, bgr=True),
                                      overlay(rgb, saliency, name, 0.3)[:, :, ::-1])
        # render (video frames, BGR) is the same overlay, and its panel the same heat map
        np.testing.assert_array_equal(render(bgr, saliency, None, name, 0.3),
                                      overlay(bgr, saliency, name, 0.3, bgr=True))
        np.testing.assert_array_equal(render(bgr, saliency, None, name, 0.3, panel=True)[:, 11:],
                                      colorize(saliency, name, (11, 15), bgr=True))


def test_one_rounding_rule_for_rgb_and_bgr() -> None:
    # 255 · s = 254.745, 127.5, 0.5355 and 1275: the nearest levels are 255, 128, 1 and (clipped) 255;
    # truncating, as render once did, would give 254, 127, 0 (and wrap 1275 around).
    saliency = np.array([[0.999, 0.5, 0.0021, 5.0]], np.float32)
    levels = np.array([[255, 128, 1, 255]], np.uint8)
    want = cv2.applyColorMap(levels, cv2.COLORMAP_JET)  # BGR
    np.testing.assert_array_equal(colorize(saliency, bgr=True), want)
    np.testing.assert_array_equal(colorize(saliency), want[:, :, ::-1])
    np.testing.assert_array_equal(render(np.zeros((1, 4, 3), np.uint8), saliency, alpha=1.0), want)


def test_overlay_errors() -> None:
    image, saliency = random_rgb(4, 4), np.zeros((4, 4), np.float32)
    with pytest.raises(InputError, match="unknown colormap 'rainbow'.*jet"):
        overlay(image, saliency, colormap="rainbow")
    for alpha in (-0.1, 1.5, float("nan")):
        with pytest.raises(InputError, match="alpha must be in"):
            overlay(image, saliency, alpha=alpha)
    with pytest.raises(InputError, match="H×W×3 RGB uint8"):
        overlay(image.astype(np.float32), saliency)
    with pytest.raises(InputError, match="H×W×3 RGB uint8"):
        overlay(image[:, :, 0], saliency)
    with pytest.raises(InputError, match="one H×W map"):
        overlay(image, np.zeros((1, 4, 4), np.float32))


# --- grid -------------------------------------------------------------------------------------------------


def test_grid_layout() -> None:
    wide, square = random_rgb(32, 48), random_rgb(64, 64)
    band = 22  # caption height
    # Tiles are scaled to the height (48 × 224/32 = 336 wide), padded to the widest, `columns` per row.
    assert grid([wide, square, square], ["a", "b", "c"]).shape == (224 + band, 3 * 336, 3)
    assert grid([square], ["a"], height=100).shape == (100 + band, 100, 3)
    assert grid([square] * 4, list("abcd"), height=50).shape == (50 + band, 4 * 50, 3)
    assert grid([square] * 5, list("abcde"), height=50).shape == (2 * (50 + band), 4 * 50, 3)
    assert grid([square] * 5, list("abcde"), height=50, columns=2).shape == (3 * (50 + band), 2 * 50, 3)


def test_grid_content() -> None:
    red = np.zeros((10, 20, 3), np.uint8)
    red[:, :, 0] = 200
    blue = np.zeros((10, 10, 3), np.uint8)
    blue[:, :, 2] = 90
    g = grid([red, blue], ["red", "blue"], height=40)
    assert g.shape == (40 + 22, 2 * 80, 3)
    np.testing.assert_array_equal(g[22:, :80], np.broadcast_to([200, 0, 0], (40, 80, 3)))
    np.testing.assert_array_equal(g[22:, 80:120], np.broadcast_to([0, 0, 90], (40, 40, 3)))
    np.testing.assert_array_equal(g[22:, 120:], 255)  # the narrower tile is padded with white
    caption = g[:22, :80]
    assert caption.min() < 128 and np.median(caption) == 255  # dark text on white


def test_grid_errors() -> None:
    with pytest.raises(InputError, match="one title per tile"):
        grid([random_rgb(4, 4)], ["a", "b"])
    with pytest.raises(InputError, match="at least one tile"):
        grid([], [])


# --- read_image / write_image ---------------------------------------------------------------------------


def test_read_rgb_png_channel_order(tmp_path) -> None:
    rgb = random_rgb(5, 7, seed=3)
    rgb[0, 0] = (255, 0, 0)  # pure red, in RGB
    assert cv2.imwrite(str(tmp_path / "a.png"), rgb[:, :, ::-1].copy())  # OpenCV writes BGR
    image, note = read_image(tmp_path / "a.png")
    assert image.dtype == np.uint8 and image.shape == (5, 7, 3)
    np.testing.assert_array_equal(image, rgb)
    assert tuple(image[0, 0]) == (255, 0, 0) and note is None


def test_read_grayscale(tmp_path) -> None:
    gray = np.arange(20, dtype=np.uint8).reshape(4, 5) * 12
    assert cv2.imwrite(str(tmp_path / "g.png"), gray)
    image, note = read_image(tmp_path / "g.png")
    np.testing.assert_array_equal(image, np.repeat(gray[:, :, None], 3, axis=2))
    assert "grayscale" in note


def test_read_rgba_composited_over_white(tmp_path) -> None:
    rgba = np.zeros((1, 4, 4), np.uint8)
    rgba[0] = [(200, 100, 0, 255),  # opaque: the colour
               (200, 100, 0, 0),  # transparent: white
               (200, 100, 0, 51),  # 20 %: 0.2 * c + 0.8 * 255
               (0, 0, 0, 128)]  # 255 * 127/255
    assert cv2.imwrite(str(tmp_path / "t.png"), rgba[:, :, [2, 1, 0, 3]].copy())  # BGRA on disk
    image, note = read_image(tmp_path / "t.png")
    assert image.shape == (1, 4, 3)
    assert [tuple(p) for p in image[0]] == [(200, 100, 0), (255, 255, 255), (244, 224, 204), (127, 127, 127)]
    assert "alpha" in note


def test_read_16_bit(tmp_path) -> None:
    rgb16 = np.array([[[65535, 0, 257 * 100], [300, 128, 65535 - 128]]], np.uint16)
    assert cv2.imwrite(str(tmp_path / "w.png"), rgb16[:, :, ::-1].copy())
    image, note = read_image(tmp_path / "w.png")
    assert image.dtype == np.uint8
    assert [tuple(p) for p in image[0]] == [(255, 0, 100), (1, 0, 255)]  # rounded v / 257, RGB order
    assert "16-bit" in note
    gray16 = np.array([[0, 32896, 65535]], np.uint16)
    assert cv2.imwrite(str(tmp_path / "g16.png"), gray16)
    image, note = read_image(tmp_path / "g16.png")
    np.testing.assert_array_equal(image[0], [[0, 0, 0], [128, 128, 128], [255, 255, 255]])
    assert "16-bit" in note and "grayscale" in note


def with_orientation(jpeg: bytes, orientation: int) -> bytes:
    """`jpeg` with an EXIF segment (APP1) right after its start marker holding one tag, the
    orientation (0x0112, a SHORT), in a big-endian TIFF structure as cameras write it."""
    entry = struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0)  # tag, type SHORT, count, value (padded)
    tiff = b"MM\x00\x2a" + struct.pack(">I", 8) + struct.pack(">H", 1) + entry + struct.pack(">I", 0)
    payload = b"Exif\x00\x00" + tiff
    assert jpeg[:2] == b"\xff\xd8"
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", 2 + len(payload)) + payload + jpeg[2:]


@pytest.mark.parametrize("orientation, upright", [
    (1, lambda a: a),
    (3, lambda a: np.rot90(a, 2)),  # stored upside down
    (6, lambda a: np.rot90(a, -1)),  # stored turned left: turn 90° clockwise to view
    (8, lambda a: np.rot90(a, 1)),  # stored turned right: turn 90° anticlockwise
])
def test_read_jpeg_applies_its_exif_orientation(tmp_path, orientation, upright) -> None:
    rgb = np.zeros((32, 48, 3), np.uint8)  # H×W 32×48; flat 16×16 blocks, which JPEG keeps
    rgb[:16, :16] = (250, 10, 10)  # red top left
    rgb[16:, 32:] = (10, 10, 250)  # blue bottom right
    rgb[:16, 32:] = (10, 250, 10)  # green top right
    ok, buf = cv2.imencode(".jpg", rgb[:, :, ::-1].copy(), [cv2.IMWRITE_JPEG_QUALITY, 100])
    assert ok
    (tmp_path / "plain.jpg").write_bytes(buf.tobytes())
    (tmp_path / "tagged.jpg").write_bytes(with_orientation(buf.tobytes(), orientation))
    plain, _ = read_image(tmp_path / "plain.jpg")
    image, note = read_image(tmp_path / "tagged.jpg")
    np.testing.assert_array_equal(image, upright(plain))
    centres = (8, 8), (8, 40), (24, 40), (24, 8)  # of the red, green, blue and black blocks
    assert all(np.abs(plain[c].astype(int) - rgb[c]).max() < 8 for c in centres) and note is None
    if orientation == 6:  # by hand: the stored top-left (red) is now at the top right
        assert image.shape == (48, 32, 3) and tuple(image[0, -1]) == tuple(plain[0, 0])


def test_read_gray_jpeg(tmp_path) -> None:
    gray = np.repeat(np.arange(0, 256, 32, dtype=np.uint8)[None], 8, axis=0).repeat(8, axis=1)
    ok, buf = cv2.imencode(".jpg", gray, [cv2.IMWRITE_JPEG_QUALITY, 100])
    (tmp_path / "g.jpg").write_bytes(with_orientation(buf.tobytes(), 3))
    image, note = read_image(tmp_path / "g.jpg")
    assert image.shape == (8, 64, 3) and "grayscale" in note
    np.testing.assert_array_equal(image[:, :, 0], image[:, :, 2])
    assert np.abs(image[:, :, 0].astype(int) - gray[::-1, ::-1]).max() < 4


def test_read_errors(tmp_path) -> None:
    (tmp_path / "notes.png").write_text("not an image\n")
    with pytest.raises(InputError, match="notes.png' is not a readable image"):
        read_image(tmp_path / "notes.png")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(InputError, match="not a readable image"):
        read_image(tmp_path / "empty.png")
    with pytest.raises(InputError, match="missing.png' does not exist"):
        read_image(tmp_path / "missing.png")


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".tiff"])
def test_write_image_round_trip(tmp_path, suffix) -> None:
    rgb = random_rgb(6, 9, seed=4)
    path = tmp_path / f"out{suffix}"
    write_image(path, rgb)
    image, note = read_image(path)
    np.testing.assert_array_equal(image, rgb)
    assert note is None
    np.testing.assert_array_equal(cv2.imread(str(path))[:, :, ::-1], rgb)  # stored as a normal RGB file


def test_write_image_errors(tmp_path) -> None:
    with pytest.raises(InputError, match="cannot write"):
        write_image(tmp_path / "no" / "such" / "dir.png", random_rgb(2, 2))
    with pytest.raises(InputError, match="cannot encode an image as '.xyz'"):
        write_image(tmp_path / "a.xyz", random_rgb(2, 2))


posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX resource limits and umask")


@posix_only
def test_write_image_past_a_size_limit_keeps_the_previous_file(tmp_path) -> None:
    """The kernel refuses the write past the limit with EFBIG, as a full disk does with ENOSPC: the error
    gives that cause (not None), and the file that was there stays, whole, with no temporary file left."""
    (tmp_path / "big.png").write_bytes(b"previous")
    code = textwrap.dedent(f"""
        import resource, signal, sys
        import numpy as np
        sys.path.insert(0, {str(ROOT)!r})
        from camrt.errors import InputError
        from camrt.visual.overlay import write_image
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (10_000, 10_000))
        try:
            write_image("big.png", np.random.default_rng(0).integers(0, 256, (100, 100, 3), dtype=np.uint8))
        except InputError as e:
            print(e)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=60,
                          env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert proc.stdout == "cannot write 'big.png': File too large\n", proc.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["big.png"]
    assert (tmp_path / "big.png").read_bytes() == b"previous"


@posix_only
def test_write_image_gets_the_users_umask(tmp_path) -> None:
    old = os.umask(0o077)
    try:
        write_image(tmp_path / "a.png", random_rgb(2, 2))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.png").stat().st_mode) == 0o600
    old = os.umask(0o022)
    try:
        write_image(tmp_path / "a.png", random_rgb(2, 2))  # a new file replaces the old one, with its own mode
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.png").stat().st_mode) == 0o644


def test_write_image_over_a_folder_is_an_error_with_its_cause(tmp_path) -> None:
    (tmp_path / "taken.png").mkdir()
    with pytest.raises(InputError, match="cannot write '.*taken.png': Is a directory"):
        write_image(tmp_path / "taken.png", random_rgb(2, 2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken.png"]


def test_outline_draws_the_region_boundary_only() -> None:
    from camrt.visual.overlay import outline

    image = np.zeros((40, 60, 3), np.uint8)
    region = np.zeros((20, 30), bool)
    region[5:15, 10:20] = True  # rows 10..29, columns 20..39 once resized to the image
    out = outline(image, region)
    white = (out == 255).all(axis=2)
    assert white[10, 20:40].all() and white[29, 20:40].all() and white[10:30, 20].all() and white[10:30, 39].all()
    assert not white[12:28, 22:38].any() and not white[:8].any() and image.max() == 0  # input untouched
    with pytest.raises(InputError, match="h×w array"):
        outline(image, np.zeros((2, 2, 2)))
