"""Gradient family: one forward and one backward pass give the activation ``A`` and the gradient
``G = ∂y_c/∂A`` of the target layer, and each method is a small function of the two.

Every function takes ``activation`` and ``gradient`` of shape ``(N, C, h, w)`` and returns the
saliency map ``(N, h, w)`` after the method's ReLU, before normalisation and upsampling (see
`camrt.methods.normalize` and `camrt.methods.upsample`).
"""

from __future__ import annotations

import numpy as np

from camrt.errors import InputError
from camrt.methods._core import check_pair, combine, relu
from camrt.methods.contract import Method

# CAM: how far a channel's gradient may vary over the map (relative to its largest magnitude in the
# image) and still count as spatially constant. A GAP -> linear head gives exactly equal values; rounding
# in float32 stays far below this.
CONSTANT_GRADIENT_RTOL = 1e-5


def cam(activation: np.ndarray, gradient: np.ndarray) -> np.ndarray:
    """CAM: feature maps weighted by the classifier row of class c, for global-average-pool → linear heads.

    ``L = ReLU(Σ_k w_k A_k)``, ``w_k = W[c, k] = Σ_ij G_kij``: after a GAP → linear head
    ``G_kij = W[c, k] / (h·w)`` at every position, so the classifier weights are read off the gradient.
    As in TorchCAM's formula (its code skips this ReLU) and every other method here, the map is
    rectified; Zhou et al. threshold the map instead, which ignores negative values as well.

    Paper: https://arxiv.org/abs/1512.04150

    Args:
        activation: target-layer activation ``A``, shape ``(N, C, h, w)``.
        gradient: ``G = ∂y_c/∂A``, same shape.

    Returns:
        Saliency maps ``(N, h, w)`` after ReLU.

    Raises:
        InputError: if the shapes are wrong, or the gradient is not constant over each channel's map,
            i.e. the layer is not followed by a global-average-pool → linear head.
    """
    check_pair(activation, gradient)
    check_pooled_head(gradient)
    n, c = gradient.shape[:2]
    return relu(combine(gradient.reshape(n, c, -1).sum(axis=2), activation))


def check_pooled_head(gradient: np.ndarray) -> None:
    """CAM's condition: the gradient ``(N, C, h, w)`` is constant over each channel's map (within
    `CONSTANT_GRADIENT_RTOL` of its largest magnitude per image), as after a global-average-pool →
    linear head. The engine also calls it when CAM's map comes from a map head, which cannot raise.

    Raises:
        InputError: the gradient varies over the map: the layer is not followed by such a head.
    """
    n, c = gradient.shape[:2]
    flat = gradient.reshape(n, c, -1)
    spread = np.abs(flat - flat.mean(axis=2, keepdims=True)).max(axis=(1, 2))
    scale = np.abs(flat).max(axis=(1, 2))
    if np.any(spread > CONSTANT_GRADIENT_RTOL * scale):
        raise InputError("CAM needs a global-average-pool → linear head right after the target layer (the gradient "
                         "varies over the feature map); pick a layer followed by such a head, or use gradcam")


def gradcam(activation: np.ndarray, gradient: np.ndarray) -> np.ndarray:
    """Grad-CAM: feature maps weighted by their spatially averaged gradient.

    ``L = ReLU(Σ_k w_k A_k)``, ``w_k = (1 / hw) Σ_ij G_kij``.

    Paper: https://arxiv.org/abs/1610.02391

    Args:
        activation: target-layer activation ``A``, shape ``(N, C, h, w)``.
        gradient: ``G = ∂y_c/∂A``, same shape.

    Returns:
        Saliency maps ``(N, h, w)`` after ReLU.

    Raises:
        InputError: if the shapes are wrong.
    """
    check_pair(activation, gradient)
    return relu(combine(gradient.mean(axis=(2, 3)), activation))


