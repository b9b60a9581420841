"""Eager-autograd oracle for the exported outputs, written independently of camrt's own check."""

from __future__ import annotations

import copy

import numpy as np
import torch


def eager_cam_outputs(model: torch.nn.Module, x: np.ndarray, class_idx: np.ndarray, layers: list[str]) -> dict:
    """logits, class used, and per layer the module output and d logits[n, c_n] / d output[n],
    computed in float64 on a copy of the model: two float32 computations can disagree on ReLU
    ties, and float64 is the closer truth (see camrt/exporter/verify.py for measurements)."""
    model = copy.deepcopy(model).double().eval()
    x = x.astype(np.float64)
    modules = dict(model.named_modules())
    seen: dict[str, torch.Tensor] = {}

    def hook(name):
        def f(_m, _i, out):
            seen[name] = out
            return out.clone()  # a following in-place op must not alter the recorded output

        return f

    handles = [modules[n].register_forward_hook(hook(n)) for n in layers]
    try:
        logits = model(torch.from_numpy(x).requires_grad_(True))
        cls = torch.from_numpy(class_idx).expand(len(x))
        used = torch.where(cls == -1, logits.argmax(1), cls)
        score = sum(logits[i, used[i]] for i in range(len(x)))  # per-image scores, summed
        grads = torch.autograd.grad(score, [seen[n] for n in layers])
    finally:
        for h in handles:
            h.remove()
    out = {"logits": logits.detach().numpy(), "class_idx_used": used.numpy()}
    for n, g in zip(layers, grads, strict=True):
        out[f"activation.{n}"] = seen[n].detach().numpy()
        out[f"gradient.{n}"] = g.numpy()
    return out


def assert_close(name: str, got: np.ndarray, ref: np.ndarray, rtol: float = 1e-4, max_flipped: float = 0.0) -> None:
    """Relative error |got - ref| / max|ref| below rtol for all elements, except at most a
    fraction `max_flipped` of them (gradients: ReLU / max-pool ties flipped by rounding)."""
    assert got.shape == ref.shape, f"{name}: shape {got.shape} != {ref.shape}"
    scale = float(np.abs(ref).max()) or 1.0
    err = np.abs(got.astype(np.float64) - ref) / scale
    frac = float(np.mean(err > rtol))
    assert frac <= max_flipped, f"{name}: {frac:.3%} of elements exceed rtol {rtol} (max error {err.max():.2e})"


def assert_gradient_close(name: str, got: np.ndarray, ref: np.ndarray) -> None:
    """The gradient criterion of camrt/exporter/verify.py, restated: per image, at most 0.5% of
    the elements beyond 1e-4 of that image's largest value; at most one image in four (at least
    one per batch) may exceed that, with a relative L2 error under 2e-2 (a ReLU tie flipped by
    rounding next to the head changes many elements a little)."""
    assert got.shape == ref.shape, f"{name}: shape {got.shape} != {ref.shape}"
    off = []
    for i, (g, r) in enumerate(zip(got, ref, strict=True)):
        scale = float(np.abs(r).max()) or 1.0
        frac = float(np.mean(np.abs(g.astype(np.float64) - r) / scale > 1e-4))
        if frac > 5e-3:
            l2 = float(np.linalg.norm(g - r) / np.linalg.norm(r))
            assert l2 < 2e-2, f"{name}: image {i} has {frac:.2%} of elements off, relative L2 error {l2:.1e}"
            off.append(i)
    assert len(off) <= max(1, len(ref) // 4), f"{name}: images {off} of {len(ref)} are off by more than 0.5%"
