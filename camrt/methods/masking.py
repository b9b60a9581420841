"""Input-masking family: masked copies of the input go through the forward-only graph (no
gradient branch) in streamed chunks: Score-CAM, SS-CAM, IS-CAM, Group-CAM and RISE.

Masks exist only per chunk: Score-CAM on resnet50's layer4 has 2048 masked 3×224×224 inputs
(1.2 GB) per image, and none of the methods here ever holds more than `chunk` of them.

The module is longer than camrt's ~350-line aim because its five methods share the mask
helpers (`_channel_masks`, `_constant_channels`, `_spread`, `_softmax_weighted`) and most of
its lines are the methods' docstrings (formulas, references, differences from TorchCAM); a split
would move those helpers into a third module for no reader's gain.

Each method has an options class and an ``<method>_explore(ctx, options)`` coroutine that the
engine drives (the contract is in `camrt.methods.contract`): it yields a batch of masked inputs,
is sent their class scores (logits or probabilities, as `Method.score` says), and returns the
map. ``ctx.x`` is one preprocessed image ``(C_in, H, W)`` and ``ctx.activation`` its target-layer
activation ``(C, h, w)``. Randomised methods draw from ``numpy.random.default_rng(ctx.seed)`` in a
fixed order, so a seed gives the same map whatever the chunk size.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from camrt.checks import choice, flag, number, positive_int
from camrt.errors import InputError
from camrt.methods._core import combine, normalize, relu, scores_of, softmax, upsample
from camrt.methods.contract import Context, Explore, Method, NoOptions, Options


def _check(x: np.ndarray, activation: np.ndarray, chunk: int) -> None:
    Context(activation, x, chunk=chunk)  # the checks of a Context


def _constant_channels(activation: np.ndarray) -> np.ndarray:
    flat = activation.reshape(activation.shape[0], -1)
    return flat.max(axis=1) == flat.min(axis=1)


def _channel_masks(activation: np.ndarray, channels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``norm(up(A_k))`` for the given channels, ``(len(channels), H, W)``."""
    masks = upsample(activation[channels], size)
    return normalize(masks, out=masks)


def _softmax_weighted(s: np.ndarray, activation: np.ndarray) -> np.ndarray:
    """The Score-CAM family's map from per-channel scores: ``ReLU(Σ_k softmax(s)_k A_k)``, ``(1, h, w)``
    for one image's activation ``(C, h, w)``."""
    return relu(combine(softmax(s)[None].astype(activation.dtype), activation[None]))


# Score-CAM ---------------------------------------------------------------------------------------


def scorecam_runs(activation: np.ndarray, options: NoOptions | None = None) -> int:
    """Score-CAM's forward runs: one per non-constant channel, one shared by the constant ones."""
    constant = _constant_channels(activation)
    return int((~constant).sum() + constant.any())


def scorecam_inputs(x: np.ndarray, activation: np.ndarray, chunk: int) -> Iterator[np.ndarray]:
    """The input masked by each channel's map, ``x ⊙ norm(up(A_k))``, `chunk` at a time.

    A constant channel (all zero after a ReLU, typically: half of EfficientNet-Lite0's head on a
    real photo) has the all-zero mask, so all of them share one score: the non-constant channels
    come first, in order, then one zero-masked input if any channel is constant."""
    _check(x, activation, chunk)
    sources = np.flatnonzero(~_constant_channels(activation))
    for start in range(0, len(sources), chunk):
        yield x[None] * _channel_masks(activation, sources[start:start + chunk], x.shape[1:])[:, None]
    if len(sources) < activation.shape[0]:
        yield np.zeros((1, *x.shape), dtype=x.dtype)


def _spread(activation: np.ndarray, given: np.ndarray) -> np.ndarray:
    """Per-channel scores from those of the non-constant channels followed by the zero mask's."""
    constant = _constant_channels(activation)
    s = np.empty(len(constant))
    s[~constant] = given[:(~constant).sum()]
    if constant.any():
        s[constant] = given[-1]  # the shared score of the all-zero mask
    return s


