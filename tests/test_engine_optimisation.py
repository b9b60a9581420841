"""Opti-CAM through an exported graph with the input gradient, against the same loop in eager
PyTorch (float64 autograd through the whole model, torch.optim.Adam)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import camrt
from camrt.engine import Engine
from camrt.errors import InputError
from tests.test_engine_perturbation import SIZE, SkipNet


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    torch.manual_seed(3)
    model = SkipNet().eval()
    folder = tmp_path_factory.mktemp("opti")
    with_grad, without = folder / "skip.grad.cam.onnx", folder / "skip.cam.onnx"
    camrt.export(model, layers=["block"], path=with_grad, input_shape=(1, *SIZE), input_gradient=True)
    camrt.export(model, layers=["block"], path=without, input_shape=(1, *SIZE))
    return model, with_grad, without


def eager_opticam(model: torch.nn.Module, x: np.ndarray, cls: int, steps: int, lr: float) -> np.ndarray:
    model = model.double()
    try:
        xt = torch.from_numpy(x[None]).double()
        acts = {}
        handle = model.block.register_forward_hook(lambda m, i, o: acts.__setitem__("a", o.detach()))
        with torch.no_grad():
            model(xt)
        handle.remove()
        a = acts["a"][0]
        u = torch.zeros(a.shape[0], dtype=torch.float64, requires_grad=True)
        opt = torch.optim.Adam([u], lr=lr, maximize=True)

        def saliency(u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            s = (u.softmax(0)[:, None, None] * a).sum(0)
            up = F.interpolate(s[None, None], size=x.shape[1:], mode="bilinear", align_corners=False)[0, 0]
            return s, (up - up.min()) / (up.max() - up.min())

        for _ in range(steps):
            opt.zero_grad()
            model(xt * saliency(u)[1])[0, cls].backward()
            opt.step()
        return saliency(u)[0].detach().numpy()
    finally:
        model.float()


def test_matches_eager_adam_loop_for_top1_and_another_class(models) -> None:
    model, path, _ = models
    x = np.random.default_rng(1).normal(size=(2, *SIZE)).astype(np.float32)
    engine = Engine(path, device="cpu")
    top = engine.explain(x, "opticam", steps=8).class_idx
    classes = np.array([top[0], (top[1] + 2) % 5])  # the second image explained for a class it did not predict
    r = engine.explain(x, "opticam", class_idx=classes, steps=8)
    assert list(r.class_idx) == list(classes)
    for n in range(2):
        expected = eager_opticam(model, x[n], int(classes[n]), steps=8, lr=0.1)
        np.testing.assert_allclose(r.low_res[n], expected, rtol=1e-4, atol=1e-6)


def test_progress_counts_the_steps(models) -> None:
    calls: list[tuple[int, int]] = []
    Engine(models[1], device="cpu").explain(np.zeros((1, *SIZE), np.float32), "opticam", steps=3,
                                             progress=lambda d, t: calls.append((d, t)))
    assert calls == [(1, 3), (2, 3), (3, 3)]


def test_a_model_without_the_input_gradient_is_refused_before_any_run(models) -> None:
    with pytest.raises(InputError, match="--input-gradient"):
        Engine(models[2], device="cpu").explain(np.zeros((1, *SIZE), np.float32), "opticam")