def gradcampp_weights(activation: np.ndarray, grad: np.ndarray, grad2: np.ndarray, grad3: np.ndarray) -> np.ndarray:
    """Grad-CAM++ channel weights from the first three gradient powers (shared with Smooth Grad-CAM++).

    ``α_kij = G²_kij / (2 G²_kij + Σ_ab A_kab · G³_kij)``, 0 where the denominator is 0;
    ``w_k = Σ_ij α_kij ReLU(G_kij)``.

    Args:
        activation: ``A``, shape ``(N, C, h, w)``; only its spatial sums are used.
        grad: first-order term ``G`` (rectified here), same shape.
        grad2: second-order term (``G²``, or its mean over noisy copies), same shape.
        grad3: third-order term (``G³``, or its mean over noisy copies), same shape.

    Returns:
        Weights of shape ``(N, C)``.
    """
    total = activation.sum(axis=(2, 3), keepdims=True)
    denom = 2 * grad2 + total * grad3
    alpha = np.zeros_like(denom)
    np.divide(grad2, denom, out=alpha, where=denom != 0)
    return (alpha * relu(grad)).sum(axis=(2, 3))


def gradcampp(activation: np.ndarray, gradient: np.ndarray) -> np.ndarray:
    """Grad-CAM++: pixel-wise weighted positive gradients, assuming an exponential of the class score.

    ``L = ReLU(Σ_k w_k A_k)``, ``w_k = Σ_ij α_kij ReLU(G_kij)``,
    ``α_kij = G²_kij / (2 G²_kij + Σ_ab A_kab G³_kij)`` (0 where the denominator is 0).

    Follows the paper exactly. References differ: pytorch-grad-cam adds 1e-6 to the denominator,
    which dominates when ``|G| ≲ 1e-3`` (common for layer4 of an ImageNet ResNet, where G = W/49), and
    TorchCAM 0.5.0 never applies the division (it divides a masked copy), so its weights are
    ``Σ_ij G² ReLU(G)``.

    Paper: https://arxiv.org/abs/1710.11063

    Args:
        activation: target-layer activation ``A``, shape ``(N, C, h, w)``.
        gradient: ``G = ∂y_c/∂A``, same shape.

    Returns:
        Saliency maps ``(N, h, w)`` after ReLU.

    Raises:
        InputError: if the shapes are wrong.
    """
    check_pair(activation, gradient)
    grad2 = gradient * gradient
    return relu(combine(gradcampp_weights(activation, gradient, grad2, grad2 * gradient), activation))


def xgradcam(activation: np.ndarray, gradient: np.ndarray) -> np.ndarray:
    """XGrad-CAM: gradients averaged with the activation's own spatial distribution as weights.

    ``L = ReLU(Σ_k w_k A_k)``, ``w_k = Σ_ij (A_kij / Σ_ab A_kab) G_kij`` (0 for a channel whose
    activations sum to 0; the references add 1e-7 or 1e-8 to the sum instead).

    Paper: https://arxiv.org/abs/2008.02312

    Args:
        activation: target-layer activation ``A``, shape ``(N, C, h, w)``.
        gradient: ``G = ∂y_c/∂A``, same shape.

    Returns:
        Saliency maps ``(N, h, w)`` after ReLU.

    Raises:
        InputError: if the shapes are wrong.
    """
    check_pair(activation, gradient)
    total = activation.sum(axis=(2, 3))
    weights = np.zeros_like(total)
    np.divide((activation * gradient).sum(axis=(2, 3)), total, out=weights, where=total != 0)
    return relu(combine(weights, activation))


def layercam(activation: np.ndarray, gradient: np.ndarray) -> np.ndarray:
    """LayerCAM: every activation weighted by its own positive gradient.

    ``L = ReLU(Σ_k ReLU(G_k) ⊙ A_k)``. Several layers are fused with `camrt.methods.fusion.fuse`.

    Paper: https://ieeexplore.ieee.org/document/9462463 (Jiang et al., TIP 2021)

    Args:
        activation: target-layer activation ``A``, shape ``(N, C, h, w)``.
        gradient: ``G = ∂y_c/∂A``, same shape.

    Returns:
        Saliency maps ``(N, h, w)`` after ReLU.

    Raises:
        InputError: if the shapes are wrong.
    """
    check_pair(activation, gradient)
    return relu((relu(gradient) * activation).sum(axis=1))


def hirescam(activation: np.ndarray, gradient: np.ndarray) -> np.ndarray:
    """HiResCAM: element-wise gradient × activation summed over channels.

    ``L = ReLU(Σ_k G_k ⊙ A_k)``; before the ReLU its sum over positions is the first-order
    contribution of the layer to ``y_c`` (for a GAP → linear head it equals Grad-CAM · hw).

    Paper: https://arxiv.org/abs/2011.08891

    Args:
        activation: target-layer activation ``A``, shape ``(N, C, h, w)``.
        gradient: ``G = ∂y_c/∂A``, same shape.

    Returns:
        Saliency maps ``(N, h, w)`` after ReLU.

    Raises:
        InputError: if the shapes are wrong.
    """
    check_pair(activation, gradient)
    return relu((gradient * activation).sum(axis=1))