def scorecam(activation: np.ndarray, scores: np.ndarray) -> np.ndarray:
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

    Returns:
        Saliency map ``(1, h, w)`` after ReLU.
    """
    s = _spread(activation[0], np.asarray(scores, dtype=np.float64))
    return _softmax_weighted(s, activation[0])


def scorecam_explore(ctx: Context, options: NoOptions | None = None) -> Explore:
    """Score-CAM as a coroutine: one forward run per non-constant channel (+1), then `scorecam`."""
    scores = yield from scores_of(scorecam_inputs(ctx.need("x"), ctx.activation, ctx.chunk))
    return scorecam(ctx.activation[None], scores)


# Abs-CAM's second phase ---------------------------------------------------------------------------


def abscam_final(activation: np.ndarray, gradient: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Abs-CAM's final map, camrt's reading of the second phase: the initial per-channel maps
    scored through the model with the image, and recombined by those scores.

    Abs-CAM (Zeng et al. 2022) has two phases; the first gives initial maps from absolute
    gradients, ``M⁰_k = w_k A_k`` with ``w_k = (1/hw) Σ_ij |G_kij|`` (`camrt.methods.gradient.
    abscam_channel_maps`), and the second "linearly combines the initial saliency map with the
    original image" and scores the result (the abstract; the paper's full text was not reachable,
    so this is camrt's reading, not the authors' definition). camrt combines each initial map with
    the image as Score-CAM does, ``x ⊙ norm(up(M⁰_k))``, scores it by the class logit ``s_k``,
    and weights the initial maps by the softmax of the scores:

        L = ReLU(Σ_k softmax_k(s)_k · w_k A_k)

    Since ``norm(up(w_k A_k)) = norm(up(A_k))`` for w_k > 0, the copies are Score-CAM's (a
    channel with w_k = 0 keeps its Score-CAM score but adds nothing to L; the softmax's
    normaliser, a constant factor, does not change the normalised saliency).

    Paper: https://arxiv.org/abs/2207.03648

    Args:
        activation: ``(1, C, h, w)``; gradient: ``∂y_c/∂A``, the same shape.
        scores: ``y_c(x ⊙ norm(up(A_k)))`` in the order of `scorecam_inputs`.

    Returns:
        Saliency map ``(1, h, w)`` after ReLU.
    """
    s = _spread(activation[0], np.asarray(scores, dtype=np.float64))
    w = np.abs(gradient[0]).mean(axis=(1, 2)).astype(activation.dtype)
    return _softmax_weighted(s, w[:, None, None] * activation[0])


def abscam_final_explore(ctx: Context, options: NoOptions | None = None) -> Explore:
    """Abs-CAM's second phase as a coroutine: Score-CAM's copies, then `abscam_final`."""
    scores = yield from scores_of(scorecam_inputs(ctx.need("x"), ctx.activation, ctx.chunk))
    return abscam_final(ctx.activation[None], ctx.need("gradient")[None], scores)


# SS-CAM ------------------------------------------------------------------------------------------

_NOISE = ("mask", "input")


@dataclass(frozen=True)
class SSCAMOptions(Options):
    """n: noisy copies per channel; sigma: standard deviation of the noise; noise: where it goes
    (``"mask"`` or ``"input"``)."""

    n: int = 35
    sigma: float = 2.0
    noise: str = "mask"

    def _checked(self) -> dict:
        return {"n": positive_int(self.n, "option n"), "sigma": number(self.sigma, "option sigma"),
                "noise": choice(self.noise, "option noise", _NOISE)}


def sscam_runs(activation: np.ndarray, options: SSCAMOptions) -> int:
    """SS-CAM's forward runs: n per channel."""
    return int(activation.shape[0]) * options.n


