"""Eigen family: project the feature maps on their first principal direction (one SVD per image)."""

from __future__ import annotations

import numpy as np

from camrt.methods._core import check_pair, relu
from camrt.methods.contract import Method


def principal_projection(features: np.ndarray, center: bool = False) -> np.ndarray:
    """Projection of each image's features, as an ``hw × C`` matrix, on its first right singular vector.

    ``P = X v₁`` with ``X = UΣVᵀ``; the sign of ``v₁`` is chosen so that ``P`` correlates positively
    with the channel-mean map ``(1/C) Σ_k X_k`` (SVD leaves it arbitrary).

    Args:
        features: maps of shape ``(N, C, h, w)``.
        center: subtract each channel's spatial mean from ``X`` before the SVD (PCA, as
            pytorch-grad-cam does); the Eigen-CAM paper projects the raw activations.

    Returns:
        Projections of shape ``(N, h, w)``, before any ReLU.
    """
    n, c, h, w = features.shape
    mat = features.reshape(n, c, h * w).transpose(0, 2, 1)  # (N, hw, C)
    if center:
        mat = mat - mat.mean(axis=1, keepdims=True)
    _, _, vt = np.linalg.svd(mat, full_matrices=False)
    proj = np.einsum("npc,nc->np", mat, vt[:, 0, :])
    ref = features.mean(axis=1).reshape(n, h * w)
    corr = np.einsum("np,np->n", proj - proj.mean(axis=1, keepdims=True), ref - ref.mean(axis=1, keepdims=True))
    proj = np.where(corr[:, None] < 0, -proj, proj)
    return proj.reshape(n, h, w)


def eigencam(activation: np.ndarray, gradient: np.ndarray | None = None, *, center: bool = False) -> np.ndarray:
    """Eigen-CAM: the activation projected on its first principal component; class-agnostic.

    ``L = ReLU(A v₁)`` where ``A`` is reshaped to ``hw × C`` and ``v₁`` is its first right singular
    vector, signed so that the map correlates positively with the channel-mean map.

    The paper takes the SVD of the activations as they are; pytorch-grad-cam centres each channel
    first (``center=True`` reproduces it) and keeps whatever sign LAPACK returns, so its map can come
    out inverted (then mostly removed by its ReLU).

    Paper: https://arxiv.org/abs/2008.00299

    Args:
        activation: target-layer activation ``A``, shape ``(N, C, h, w)``.
        gradient: ignored (Eigen-CAM does not use the class); accepted for a uniform signature.
        center: centre each channel before the SVD, as pytorch-grad-cam does.

    Returns:
        Saliency maps ``(N, h, w)`` after ReLU.

    Raises:
        InputError: if `activation` is not a floating array of shape ``(N, C, h, w)``.
    """
    check_pair(activation)
    return relu(principal_projection(activation, center=center))


def eigengradcam(activation: np.ndarray, gradient: np.ndarray, *, center: bool = True) -> np.ndarray:
    """EigenGrad-CAM: the first principal component of gradient × activation.

    ``L = ReLU(X v₁)`` with ``X = G ⊙ A`` reshaped to ``hw × C`` and centred per channel, ``v₁`` its
    first right singular vector, signed so that the map correlates positively with
    ``Σ_k G_k ⊙ A_k`` (the HiResCAM map).

    The method has no paper; it is defined by pytorch-grad-cam, whose centring camrt keeps by default
    (``G ⊙ A`` has both signs, and without centring the projection can be negative everywhere, leaving
    an empty map). Unlike pytorch-grad-cam, the sign of ``v₁`` is fixed as above instead of left to LAPACK.

    Reference: pytorch-grad-cam ``EigenGradCAM``; https://github.com/jacobgil/pytorch-grad-cam

    Args:
        activation: target-layer activation ``A``, shape ``(N, C, h, w)``.
        gradient: ``G = ∂y_c/∂A``, same shape.
        center: centre each channel of ``G ⊙ A`` before the SVD.

    Returns:
        Saliency maps ``(N, h, w)`` after ReLU.

    Raises:
        InputError: if the shapes are wrong.
    """
    check_pair(activation, gradient)
    return relu(principal_projection(gradient * activation, center=center))


METHODS = (
    Method("eigencam", "First principal component of the activations (class-agnostic)",
           "https://arxiv.org/abs/2008.00299", "gradient", map=eigencam, uses_gradient=False),
    Method("eigengradcam", "First principal component of gradient × activation",
           "https://github.com/jacobgil/pytorch-grad-cam", "gradient", map=eigengradcam),
)
