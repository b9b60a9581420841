"""Feature-perturbation family: the target activation is perturbed and only the layers after it
(the graph's tail) are re-run, in streamed chunks.

Each method has pure parts and one ``explore`` coroutine that the engine drives (the contract is
in `camrt.methods.contract`):

* ``<method>_inputs(activation, chunk) -> Iterator[(k, C, h, w)]`` yields the perturbed copies of
  one image's activation ``(C, h, w)``, at most `chunk` at a time (never all at once), in a fixed
  order; ``<method>_runs(activation, options)`` says how many there are in all.
* ``<method>(activation, scores, ...) -> (1, h, w)`` makes the map from the class scores of the
  copies (in that order); `Method.score` says whether the engine passes logits (``"logit"``) or
  softmax probabilities (``"probability"``).
* ``<method>_explore(ctx, options)`` yields batches of copies of ``ctx.activation``, is sent each
  batch's class scores, and returns the map. Recursive methods (Ablation-CAM++) choose their next
  copies from the scores of the last ones.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from camrt.checks import choice, number, positive_int
from camrt.errors import InputError
from camrt.methods._core import combine, relu, scores_of
from camrt.methods.contract import Context, Explore, Method, NoOptions, Options, TailCopies


def _check(activation: np.ndarray, chunk: int) -> None:
    if activation.ndim != 3:
        raise InputError(f"a feature-perturbation method takes one image's activation C×h×w, got {activation.shape}")
    positive_int(chunk, "chunk")


def ablation_runs(activation: np.ndarray, options: NoOptions | None = None) -> int:
    """Ablation-CAM's tail runs: one per channel."""
    return int(activation.shape[0])


def _ablate(activation: np.ndarray, groups: list[np.ndarray], chunk: int) -> Iterator[np.ndarray]:
    """Copies of the activation with the channels of one group zeroed each, `chunk` at a time."""
    for start in range(0, len(groups), chunk):
        part = groups[start:start + chunk]
        batch = np.repeat(activation[None], len(part), axis=0)
        for i, channels in enumerate(part):
            batch[i, channels] = 0.0
        yield batch


def ablation_inputs(activation: np.ndarray, chunk: int) -> Iterator[np.ndarray]:
    """Copies of the activation with one channel zeroed each: channel k in copy k."""
    _check(activation, chunk)
    yield from _ablate(activation, [np.array([k]) for k in range(activation.shape[0])], chunk)


def _drops(scores: np.ndarray, base: float) -> np.ndarray:
    if base == 0:
        raise InputError("Ablation-CAM divides by the class score, which is exactly 0 here; use another method")
    return (base - np.asarray(scores, dtype=np.float64)) / base


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
    weights = _drops(scores, base)
    return relu(combine(weights[None].astype(activation.dtype), activation))


def ablation_explore(ctx: Context, options: NoOptions | None = None) -> Explore:
    """Ablation-CAM as a coroutine: C tail runs, then `ablationcam`."""
    scores = yield from scores_of(ablation_inputs(ctx.activation, ctx.chunk))
    return ablationcam(ctx.activation[None], scores, ctx.need("base"))


@dataclass(frozen=True)
class AblationPPOptions(Options):
    """groups: groups of the first round; threshold: fraction of the round's largest |drop| above
    which a group is split."""

    groups: int = 16
    threshold: float = 0.5

    def _checked(self) -> dict:
        return {"groups": positive_int(self.groups, "option groups"),
                "threshold": number(self.threshold, "option threshold", 0.0, 1.0)}


def ablationpp_runs(activation: np.ndarray, options: AblationPPOptions) -> int:
    """An upper bound of the tail runs of Ablation-CAM++: every group split down to single channels."""
    c, g = activation.shape[0], options.groups
    return int(min(g, c) + 2 * max(c - min(g, c), 0))


