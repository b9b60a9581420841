"""camrt/methods/relevance.py: Relevance-CAM's map from an activation and its relevance, against a
hand computation (the relevance itself is tested against zennit in test_exporter_relevance.py)."""

from __future__ import annotations

import numpy as np
import pytest

from camrt.errors import InputError
from camrt.methods import METHODS
from camrt.methods.relevance import relevancecam


def test_weights_are_the_total_relevance_per_channel() -> None:
    a = np.array([[[[1.0, 2.0], [0.0, 1.0]], [[3.0, 0.0], [1.0, 1.0]]]])  # 1×2×2×2
    r = np.array([[[[0.5, 0.5], [0.0, 1.0]], [[-1.0, -1.0], [0.5, 0.0]]]])  # weights 2.0 and -1.5
    want = np.maximum(2.0 * a[0, 0] - 1.5 * a[0, 1], 0)
    assert np.allclose(relevancecam(a, r)[0], want)
    assert want.min() == 0 and want.max() == 4.0  # the ReLU acts: two positions are negative


def test_images_are_kept_apart() -> None:
    rng = np.random.default_rng(0)
    a, r = rng.random((3, 4, 5, 5)), rng.normal(size=(3, 4, 5, 5))
    both = relevancecam(a, r)
    for n in range(3):
        assert np.allclose(both[n], relevancecam(a[n:n + 1], r[n:n + 1])[0])


def test_bad_inputs() -> None:
    a = np.ones((1, 2, 3, 3), np.float32)
    with pytest.raises(InputError, match="same shape"):
        relevancecam(a, np.ones((1, 2, 3, 4), np.float32))
    with pytest.raises(InputError, match="export the model with --relevance"):
        relevancecam(a, None)


def test_record() -> None:
    m = METHODS["relevancecam"]
    assert m.family == "relevance" and m.uses_gradient and "2106.02052" in m.paper
