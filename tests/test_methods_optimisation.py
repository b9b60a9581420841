"""Opti-CAM's numpy chain rule against finite differences, and its Adam loop against torch's."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from camrt.errors import InputError
from camrt.methods import METHODS, Context
from camrt.methods._core import upsample
from camrt.methods.optimisation import (
    OptiCAMOptions,
    opticam_explore,
    opticam_gradient,
    opticam_mask,
    opticam_runs,
    upsample_adjoint,
)

RNG = np.random.default_rng(0)
A = RNG.random((5, 4, 3))
X = RNG.normal(size=(3, 16, 12))
W = RNG.normal(size=(3, 16, 12))  # a linear "network": y(x') = <W, x'>, so ∂y/∂x' = W


def score(u: np.ndarray) -> float:
    return float((W * X * opticam_mask(A, u, (16, 12))[1]).sum())


def test_upsample_adjoint_is_the_transpose_of_upsample() -> None:
    s, g = RNG.normal(size=(4, 3)), RNG.normal(size=(16, 12))
    assert np.isclose((upsample(s[None], (16, 12))[0] * g).sum(), (s * upsample_adjoint(g, (4, 3))).sum())


def test_gradient_matches_finite_differences() -> None:
    u = RNG.normal(size=5)
    numeric = np.array([(score(u + e) - score(u - e)) / 2e-6 for e in np.eye(5) * 1e-6])
    np.testing.assert_allclose(opticam_gradient(A, u, X, W), numeric, rtol=1e-6, atol=1e-8)


def test_mask_is_normalised_and_a_constant_map_gives_zero_gradient() -> None:
    _, m = opticam_mask(A, np.zeros(5), (16, 12))
    assert m.min() == 0.0 and m.max() == pytest.approx(1.0)
    flat = np.ones((5, 4, 3))
    assert not opticam_gradient(flat, np.zeros(5), X, W).any()


def test_adam_loop_matches_torch_adam_on_a_linear_score() -> None:
    steps = 7
    explore = opticam_explore(Context(A.astype(np.float32), X.astype(np.float32), chunk=1),
                              OptiCAMOptions(steps=steps, lr=0.1))
    batch = next(explore)
    try:
        while True:  # the linear network: y = <W, x'>, ∂y/∂x' = W
            batch = explore.send((np.array([(W * batch[0]).sum()]), W[None]))
    except StopIteration as stop:
        got = stop.value
    u = torch.zeros(5, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([u], lr=0.1, maximize=True)
    at, xt, wt = (torch.from_numpy(v) for v in (A, X, W))
    for _ in range(steps):
        opt.zero_grad()
        s = (u.softmax(0)[:, None, None] * at).sum(0)
        up = torch.nn.functional.interpolate(s[None, None], size=(16, 12), mode="bilinear", align_corners=False)[0, 0]
        (wt * xt * (up - up.min()) / (up.max() - up.min())).sum().backward()
        opt.step()
    expected = (u.detach().softmax(0)[:, None, None] * at).sum(0).numpy()
    np.testing.assert_allclose(got[0], expected, rtol=1e-5, atol=1e-6)


def test_options_are_checked() -> None:
    with pytest.raises(InputError, match="option steps must be a positive integer, got 0"):
        OptiCAMOptions(steps=0)
    with pytest.raises(InputError, match="option lr must be a number"):
        OptiCAMOptions(lr=-1.0)
    with pytest.raises(InputError, match="option lr must be positive"):
        METHODS["opticam"].configure({"lr": 0.0})
    assert opticam_runs(A, OptiCAMOptions(steps=7)) == 7


def test_the_context_is_checked() -> None:
    with pytest.raises(InputError, match="C×h×w"):
        Context(A[None], X, chunk=1)
    with pytest.raises(InputError, match="one image C×H×W"):
        Context(A, X[None], chunk=1)
    with pytest.raises(InputError, match="needs `x`"):
        next(opticam_explore(Context(A, chunk=1), OptiCAMOptions()))
