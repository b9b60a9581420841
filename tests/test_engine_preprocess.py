"""camrt.engine.preprocess: numpy resize + normalisation against torch's antialiased bilinear
interpolation (what torchvision's Resize(antialias=True) does on tensors), the streamed resize's
memory, the image conversions, and the check of preprocessed batches."""

from __future__ import annotations

import tracemalloc

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812

import camrt.engine.preprocess as pp
from camrt.engine.preprocess import check_batch, preprocess, to_rgb_float
from camrt.errors import InputError
from camrt.manifest import Preprocessing
from camrt.visual.overlay import read_image

IMAGENET = Preprocessing()
OTHER = Preprocessing(mean=(0.5, 0.25, 0.0), std=(0.5, 2.0, 0.1))


def reference(image: np.ndarray, size: tuple[int, int], prep: Preprocessing, scale: float = 255.0) -> np.ndarray:
    """torch.nn.functional.interpolate(bilinear, antialias=True, align_corners=False), then (x - mean) / std,
    in float64 on [0, 1] pixels (`image` / `scale`, H×W×3)."""
    t = torch.from_numpy(image.astype(np.float64) / scale).permute(2, 0, 1)[None]
    t = F.interpolate(t, size=size, mode="bilinear", antialias=True, align_corners=False)[0]
    mean = torch.tensor(prep.mean, dtype=torch.float64)[:, None, None]
    std = torch.tensor(prep.std, dtype=torch.float64)[:, None, None]
    return ((t - mean) / std).numpy()


