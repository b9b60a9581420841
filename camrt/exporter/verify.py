"""Compare an exported graph with eager PyTorch on a fresh input.

Reference: eager autograd on a float64 copy of the model (float32 when the model cannot be
converted). Float64 matters: two float32 computations of a deep network disagree on which
side of a ReLU some pre-activations within rounding (~1e-6) of zero fall, and each such flip
changes the gradient of every element that the flipped unit reaches backwards. Measured on a
random-init resnet18 with eight images: eager float32 differed from float64 at layer2 on two
images, in 43% and 56% of their elements (by up to 1.5e-2 of the largest), ONNX Runtime on one
image, in 1.1% of its elements (by up to 6e-3); with oneDNN's convolution backward it was worse.

Criterion: logits and activations within `RTOL` (1e-4) of the largest reference magnitude,
every element. Gradients too, except at most `MAX_FLIP_FRACTION` (2%) of the elements of the
batch: room for a rare flip and the elements it reaches, and nothing like what a translation
error does (a wrong padding, divisor or weight layout changes most elements).
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
MAX_FLIP_FRACTION = 2e-2


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