def ablationpp_explore(ctx: Context, options: AblationPPOptions) -> Explore:
    """Ablation-CAM++: grouped, recursive ablation, fewer tail runs than Ablation-CAM.

    The ICIP 2022 paper (Ablation-CAM++, "grouped recursive" ablation) was not readable here; this
    is camrt's own definition, documented so that it can be checked:

    1. Channels are ordered by their mean activation and cut into `groups` groups of consecutive
       channels in that order (channels that respond alike are ablated together).
    2. Each group g is ablated at once (all its channels zeroed) and scored by the relative drop
       ``d_g = (y_c − y_c^(g)) / y_c``, as Ablation-CAM scores one channel.
    3. A group with more than one channel whose ``|d_g| ≥ threshold · max |d|`` (the max over the
       groups of the same round) is split in two halves, which are ablated in the next round; the
       recursion ends at single channels.
    4. A channel's weight is the drop of the smallest group it was ablated in, shared equally by
       that group's channels: ``w_k = d_g / |g|``; the map is ``ReLU(Σ_k w_k A_k)``.

    ``threshold=0`` splits every group down to single channels: exactly Ablation-CAM, with more
    runs; ``threshold=1`` refines only the most important group of each round. With a threshold
    above 0, all-zero channels (half of a ReLU layer, often) end in a group whose drop is 0 and
    are never split.

    Paper: https://ieeexplore.ieee.org/document/9897876 (Ablation-CAM++, ICIP 2022)

    Args:
        ctx: one image's ``activation`` ``(C, h, w)``, ``chunk`` ablated copies per tail run, and
            ``base``, ``y_c`` of the unperturbed activation (non-zero).
        options: ``groups`` and ``threshold``.

    Returns:
        Saliency map ``(1, h, w)`` after ReLU.
    """
    activation, chunk, base = ctx.activation, ctx.chunk, ctx.need("base")
    groups, threshold = options.groups, options.threshold
    c = activation.shape[0]
    order = np.argsort(-activation.reshape(c, -1).mean(axis=1), kind="stable")
    pending = [part for part in np.array_split(order, min(groups, c)) if len(part)]
    weights = np.zeros(c)
    while pending:
        scores = yield from scores_of(_ablate(activation, pending, chunk))
        drops = _drops(scores, base)
        top = np.abs(drops).max()
        split = []
        for part, d in zip(pending, drops, strict=True):
            if len(part) > 1 and top > 0 and abs(d) >= threshold * top:
                half = len(part) // 2
                split += [part[:half], part[half:]]
            else:
                weights[part] = d / len(part)
        pending = split
    return relu(combine(weights[None].astype(activation.dtype), activation[None]))


# Recipro-CAM's masks: one-hot (the paper's first version) or a 3×3 Gaussian around the position (v2).
_KERNELS = {
    "onehot": np.ones((1, 1)),
    "gaussian": np.array([[1 / 16, 1 / 8, 1 / 16], [1 / 8, 1 / 4, 1 / 8], [1 / 16, 1 / 8, 1 / 16]]),
}


@dataclass(frozen=True)
class ReciproCAMOptions(Options):
    """kernel: ``"onehot"`` (the paper's first version) or ``"gaussian"`` (the later 3×3 masks)."""

    kernel: str = "onehot"

    def _checked(self) -> dict:
        return {"kernel": choice(self.kernel, "option kernel", tuple(_KERNELS))}


def reciprocam_runs(activation: np.ndarray, options: ReciproCAMOptions | None = None) -> int:
    """Recipro-CAM's tail runs: one per position of the feature map."""
    return int(activation.shape[1] * activation.shape[2])