def sscam_explore(ctx: Context, options: SSCAMOptions) -> Explore:
    """SS-CAM: Score-CAM with each channel's score averaged over `n` noisy copies.

    ``w = softmax_k((1/n) Σ_i y_c(x̃_ik))`` and ``L = ReLU(Σ_k w_k A_k)``, with
    ``M_k = norm(up(A_k))`` and ``δ_ik ~ N(0, σ²)``:

    * ``noise="mask"`` (the paper's SS-CAM(1), TorchCAM's `SSCAM`, σ=2): ``x̃_ik = x ⊙ (M_k + δ_ik)``,
      the noise an H×W map shared by the colour channels;
    * ``noise="input"`` (the paper's SS-CAM(2)): ``x̃_ik = x ⊙ M_k + δ_ik``, the noise C_in×H×W.

    The noise is drawn from ``default_rng(seed)`` in float32, copy i's channels in order, then
    copy i + 1 (TorchCAM's order), so a seed fixes the map whatever the chunk size. Unlike
    Score-CAM no two channels share a score: noise makes even all-zero masks differ.

    Paper: https://arxiv.org/abs/2006.14255

    Args:
        ctx: one preprocessed image ``x`` ``(C_in, H, W)``, its ``activation`` ``(C, h, w)``, the
            ``chunk`` of masked inputs per forward run and the ``seed`` of the noise.
        options: ``n`` noisy copies per channel (TorchCAM: 35), noise ``sigma`` (TorchCAM: 2.0),
            and where the ``noise`` goes, ``"mask"`` or ``"input"``.

    Returns:
        Saliency map ``(1, h, w)`` after ReLU.
    """
    x, activation, chunk = ctx.need("x"), ctx.activation, ctx.chunk
    n, sigma, noise = options.n, options.sigma, options.noise
    c = activation.shape[0]
    rng = np.random.default_rng(ctx.seed)

    def batches() -> Iterator[np.ndarray]:
        pairs = np.arange(n * c)
        for start in range(0, len(pairs), chunk):
            channels = pairs[start:start + chunk] % c
            masks = _channel_masks(activation, channels, x.shape[1:])
            # a sigma so large that the noise overflows float32 is reported by the engine's check of
            # the copies' scores (an InputError), not warned about here
            with np.errstate(over="ignore"):
                if noise == "mask":
                    masks += rng.standard_normal(masks.shape, dtype=np.float32) * np.float32(sigma)
                    copies = x[None] * masks[:, None]
                else:
                    copies = x[None] * masks[:, None]
                    copies += rng.standard_normal(copies.shape, dtype=np.float32) * np.float32(sigma)
            yield copies

    scores = yield from scores_of(batches())
    s = np.asarray(scores, dtype=np.float64).reshape(n, c).mean(axis=0)
    return _softmax_weighted(s, activation)


# IS-CAM ------------------------------------------------------------------------------------------


def _iscam_scales(n: int, cumulative: bool) -> np.ndarray:
    scales = np.arange(1, n + 1) / n
    return np.cumsum(scales) if cumulative else scales


@dataclass(frozen=True)
class ISCAMOptions(Options):
    """n: integration steps; cumulative: scale by the running sum of i/n (the authors' code)."""

    n: int = 10
    cumulative: bool = False

    def _checked(self) -> dict:
        return {"n": positive_int(self.n, "option n"), "cumulative": flag(self.cumulative, "option cumulative")}


def iscam_runs(activation: np.ndarray, options: ISCAMOptions) -> int:
    """IS-CAM's forward runs: n per non-constant channel, one shared by the constant ones."""
    constant = _constant_channels(activation)
    return int((~constant).sum()) * options.n + int(constant.any())