def random_image(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize(("shape", "size"), [
    ((64, 64), (32, 32)),  # downscale by 2
    ((224, 300), (32, 32)),  # downscale by non-integer factors, different per axis
    ((97, 41), (13, 7)),  # odd sizes
    ((500, 20), (8, 8)),  # strong antialiasing on one axis
    ((16, 16), (32, 32)),  # upscale by 2
    ((5, 7), (32, 48)),  # upscale by non-integer factors
    ((2, 3), (9, 9)),  # tiny source: the borders are clamped
    ((40, 10), (20, 30)),  # downscale on one axis, upscale on the other
    ((32, 32), (32, 32)),  # identity
    ((1, 1), (4, 4)),  # a single pixel
])
@pytest.mark.parametrize("prep", [IMAGENET, OTHER], ids=["imagenet", "other"])
def test_matches_torch_antialiased_bilinear(shape, size, prep) -> None:
    image = random_image(*shape, seed=shape[0] * 1000 + shape[1])
    got = preprocess([image], size, prep)
    assert got.shape == (1, 3, *size) and got.dtype == np.float32
    np.testing.assert_allclose(got[0], reference(image, size, prep), rtol=0, atol=1e-4)


def test_identity_size_is_only_normalised() -> None:
    image = random_image(8, 8, seed=1)
    mean, std = np.array(OTHER.mean)[:, None, None], np.array(OTHER.std)[:, None, None]
    expected = (image.transpose(2, 0, 1) / 255.0 - mean) / std
    np.testing.assert_allclose(preprocess([image], (8, 8), OTHER)[0], expected, atol=1e-6)


def test_antialiasing_matters() -> None:
    # One bright column in four, shrunk 4×: antialiasing gives the mean (0.25) away from the borders;
    # plain bilinear sampling reads the two dark columns in the middle of each group and gives 0.
    row = np.tile(np.array([255, 0, 0, 0], np.uint8), 16)
    image = np.repeat(np.broadcast_to(row, (64, 64))[:, :, None], 3, axis=2)
    plain = Preprocessing(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    got = preprocess([image], (16, 16), plain)
    np.testing.assert_allclose(got[..., 1:-1], 0.25, atol=1e-6)
    t = torch.from_numpy(image / 255.0).permute(2, 0, 1)[None]
    aliased = F.interpolate(t, size=(16, 16), mode="bilinear", antialias=False, align_corners=False)
    np.testing.assert_allclose(aliased.numpy()[..., 1:-1], 0.0)  # the criterion above tells the two apart


def test_batch_of_different_sizes_keeps_order() -> None:
    images = [random_image(40, 50, seed=2), random_image(10, 12, seed=3), random_image(32, 32, seed=4)]
    got = preprocess(images, (32, 32), IMAGENET)
    assert got.shape == (3, 3, 32, 32)
    for i, image in enumerate(images):
        np.testing.assert_allclose(got[i], reference(image, (32, 32), IMAGENET), atol=1e-4)


def test_channel_order_is_kept() -> None:
    red = np.zeros((4, 4, 3), np.uint8)
    red[:, :, 0] = 255
    plain = Preprocessing(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    got = preprocess([red], (4, 4), plain)[0]
    np.testing.assert_array_equal(got[0], 1.0)
    np.testing.assert_array_equal(got[1:], 0.0)


# --- to_rgb_float -----------------------------------------------------------------------------------------


def test_rgb_uint8() -> None:
    image = random_image(3, 5, seed=5)
    got = to_rgb_float(image)
    assert got.shape == (3, 5, 3) and got.dtype == np.float32
    np.testing.assert_allclose(got, image / 255.0, atol=1e-7)
    assert to_rgb_float(np.full((2, 2, 3), 255, np.uint8)).max() == 1.0


def test_uint16_is_scaled_by_65535() -> None:
    image = np.array([[[0, 257, 65535]]], np.uint16)
    np.testing.assert_allclose(to_rgb_float(image), [[[0.0, 1 / 255, 1.0]]], atol=1e-7)
    eight = random_image(3, 4, seed=6)
    np.testing.assert_allclose(to_rgb_float(eight.astype(np.uint16) * 257), to_rgb_float(eight), atol=1e-7)


@pytest.mark.parametrize("gray_shape", [(3, 4), (3, 4, 1)])
def test_grayscale_is_replicated(gray_shape) -> None:
    gray = np.arange(12, dtype=np.uint8).reshape(gray_shape) * 20
    got = to_rgb_float(gray)
    assert got.shape == (3, 4, 3)
    for c in range(3):
        np.testing.assert_allclose(got[:, :, c], gray.reshape(3, 4) / 255.0, atol=1e-7)


def test_rgba_is_composited_over_white() -> None:
    rgba = np.zeros((1, 4, 4), np.uint8)
    rgba[0] = [[200, 100, 0, 255], [200, 100, 0, 128], [200, 100, 0, 0], [10, 20, 30, 64]]
    a = rgba[0, :, 3:] / 255.0
    expected = (rgba[0, :, :3] / 255.0) * a + (1.0 - a)  # rgb·a + white·(1 − a)
    got = to_rgb_float(rgba)
    np.testing.assert_allclose(got[0], expected, atol=1e-7)
    np.testing.assert_allclose(got[0, 1], [200 / 255 * 128 / 255 + 127 / 255, 100 / 255 * 128 / 255 + 127 / 255,
                                           127 / 255], atol=1e-7)  # the half-transparent pixel, by hand
    np.testing.assert_array_equal(got[0, 0], rgba[0, 0, :3] / np.float32(255))  # opaque: the RGB itself
    np.testing.assert_array_equal(got[0, 2], 1.0)  # transparent: white
    wide = rgba.astype(np.uint16) * 257  # the same on the 16-bit scale
    np.testing.assert_allclose(to_rgb_float(wide), got, atol=1e-6)


def test_rgba_rule_is_the_one_of_camrt_explain(tmp_path) -> None:
    # read_image (camrt explain) composites the file's RGBA over white and rounds to uint8; to_rgb_float
    # (Engine.explain) composites the same array, unrounded: within half a grey level.
    rng = np.random.default_rng(9)
    rgba = rng.integers(0, 256, (6, 7, 4), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "a.png"), cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))
    read, note = read_image(tmp_path / "a.png")
    assert note == "alpha composited over white"
    np.testing.assert_allclose(to_rgb_float(rgba) * 255.0, read, atol=0.5 + 1e-4)


def test_preprocess_converts_like_to_rgb_float() -> None:
    # Gray, gray×1, RGBA and 16-bit images, streamed, against torch on the same images converted whole.
    rng = np.random.default_rng(10)
    gray = rng.integers(0, 256, (90, 70), dtype=np.uint8)
    rgba = rng.integers(0, 256, (90, 70, 4), dtype=np.uint8)
    wide = rng.integers(0, 65536, (90, 70, 3), dtype=np.uint16)
    got = preprocess([gray, gray[:, :, None], rgba, wide], (24, 32), OTHER)
    for i, image in enumerate([gray, gray[:, :, None], rgba, wide]):
        np.testing.assert_allclose(got[i], reference(to_rgb_float(image), (24, 32), OTHER, scale=1.0), atol=1e-4)


@pytest.mark.parametrize(("image", "fragment"), [
    (np.zeros((4, 4, 3), np.float32), "uint8 or uint16 arrays (got float32)"),
    (np.zeros((4, 4, 3), np.int32), "uint8 or uint16"),
    (np.zeros((4, 4, 3), bool), "uint8 or uint16"),
    (np.zeros((4, 4, 2), np.uint8), "got shape (4, 4, 2)"),
    (np.zeros((4, 4, 5), np.uint8), "H×W×4 (RGBA)"),
    (np.zeros((1, 4, 4, 3), np.uint8), "got shape (1, 4, 4, 3)"),
    (np.zeros((4,), np.uint8), "got shape (4,)"),
    (np.zeros((0, 4, 3), np.uint8), "got shape (0, 4, 3)"),
    (np.zeros((4, 0), np.uint8), "at least one row and one column; got shape (4, 0)"),
    (np.zeros((4, 4, 3), np.float16), "convert them first"),
    (np.zeros((4, 4, 3), np.int64), "convert them first"),
])
def test_errors(image, fragment) -> None:
    with pytest.raises(InputError) as e:
        to_rgb_float(image)
    assert fragment in str(e.value), str(e.value)


def test_preprocess_reports_a_bad_image() -> None:
    with pytest.raises(InputError, match="float64"):
        preprocess([random_image(4, 4, seed=8), np.zeros((4, 4, 3))], (4, 4), IMAGENET)
    with pytest.raises(InputError, match=r"^image 1: an image needs at least one row"):
        preprocess([random_image(4, 4, seed=8), np.zeros((3, 0, 3), np.uint8)], (4, 4), IMAGENET)


# --- the streamed resize ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("shape", "size"), [
    ((1080, 1920), (224, 224)),  # a video frame
    ((900, 60), (7, 5)),  # runs of 128 rows (> 64): summed in float64
    ((60, 900), (5, 7)),  # ... and of 128 columns
    ((150, 2000), (224, 224)),  # rows grow, columns shrink
])
def test_large_images_match_torch(shape, size) -> None:
    image = random_image(*shape, seed=shape[0] + shape[1])
    np.testing.assert_allclose(preprocess([image], size, OTHER)[0], reference(image, size, OTHER), rtol=0, atol=1e-4)


