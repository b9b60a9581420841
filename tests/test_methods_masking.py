"""Input-masking methods by hand: generators and map functions, and the explore coroutines driven
with a fake scorer (a fixed function of each copy) against numpy brute-force versions of the
formulas in their docstrings."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from camrt.errors import InputError
from camrt.methods import METHODS, Context, normalize, upsample
from camrt.methods.masking import (
    GroupCAMOptions,
    ISCAMOptions,
    RISEOptions,
    SSCAMOptions,
    gaussian_blur,
    groupcam_explore,
    groupcam_runs,
    iscam_explore,
    iscam_runs,
    rise_explore,
    rise_runs,
    scorecam,
    scorecam_inputs,
    scorecam_runs,
    sscam_explore,
    sscam_runs,
)
from tests.oracle import drive

A = np.arange(1, 3 * 2 * 2 + 1, dtype=np.float32).reshape(3, 2, 2)  # C=3, h=w=2


def test_scorecam_scores_constant_channels_once() -> None:
    act = A.copy()
    act[1] = 0.0  # a dead channel: its mask is all zero
    x = np.ones((1, 4, 4), np.float32)
    copies = np.concatenate(list(scorecam_inputs(x, act, 1)))
    assert len(copies) == scorecam_runs(act) == 3  # channels 0 and 2, then the shared zero mask
    np.testing.assert_array_equal(copies[-1], 0)
    scores = np.array([1.0, 3.0, 2.0])  # y_c for channel 0, channel 2, the zero mask (channel 1)
    w = np.exp([1.0, 2.0, 3.0]) / np.exp([1.0, 2.0, 3.0]).sum()
    expected = np.maximum(np.einsum("c,chw->hw", w, act), 0)
    np.testing.assert_allclose(scorecam(act[None], scores)[0], expected, rtol=1e-6)


# The coroutines driven by hand: a fake scorer stands in for the network ---------------------------

Scorer = Callable[[np.ndarray], np.ndarray]


def linear_scorer(shape: tuple[int, ...], seed: int = 0, bias: float = 0.3) -> Scorer:
    """A fake network: one score per copy, ``Σ copy · W + bias`` in float64, row by row (so a
    copy's score never depends on what else is in its batch)."""
    weights = np.random.default_rng(seed).normal(size=shape)
    return lambda batch: np.array([float((b.astype(np.float64) * weights).sum()) + bias for b in batch])


def sigmoid_scorer(shape: tuple[int, ...], seed: int = 0) -> Scorer:
    """A fake probability in (0, 1), for the methods that are sent class probabilities."""
    linear = linear_scorer(shape, seed, bias=0.0)
    return lambda batch: 1.0 / (1.0 + np.exp(-linear(batch)))


def norm_up(activation: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``M_k = norm(up(A_k))`` by hand (min-max per channel; a constant channel gives zeros)."""
    up = upsample(activation, size).astype(np.float64)
    lo, hi = up.min(axis=(1, 2), keepdims=True), up.max(axis=(1, 2), keepdims=True)
    return np.where(hi > lo, (up - lo) / np.where(hi > lo, hi - lo, 1.0), 0.0).astype(np.float32)


def softmax(s: np.ndarray) -> np.ndarray:
    e = np.exp(s - s.max())
    return e / e.sum()


def weighted(w: np.ndarray, activation: np.ndarray) -> np.ndarray:
    return np.maximum(np.einsum("c,chw->hw", w, activation.astype(np.float64)), 0)[None]


RNG = np.random.default_rng(7)
X = RNG.normal(size=(2, 5, 7)).astype(np.float32)  # C_in=2, H=5, W=7
ACT = RNG.normal(size=(4, 2, 3)).astype(np.float32)  # C=4, h=2, w=3: upsampled to 5×7
ACT[2] = 1.5  # a constant channel: its mask is all zeros


# SS-CAM ------------------------------------------------------------------------------------------


def sscam_brute(x, act, scorer, seed, n, sigma, noise):
    """The docstring's SS-CAM: copy i draws its noise for channels 0..C-1 in order, float32."""
    c = len(act)
    masks = norm_up(act, x.shape[1:])
    rng = np.random.default_rng(seed)
    copies, s = [], np.zeros(c)
    for _ in range(n):
        if noise == "mask":
            delta = rng.standard_normal((c, *x.shape[1:]), dtype=np.float32) * np.float32(sigma)
            batch = x[None] * (masks + delta)[:, None]
        else:
            delta = rng.standard_normal((c, *x.shape), dtype=np.float32) * np.float32(sigma)
            batch = x[None] * masks[:, None] + delta
        copies.append(batch)
        s += scorer(batch)
    return weighted(softmax(s / n), act), np.concatenate(copies)


@pytest.mark.parametrize("noise", ["mask", "input"])
@pytest.mark.parametrize("chunk", [1, 3, 4, 100])
def test_sscam_matches_the_formula_with_the_documented_noise(noise: str, chunk: int) -> None:
    scorer = linear_scorer(X.shape)
    expected, copies = sscam_brute(X, ACT, scorer, seed=5, n=3, sigma=0.7, noise=noise)
    got, batches = drive(sscam_explore(Context(ACT, X, chunk=chunk, seed=5), SSCAMOptions(n=3, sigma=0.7, noise=noise)),
                         scorer)
    assert all(len(b) <= chunk for b in batches)
    # the constant channel too: noise makes it differ
    assert sum(map(len, batches)) == sscam_runs(ACT, SSCAMOptions(n=3)) == 12
    np.testing.assert_allclose(np.concatenate(batches), copies, rtol=1e-5, atol=1e-6)
    assert got.shape == (1, 2, 3)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_sscam_sigma_zero_is_score_cam_with_every_channel_scored() -> None:
    scorer = linear_scorer(X.shape)
    got, batches = drive(sscam_explore(Context(ACT, X, chunk=5, seed=1), SSCAMOptions(n=2, sigma=0.0)), scorer)
    masks = norm_up(ACT, X.shape[1:])
    np.testing.assert_allclose(np.concatenate(batches), np.tile(X[None] * masks[:, None], (2, 1, 1, 1)), rtol=1e-6)
    np.testing.assert_allclose(got, weighted(softmax(scorer(X[None] * masks[:, None])), ACT), rtol=1e-5)


def test_sscam_seed_fixes_the_map() -> None:
    scorer = linear_scorer(X.shape)
    a, _ = drive(sscam_explore(Context(ACT, X, chunk=2, seed=3), SSCAMOptions(n=2)), scorer)
    b, _ = drive(sscam_explore(Context(ACT, X, chunk=5, seed=3), SSCAMOptions(n=2)), scorer)
    c, _ = drive(sscam_explore(Context(ACT, X, chunk=2, seed=4), SSCAMOptions(n=2)), scorer)
    np.testing.assert_allclose(a, b, rtol=1e-6)
    assert not np.allclose(a, c)


# IS-CAM ------------------------------------------------------------------------------------------


def iscam_brute(x, act, scorer, n, cumulative):
    """``s_k = (1/n) Σ_i y(x ⊙ scale_i M_k)``; scale_i = i/n, or Σ_{j≤i} j/n."""
    scales = np.arange(1, n + 1) / n
    if cumulative:
        scales = np.cumsum(scales)
    masks = norm_up(act, x.shape[1:])
    s = np.mean([scorer(x[None] * (np.float32(scale) * masks)[:, None]) for scale in scales], axis=0)
    return weighted(softmax(s), act)


@pytest.mark.parametrize("cumulative", [False, True])
@pytest.mark.parametrize("chunk", [1, 4, 7, 100])
def test_iscam_matches_the_formula(cumulative: bool, chunk: int) -> None:
    scorer = linear_scorer(X.shape, bias=-0.2)
    got, batches = drive(iscam_explore(Context(ACT, X, chunk=chunk), ISCAMOptions(n=4, cumulative=cumulative)), scorer)
    assert all(len(b) <= chunk for b in batches)
    # 3 non-constant channels × 4 steps, then one all-zero input for the constant channel
    assert sum(map(len, batches)) == iscam_runs(ACT, ISCAMOptions(n=4, cumulative=cumulative)) == 13
    np.testing.assert_array_equal(batches[-1][-1], 0)
    np.testing.assert_allclose(got, iscam_brute(X, ACT, scorer, 4, cumulative), rtol=1e-5, atol=1e-6)


def test_iscam_scales_by_hand() -> None:
    """x = 1 and one channel whose mask is 1 everywhere but a 0 corner: the copies are the scales."""
    x = np.ones((1, 2, 2), np.float32)
    act = np.array([[[0.0, 1.0], [1.0, 1.0]]], np.float32)
    for cumulative, scales in ((False, [1 / 3, 2 / 3, 1.0]), (True, [1 / 3, 1.0, 2.0])):
        _, batches = drive(iscam_explore(Context(act, x, chunk=2), ISCAMOptions(n=3, cumulative=cumulative)),
                           lambda b: np.zeros(len(b)))
        copies = np.concatenate(batches)
        np.testing.assert_allclose(copies[:, 0, 1, 1], scales, rtol=1e-6)
        np.testing.assert_array_equal(copies[:, 0, 0, 0], 0)


# Group-CAM ---------------------------------------------------------------------------------------


def test_gaussian_blur_matches_torchvision() -> None:
    torch = pytest.importorskip("torch")
    from torchvision.transforms.functional import gaussian_blur as tv_blur

    x = np.random.default_rng(0).normal(size=(3, 9, 12)).astype(np.float32)
    for kernel, sigma in ((3, 0.8), (5, 1.5), (7, 50.0), (9, 2.0)):
        theirs = tv_blur(torch.from_numpy(x), [kernel, kernel], [sigma, sigma]).numpy()
        got = gaussian_blur(x, kernel, sigma)
        assert got.dtype == np.float32 and got.shape == x.shape
        np.testing.assert_allclose(got, theirs, rtol=1e-5, atol=1e-6)


def test_gaussian_blur_of_a_constant_image_is_itself() -> None:
    # σ=50 with the kernel of 51 > the image: numpy's reflect padding repeats (torch's refuses)
    x = np.full((2, 16, 16), 0.25, np.float32)
    np.testing.assert_allclose(gaussian_blur(x, 51, 50.0), x, rtol=1e-5)


def groupcam_brute(x, act, grad, scorer, groups, kernel, sigma):
    alpha = grad.reshape(len(grad), -1).mean(axis=1)
    c = len(act)
    sizes = [c // groups + (1 if g < c % groups else 0) for g in range(groups)]
    bounds = np.cumsum([0, *sizes])
    low = np.stack([np.maximum(np.einsum("c,chw->hw", alpha[a:b], act[a:b]), 0)
                    for a, b in zip(bounds[:-1], bounds[1:], strict=True)]).astype(np.float32)
    masks = norm_up(low, x.shape[1:])
    blurred = gaussian_blur(x, kernel, sigma)
    base = scorer(blurred[None])[0]
    masked = masks[:, None] * x[None] + (1 - masks[:, None]) * blurred[None]
    scores = scorer(masked)
    return np.einsum("g,ghw->hw", np.maximum(scores - base, 0), masks)[None], np.concatenate([blurred[None], masked])


@pytest.mark.parametrize("chunk", [1, 2, 3, 100])
@pytest.mark.parametrize("groups", [1, 3, 4, 9])
def test_groupcam_matches_the_formula(chunk: int, groups: int) -> None:
    grad = np.random.default_rng(1).normal(size=ACT.shape).astype(np.float32)
    scorer = sigmoid_scorer(X.shape, seed=2)
    got, batches = drive(groupcam_explore(Context(ACT, X, grad, chunk=chunk),
                                          GroupCAMOptions(groups=groups, blur_kernel=3, blur_sigma=1.0)), scorer)
    expected, copies = groupcam_brute(X, ACT, grad, scorer, min(groups, 4), 3, 1.0)
    assert all(0 < len(b) <= chunk for b in batches)
    assert sum(map(len, batches)) == groupcam_runs(ACT, GroupCAMOptions(groups=groups)) == min(groups, 4) + 1
    np.testing.assert_allclose(np.concatenate(batches), copies, rtol=1e-5, atol=1e-6)  # the blurred image first
    assert got.shape == (1, *X.shape[1:]) and got.min() >= 0
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_groupcam_scores_below_the_blurred_image_count_zero() -> None:
    grad = np.ones_like(ACT)
    # the blurred image scores 0.5, every group less: an all-zero map
    scores = iter([np.array([0.5, 0.4]), np.array([0.1, 0.2]), np.array([0.3])])
    options = GroupCAMOptions(groups=4, blur_kernel=3, blur_sigma=1.0)
    got, _ = drive(groupcam_explore(Context(ACT, X, grad, chunk=2), options), lambda b: next(scores))
    np.testing.assert_array_equal(got, 0)


# RISE --------------------------------------------------------------------------------------------


def rise_masks(seed: int, n: int, cells: int, p: float, size: tuple[int, int]) -> np.ndarray:
    """The docstring's procedure: grids, then shifts, from one generator; upsample; crop."""
    h, w = size
    ch, cw = -(-h // cells), -(-w // cells)
    rng = np.random.default_rng(seed)
    grids = (rng.random((n, cells, cells)) < p).astype(np.float32)
    dy, dx = rng.integers(0, ch, n), rng.integers(0, cw, n)
    up = upsample(grids, ((cells + 1) * ch, (cells + 1) * cw))
    return np.stack([m[a:a + h, b:b + w] for m, a, b in zip(up, dy, dx, strict=True)])


@pytest.mark.parametrize("chunk", [1, 3, 16, 100])
def test_rise_matches_the_formula(chunk: int) -> None:
    scorer = sigmoid_scorer(X.shape, seed=4)
    got, batches = drive(rise_explore(Context(ACT, X, chunk=chunk, seed=9), RISEOptions(n=16, cells=3, p=0.4)), scorer)
    masks = rise_masks(9, 16, 3, 0.4, X.shape[1:])
    copies = X[None] * masks[:, None]
    assert all(len(b) <= chunk for b in batches) and sum(map(len, batches)) == rise_runs(ACT, RISEOptions(n=16)) == 16
    np.testing.assert_allclose(np.concatenate(batches), copies, rtol=1e-6, atol=1e-7)
    expected = np.einsum("i,ihw->hw", scorer(copies), masks)[None] / (16 * 0.4)
    assert got.shape == (1, *X.shape[1:])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("p", [0.2, 0.5, 0.9])
def test_rise_masks_keep_a_fraction_p_and_the_map_is_normalised_by_n_p(p: float) -> None:
    """E[M(pixel)] = p (a bilinear mix of Bernoulli(p) cells), so a constant score s gives S ≈ s."""
    x = np.ones((1, 16, 16), np.float32)
    got, batches = drive(rise_explore(Context(ACT, x, chunk=500, seed=0), RISEOptions(n=2000, cells=4, p=p)),
                         lambda b: np.full(len(b), 0.8))
    masks = np.concatenate(batches)[:, 0]
    assert masks.min() >= 0 and masks.max() <= 1
    assert abs(masks.mean() - p) < 0.02
    assert np.abs(masks.mean(axis=0) - p).max() < 0.06  # every pixel, not just on average
    np.testing.assert_allclose(got, 0.8, atol=0.1)
    # the masks are smooth: neighbouring pixels differ by at most one cell's slope
    assert np.abs(np.diff(masks, axis=1)).max() <= 1 / 4 + 1e-6


def test_rise_seed_fixes_the_masks() -> None:
    scorer = sigmoid_scorer(X.shape)
    a, _ = drive(rise_explore(Context(ACT, X, chunk=3, seed=1), RISEOptions(n=10, cells=3)), scorer)
    b, _ = drive(rise_explore(Context(ACT, X, chunk=10, seed=1), RISEOptions(n=10, cells=3)), scorer)
    c, _ = drive(rise_explore(Context(ACT, X, chunk=3, seed=2), RISEOptions(n=10, cells=3)), scorer)
    np.testing.assert_allclose(a, b, rtol=1e-6)
    assert not np.allclose(a, c)


# Options -----------------------------------------------------------------------------------------

GRAD = np.ones_like(ACT)

OPTIONS = {"sscam": SSCAMOptions, "iscam": ISCAMOptions, "groupcam": GroupCAMOptions, "rise": RISEOptions}


@pytest.mark.parametrize(("method", "options", "message"), [
    ("sscam", {"n": 0}, "option n must be a positive integer, got 0"),
    ("sscam", {"n": 2.5}, "option n must be a positive integer, got 2.5"),
    ("sscam", {"n": True}, "option n must be a positive integer, got True"),
    ("sscam", {"sigma": -1.0}, "option sigma must be a number ≥ 0, got -1.0"),
    ("sscam", {"sigma": "big"}, "option sigma must be a number"),
    ("sscam", {"noise": "both"}, "option noise must be one of mask, input, got 'both'"),
    ("iscam", {"n": -3}, "option n must be a positive integer, got -3"),
    ("iscam", {"cumulative": "yes"}, "option cumulative must be true or false, got 'yes'"),
    ("iscam", {"cumulative": 1}, "option cumulative must be true or false, got 1"),
    ("groupcam", {"groups": 0}, "option groups must be a positive integer, got 0"),
    ("groupcam", {"blur_kernel": 4}, "option blur_kernel must be odd, got 4"),
    ("groupcam", {"blur_kernel": 0}, "option blur_kernel must be a positive integer"),
    ("groupcam", {"blur_sigma": 0.0}, "option blur_sigma must be positive"),
    ("groupcam", {"blur_sigma": -2}, "option blur_sigma must be a number ≥ 0, got -2"),
    ("rise", {"n": 0}, "option n must be a positive integer, got 0"),
    ("rise", {"cells": 0}, "option cells must be a positive integer, got 0"),
    ("rise", {"p": 0.0}, "option p must be positive"),
    ("rise", {"p": 1.5}, "option p must be a number in [0, 1], got 1.5"),
    ("rise", {"p": "half"}, "option p must be a number in [0, 1], got 'half'"),
])
def test_bad_option_values_are_input_errors(method: str, options: dict, message: str) -> None:
    """Building the options checks them, directly or through the method's record."""
    assert METHODS[method].options is OPTIONS[method]
    with pytest.raises(InputError) as e:
        OPTIONS[method](**options)
    assert message in str(e.value)
    with pytest.raises(InputError) as e:
        METHODS[method].configure(options)
    assert message in str(e.value)


def test_groupcam_checks_the_gradient_shape() -> None:
    with pytest.raises(InputError, match="must have the activation's shape"):
        Context(ACT, X, GRAD[:2], chunk=4)


def test_a_context_checks_the_shapes_and_the_chunk() -> None:
    with pytest.raises(InputError, match="C×h×w"):
        Context(ACT[None], X, chunk=4)
    with pytest.raises(InputError, match="one image C×H×W"):
        Context(ACT, X[None], chunk=4)
    for chunk in (0, -1, 2.0, True):
        with pytest.raises(InputError, match="chunk must be a positive integer"):
            Context(ACT, X, chunk=chunk)


@pytest.mark.parametrize("name", ["sscam", "iscam", "groupcam", "rise"])
def test_registry_defaults_are_accepted_and_runs_bounds_the_copies(name: str) -> None:
    spec = METHODS[name]
    assert spec.family == "input" and spec.explore is not None and spec.runs is not None
    context = Context(ACT, X, GRAD, base=0.0, seed=0, chunk=5)
    options = spec.options.defaults()
    if name in ("sscam", "iscam", "rise"):
        options["n"] = 3  # the defaults (35, 10, 4000 copies) take long only with a real network
    if name == "groupcam":
        options.update(blur_kernel=3)
    configured = spec.configure(options)
    _, batches = drive(spec.explore(context, configured), sigmoid_scorer(X.shape))
    assert sum(map(len, batches)) == spec.runs(ACT, configured)


def test_map_resolutions() -> None:
    """Group-CAM and RISE return maps at input resolution, the others at the layer's."""
    scorer = sigmoid_scorer(X.shape)
    assert drive(groupcam_explore(Context(ACT, X, GRAD, chunk=4), GroupCAMOptions(blur_kernel=3)),
                 scorer)[0].shape == (1, 5, 7)
    assert drive(rise_explore(Context(ACT, X, chunk=4, seed=0), RISEOptions(n=4)), scorer)[0].shape == (1, 5, 7)
    assert drive(iscam_explore(Context(ACT, X, chunk=4), ISCAMOptions(n=2)), scorer)[0].shape == (1, 2, 3)
    assert normalize(drive(sscam_explore(Context(ACT, X, chunk=4, seed=0), SSCAMOptions(n=2)),
                           scorer)[0]).max() == 1.0
