"""Feature-perturbation generators and maps, by hand on tiny arrays."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from camrt.errors import InputError
from camrt.methods import METHODS, Context
from camrt.methods.feature import (
    AblationPPOptions,
    ReciproCAMOptions,
    ablation_explore,
    ablation_inputs,
    ablation_runs,
    ablationcam,
    ablationpp_explore,
    ablationpp_runs,
    reciprocam,
    reciprocam_explore,
    reciprocam_inputs,
    reciprocam_runs,
)
from tests.oracle import ablationpp_brute, drive, gaussian_mask

A = np.arange(1, 3 * 2 * 2 + 1, dtype=np.float32).reshape(3, 2, 2)  # C=3, h=w=2


@pytest.mark.parametrize("chunk", [1, 2, 5])
def test_ablation_inputs_zero_one_channel_each_in_order(chunk: int) -> None:
    chunks = list(ablation_inputs(A, chunk))
    assert all(len(c) <= chunk for c in chunks)
    copies = np.concatenate(chunks)
    assert len(copies) == ablation_runs(A) == 3
    for k in range(3):
        expected = A.copy()
        expected[k] = 0
        np.testing.assert_array_equal(copies[k], expected)


@pytest.mark.parametrize("chunk", [1, 3, 4])
def test_reciprocam_inputs_keep_one_position_each_in_row_major_order(chunk: int) -> None:
    copies = np.concatenate(list(reciprocam_inputs(A, chunk)))
    assert len(copies) == reciprocam_runs(A, ReciproCAMOptions()) == 4
    for p in range(4):
        i, j = divmod(p, 2)
        expected = np.zeros_like(A)
        expected[:, i, j] = A[:, i, j]
        np.testing.assert_array_equal(copies[p], expected)


def test_ablationcam_weights_by_hand() -> None:
    scores = np.array([8.0, 10.0, 12.0])  # channel 0 helps, channel 2 hurts, channel 1 does nothing
    out = ablationcam(A[None], scores, base=10.0)
    expected = np.maximum(0.2 * A[0] + 0.0 * A[1] - 0.2 * A[2], 0)
    np.testing.assert_allclose(out[0], expected, rtol=1e-6)
    with pytest.raises(InputError, match="exactly 0"):
        ablationcam(A[None], scores, base=0.0)


def test_reciprocam_map_is_the_scores_in_position_order() -> None:
    np.testing.assert_array_equal(reciprocam(A[None], np.array([0.1, 0.2, 0.3, 0.4])),
                                  np.array([[[0.1, 0.2], [0.3, 0.4]]], np.float32))


def test_generators_check_their_input() -> None:
    with pytest.raises(InputError, match="C×h×w"):
        next(ablation_inputs(A[None], 2))
    with pytest.raises(InputError, match="chunk"):
        next(reciprocam_inputs(A, 0))


# The explore coroutines, driven by hand with a fake tail -------------------------------------------


def channel_scorer(coefficients: np.ndarray, bias: float) -> Callable[[np.ndarray], np.ndarray]:
    """A fake tail: ``y = Σ_k c_k mean(A_k) + bias``, row by row in float64 (a copy's score never
    depends on its batch), so zeroing channel k drops y by exactly ``c_k mean(A_k)``."""
    c = np.asarray(coefficients, dtype=np.float64)
    return lambda batch: np.array([float(c @ b.astype(np.float64).reshape(len(c), -1).mean(axis=1)) + bias
                                   for b in batch])


def test_ablationpp_by_hand() -> None:
    """Channels of constant value 4, 3, 2, 1 (already in mean order), y = A0 − A1 + 2 A2 + ½ A3 + ½ = 6.

    groups=2: {0, 1} drops 1/6, {2, 3} drops 4.5/6. threshold=1 splits only {2, 3}: 4/6, 0.5/6;
    weights 1/12, 1/12, 2/3, 1/12 → map 4/12 + 3/12 + 4/3 + 1/12 = 2 everywhere, in 4 runs.
    threshold=0 splits both: the Ablation-CAM weights c_k v_k / 6 → map 15.5/6, in 2 + 4 runs."""
    act = np.stack([np.full((2, 2), v, np.float32) for v in (4, 3, 2, 1)])
    scorer = channel_scorer([1, -1, 2, 0.5], 0.5)
    base = float(scorer(act[None])[0])
    assert base == 6.0
    for threshold, value, runs in ((1.0, 2.0, 4), (0.0, 15.5 / 6, 6)):
        options = AblationPPOptions(groups=2, threshold=threshold)
        got, batches = drive(ablationpp_explore(Context(act, base=base, chunk=8), options), scorer)
        np.testing.assert_allclose(got, np.full((1, 2, 2), value), rtol=1e-6)
        assert sum(map(len, batches)) == runs
    assert ablationpp_runs(act, AblationPPOptions(groups=2)) == 6


ACT = np.random.default_rng(3).normal(size=(11, 3, 4)).astype(np.float32)
ACT[4] = 0.0  # a dead channel
COEF = np.random.default_rng(4).normal(size=11)


@pytest.mark.parametrize("groups", [1, 3, 4, 11, 20])
@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.5, 1.0])
@pytest.mark.parametrize("chunk", [1, 4, 64])
def test_ablationpp_matches_the_brute_force_recursion(groups: int, threshold: float, chunk: int) -> None:
    scorer = channel_scorer(COEF, 2.0)
    base = float(scorer(ACT[None])[0])
    options = AblationPPOptions(groups=groups, threshold=threshold)
    got, batches = drive(ablationpp_explore(Context(ACT, base=base, chunk=chunk), options), scorer)
    expected, runs = ablationpp_brute(ACT, scorer, base, groups, threshold)
    assert all(len(b) <= chunk for b in batches)
    assert sum(map(len, batches)) == runs <= ablationpp_runs(ACT, options)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("groups", [1, 2, 5, 11, 16])
def test_ablationpp_threshold_zero_is_ablationcam_exactly(groups: int) -> None:
    scorer = channel_scorer(COEF, -1.5)
    base = float(scorer(ACT[None])[0])
    plain, plain_batches = drive(ablation_explore(Context(ACT, base=base, chunk=4)), scorer)
    options = AblationPPOptions(groups=groups, threshold=0.0)
    full, full_batches = drive(ablationpp_explore(Context(ACT, base=base, chunk=4), options), scorer)
    np.testing.assert_array_equal(full, plain)
    # every group split down to single channels: 2C − G runs, the bound `ablationpp_runs` gives
    assert sum(map(len, full_batches)) == 2 * 11 - min(groups, 11) == ablationpp_runs(ACT, options)
    assert sum(map(len, plain_batches)) == ablation_runs(ACT) == 11


def test_ablationpp_threshold_one_runs_fewer_copies() -> None:
    scorer = channel_scorer(COEF, 0.7)
    base = float(scorer(ACT[None])[0])
    context = Context(ACT, base=base, chunk=3)
    runs = {t: sum(map(len, drive(ablationpp_explore(context, AblationPPOptions(groups=4, threshold=t)), scorer)[1]))
            for t in (0.0, 0.5, 1.0)}
    assert runs[1.0] <= runs[0.5] <= runs[0.0] == ablationpp_runs(ACT, AblationPPOptions(groups=4))
    assert runs[1.0] < runs[0.0]
    assert runs[1.0] < ablation_runs(ACT)  # fewer tail runs than Ablation-CAM's C


def test_ablationpp_dead_channels_are_never_split() -> None:
    act = np.zeros((8, 2, 2), np.float32)
    act[0] = 1.0
    scorer = channel_scorer(np.ones(8), 1.0)
    context = Context(act, base=2.0, chunk=16)
    got, batches = drive(ablationpp_explore(context, AblationPPOptions(groups=2, threshold=0.1)), scorer)
    # group {0, 1, 2, 3} (channel 0 leads: highest mean) drops 1/2 and is split down to channel 0;
    # the dead group {4..7} drops 0 and is not split (any threshold > 0)
    np.testing.assert_allclose(got, np.full((1, 2, 2), 0.5))
    assert sum(map(len, batches)) == 2 + 2 + 2  # {0..3}, {4..7}; {0,1}, {2,3}; {0}, {1}
    # threshold=0 splits every group, dead ones too (|0| ≥ 0 · max): Ablation-CAM's weights, 2C − G runs
    got, batches = drive(ablationpp_explore(context, AblationPPOptions(groups=2, threshold=0.0)), scorer)
    np.testing.assert_allclose(got, np.full((1, 2, 2), 0.5))
    assert sum(map(len, batches)) == 2 * 8 - 2


def test_ablationpp_checks_its_options_and_the_base_score() -> None:
    for options, message in (({"groups": 0}, "option groups must be a positive integer, got 0"),
                             ({"groups": 2.0}, "option groups must be a positive integer, got 2.0"),
                             ({"threshold": 1.5}, "option threshold must be a number in [0, 1], got 1.5"),
                             ({"threshold": -0.1}, "option threshold must be a number in [0, 1], got -0.1"),
                             ({"threshold": True}, "option threshold must be a number in [0, 1], got True"),
                             ({"threshold": "half"}, "option threshold must be a number in [0, 1], got 'half'")):
        with pytest.raises(InputError) as e:
            AblationPPOptions(**options)
        assert message in str(e.value)
        with pytest.raises(InputError) as e:
            METHODS["ablationcam++"].configure(options)
        assert message in str(e.value)
    with pytest.raises(InputError, match="exactly 0"):
        drive(ablationpp_explore(Context(ACT, base=0.0, chunk=4), AblationPPOptions()), channel_scorer(COEF, 0.0))
    with pytest.raises(InputError, match="C×h×w"):
        Context(ACT[None], base=1.0, chunk=4)
    with pytest.raises(InputError, match="chunk must be a positive integer"):
        Context(ACT, base=1.0, chunk=0)
    with pytest.raises(InputError, match="needs `base`"):
        drive(ablationpp_explore(Context(ACT, chunk=4), AblationPPOptions()), channel_scorer(COEF, 0.0))


@pytest.mark.parametrize("chunk", [1, 5, 100])
def test_reciprocam_gaussian_masks_by_hand(chunk: int) -> None:
    act = np.random.default_rng(5).normal(size=(2, 3, 4)).astype(np.float32)
    copies = np.concatenate(list(reciprocam_inputs(act, chunk, kernel="gaussian")))
    assert len(copies) == reciprocam_runs(act, ReciproCAMOptions(kernel="gaussian")) == 12
    for p in range(12):
        i, j = divmod(p, 4)
        np.testing.assert_allclose(copies[p], act * gaussian_mask(3, 4, i, j), rtol=1e-6)
    # the corner keeps 4/16, 2/16, 2/16, 1/16 of its neighbourhood (the kernel is not renormalised)
    np.testing.assert_allclose(copies[0] / act, [[[.25, .125, 0, 0], [.125, .0625, 0, 0], [0, 0, 0, 0]]] * 2)
    np.testing.assert_allclose(copies[5, :, 1, 1] / act[:, 1, 1], 0.25)


def test_reciprocam_explore_returns_the_scores_as_the_map() -> None:
    act = np.random.default_rng(6).normal(size=(2, 3, 4)).astype(np.float32)
    probabilities = lambda batch: np.array([1 / (1 + np.exp(-float(b.sum()))) for b in batch])  # noqa: E731
    for kernel in ("onehot", "gaussian"):
        got, batches = drive(reciprocam_explore(Context(act, chunk=5), ReciproCAMOptions(kernel=kernel)), probabilities)
        np.testing.assert_allclose(got, probabilities(np.concatenate(batches)).reshape(1, 3, 4), rtol=1e-6)


def test_reciprocam_rejects_an_unknown_kernel() -> None:
    with pytest.raises(InputError, match="option kernel must be one of onehot, gaussian, got 'box'"):
        ReciproCAMOptions(kernel="box")
    with pytest.raises(InputError, match="option kernel must be one of onehot, gaussian, got 'box'"):
        METHODS["reciprocam"].configure({"kernel": "box"})


def test_ablationpp_threshold_accepts_numpy_scalars() -> None:
    """As the masking methods' number options do (sigma, p, blur_sigma take any numpy float):
    a threshold computed with numpy, e.g. np.float32(0.5), is a number in [0, 1]."""
    scorer = channel_scorer(COEF, 2.0)
    base = float(scorer(ACT[None])[0])
    context = Context(ACT, base=base, chunk=4)
    expected, _ = drive(ablationpp_explore(context, AblationPPOptions(threshold=0.5)), scorer)
    for threshold in (np.float32(0.5), np.float64(0.5)):
        got, _ = drive(ablationpp_explore(context, AblationPPOptions(threshold=threshold)), scorer)
        np.testing.assert_array_equal(got, expected)
