"""Compare an exported graph with eager PyTorch on a fresh input.

Reference: eager autograd on a float64 copy of the model (float32 when the model cannot be
converted), the closest available truth.

Logits and activations: every element within `RTOL` (1e-4) of the largest reference magnitude.

Gradients: the gradient of a ReLU (or max-pool) network is discontinuous where a pre-activation
crosses zero (or two window values tie), and a float32 forward lands on the other side of some
such point whenever it lies within rounding (~1e-6 relative) of it. The flipped unit's gradient
change then reaches every element of the target that the unit depends on. Measured, float32
ONNX Runtime against the float64 reference on fresh random inputs: most images agree to ~5e-7
everywhere; on a random-init resnet18 one image in eight had 1.1% of layer2's elements off (by
up to 6e-3 of the largest, relative L2 error 1.3e-3); on resnet50 one image in eight had 57% off
(a flip next to the head, up to 2e-2, L2 1e-2) and two had 0.1-0.2% off. Criterion, per image:
at most `MAX_FLIP_FRACTION` (0.5%) of the elements beyond 1e-4 of that image's largest gradient;
at most one image in four (at least one per batch) may exceed it, and then only with a relative
L2 error within `MAX_FLIP_L2` (2e-2). A translation error (a wrong padding, divisor or weight
layout, a frozen constant) shows in every image, so it cannot pass.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from camrt.exporter.trace import frozen_eval, select_output

RTOL = 1e-4
MAX_FLIP_FRACTION = 5e-3
MAX_FLIP_L2 = 2e-2


@dataclass(frozen=True)
class Mismatch:
    name: str
    max_rel_error: float
    bad_fraction: float

    def __str__(self) -> str:
        return f"{self.name}: max relative error {self.max_rel_error:.2e}, {self.bad_fraction:.2%} of elements off"


def eager_outputs(model: nn.Module, x: torch.Tensor, class_idx: torch.Tensor, layers: Sequence[str],
                  output_index: int | None) -> dict[str, np.ndarray]:
    """Logits, used class and per-layer activation and gradient by eager autograd in float64
    (on a copy; the caller's model is untouched), or float32 if the copy cannot run in float64."""
    try:
        return _eager(copy.deepcopy(model).double(), x.double(), class_idx, layers, output_index)
    except (RuntimeError, TypeError):  # a model with hard-wired float32 ops (a .pt2 program, for example)
        return _eager(model, x, class_idx, layers, output_index)


def _eager(model: nn.Module, x: torch.Tensor, class_idx: torch.Tensor, layers: Sequence[str],
           output_index: int | None) -> dict[str, np.ndarray]:
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


def gradient_mismatch(got: np.ndarray, ref: np.ndarray) -> tuple[float, float, int]:
    """(worst fraction of elements off in an image, worst relative L2 error, images off) for an
    N×... gradient, per the criterion in the module docstring."""
    n = ref.shape[0]
    g, r = got.reshape(n, -1).astype(np.float64), ref.reshape(n, -1)
    scale = np.abs(r).max(axis=1, keepdims=True)
    scale[scale == 0] = 1.0
    frac = np.mean(np.abs(g - r) / scale > RTOL, axis=1)
    l2 = np.linalg.norm(g - r, axis=1) / np.maximum(np.linalg.norm(r, axis=1), 1e-300)
    off = frac > MAX_FLIP_FRACTION
    return float(frac.max()), float(l2[off].max()) if off.any() else 0.0, int(off.sum())


def compare(name: str, got: np.ndarray, ref: np.ndarray, rtol: float = RTOL) -> Mismatch | None:
    """None when `got` matches `ref` under the criterion above, else what is off."""
    if got.shape != ref.shape:
        return Mismatch(f"{name} shape {got.shape} != {ref.shape}", float("inf"), 1.0)
    if name == "class_idx_used":
        bad = float(np.mean(got != ref))
        return Mismatch(name, float(bad > 0), bad) if bad else None
    if name.startswith("gradient."):
        frac, l2, images_off = gradient_mismatch(got, ref)
        if images_off > max(1, len(ref) // 4) or l2 > MAX_FLIP_L2:
            return Mismatch(f"{name} ({images_off} of {len(ref)} images off, relative L2 error {l2:.1e})",
                            float("nan"), frac)
        return None
    scale = float(np.abs(ref).max()) or 1.0
    err = np.abs(got.astype(np.float64) - ref) / scale
    bad_fraction = float(np.mean(err > rtol))
    if bad_fraction > 0:
        return Mismatch(name, float(err.max()), bad_fraction)
    return None
