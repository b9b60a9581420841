"""camrt.methods.eigen: hand-computed projections, then parity with pytorch-grad-cam's EigenCAM / EigenGradCAM."""

from __future__ import annotations

import numpy as np
import pytest
from pytorch_grad_cam import EigenCAM, EigenGradCAM
from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

from camrt.methods import eigencam, eigengradcam, normalize, relu, upsample
from camrt.methods.eigen import principal_projection
from tests import references as ref

# A rank-1 activation A_k(p) = u_p v_k on a 1 x 3 map with two channels: X = u vᵀ (hw x C), so
# v₁ = ±v / |v| and X v₁ = ±|v| u = ±5 u.
U = np.array([1.0, 2.0, 3.0])
V = np.array([3.0, 4.0])
RANK1 = (V[:, None] * U[None, :]).reshape(1, 2, 1, 3)


def test_eigencam_rank_one() -> None:
    np.testing.assert_allclose(eigencam(RANK1), [[[5.0, 10.0, 15.0]]], rtol=1e-12)


def test_eigencam_sign_follows_channel_mean() -> None:
    # Negated activations: the channel-mean map is -3.5 u, so the projection must be -5 u, removed by the ReLU.
    np.testing.assert_allclose(principal_projection(-RANK1), [[[-5.0, -10.0, -15.0]]], rtol=1e-12)
    np.testing.assert_array_equal(eigencam(-RANK1), np.zeros((1, 1, 3)))


def test_eigencam_centered_is_pca() -> None:
    # Centring removes the channel means: (u - 2) vᵀ, projection ±5 (u - 2) = (-5, 0, 5), sign from the mean map.
    np.testing.assert_allclose(principal_projection(RANK1, center=True), [[[-5.0, 0.0, 5.0]]], atol=1e-12)
    np.testing.assert_allclose(eigencam(RANK1, center=True), [[[0.0, 0.0, 5.0]]], atol=1e-12)


@pytest.mark.parametrize(("g", "expected"), [
    ([1.0, -0.5], np.sqrt(13) * U),  # G ⊙ A = u (3, -2)ᵀ: projection sqrt(13) u, HiResCAM map +1 · u
    ([1.0, -1.0], 0 * U),  # G ⊙ A = u (3, -4)ᵀ: HiResCAM map is -u, so the projection is -5 u -> ReLU -> 0
])
def test_eigengradcam_rank_one(g: list[float], expected: np.ndarray) -> None:
    gradient = np.broadcast_to(np.array(g)[None, :, None, None], RANK1.shape)
    np.testing.assert_allclose(eigengradcam(RANK1, gradient, center=False), expected[None, None, :], atol=1e-12)


def test_eigengradcam_centers_by_default() -> None:
    # G ⊙ A = u (3, -2)ᵀ, centred: (u - 2)(3, -2)ᵀ, projection sqrt(13) (-1, 0, 1) signed by the HiResCAM map u.
    gradient = np.broadcast_to(np.array([1.0, -0.5])[None, :, None, None], RANK1.shape)
    np.testing.assert_allclose(eigengradcam(RANK1, gradient), [[[0.0, 0.0, np.sqrt(13)]]], atol=1e-12)


def test_eigencam_batch_is_per_image() -> None:
    batch = np.concatenate([RANK1, -2 * RANK1[:, ::-1]])
    out = principal_projection(batch)
    np.testing.assert_allclose(out[0], principal_projection(batch[:1])[0], rtol=1e-12)
    np.testing.assert_allclose(out[1], principal_projection(batch[1:])[0], rtol=1e-12)


# --- parity on resnet18 / layer4 ----------------------------------------------------------------------


@pytest.mark.parametrize(("reference", "features"), [
    (EigenCAM, lambda a, g: a), (EigenGradCAM, lambda a, g: g * a),
])
def test_centered_matches_pytorch_grad_cam(reference: type, features) -> None:
    # pytorch-grad-cam centres the matrix before the SVD and keeps LAPACK's sign; camrt reproduces it with
    # center=True up to that sign (camrt's default, center=False, follows the paper). Compare the raw
    # projections up to sign, then the full pipeline with grad-cam's sign applied to camrt's projection.
    activation, gradient = ref.layer4()
    mine = principal_projection(features(activation, gradient), center=True)
    theirs = get_2d_projection(features(activation, gradient))
    signs = np.sign([ref.pearson(t, m) for t, m in zip(theirs, mine, strict=True)])
    np.testing.assert_allclose(theirs, signs[:, None, None] * mine, atol=1e-4 * np.abs(mine).max())
    expected = ref.gradcam_reference(reference)
    np.testing.assert_allclose(expected, normalize(upsample(relu(signs[:, None, None] * mine), ref.SIZE)), atol=1e-4)


def test_camrt_sign_correlates_with_the_mean_map() -> None:
    activation, gradient = ref.layer4()
    for got, mean_map in ((principal_projection(activation), activation.mean(axis=1)),
                          (principal_projection(gradient * activation), (gradient * activation).mean(axis=1))):
        assert all(ref.pearson(g, m) > 0 for g, m in zip(got, mean_map, strict=True))
    # On this random network Eigen-CAM's paper (uncentred) map and pytorch-grad-cam's (centred) one are alike
    # (Pearson ~0.87) once both are signed the same way; they are not equal.
    paper = normalize(eigencam(activation))
    centred = normalize(eigencam(activation, center=True))
    assert all(ref.pearson(p, c) > 0.5 for p, c in zip(paper, centred, strict=True))