def _position_masks(kernel: np.ndarray, h: int, w: int, positions: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Masks ``(k, h, w)``: `kernel` centred on each row-major position i·w + j, cut at the borders."""
    r = kernel.shape[0] // 2
    masks = np.zeros((len(positions), h + 2 * r, w + 2 * r), dtype=dtype)
    for m, p in zip(masks, positions, strict=True):
        i, j = divmod(int(p), w)
        m[i:i + 2 * r + 1, j:j + 2 * r + 1] = kernel
    return masks[:, r:r + h, r:r + w]


def reciprocam_inputs(activation: np.ndarray, chunk: int, kernel: str = "onehot") -> Iterator[np.ndarray]:
    """Copies of the activation that keep the neighbourhood of one spatial position each: position
    (i, j) in copy i·w + j, the activation multiplied by the kernel centred there (one-hot: that
    position's features alone; Gaussian: the 3×3 kernel, cut at the borders), zeros elsewhere."""
    _check(activation, chunk)
    k = _KERNELS[ReciproCAMOptions(kernel).kernel]
    _, h, w = activation.shape
    for start in range(0, h * w, chunk):
        pos = np.arange(start, min(h * w, start + chunk))
        yield activation[None] * _position_masks(k, h, w, pos, activation.dtype)[:, None]


def reciprocam(activation: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Recipro-CAM: the class probability the tail gives to each position's features alone.

    ``L(i, j) = softmax(f_tail(A ⊙ m_ij))_c``, with ``m_ij`` the one-hot spatial mask of position
    (i, j) (the paper's first version), or with option ``kernel="gaussian"`` the 3×3 Gaussian
    ``[1 2 1; 2 4 2; 1 2 1] / 16`` centred on (i, j) (the later version; openvino-xai's default).

    Paper: https://arxiv.org/abs/2209.14074

    Args:
        activation: the unperturbed activation, ``(1, C, h, w)``.
        scores: the class probabilities of the h·w masked copies, in row-major position order.

    Returns:
        Saliency map ``(1, h, w)`` (probabilities, non-negative).
    """
    _, _, h, w = activation.shape
    return np.asarray(scores, dtype=activation.dtype).reshape(1, h, w)


def reciprocam_explore(ctx: Context, options: ReciproCAMOptions) -> Explore:
    """Recipro-CAM as a coroutine: h·w tail runs, then `reciprocam`."""
    scores = yield from scores_of(reciprocam_inputs(ctx.activation, ctx.chunk, options.kernel))
    return reciprocam(ctx.activation[None], scores)


@dataclass(frozen=True)
class ViTReciproCAMOptions(Options):
    """kernel: ``"gaussian"`` (the paper's 3×3 masks, the default) or ``"onehot"`` (one token each)."""

    kernel: str = "gaussian"

    def _checked(self) -> dict:
        return {"kernel": choice(self.kernel, "option kernel", tuple(_KERNELS))}


VIT_TARGET_HINT = ("target the first layer norm of a transformer block (torchvision's ViT: "
                   "encoder.layers.encoder_layer_11.ln_1; timm: blocks.11.norm1), whose block input crosses the cut "
                   "to the residual sum")


def block_input(shapes: dict[str, tuple[int, ...]], activation_shape: tuple[int, int, int]) -> tuple[str, int]:
    """The name of the transformer block's input among the tensors crossing the cut, by shape, and
    its prefix token count P: the one tensor of shape ``(1, P + h·w, C)`` for the activation's C, h, w
    (the prefix tokens of the target itself, ``(1, P, C)``, have fewer than h·w tokens).

    Raises:
        InputError: none or several such tensors cross the cut (the target is not a block's first
            layer norm, or not a token layer).
    """
    c, h, w = activation_shape
    found = [(name, s[1] - h * w) for name, s in shapes.items() if len(s) == 3 and s[0] == 1 and s[2] == c
             and s[1] >= h * w]
    if len(found) != 1:
        what = "no tensor" if not found else f"{len(found)} tensors"
        raise InputError(f"vitreciprocam masks the target's tokens and the block input that the residual adds back, "
                         f"but {what} of the block input's shape (1×(P+{h}·{w})×{c}) cross(es) the cut after this "
                         f"layer; {VIT_TARGET_HINT}")
    return found[0]


def token_masks(masks: np.ndarray, prefix: int) -> np.ndarray:
    """Position masks ``(k, h, w)`` as token masks ``(k, P + h·w, 1)``: 1 on the P prefix tokens."""
    k = len(masks)
    return np.concatenate([np.ones((k, prefix), masks.dtype), masks.reshape(k, -1)], axis=1)[:, :, None]


def vitreciprocam_inputs(activation: np.ndarray, crossing: dict[str, np.ndarray], chunk: int,
                         kernel: str = "gaussian") -> Iterator[TailCopies]:
    """ViT-ReciproCAM's copies: for position p (row-major) the target's patch tokens and the block
    input's patch tokens both multiplied by `kernel` centred on p, the prefix tokens kept."""
    _check(activation, chunk)
    name, prefix = block_input({k: v.shape for k, v in crossing.items()}, activation.shape)
    k = _KERNELS[ViTReciproCAMOptions(kernel).kernel]
    _, h, w = activation.shape
    for start in range(0, h * w, chunk):
        masks = _position_masks(k, h, w, np.arange(start, min(h * w, start + chunk)), activation.dtype)
        yield TailCopies(activation[None] * masks[:, None], {name: crossing[name] * token_masks(masks, prefix)})


def vitreciprocam_explore(ctx: Context, options: ViTReciproCAMOptions) -> Explore:
    """ViT-ReciproCAM: the class probability the network gives when the tokens of one transformer
    block are masked around each position, the class (prefix) tokens kept.

    With target ``A = LN₁(X)``, the first layer norm of block k (X its input tokens), and ``M_p``
    the 3×3 Gaussian ``[1 2 1; 2 4 2; 1 2 1] / 16`` centred on patch p (1 on the prefix tokens),
    block k computes ``X' = M_p ⊙ X + Attn(M_p ⊙ A)`` and the network goes on from there:
    ``L(p) = softmax(f(X'))_c``. Masking the layer norm's output and the residual's input, not the
    block's input, is the paper's "token masking ... from the target layer's input": a layer norm
    of a masked token would give its bias, not zero. h·w tail runs, like Recipro-CAM.

    Paper: https://arxiv.org/abs/2310.02588 (Byun and Lee, 2023).
    """
    scores = yield from scores_of(vitreciprocam_inputs(ctx.activation, dict(ctx.crossing), ctx.chunk,
                                                       options.kernel))
    return reciprocam(ctx.activation[None], scores)


METHODS = (
    Method("ablationcam", "Relative drop of the class score when each channel is zeroed (tail re-runs)",
           "https://openaccess.thecvf.com/content_WACV_2020/html/Desai_Ablation-CAM_Visual_Explanations_for_Deep_"
           "Convolutional_Network_via_Gradient-free_Localization_WACV_2020_paper.html", "feature",
           explore=ablation_explore, runs=ablation_runs, uses_gradient=False),
    Method("ablationcam++", "Ablation-CAM on channel groups, split recursively where they matter",
           "https://ieeexplore.ieee.org/document/9897876", "feature", options=AblationPPOptions,
           explore=ablationpp_explore, runs=ablationpp_runs, uses_gradient=False),
    Method("reciprocam", "Class probability of each position's features alone (tail re-runs)",
           "https://arxiv.org/abs/2209.14074", "feature", options=ReciproCAMOptions, explore=reciprocam_explore,
           runs=reciprocam_runs, score="probability", uses_gradient=False),
    Method("vitreciprocam", "Class probability with a transformer block's tokens masked around each position "
           "(ViT-ReciproCAM; tail re-runs)", "https://arxiv.org/abs/2310.02588", "feature",
           options=ViTReciproCAMOptions, explore=vitreciprocam_explore, runs=reciprocam_runs, score="probability",
           uses_gradient=False),
)