@pytest.mark.parametrize("kind", ["rgb", "rgba", "gray"])
def test_strips_and_blocks_do_not_change_the_result(monkeypatch, kind) -> None:
    # Tiny strips and blocks: many strips of columns, runs of rows split across blocks, against one piece.
    rng = np.random.default_rng(11)
    image = rng.integers(0, 256, {"rgb": (300, 410, 3), "rgba": (300, 410, 4), "gray": (300, 410)}[kind], np.uint8)
    whole = preprocess([image], (23, 31), OTHER)
    monkeypatch.setattr(pp, "_STRIP_VALUES", 23 * 3 * 40)  # strips of ~40 columns, cut at run starts
    monkeypatch.setattr(pp, "_BLOCK_VALUES", 40 * 3 * 3)  # blocks of 2-3 rows of a strip, inside runs of ~13
    assert len(pp._strips(410, pp._axis(410, 31), 23, 3)) > 5
    np.testing.assert_allclose(preprocess([image], (23, 31), OTHER), whole, rtol=0, atol=1e-5)
    np.testing.assert_allclose(whole[0], reference(to_rgb_float(image), (23, 31), OTHER, scale=1.0), atol=1e-4)


def test_memory_stays_small() -> None:
    # The old resize made a float32 copy of the image and a K-tap gather of its rows (12× the image at
    # 6000×6000); the streamed one holds a strip and a few blocks of a few MB at most.
    image = random_image(3000, 3000, seed=12)
    preprocess([image], (224, 224), IMAGENET)  # warm-up: one-off allocations
    tracemalloc.start()
    try:
        preprocess([image], (224, 224), IMAGENET)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < image.nbytes / 2, (peak, image.nbytes)


