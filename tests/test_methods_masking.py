"""Input-masking methods: generators and map functions by hand."""

from __future__ import annotations

import numpy as np

from camrt.methods.masking import scorecam, scorecam_count, scorecam_inputs

A = np.arange(1, 3 * 2 * 2 + 1, dtype=np.float32).reshape(3, 2, 2)  # C=3, h=w=2


def test_scorecam_scores_constant_channels_once() -> None:
    act = A.copy()
    act[1] = 0.0  # a dead channel: its mask is all zero
    x = np.ones((1, 4, 4), np.float32)
    copies = np.concatenate(list(scorecam_inputs(x, act, 1)))
    assert len(copies) == scorecam_count(act) == 3  # channels 0 and 2, then the shared zero mask
    np.testing.assert_array_equal(copies[-1], 0)
    scores = np.array([1.0, 3.0, 2.0])  # y_c for channel 0, channel 2, the zero mask (channel 1)
    w = np.exp([1.0, 2.0, 3.0]) / np.exp([1.0, 2.0, 3.0]).sum()
    expected = np.maximum(np.einsum("c,chw->hw", w, act), 0)
    np.testing.assert_allclose(scorecam(act[None], scores, 0.0)[0], expected, rtol=1e-6)