def iscam_explore(ctx: Context, options: ISCAMOptions) -> Explore:
    """IS-CAM: Score-CAM with each channel's score integrated over masks scaled from 0 to 1.

    ``s_k = (1/n) Σ_{i=1..n} y_c(x ⊙ (i/n) M_k)``, ``w = softmax_k(s)``, ``L = ReLU(Σ_k w_k A_k)``,
    ``M_k = norm(up(A_k))`` (the baseline score cancels in the softmax). TorchCAM's `ISCAM`
    scales the mask by the running sum ``Σ_{j≤i} j/n`` instead (up to 5.5 for n=10), as the
    authors' code does; ``cumulative=True`` gives that variant. Constant channels share one score,
    as in Score-CAM (every scale of an all-zero mask is the same input).

    Paper: https://arxiv.org/abs/2010.03023

    Args:
        ctx: one preprocessed image ``x`` ``(C_in, H, W)``, its ``activation`` ``(C, h, w)`` and the
            ``chunk`` of masked inputs per forward run.
        options: ``n`` integration steps (TorchCAM: 10); ``cumulative``: scale by the running sum of
            i/n (the authors' and TorchCAM's code).

    Returns:
        Saliency map ``(1, h, w)`` after ReLU.
    """
    x, activation, chunk = ctx.need("x"), ctx.activation, ctx.chunk
    n, cumulative = options.n, options.cumulative
    scales = _iscam_scales(n, cumulative).astype(np.float32)
    sources = np.flatnonzero(~_constant_channels(activation))
    m = len(sources)

    def batches() -> Iterator[np.ndarray]:
        pairs = np.arange(n * m)  # step i = pair // m, channel sources[pair % m]
        for start in range(0, len(pairs), chunk):
            part = pairs[start:start + chunk]
            masks = _channel_masks(activation, sources[part % m], x.shape[1:])
            masks *= scales[part // m][:, None, None]
            yield x[None] * masks[:, None]
        if m < activation.shape[0]:
            yield np.zeros((1, *x.shape), dtype=x.dtype)

    given = np.asarray((yield from scores_of(batches())), dtype=np.float64)
    per_channel = given[:n * m].reshape(n, m).mean(axis=0)
    s = _spread(activation, np.concatenate([per_channel, given[n * m:]]))
    return _softmax_weighted(s, activation)


# Group-CAM ---------------------------------------------------------------------------------------


def gaussian_blur(x: np.ndarray, kernel: int = 51, sigma: float = 50.0) -> np.ndarray:
    """Separable Gaussian blur of a ``(C, H, W)`` image with reflect padding, as torchvision's
    ``GaussianBlur(kernel, sigma)`` (Group-CAM's baseline: kernel 51, σ=50)."""
    t = np.linspace(-(kernel - 1) / 2, (kernel - 1) / 2, kernel)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    k = (k / k.sum()).astype(np.float32)
    r = kernel // 2
    out = np.pad(x, ((0, 0), (r, r), (r, r)), mode="reflect")
    rows = sum(k[i] * out[:, i:i + x.shape[1], :] for i in range(kernel))
    return sum(k[i] * rows[:, :, i:i + x.shape[2]] for i in range(kernel)).astype(x.dtype)


@dataclass(frozen=True)
class GroupCAMOptions(Options):
    """groups: channel groups G (paper: 32); blur_kernel, blur_sigma: the Gaussian blur of the baseline."""

    groups: int = 32
    blur_kernel: int = 51
    blur_sigma: float = 50.0

    def _checked(self) -> dict:
        blur_kernel = positive_int(self.blur_kernel, "option blur_kernel")
        if blur_kernel % 2 == 0:
            raise InputError(f"option blur_kernel must be odd, got {blur_kernel}")
        return {"groups": positive_int(self.groups, "option groups"), "blur_kernel": blur_kernel,
                "blur_sigma": number(self.blur_sigma, "option blur_sigma", positive=True)}


def groupcam_runs(activation: np.ndarray, options: GroupCAMOptions) -> int:
    """Group-CAM's forward runs: one per group, plus the blurred baseline."""
    return min(options.groups, int(activation.shape[0])) + 1


def groupcam_explore(ctx: Context, options: GroupCAMOptions, rows: bool = False) -> Explore:
    """Group-CAM: gradient-weighted channel groups as masks that keep the input over a blurred copy.

    ``α_k = mean_ij G_kij``; channels split into G groups of consecutive channels;
    ``M_g = norm(up(ReLU(Σ_{k∈g} α_k A_k)))``; the masked input ``x ⊙ M_g + b ⊙ (1 − M_g)`` with
    ``b`` = x blurred (Gaussian, kernel 51, σ=50); ``s_g = p_c(masked) − p_c(b)`` with ``p_c`` the
    class probability (the authors' code); map ``= ReLU(Σ_g ReLU(s_g) M_g)`` at input resolution.
    Channels are split with ``numpy.array_split`` (group sizes differ by at most one).

    Paper: https://arxiv.org/abs/2103.13859

    Args:
        ctx: one preprocessed image ``x`` ``(C_in, H, W)``, its ``activation`` ``(C, h, w)`` and
            ``gradient`` ``∂y_c/∂A`` (same shape), and the ``chunk`` of masked inputs per forward run.
        options: ``groups`` (paper: 32), and ``blur_kernel``, ``blur_sigma`` of the baseline's blur.
        rows: yield each batch's group maps ``ReLU(Σ_{k∈g} α_k A_k)`` (a zero map first for the
            blurred image) instead of the masked inputs, for a chunk graph that builds the inputs
            from them (`camrt.graph.chunks.groupcam_chunks`); the map is the same.

    Returns:
        Saliency map ``(1, H, W)`` (non-negative).
    """
    x, activation, gradient, chunk = ctx.need("x"), ctx.activation, ctx.need("gradient"), ctx.chunk
    groups, blur_kernel, blur_sigma = options.groups, options.blur_kernel, options.blur_sigma
    alpha = gradient.reshape(len(gradient), -1).mean(axis=1)
    parts = np.array_split(np.arange(activation.shape[0]), min(groups, activation.shape[0]))
    low = np.stack([relu((alpha[p, None, None] * activation[p]).sum(axis=0)) for p in parts])  # no BLAS
    blurred = None if rows else gaussian_blur(x, blur_kernel, blur_sigma)
    saliency = np.zeros((1, *x.shape[1:]), dtype=np.float32)
    base = None
    # The blurred image leads the first batch: every group's score needs its score subtracted.
    for start in range(-1, len(parts), chunk):
        idx = np.arange(max(start, 0), min(start + chunk, len(parts)))
        masks = _channel_masks(low, idx, x.shape[1:])
        if rows:  # a zero group map gives an all-zero mask: the blurred image itself
            batch = low[idx] if start != -1 else np.concatenate([np.zeros_like(low[:1]), low[idx]])
        else:
            batch = blurred[None] + masks[:, None] * (x - blurred)[None]
            if start == -1:
                batch = np.concatenate([blurred[None], batch])
        scores = np.asarray((yield batch), dtype=np.float64)
        if start == -1:
            base, scores = scores[0], scores[1:]
        weights = np.maximum(scores - base, 0.0).astype(np.float32)
        saliency[0] += (weights[:, None, None] * masks).sum(axis=0)
    return saliency


# RISE --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RISEOptions(Options):
    """n: number of masks (paper: 4000 for ResNet50); cells: grid size (paper: 7); p: probability
    that a cell is kept (paper: 0.5)."""

    n: int = 4000
    cells: int = 7
    p: float = 0.5

    def _checked(self) -> dict:
        return {"n": positive_int(self.n, "option n"), "cells": positive_int(self.cells, "option cells"),
                "p": number(self.p, "option p", 0.0, 1.0, positive=True)}


def rise_runs(activation: np.ndarray, options: RISEOptions) -> int:
    """RISE's forward runs: one per mask."""
    return options.n


def rise_explore(ctx: Context, options: RISEOptions, rows: bool = False) -> Explore:
    """RISE: the class probability of the input under random smooth masks, averaged per pixel.

    ``S = Σ_i p_c(x ⊙ M_i) M_i / (n · p)``. Each mask: a `cells`×`cells` grid of independent
    Bernoulli(p) cells, upsampled bilinearly (half-pixel, as `upsample`) to
    ``(cells + 1) · ⌈H / cells⌉`` × ``(cells + 1) · ⌈W / cells⌉`` and cropped to H×W at a random
    shift below one cell. The grids and shifts of all n masks are drawn first from
    ``default_rng(seed)`` (n·cells² values: tiny); the masks themselves exist only per chunk and
    the sum is accumulated as the scores arrive. The mask multiplies the preprocessed input, as the
    Score-CAM family does (masked pixels become the dataset mean). The map does not use the
    activation: RISE is model-agnostic.

    Paper: https://arxiv.org/abs/1806.07421

    Args:
        ctx: one preprocessed image ``x`` ``(C_in, H, W)``, the ``chunk`` of masked inputs per
            forward run and the ``seed`` of the masks (the activation is not used).
        options: ``n`` masks, grid size ``cells``, keep probability ``p``.
        rows: yield each batch's grids and shifts, int64 rows of ``cells²`` 0/1 cells then the row
            and column shift, instead of the masked inputs, for a chunk graph that builds the
            inputs from them (`camrt.graph.chunks.rise_chunks`); the map is the same.

    Returns:
        Saliency map ``(1, H, W)``.
    """
    x, chunk, seed = ctx.need("x"), ctx.chunk, ctx.seed
    n, cells, p = options.n, options.cells, options.p
    h, w = x.shape[1:]
    ch, cw = -(-h // cells), -(-w // cells)
    rng = np.random.default_rng(seed)
    grids = (rng.random((n, cells, cells)) < p).astype(np.float32)
    dy, dx = rng.integers(0, ch, n), rng.integers(0, cw, n)
    if rows:
        draws = np.concatenate([grids.reshape(n, -1), dy[:, None], dx[:, None]], axis=1).astype(np.int64)
    saliency = np.zeros((1, h, w), dtype=np.float32)
    for start in range(0, n, chunk):
        up = upsample(grids[start:start + chunk], ((cells + 1) * ch, (cells + 1) * cw))
        masks = np.stack([m[a:a + h, b:b + w] for m, a, b in
                          zip(up, dy[start:start + chunk], dx[start:start + chunk], strict=True)])
        batch = draws[start:start + chunk] if rows else x[None] * masks[:, None]
        scores = np.asarray((yield batch), dtype=np.float32)
        saliency[0] += (scores[:, None, None] * masks).sum(axis=0)
    saliency /= n * p
    return saliency


METHODS = (
    Method("scorecam", "Softmax over channels of the class score of the input masked by each channel",
           "https://arxiv.org/abs/1910.01279", "input", explore=scorecam_explore, runs=scorecam_runs,
           uses_gradient=False),
    Method("abscam-final", "Abs-CAM's initial maps scored with the image and recombined (camrt's reading of its "
           "second phase)", "https://arxiv.org/abs/2207.03648", "input", explore=abscam_final_explore,
           runs=scorecam_runs),
    Method("sscam", "Score-CAM with scores averaged over noisy masks", "https://arxiv.org/abs/2006.14255", "input",
           options=SSCAMOptions, explore=sscam_explore, runs=sscam_runs, uses_gradient=False),
    Method("iscam", "Score-CAM with scores integrated over masks scaled from 0 to 1",
           "https://arxiv.org/abs/2010.03023", "input", options=ISCAMOptions, explore=iscam_explore,
           runs=iscam_runs, uses_gradient=False),
    Method("groupcam", "Gradient-weighted channel groups scored as masks over a blurred input",
           "https://arxiv.org/abs/2103.13859", "input", options=GroupCAMOptions, explore=groupcam_explore,
           runs=groupcam_runs, score="probability"),
    Method("rise", "Class probability under random smooth masks, averaged per pixel (model-agnostic)",
           "https://arxiv.org/abs/1806.07421", "input", options=RISEOptions, explore=rise_explore, runs=rise_runs,
           score="probability", uses_gradient=False),
)
