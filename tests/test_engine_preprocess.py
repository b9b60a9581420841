"""camrt.engine.preprocess: numpy resize + normalisation against torch's antialiased bilinear
interpolation (what torchvision's Resize(antialias=True) does on tensors), and the image conversions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from camrt.engine.preprocess import preprocess, to_rgb_float
from camrt.errors import InputError
from camrt.manifest import Preprocessing

IMAGENET = Preprocessing()
OTHER = Preprocessing(mean=(0.5, 0.25, 0.0), std=(0.5, 2.0, 0.1))


def reference(image: np.ndarray, size: tuple[int, int], prep: Preprocessing) -> np.ndarray:
    """torch.nn.functional.interpolate(bilinear, antialias=True, align_corners=False), then (x - mean) / std,
    in float64 on [0, 1] pixels."""
    t = torch.from_numpy(image.astype(np.float64) / 255.0).permute(2, 0, 1)[None]
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


def test_rgba_drops_alpha() -> None:
    rgb = random_image(3, 4, seed=7)
    rgba = np.dstack([rgb, np.zeros((3, 4), np.uint8)])  # fully transparent: alpha is ignored here
    np.testing.assert_array_equal(to_rgb_float(rgba), to_rgb_float(rgb))


@pytest.mark.parametrize(("image", "fragment"), [
    (np.zeros((4, 4, 3), np.float32), "uint8 or uint16 arrays (got float32)"),
    (np.zeros((4, 4, 3), np.int32), "uint8 or uint16"),
    (np.zeros((4, 4, 3), bool), "uint8 or uint16"),
    (np.zeros((4, 4, 2), np.uint8), "got shape (4, 4, 2)"),
    (np.zeros((4, 4, 5), np.uint8), "H×W×4 (RGBA)"),
    (np.zeros((1, 4, 4, 3), np.uint8), "got shape (1, 4, 4, 3)"),
    (np.zeros((4,), np.uint8), "got shape (4,)"),
    (np.zeros((0, 4, 3), np.uint8), "got shape (0, 4, 3)"),
])
def test_errors(image, fragment) -> None:
    with pytest.raises(InputError) as e:
        to_rgb_float(image)
    assert fragment in str(e.value), str(e.value)


def test_preprocess_reports_a_bad_image() -> None:
    with pytest.raises(InputError, match="float64"):
        preprocess([random_image(4, 4, seed=8), np.zeros((4, 4, 3))], (4, 4), IMAGENET)
