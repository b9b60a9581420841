"""Compare an exported graph with eager PyTorch on a fresh input.

Tolerance: logits and activations must agree to `rtol` relative to the largest reference
magnitude. Gradients pass through ReLU and max-pool, where forward differences at rounding
level (~1e-6) can move a tie to the other side and send an element's gradient elsewhere;
those elements are wrong by a large relative amount while the rest agree to ~1e-6. The
gradient criterion therefore allows at most `max_flip_fraction` of elements (0.5%) to exceed
the tolerance. A real translation error (wrong padding, transposed weights, a frozen
constant) breaks far more elements than that, so the criterion still catches it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from camrt.exporter.trace import frozen_eval, select_output

RTOL = 1e-4
MAX_FLIP_FRACTION = 5e-3


@dataclass(frozen=True)
class Mismatch:
    name: str
    max_rel_error: float
    bad_fraction: float

    def __str__(self) -> str:
        return f"{self.name}: max relative error {self.max_rel_error:.2e}, {self.bad_fraction:.2%} of elements off"


def eager_outputs(model: nn.Module, x: torch.Tensor, class_idx: torch.Tensor, layers: Sequence[str],
                  output_index: int | None) -> dict[str, np.ndarray]:
    """Logits, used class and per-layer activation and gradient by plain eager autograd."""
    modules = dict(model.named_modules())
    acts: dict[str, torch.Tensor] = {}

    def make_hook(name: str):
        def hook(_m: nn.Module, _i: object, out: torch.Tensor) -> torch.Tensor:
            acts[name] = out
            return out.clone()  # keep the recorded output safe from a following in-place op

        return hook

    handles = [modules[n].register_forward_hook(make_hook(n)) for n in layers]
    try:
        with frozen_eval(model):
            xg = x.clone().requires_grad_(True)  # so every activation is in the autograd graph
            logits = select_output(model(xg), output_index)
            used = torch.where(class_idx == -1, logits.argmax(1), class_idx)
            grads = torch.autograd.grad(logits[torch.arange(len(used)), used].sum(), [acts[n] for n in layers])
    finally:
        for h in handles:
            h.remove()
    out = {"logits": logits.detach().numpy(), "class_idx_used": used.numpy()}
    for n, g in zip(layers, grads, strict=True):
        out[f"activation.{n}"] = acts[n].detach().numpy()
        out[f"gradient.{n}"] = g.numpy()
    return out


def compare(name: str, got: np.ndarray, ref: np.ndarray, rtol: float = RTOL) -> Mismatch | None:
    """None when `got` matches `ref` under the criterion above, else what is off."""
    if got.shape != ref.shape:
        return Mismatch(f"{name} shape {got.shape} != {ref.shape}", float("inf"), 1.0)
    if name == "class_idx_used":
        bad = float(np.mean(got != ref))
        return Mismatch(name, float(bad > 0), bad) if bad else None
    scale = float(np.abs(ref).max()) or 1.0
    err = np.abs(got.astype(np.float64) - ref) / scale
    bad_fraction = float(np.mean(err > rtol))
    allowed = MAX_FLIP_FRACTION if name.startswith("gradient.") else 0.0
    if bad_fraction > allowed:
        return Mismatch(name, float(err.max()), bad_fraction)
    return None
