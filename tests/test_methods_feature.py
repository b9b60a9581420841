"""Feature-perturbation generators and maps, by hand on tiny arrays."""

from __future__ import annotations

import numpy as np
import pytest

from camrt.errors import InputError
from camrt.methods.feature import (
    ablation_count,
    ablation_inputs,
    ablationcam,
    reciprocam,
    reciprocam_count,
    reciprocam_inputs,
)

A = np.arange(1, 3 * 2 * 2 + 1, dtype=np.float32).reshape(3, 2, 2)  # C=3, h=w=2


@pytest.mark.parametrize("chunk", [1, 2, 5])
def test_ablation_inputs_zero_one_channel_each_in_order(chunk: int) -> None:
    chunks = list(ablation_inputs(A, chunk))
    assert all(len(c) <= chunk for c in chunks)
    copies = np.concatenate(chunks)
    assert len(copies) == ablation_count(A) == 3
    for k in range(3):
        expected = A.copy()
        expected[k] = 0
        np.testing.assert_array_equal(copies[k], expected)


@pytest.mark.parametrize("chunk", [1, 3, 4])
def test_reciprocam_inputs_keep_one_position_each_in_row_major_order(chunk: int) -> None:
    copies = np.concatenate(list(reciprocam_inputs(A, chunk)))
    assert len(copies) == reciprocam_count(A) == 4
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
    np.testing.assert_array_equal(reciprocam(A[None], np.array([0.1, 0.2, 0.3, 0.4]), 0.0),
                                  np.array([[[0.1, 0.2], [0.3, 0.4]]], np.float32))


def test_generators_check_their_input() -> None:
    with pytest.raises(InputError, match="C×h×w"):
        next(ablation_inputs(A[None], 2))
    with pytest.raises(InputError, match="chunk"):
        next(reciprocam_inputs(A, 0))