# --- check_batch ------------------------------------------------------------------------------------------


def test_check_batch_returns_a_good_batch_itself() -> None:
    x = np.zeros((2, 3, 4, 5), np.float32)
    assert check_batch(x, (3, 4, 5)) is x


@pytest.mark.parametrize(("x", "fragment"), [
    (np.zeros((2, 3, 4, 6), np.float32), "a preprocessed batch must be N×3×4×5 (the model's input), got shape (2, "),
    (np.zeros((3, 4, 5), np.float32), "got shape (3, 4, 5)"),
    (np.zeros((2, 3, 4, 5), np.float64), "must be float32, got float64"),
    (np.zeros((0, 3, 4, 5), np.float32), "no images given"),
])
def test_check_batch_errors(x, fragment) -> None:
    with pytest.raises(InputError) as e:
        check_batch(x, (3, 4, 5))
    assert fragment in str(e.value), str(e.value)


def test_check_batch_names_the_images_with_nan_or_inf() -> None:
    x = np.zeros((4, 3, 4, 5), np.float32)
    x[1, 0, 2, 3] = np.nan
    with pytest.raises(InputError, match=r"the batch has NaN or infinite values \(image 1\); "):
        check_batch(x, (3, 4, 5))
    x[3, 2, 0, 0] = -np.inf
    with pytest.raises(InputError, match=r"\(images 1, 3\)"):
        check_batch(x, (3, 4, 5))
    big = np.full((2, 3, 4, 5), np.finfo(np.float32).max, np.float32)  # large but finite: accepted
    assert check_batch(big, (3, 4, 5)) is big


def test_nonfinite_images_is_exact_when_a_sum_overflows():
    """Large finite values whose float32 sum overflows are finite; a NaN or an infinity is found in
    its own image."""
    from camrt.engine.preprocess import nonfinite_images

    big = np.full((3, 4, 5), 3e38, np.float32)
    assert nonfinite_images(big) == []
    big[1, 2, 3], big[2, 0, 0] = np.nan, -np.inf
    assert nonfinite_images(big, np.zeros((3, 2), np.float32)) == [1, 2]
    assert nonfinite_images(np.full((2, 3), 6e4, np.float16)) == []


@pytest.mark.parametrize("where", [0, 5000, 3 * 17 * 1024 + 7, 4 * (3 * 17 * 1024 + 9) - 1])  # last: remainder
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_nonfinite_images_finds_one_value_in_a_large_array(where, value):
    """Large arrays are summed column-wise first (`_total`): one NaN or infinity anywhere, in the
    rows of 1024 or in the remainder after them, in a contiguous array or a strided view, is found
    in its image; opposite infinities in different columns and overflowing sums are told apart from
    finite arrays as with small ones."""
    from camrt.engine.preprocess import nonfinite_images

    a = np.random.default_rng(0).normal(size=(4, 3 * 17 * 1024 + 9)).astype(np.float32)
    assert nonfinite_images(a) == []
    a.reshape(-1)[where] = value
    assert nonfinite_images(a) == [where // a.shape[1]]
    assert nonfinite_images(a[:, ::-1]) == [where // a.shape[1]]  # not contiguous: summed as a whole
    b = np.zeros((4, 64, 1024), np.float32)
    b[1, 0, 3], b[2, 5, 4] = np.inf, -np.inf  # NaN only in the total of the column sums
    assert nonfinite_images(b) == [1, 2]
    assert nonfinite_images(np.full((4, 64, 1024), 3e38, np.float32)) == []
