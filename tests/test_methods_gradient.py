"""camrt.methods.gradient: hand-computed values, then parity with pytorch-grad-cam and TorchCAM on resnet18."""

from __future__ import annotations

import numpy as np
import pytest
import torchcam.methods as tc
from pytorch_grad_cam import GradCAM, GradCAMElementWise, GradCAMPlusPlus, HiResCAM, LayerCAM, XGradCAM

from camrt.errors import InputError
from camrt.methods import (
    abscam,
    abscam_channel_maps,
    cam,
    gradcam,
    gradcam_elementwise,
    gradcampp,
    hirescam,
    layercam,
    normalize,
    relu,
    upsample,
    xgradcam,
)
from tests import references as ref

# One image, two channels, a 1 x 2 map. Channel sums: S0 = 4, S1 = 3.
A = np.array([[[[1.0, 3.0]], [[2.0, 1.0]]]])
G = np.array([[[[0.5, -0.5]], [[1.0, 2.0]]]])


@pytest.mark.parametrize(("fn", "expected"), [
    (gradcam, [3.0, 1.5]),  # w = (0, 1.5)
    (xgradcam, [-0.25 + 8 / 3, -0.75 + 4 / 3]),  # w0 = (0.5 - 1.5) / 4, w1 = (2 + 2) / 3
    (layercam, [2.5, 2.0]),  # ReLU(G) * A summed: (0.5 + 2, 0 + 2)
    (hirescam, [2.5, 0.5]),  # (0.5 + 2, -1.5 + 2)
    (gradcam_elementwise, [2.5, 2.0]),  # (0.5 + 2, 0 + 2): the -1.5 is dropped before the sum
    (abscam, [3.5, 3.0]),  # w = mean |G| = (0.5, 1.5)
    # alpha00 = .25 / (.5 + 4 * .125) = .25; alpha01 has a zero denominator (.5 - 4 * .125) -> 0;
    # alpha10 = 1 / (2 + 3) = .2; alpha11 = 4 / (8 + 3 * 8) = .125; w = (.25 * .5, .2 * 1 + .125 * 2) = (.125, .45)
    (gradcampp, [0.125 + 0.9, 0.375 + 0.45]),
])
def test_hand_computed(fn, expected) -> None:
    np.testing.assert_allclose(fn(A, G), [[expected]], rtol=1e-12)


def test_relu_applied() -> None:
    np.testing.assert_array_equal(gradcam(A, -G), [[[0.0, 0.0]]])  # w = (0, -1.5): all negative
    np.testing.assert_array_equal(xgradcam(np.array([[[[0.0, 0.0]]]]), np.array([[[[1.0, 2.0]]]])), [[[0.0, 0.0]]])


def test_abscam_channel_maps() -> None:
    np.testing.assert_allclose(abscam_channel_maps(A, G), [[[[0.5, 1.5]], [[3.0, 1.5]]]])


def test_cam_reads_classifier_weights_from_a_constant_gradient() -> None:
    constant = np.array([[[[0.25, 0.25]], [[-0.5, -0.5]]]])  # W[c] = (0.5, -1) spread over the 2 positions
    np.testing.assert_allclose(cam(A, constant), [[[0.0, 0.5]]])  # 0.5 * (1, 3) - (2, 1) = (-1.5, 0.5)
    nearly = constant * (1 + 1e-7 * np.array([1.0, -1.0]))  # float rounding stays inside the tolerance
    np.testing.assert_allclose(cam(A, nearly), [[[0.0, 0.5]]], atol=1e-6)


def test_cam_refuses_a_varying_gradient() -> None:
    with pytest.raises(InputError, match="global-average-pool.*gradcam"):
        cam(A, G)


# --- parity on resnet18 / layer4 (and layer3 for Grad-CAM++) --------------------------------------------


def _at_input(maps: np.ndarray) -> np.ndarray:
    return normalize(upsample(maps, ref.SIZE))


@pytest.mark.parametrize(("reference", "fn"), [
    (GradCAM, gradcam), (XGradCAM, xgradcam), (LayerCAM, layercam), (HiResCAM, hirescam),
    (GradCAMElementWise, gradcam_elementwise),
])
def test_matches_pytorch_grad_cam(reference: type, fn) -> None:
    # pytorch-grad-cam scales the low-resolution map to [0, 1] and resizes it with cv2 (bilinear, half-pixel).
    np.testing.assert_allclose(ref.gradcam_reference(reference), _at_input(fn(*ref.layer4())), atol=1e-4)


@pytest.mark.parametrize("layer", ["layer4", "layer3"])
def test_gradcampp_matches_pytorch_grad_cam(layer: str) -> None:
    # pytorch-grad-cam adds 1e-6 to the alpha denominator (camrt follows the paper, no epsilon); with the
    # scaled head |G| ~ 0.4 so the epsilon changes the map by < 1e-3. layer3's gradient varies over the map,
    # which exercises the paper's Σ_ab A_kab · G³_kij denominator (TorchCAM uses Σ_ab A_kab G³_kab instead).
    activation, gradient = ref.layer4() if layer == "layer4" else ref.fixed((layer,))[layer]
    expected = ref.gradcam_reference(GradCAMPlusPlus, layer)
    got = _at_input(gradcampp(activation, gradient))
    np.testing.assert_allclose(expected, got, atol=1e-3)
    assert min(ref.pearson(e, g) for e, g in zip(expected, got, strict=True)) >= 0.999


@pytest.mark.parametrize(("reference", "fn"), [
    (tc.GradCAM, gradcam), (tc.XGradCAM, xgradcam), (tc.LayerCAM, layercam),
])
def test_matches_torchcam(reference: type, fn) -> None:
    (expected,) = ref.torchcam_reference(reference)
    np.testing.assert_allclose(expected, normalize(fn(*ref.layer4())), atol=1e-4)


def test_cam_matches_torchcam() -> None:
    activation, gradient = ref.layer4()
    assert cam(activation, gradient).shape == activation.shape[:1] + activation.shape[2:]
    # TorchCAM's CAM does not rectify before normalising (its docstring formula does): compare its raw map,
    # then apply the ReLU that camrt applies.
    (raw,) = ref.torchcam_reference(tc.CAM, normalized=False, fc_layer="fc")
    assert raw.min() < 0  # the comparison below would not see a missing ReLU otherwise
    np.testing.assert_allclose(normalize(relu(raw)), normalize(cam(activation, gradient)), atol=1e-4)
    fc = ref.model().fc.weight.detach().numpy()[ref.CLASSES]
    np.testing.assert_allclose(gradient.sum(axis=(2, 3)), fc, rtol=1e-5, atol=1e-6 * np.abs(fc).max())


def test_cam_refuses_a_layer_without_pooled_head() -> None:
    with pytest.raises(InputError, match="gradcam"):
        cam(*ref.fixed(("layer3",))["layer3"])


def test_gradcampp_differs_from_torchcam_on_purpose() -> None:
    # TorchCAM 0.5.0 divides a masked copy of alpha (`alpha[mask].div_(...)`), so its alpha stays G² and its
    # weights are Σ_ij G² ReLU(G). camrt follows the paper; this test pins down the reference's behaviour.
    activation, gradient = ref.layer4()
    (expected,) = ref.torchcam_reference(tc.GradCAMpp)
    undivided = (gradient**2 * relu(gradient)).sum(axis=(2, 3))
    np.testing.assert_allclose(expected, normalize(relu(np.einsum("nc,nchw->nhw", undivided, activation))), atol=1e-4)
    assert np.abs(expected - normalize(gradcampp(activation, gradient))).max() > 0.05
