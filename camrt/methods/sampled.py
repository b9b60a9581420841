"""Sampled family: methods that need the activation and gradient of several copies of the input.

Each method has its options class and two pure functions:

* ``<method>_samples(SampleContext, options) -> (N, S, C, H, W)`` builds the copies of a
  preprocessed input batch ``x`` of shape ``(N, C, H, W)`` (float32).
* ``<method>(activation, gradient, sample_activation, sample_gradient) -> (N, h, w)`` computes the
  saliency map (after ReLU, before normalisation/upsampling) from the target layer's activation
  and gradient of the unperturbed input, shape ``(N, C, h, w)``, and of the copies, shape
  ``(N, S, C, h, w)``.

Contract for the engine: run the unperturbed batch and all its copies in ONE batched run,
``concat([x, copies.reshape(N * S, C, H, W)])``; every copy is explained for the class chosen for
its source image (``class_idx`` given explicitly, not re-chosen by argmax on the copy); reshape the
copies' activations and gradients back to ``(N, S, C, h, w)`` in the order ``samples`` returned them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from camrt.checks import number, positive_int
from camrt.errors import InputError
from camrt.methods._core import check_pair, check_samples, combine, relu
from camrt.methods.contract import Method, Options, SampleContext
from camrt.methods.gradient import gradcampp_weights


def _check_input(x: np.ndarray) -> None:
    if not isinstance(x, np.ndarray) or x.ndim != 4 or not np.issubdtype(x.dtype, np.floating):
        got = f"{x.dtype} array of shape {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__
        raise InputError(f"x must be a floating array of shape (N, C, H, W), got {got}")


@dataclass(frozen=True)
class SmoothGradCAMppOptions(Options):
    """n: noisy copies per image; sigma: standard deviation of the noise (TorchCAM's 4 and 0.3)."""

    n: int = 4
    sigma: float = 0.3

    def _checked(self) -> dict:
        return {"n": positive_int(self.n, "option n"), "sigma": number(self.sigma, "option sigma")}


@dataclass(frozen=True)
class IntegratedGradCAMOptions(Options):
    """steps: path points m, at least 2 (the authors' notebook uses 50; 20 keeps the one batched run smaller)."""

    steps: int = 20

    def _checked(self) -> dict:
        steps = positive_int(self.steps, "option steps")
        if steps < 2:
            raise InputError(f"option steps must be ≥ 2 (with 1 step Integrated Grad-CAM is Grad-CAM), got {steps}")
        return {"steps": steps}


def smoothgradcampp_samples(ctx: SampleContext, options: SmoothGradCAMppOptions) -> np.ndarray:
    """Noisy copies of the input for Smooth Grad-CAM++: ``x + ε``, ``ε ~ N(0, σ²)`` i.i.d. per element.

    The noise is added in the model's preprocessed input space (TorchCAM's defaults n=4, σ=0.3).

    Paper: https://arxiv.org/abs/1908.01224

    Args:
        ctx: the preprocessed input batch ``x`` ``(N, C, H, W)`` and the generator to draw the noise from.
        options: ``n`` copies per image, noise ``sigma``.

    Returns:
        Float32 copies of shape ``(N, n, C, H, W)``.

    Raises:
        InputError: if `x` is not a 4-D floating array.
    """
    x = ctx.x
    _check_input(x)
    noise = ctx.rng.normal(0.0, options.sigma, size=(x.shape[0], options.n, *x.shape[1:]))
    with np.errstate(over="ignore"):  # noise that overflows float32 is reported by the engine's check of the copies
        return (x[:, None].astype(np.float64) + noise).astype(np.float32)


def smoothgradcampp(activation: np.ndarray, gradient: np.ndarray, sample_activation: np.ndarray,
                    sample_gradient: np.ndarray) -> np.ndarray:
    """Smooth Grad-CAM++: Grad-CAM++ with the gradient powers averaged over noisy copies of the input.

    ``L = ReLU(Σ_k w_k A_k)``, ``w_k = Σ_ij α_kij ReLU(D¹_kij)``,
    ``α_kij = D²_kij / (2 D²_kij + Σ_ab A_kab D³_kij)`` (0 where the denominator is 0), with
    ``Dᵖ = (1/n) Σ_s G_sᵖ`` over the n noisy copies and ``A`` the activation of the unperturbed input.

    The α numerator is ``D²`` (the paper prints ``D¹``, dimensionally inconsistent with the
    denominator; TorchCAM makes the same correction). TorchCAM 0.5.0 differs in two further ways
    that camrt does not copy: it rectifies the gradient of the LAST noisy copy instead of the mean
    ``D¹``, and combines the weights with the LAST noisy copy's activation instead of the input's.

    Paper: https://arxiv.org/abs/1908.01224

    Args:
        activation: activation ``A`` of the unperturbed input, shape ``(N, C, h, w)``.
        gradient: its gradient; not used (the paper averages over the noisy copies only).
        sample_activation: activations of the copies, shape ``(N, n, C, h, w)``; not used.
        sample_gradient: gradients ``G_s`` of the copies, shape ``(N, n, C, h, w)``.

    Returns:
        Saliency maps ``(N, h, w)`` after ReLU.

    Raises:
        InputError: if the shapes are wrong.
    """
    check_pair(activation, gradient)
    check_samples(sample_activation, sample_gradient, activation)
    grad2 = sample_gradient * sample_gradient
    weights = gradcampp_weights(activation, sample_gradient.mean(axis=1), grad2.mean(axis=1),
                                (grad2 * sample_gradient).mean(axis=1))
    return relu(combine(weights, activation))


def integratedgradcam_samples(ctx: SampleContext, options: IntegratedGradCAMOptions) -> np.ndarray:
    """Interior points of the straight path from a baseline to the input, for Integrated Grad-CAM.

    Copy ``l`` is ``b + (l/m)(x - b)`` for ``l = 1 … m-1``; the end point ``l = m`` is the
    unperturbed input, which the engine runs in the same batch anyway, so one run holds m path points.

    Paper: https://arxiv.org/abs/2102.07805 (Sattarzadeh et al., ICASSP 2021)

    Args:
        ctx: the preprocessed input batch ``x`` ``(N, C, H, W)`` and the ``baseline`` in the same
            space, broadcastable to it; for the paper's black image that is the preprocessing of an
            all-zero image (``-mean/std`` per channel), not zeros. The path is deterministic: ``rng``
            is not used.
        options: ``steps``, the number of path points ``m``.

    Returns:
        Float32 copies of shape ``(N, m - 1, C, H, W)``, in path order.

    Raises:
        InputError: if `x` is not a 4-D floating array or `baseline` does not broadcast to it.
    """
    x = ctx.x
    _check_input(x)
    base = np.asarray(ctx.baseline, dtype=np.float64)
    try:
        base = np.broadcast_to(base, x.shape)
    except ValueError:
        raise InputError(f"baseline of shape {base.shape} does not broadcast to the input {x.shape}") from None
    frac = np.arange(1, options.steps, dtype=np.float64) / options.steps
    path = base[:, None] + frac[None, :, None, None, None] * (x.astype(np.float64) - base)[:, None]
    return path.astype(np.float32)


def integratedgradcam(activation: np.ndarray, gradient: np.ndarray, sample_activation: np.ndarray,
                      sample_gradient: np.ndarray) -> np.ndarray:
    """Integrated Grad-CAM: Grad-CAM maps integrated along the path from a baseline to the input.

    ``L = (1/m) Σ_{l=1..m} ReLU(Σ_k w_k⁽ˡ⁾ A_k⁽ˡ⁾)``, ``w_k⁽ˡ⁾ = (1/hw) Σ_ij G_kij⁽ˡ⁾``, where
    ``A⁽ˡ⁾, G⁽ˡ⁾`` belong to the path point ``b + (l/m)(x - b)``: a Riemann sum over the path of the
    Grad-CAM map (gradient-weighted activation) of each point.

    This is what the authors' released notebook computes (github.com/smstrzd/IntegratedGradCAM:
    TorchRay Grad-CAM, clamped at 0, of every path point, summed), except that it takes the left end
    points ``l = 0 … m-1`` (the black image but not the input); camrt takes ``l = 1 … m`` so that
    the input itself is one of the points and the black image is not.

    Paper: https://arxiv.org/abs/2102.07805

    Args:
        activation: activation of the unperturbed input (path point ``l = m``), shape ``(N, C, h, w)``.
        gradient: its gradient, same shape.
        sample_activation: activations of the path points ``l = 1 … m-1`` from
            `integratedgradcam_samples`, shape ``(N, m - 1, C, h, w)``.
        sample_gradient: their gradients, same shape.

    Returns:
        Saliency maps ``(N, h, w)`` (non-negative).

    Raises:
        InputError: if the shapes are wrong.
    """
    check_pair(activation, gradient)
    check_samples(sample_activation, sample_gradient, activation)
    acts = np.concatenate([sample_activation, activation[:, None]], axis=1)
    grads = np.concatenate([sample_gradient, gradient[:, None]], axis=1)
    per_point = relu(np.einsum("nlc,nlchw->nlhw", grads.mean(axis=(3, 4)), acts))
    return per_point.mean(axis=1)


METHODS = (
    Method("smoothgradcam++", "Grad-CAM++ with gradient powers averaged over noisy copies",
           "https://arxiv.org/abs/1908.01224", "sampled", options=SmoothGradCAMppOptions, map=smoothgradcampp,
           samples=smoothgradcampp_samples),
    Method("integratedgradcam", "Grad-CAM terms integrated along the path from a black image",
           "https://arxiv.org/abs/2102.07805", "sampled", options=IntegratedGradCAMOptions, map=integratedgradcam,
           samples=integratedgradcam_samples),
)
