"""Feature-perturbation family: the target activation is perturbed and only the layers after it
(the graph's tail) are re-run, in streamed chunks.

Each method has two pure functions:

* ``<method>_inputs(activation, chunk) -> Iterator[(k, C, h, w)]`` yields the perturbed copies of
  one image's activation ``(C, h, w)``, at most `chunk` at a time (never all at once), in a fixed
  order; ``<method>_count(activation)`` says how many there are in all.
* ``<method>(activation, scores, base) -> (1, h, w)`` makes the map from the class scores of the
  copies (in that order) and the score of the unperturbed activation; `Method.score` says
  whether the engine passes logits (``"logit"``) or softmax probabilities (``"probability"``).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from camrt.errors import InputError
from camrt.methods._core import combine, normalize, relu, upsample


def _check(activation: np.ndarray, chunk: int) -> None:
    if activation.ndim != 3:
        raise InputError(f"a feature-perturbation method takes one image's activation C×h×w, got {activation.shape}")
    if int(chunk) != chunk or chunk < 1:
        raise InputError(f"chunk must be a positive integer, got {chunk}")


def ablation_count(activation: np.ndarray) -> int:
    return int(activation.shape[0])


def ablation_inputs(activation: np.ndarray, chunk: int) -> Iterator[np.ndarray]:
    """Copies of the activation with one channel zeroed each: channel k in copy k."""
    _check(activation, chunk)
    c = activation.shape[0]
    for start in range(0, c, chunk):
        k = min(chunk, c - start)
        batch = np.repeat(activation[None], k, axis=0)
        batch[np.arange(k), start + np.arange(k)] = 0.0
        yield batch


def ablationcam(activation: np.ndarray, scores: np.ndarray, base: float) -> np.ndarray:
    """Ablation-CAM: each channel weighted by the relative drop of the class score without it.

    ``L = ReLU(Σ_k w_k A_k)``, ``w_k = (y_c − y_c^(k)) / y_c``, where ``y_c^(k)`` is the class
    logit with channel k of A set to zero. camrt re-runs only the layers after the target layer;
    pytorch-grad-cam's `AblationCAM` re-runs the whole model for the same numbers.

    Paper: https://openaccess.thecvf.com/content_WACV_2020/papers/Desai_Ablation-CAM_Visual_Explanations_for_Deep_Convolutional_Network_via_Gradient-free_Localization_WACV_2020_paper.pdf

    Args:
        activation: the unperturbed activation, ``(1, C, h, w)``.
        scores: ``y_c^(k)`` for k = 0..C-1, shape ``(C,)``.
        base: ``y_c`` of the unperturbed activation (non-zero).

    Returns:
        Saliency map ``(1, h, w)`` after ReLU.
    """
    if base == 0:
        raise InputError("Ablation-CAM divides by the class score, which is exactly 0 here; use another method")
    weights = (base - np.asarray(scores, dtype=np.float64)) / base
    return relu(combine(weights[None].astype(activation.dtype), activation))


def reciprocam_count(activation: np.ndarray) -> int:
    return int(activation.shape[1] * activation.shape[2])


def reciprocam_inputs(activation: np.ndarray, chunk: int) -> Iterator[np.ndarray]:
    """Copies of the activation that keep one spatial position each (all channels), zeros elsewhere:
    position (i, j) in copy i·w + j."""
    _check(activation, chunk)
    c, h, w = activation.shape
    for start in range(0, h * w, chunk):
        pos = np.arange(start, min(h * w, start + chunk))
        batch = np.zeros((len(pos), c, h, w), dtype=activation.dtype)
        rows, cols = pos // w, pos % w
        batch[np.arange(len(pos)), :, rows, cols] = activation[:, rows, cols].T
        yield batch


def reciprocam(activation: np.ndarray, scores: np.ndarray, base: float) -> np.ndarray:
    """Recipro-CAM: the class probability the tail gives to each position's features alone.

    ``L(i, j) = softmax(f_tail(A ⊙ m_ij))_c``, with ``m_ij`` the one-hot spatial mask of position
    (i, j) (the paper's first version; its later Gaussian-kernel variant is not implemented).

    Paper: https://arxiv.org/abs/2209.14074

    Args:
        activation: the unperturbed activation, ``(1, C, h, w)``.
        scores: the class probabilities of the h·w masked copies, in row-major position order.
        base: unused (the unperturbed probability), accepted for the common signature.

    Returns:
        Saliency map ``(1, h, w)`` (probabilities, non-negative).
    """
    _, _, h, w = activation.shape
    return np.asarray(scores, dtype=activation.dtype).reshape(1, h, w)


# Input perturbation: the input is masked and the forward-only graph (no gradient branch) re-run.
# ``<method>_inputs(x, activation, chunk)`` takes one preprocessed image ``(C_in, H, W)`` too.


def _constant_channels(activation: np.ndarray) -> np.ndarray:
    flat = activation.reshape(activation.shape[0], -1)
    return flat.max(axis=1) == flat.min(axis=1)


def scorecam_count(activation: np.ndarray) -> int:
    constant = _constant_channels(activation)
    return int((~constant).sum() + constant.any())


def scorecam_inputs(x: np.ndarray, activation: np.ndarray, chunk: int) -> Iterator[np.ndarray]:
    """The input masked by each channel's map, ``x ⊙ norm(up(A_k))``, `chunk` at a time: the masks
    exist only per chunk (never the C × H × W stack, 1.2 GB for resnet50's layer4).

    A constant channel (all zero after a ReLU, typically: half of EfficientNet-Lite0's head on a
    real photo) has the all-zero mask, so all of them share one score: the non-constant channels
    come first, in order, then one zero-masked input if any channel is constant."""
    _check(activation, chunk)
    if x.ndim != 3:
        raise InputError(f"an input-perturbation method takes one image C×H×W, got {x.shape}")
    size = x.shape[1:]
    sources = np.flatnonzero(~_constant_channels(activation))
    for start in range(0, len(sources), chunk):
        masks = upsample(activation[sources[start:start + chunk]], size)
        masks = normalize(masks, out=masks)
        yield x[None] * masks[:, None]
    if len(sources) < activation.shape[0]:
        yield np.zeros((1, *x.shape), dtype=x.dtype)


def scorecam(activation: np.ndarray, scores: np.ndarray, base: float) -> np.ndarray:
    """Score-CAM: channels weighted by the class score of the input masked with their own map.

    ``L = ReLU(Σ_k w_k A_k)``, ``w = softmax_k(y_c(x ⊙ M_k) − y_c(x_b))``, ``M_k = norm(up(A_k))``;
    ``y_c`` is the class logit, and the baseline term cancels in the softmax. This is TorchCAM's
    definition (and pytorch-grad-cam's, which upsamples with align_corners=True); the authors'
    code weights by the softmax probability of the class instead.

    Paper: https://arxiv.org/abs/1910.01279

    Args:
        activation: the activation, ``(1, C, h, w)``.
        scores: ``y_c(x ⊙ M_k)`` in the order of `scorecam_inputs` (non-constant channels, then the
            zero mask's score if any channel is constant).
        base: ``y_c(x)`` (cancels in the softmax; accepted for the common signature).

    Returns:
        Saliency map ``(1, h, w)`` after ReLU.
    """
    constant = _constant_channels(activation[0])
    given = np.asarray(scores, dtype=np.float64)
    s = np.empty(len(constant))
    s[~constant] = given[:(~constant).sum()]
    if constant.any():
        s[constant] = given[-1]  # the shared score of the all-zero mask
    w = np.exp(s - s.max())
    w /= w.sum()
    return relu(combine(w[None].astype(activation.dtype), activation))
