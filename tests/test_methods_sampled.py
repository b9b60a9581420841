"""camrt.methods.sampled: copies of the input, hand-computed maps, and parity with TorchCAM's SmoothGradCAMpp."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchcam.methods as tc

from camrt.errors import InputError
from camrt.methods import (
    METHODS,
    SampleContext,
    combine,
    gradcampp,
    integratedgradcam,
    integratedgradcam_samples,
    normalize,
    relu,
    smoothgradcampp,
    smoothgradcampp_samples,
)
from camrt.methods.sampled import IntegratedGradCAMOptions, SmoothGradCAMppOptions
from tests import references as ref

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)[None, :, None, None]
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)[None, :, None, None]
BLACK = np.zeros((1, 1, 1, 1), np.float32)  # a baseline for the methods that do not use it (Smooth Grad-CAM++)


def eager_samples(copies: np.ndarray, layer: str) -> tuple[np.ndarray, np.ndarray]:
    """Run all copies (N, S, C, H, W) in one batch, each for its source image's class, as the engine must."""
    n, s = copies.shape[:2]
    activation, gradient = ref.eager(torch.from_numpy(copies.reshape(n * s, *copies.shape[2:])), (layer,))[layer]
    return activation.reshape(n, s, *activation.shape[1:]), gradient.reshape(n, s, *gradient.shape[1:])


# --- Smooth Grad-CAM++ ----------------------------------------------------------------------------------


def test_smooth_samples_are_x_plus_gaussian_noise() -> None:
    x = np.arange(12, dtype=np.float32).reshape(1, 3, 2, 2)
    copies = smoothgradcampp_samples(SampleContext(x, np.random.default_rng(5), BLACK),
                                     SmoothGradCAMppOptions(n=3, sigma=0.5))
    assert copies.shape == (1, 3, 3, 2, 2) and copies.dtype == np.float32
    noise = np.random.default_rng(5).normal(0.0, 0.5, size=(1, 3, 3, 2, 2))
    np.testing.assert_allclose(copies, x[:, None] + noise, atol=1e-6)
    np.testing.assert_array_equal(smoothgradcampp_samples(SampleContext(x, np.random.default_rng(0), BLACK),
                                                          SmoothGradCAMppOptions(sigma=0.0))[0, 3], x[0])
    big = smoothgradcampp_samples(SampleContext(np.zeros((2, 1, 50, 50), np.float32), np.random.default_rng(1), BLACK),
                                  SmoothGradCAMppOptions())
    assert big.shape == (2, 4, 1, 50, 50) and abs(big.std() - 0.3) < 0.01  # TorchCAM's defaults n=4, σ=0.3


def test_smooth_samples_reject_bad_options() -> None:
    with pytest.raises(InputError, match="option n must be a positive integer, got 0"):
        SmoothGradCAMppOptions(n=0)
    with pytest.raises(InputError, match="option n must be a positive integer, got 0"):
        METHODS["smoothgradcam++"].configure({"n": 0})
    with pytest.raises(InputError, match="x must be"):
        smoothgradcampp_samples(SampleContext(np.zeros((3, 4, 4), np.float32), np.random.default_rng(0), BLACK),
                                SmoothGradCAMppOptions())


def test_smooth_hand_computed() -> None:
    # One channel, map 1 x 2, A = (1, 3) so Σ A = 4. Copies' gradients (1, -1) and (1, 1):
    # D1 = (1, 0), D2 = (1, 1), D3 = (1, 0); alpha = D2 / (2 D2 + 4 D3) = (1/6, 1/2);
    # w = Σ alpha ReLU(D1) = 1/6; map = (1/6, 3/6). (TorchCAM's ReLU of the last copy's gradient would give 2/3.)
    activation = np.array([[[[1.0, 3.0]]]])
    sample_gradient = np.array([[[[[1.0, -1.0]]], [[[1.0, 1.0]]]]])
    sample_activation = np.full_like(sample_gradient, 99.0)  # not used: the input's own activation is
    out = smoothgradcampp(activation, np.zeros_like(activation), sample_activation, sample_gradient)
    np.testing.assert_allclose(out, [[[1 / 6, 0.5]]], rtol=1e-12)


def test_smooth_rejects_mismatched_samples() -> None:
    a = np.ones((1, 2, 3, 3))
    with pytest.raises(InputError, match="do not match"):
        smoothgradcampp(a, a, np.ones((1, 4, 2, 3, 4)), np.ones((1, 4, 2, 3, 4)))


def test_smooth_without_noise_is_gradcampp() -> None:
    # layer3: its gradient depends on the input (layer4's does not, behind a GAP -> linear head).
    x = ref.image().numpy()
    activation, gradient = ref.fixed(("layer3",))["layer3"]
    copies = smoothgradcampp_samples(SampleContext(x, np.random.default_rng(0), BLACK),
                                     SmoothGradCAMppOptions(sigma=0.0))
    sample_activation, sample_gradient = eager_samples(copies, "layer3")
    expected = gradcampp(activation, gradient)
    np.testing.assert_allclose(smoothgradcampp(activation, gradient, sample_activation, sample_gradient), expected,
                               rtol=1e-4, atol=1e-4 * expected.max())