def gradcam_elementwise(activation: np.ndarray, gradient: np.ndarray) -> np.ndarray:
    """Element-wise Grad-CAM: positive parts of gradient × activation summed over channels.

    ``L = Σ_k ReLU(G_k ⊙ A_k)`` (non-negative by construction).

    Reference: pytorch-grad-cam ``GradCAMElementWise`` (no paper);
    https://github.com/jacobgil/pytorch-grad-cam

    Args:
        activation: target-layer activation ``A``, shape ``(N, C, h, w)``.
        gradient: ``G = ∂y_c/∂A``, same shape.

    Returns:
        Saliency maps ``(N, h, w)``.

    Raises:
        InputError: if the shapes are wrong.
    """
    check_pair(activation, gradient)
    return relu(gradient * activation).sum(axis=1)


def abscam_channel_maps(activation: np.ndarray, gradient: np.ndarray) -> np.ndarray:
    """Abs-CAM initial per-channel maps: each feature map scaled by its mean absolute gradient.

    ``M⁰_k = w_k A_k``, ``w_k = (1 / hw) Σ_ij |G_kij|``: the input of Abs-CAM's second phase, which
    "linearly combines the initial saliency map with the original image" (abstract) and scores the
    result; that phase needs forward passes of masked inputs and belongs to the perturbation family.

    Paper: https://arxiv.org/abs/2207.03648

    Args:
        activation: target-layer activation ``A``, shape ``(N, C, h, w)``.
        gradient: ``G = ∂y_c/∂A``, same shape.

    Returns:
        Per-channel maps of shape ``(N, C, h, w)``.

    Raises:
        InputError: if the shapes are wrong.
    """
    check_pair(activation, gradient)
    return np.abs(gradient).mean(axis=(2, 3), keepdims=True) * activation


def abscam(activation: np.ndarray, gradient: np.ndarray) -> np.ndarray:
    """Abs-CAM initial saliency map: Grad-CAM with every gradient turned positive.

    ``L = ReLU(Σ_k w_k A_k)``, ``w_k = (1 / hw) Σ_ij |G_kij|``: the first phase of Abs-CAM, which
    "turns all [gradients] into positive gradients" (abstract). The second phase (combining the
    initial maps with the input and scoring it, see `abscam_channel_maps`) needs further forward
    passes and is not part of this function.

    Paper: https://arxiv.org/abs/2207.03648

    Args:
        activation: target-layer activation ``A``, shape ``(N, C, h, w)``.
        gradient: ``G = ∂y_c/∂A``, same shape.

    Returns:
        Saliency maps ``(N, h, w)`` after ReLU.

    Raises:
        InputError: if the shapes are wrong.
    """
    return relu(abscam_channel_maps(activation, gradient).sum(axis=1))


METHODS = (
    Method("cam", "Classifier weights of the class (global-average-pool → linear heads only)",
           "https://arxiv.org/abs/1512.04150", "gradient", map=cam),
    Method("gradcam", "Activations weighted by the spatial mean of their gradient",
           "https://arxiv.org/abs/1610.02391", "gradient", map=gradcam),
    Method("gradcam++", "Grad-CAM with pixel-wise weights from second and third gradient powers",
           "https://arxiv.org/abs/1710.11063", "gradient", map=gradcampp),
    Method("xgradcam", "Gradients averaged with the normalised activations as weights",
           "https://arxiv.org/abs/2008.02312", "gradient", map=xgradcam),
    Method("layercam", "Each activation weighted by its own positive gradient",
           "https://ieeexplore.ieee.org/document/9462463", "gradient", map=layercam),
    Method("hirescam", "Element-wise gradient × activation summed over channels",
           "https://arxiv.org/abs/2011.08891", "gradient", map=hirescam),
    Method("gradcam-elementwise", "Positive parts of gradient × activation summed over channels",
           "https://github.com/jacobgil/pytorch-grad-cam", "gradient", map=gradcam_elementwise),
    Method("abscam", "Activations weighted by the mean absolute gradient (Abs-CAM initial map)",
           "https://arxiv.org/abs/2207.03648", "gradient", map=abscam),
)
