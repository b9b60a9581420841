"""Optimisation family: Opti-CAM, whose map is the one that maximises the class score of the input
it masks. Each step runs the network on the masked input and needs the gradient of the class
score with respect to that input (a model exported with ``input_gradient=True``); the rest of the
chain rule (normalisation, upsampling, softmax of the channel weights) is computed here, in numpy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from camrt.checks import number, positive_int
from camrt.methods._core import _interpolation_taps, normalize, softmax, upsample
from camrt.methods.contract import Context, Explore, Method, Options


def upsample_adjoint(grad: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The transpose of `upsample` from ``size`` (h, w): maps a gradient ``(H, W)`` with respect to
    the upsampled map to the gradient ``(h, w)`` with respect to the small one."""
    lo, hi, frac = _interpolation_taps(size[0], grad.shape[0])
    rows = np.zeros((size[0], grad.shape[1]))
    np.add.at(rows, lo, (1.0 - frac)[:, None] * grad)
    np.add.at(rows, hi, frac[:, None] * grad)
    lo, hi, frac = _interpolation_taps(size[1], grad.shape[1])
    out = np.zeros((size[1], size[0]))
    np.add.at(out, lo, (1.0 - frac)[:, None] * rows.T)
    np.add.at(out, hi, frac[:, None] * rows.T)
    return out.T


def _forward(activation: np.ndarray, u: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The weights ``w = softmax(u)``, ``S = Σ_k w_k A_k`` ``(h, w)`` and ``up(S)`` ``(H, W)``, float64."""
    w = softmax(u)
    s = (w[:, None, None] * activation).sum(axis=0)
    return w, s, upsample(s[None].astype(np.float64), size)[0]


def opticam_mask(activation: np.ndarray, u: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """``S = Σ_k softmax(u)_k A_k`` ``(h, w)`` and the mask ``M = norm(up(S))`` ``(H, W)``."""
    _, s, up = _forward(activation, u, size)
    return s, normalize(up[None])[0]


def _gradient(activation: np.ndarray, w: np.ndarray, up: np.ndarray, x: np.ndarray,
              input_gradient: np.ndarray) -> np.ndarray:
    """`opticam_gradient` from the step's forward values (`_forward`)."""
    low, span = up.min(), up.max() - up.min()
    if span <= 0:
        return np.zeros_like(w)
    m = (up - low) / span
    g_m = (x.astype(np.float64) * input_gradient).sum(axis=0)
    g_up = g_m / span
    g_up.flat[np.argmin(up)] += (g_m * (m - 1.0)).sum() / span
    g_up.flat[np.argmax(up)] -= (g_m * m).sum() / span
    g_s = upsample_adjoint(g_up, activation.shape[1:])
    g_w = (activation * g_s).sum(axis=(1, 2))
    return w * (g_w - (w * g_w).sum())


def opticam_gradient(activation: np.ndarray, u: np.ndarray, x: np.ndarray, input_gradient: np.ndarray) -> np.ndarray:
    """``∂ y_c(x ⊙ M(u)) / ∂u`` from ``∂y_c/∂x'`` at the masked input ``x' = x ⊙ M(u)``.

    Chain: ``∂y/∂M = Σ_colour x ⊙ ∂y/∂x'``; through the min-max normalisation (the min and max
    pixels get the gradient of the bounds); through upsampling (its transpose); through
    ``S = Σ_k w_k A_k`` and ``w = softmax(u)``.
    """
    w, _, up = _forward(activation, u, x.shape[1:])
    return _gradient(activation, w, up, x, input_gradient)


@dataclass(frozen=True)
class OptiCAMOptions(Options):
    """steps: Adam steps; lr: Adam learning rate (the paper: 100 steps, 0.1)."""

    steps: int = 100
    lr: float = 0.1

    def _checked(self) -> dict:
        return {"steps": positive_int(self.steps, "option steps"), "lr": number(self.lr, "option lr", positive=True)}


def opticam_runs(activation: np.ndarray, options: OptiCAMOptions) -> int:
    """Opti-CAM's forward and input-gradient runs: one per step."""
    return options.steps


def opticam_explore(ctx: Context, options: OptiCAMOptions) -> Explore:
    """Opti-CAM: the channel weights that maximise the class logit of the masked input.

    ``u* = argmax_u y_c(x ⊙ M(u))``, ``M(u) = norm(up(Σ_k softmax(u)_k A_k))``, found by gradient
    ascent with Adam (β = 0.9, 0.999, ε = 1e-8, as torch.optim.Adam) from ``u = 0`` (uniform
    weights) for `steps` steps at learning rate `lr` (the paper: 100 steps, 0.1). The map is
    ``S(u*) = Σ_k softmax(u*)_k A_k`` at the last step (the caller upsamples and normalises it,
    which gives ``M(u*)``). Where S has negative values (a target layer before its ReLU), the map
    is ``S − min S``, non-negative as every camrt map is; its min-max normalised saliency, the
    paper's ``M(u*)``, is the same. Each step is one run of the network on one masked input, with the
    gradient of the class logit with respect to that input.

    Paper: https://arxiv.org/abs/2301.07002

    Args:
        ctx: one preprocessed image ``x`` ``(C_in, H, W)`` and its ``activation`` ``(C, h, w)``
            (one copy per step: the chunk does not apply, each step depends on the last).
        options: Adam ``steps`` and learning rate ``lr``.

    Returns:
        Saliency map ``(1, h, w)``.
    """
    x, activation = ctx.need("x"), ctx.activation
    steps, lr = options.steps, options.lr
    a = activation.astype(np.float64)
    u = np.zeros(len(a))
    m1, m2 = np.zeros_like(u), np.zeros_like(u)
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    for t in range(1, steps + 1):
        w, _, up = _forward(a, u, x.shape[1:])  # once per step: for the masked input and for its gradient
        mask = normalize(up[None])[0]
        _, input_gradient = yield (x * mask.astype(x.dtype))[None]
        g = -_gradient(a, w, up, x, np.asarray(input_gradient)[0])  # ascent: minimise −y_c
        m1 = beta1 * m1 + (1 - beta1) * g
        m2 = beta2 * m2 + (1 - beta2) * g * g
        denom = np.sqrt(m2) / np.sqrt(1 - beta2 ** t) + eps
        u = u - lr / (1 - beta1 ** t) * m1 / denom
    s, _ = opticam_mask(a, u, x.shape[1:])
    return (s - min(float(s.min()), 0.0))[None].astype(activation.dtype)


METHODS = (
    Method("opticam", "Channel weights optimised (Adam) to maximise the class score of the masked input",
           "https://arxiv.org/abs/2301.07002", "input", options=OptiCAMOptions, explore=opticam_explore,
           runs=opticam_runs, uses_gradient=False, input_gradient=True),
)