def test_smooth_matches_torchcam_with_the_same_noise() -> None:
    # TorchCAM's SmoothGradCAMpp draws its noise from torch.distributions; it is fed camrt's copies here.
    # TorchCAM 0.5.0 differs from the paper, and from camrt, in three ways, composed explicitly below:
    # (1) it rectifies the LAST noisy copy's gradient instead of the mean gradient D1; (2) it combines the
    # weights with the LAST copy's activation instead of the input's; (3) its alpha denominator uses
    # Σ_ab A_kab D3_kab instead of Σ_ab A_kab · D3_kij. On layer4 (gradient constant over the map and across
    # copies) (1) and (3) vanish, so the copies enter only through (2), which pins down the shared noise.
    x = ref.image()
    method = METHODS["smoothgradcam++"]
    copies = method.samples(SampleContext(x.numpy(), np.random.default_rng(0), BLACK), method.configure())
    noise = iter(torch.from_numpy(copies - x.numpy()[:, None]).unbind(1))

    class SameNoise:
        def sample(self, shape: torch.Size) -> torch.Tensor:
            out = next(noise)
            assert out.shape == shape
            return out

    net = ref.model()
    with ref.native_kernels(), tc.SmoothGradCAMpp(net, "layer4") as extractor:
        extractor._distrib = SameNoise()
        net(x)
        (expected,) = [m.numpy() for m in extractor(class_idx=ref.CLASSES)]

    activation, gradient = ref.layer4()
    sample_activation, sample_gradient = eager_samples(copies, "layer4")
    d2, d3 = (sample_gradient**2).mean(axis=1), (sample_gradient**3).mean(axis=1)
    alpha = d2 / (2 * d2 + (d3 * activation).sum(axis=(2, 3), keepdims=True) + 1e-8)
    weights = (alpha * relu(sample_gradient[:, -1])).sum(axis=(2, 3))
    torchcam_variant = normalize(relu(combine(weights, sample_activation[:, -1])))
    np.testing.assert_allclose(expected, torchcam_variant, atol=1e-4)

    # camrt itself combines with the input's activation: here that equals Grad-CAM++ of the input.
    got = smoothgradcampp(activation, gradient, sample_activation, sample_gradient)
    np.testing.assert_allclose(got, gradcampp(activation, gradient), rtol=1e-4, atol=1e-4 * got.max())
    assert np.abs(expected - normalize(got)).max() > 0.01


# --- Integrated Grad-CAM ---------------------------------------------------------------------------------


def test_integrated_samples_are_the_path_interior() -> None:
    x = np.full((1, 1, 1, 2), 2.0, dtype=np.float32)
    copies = integratedgradcam_samples(SampleContext(x, np.random.default_rng(0), np.float32(-1.0)),
                                       IntegratedGradCAMOptions(steps=4))
    # b + (l/4)(x - b) for l = 1, 2, 3 with b = -1, x = 2: -0.25, 0.5, 1.25
    np.testing.assert_allclose(copies[0, :, 0, 0, 0], [-0.25, 0.5, 1.25])
    assert copies.shape == (1, 3, 1, 1, 2) and copies.dtype == np.float32


def test_integrated_samples_reject_bad_options() -> None:
    x = np.zeros((1, 3, 4, 4), np.float32)
    with pytest.raises(InputError, match="option steps must be ≥ 2"):
        IntegratedGradCAMOptions(steps=1)
    with pytest.raises(InputError, match="option steps must be ≥ 2"):
        METHODS["integratedgradcam"].configure({"steps": 1})
    with pytest.raises(InputError, match="broadcast"):
        integratedgradcam_samples(SampleContext(x, np.random.default_rng(0), np.zeros(2)),
                                  IntegratedGradCAMOptions(steps=3))


def test_integrated_hand_computed() -> None:
    # m = 2: path point l = 1 from the samples, l = 2 is the input. Two channels on a 1 x 2 map.
    # l = 1: w = (1, -1):  (1, 0) - (0, 2) = (1, -2) -> ReLU (1, 0)
    # l = 2: w = (.5, 2):  .5 (2, 2) + 2 (1, 0) = (3, 1)
    # mean of the rectified maps: (2, 0.5). (Rectifying after the sum would give (2, 0).)
    sample_activation = np.array([[[[[1.0, 0.0]], [[0.0, 2.0]]]]])
    sample_gradient = np.array([[[[[1.0, 1.0]], [[-1.0, -1.0]]]]])
    activation = np.array([[[[2.0, 2.0]], [[1.0, 0.0]]]])
    gradient = np.array([[[[0.0, 1.0]], [[2.0, 2.0]]]])
    out = integratedgradcam(activation, gradient, sample_activation, sample_gradient)
    np.testing.assert_allclose(out, [[[2.0, 0.5]]], rtol=1e-12)


def test_integrated_on_resnet_follows_the_engine_contract() -> None:
    method = METHODS["integratedgradcam"]
    assert method.family == "sampled" and method.options is IntegratedGradCAMOptions
    x = ref.image().numpy()
    black = (0.0 - IMAGENET_MEAN) / IMAGENET_STD  # a black image after ImageNet preprocessing
    copies = method.samples(SampleContext(x, np.random.default_rng(0), black), method.configure({"steps": 4}))
    assert copies.shape == (2, 3, 3, *ref.SIZE)
    np.testing.assert_allclose(copies[:, 0], black + (x - black) / 4, atol=1e-6)
    activation, gradient = ref.fixed(("layer3",))["layer3"]
    sample_activation, sample_gradient = eager_samples(copies, "layer3")
    got = method.map(activation, gradient, sample_activation, sample_gradient)
    # Independently: Grad-CAM of each of the 4 path points, each run on its own, rectified, averaged.
    per_point = []
    for frac in (0.25, 0.5, 0.75, 1.0):
        point = torch.from_numpy((black + frac * (x - black)).astype(np.float32))
        a, g = ref.eager(point, ("layer3",))["layer3"]
        per_point.append(relu(combine(g.mean(axis=(2, 3)), a)))
    np.testing.assert_allclose(got, np.mean(per_point, axis=0), rtol=1e-4, atol=1e-4 * got.max())
