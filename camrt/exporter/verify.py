"""Compare an exported graph with eager PyTorch on a fresh input.

Oracle: eager autograd on a float64 copy of the model, the closest available truth. Yardstick:
eager autograd in float32 (PyTorch's native kernels), i.e. what PyTorch itself achieves.

Logits and activations: every element within `RTOL` (1e-4) of the largest reference magnitude.

Gradients (of the target layers and, when exported, of the input): the gradient of a ReLU or
max-pool network is discontinuous at ties, and any float32 forward lands on the other side of a
tie within rounding (~1e-6 relative) now and then; the flipped unit's gradient change reaches
every element of the target that depends on it, and through a deep stretch of network that is
most of them. Measured against float64 on fresh random inputs: at the last feature map of every
zoo model, float32 agrees to ~5e-7; at resnet50's layer2, with BatchNorm statistics of realistic
scale, eager float32 PyTorch itself is off in 93-97% of the elements (relative L2 error
1.4-2.2e-2), and ONNX Runtime in 89-94% (0.8-2.1e-2).
So the criterion is relative to the yardstick: over the batch, the share of gradient elements
further than 1e-4 (of their image's largest value) from float64 may be at most
`MAX_FLIP_FRACTION` (0.5%, room for an occasional local flip) plus twice float32 PyTorch's own
share, and the relative L2 error at most `L2_FLOOR` (1e-3) plus twice PyTorch's. A translation
error (a wrong padding, divisor or weight layout, a frozen constant) is off by far more than
rounding in every image, where float32 PyTorch is not, so it cannot pass.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from camrt.exporter import relevance as lrp
from camrt.exporter.tokens import to_map
from camrt.exporter.trace import frozen_eval, select_output
from camrt.manifest import (
    CLASS_IDX_USED,
    INPUT_GRADIENT,
    LOGITS,
    MODEL_MAP,
    OUTPUT,
    SCORE,
    Layer,
    activation_name,
    gradient_name,
    is_gradient,
    relevance_name,
)

RTOL = 1e-4
MAX_FLIP_FRACTION = 5e-3
L2_FLOOR = 1e-3


@dataclass(frozen=True)
class Mismatch:
    name: str
    detail: str

    def __str__(self) -> str:
        return f"{self.name}: {self.detail}"


def eager_outputs(model: nn.Module, x: torch.Tensor, class_idx: torch.Tensor, layers: Sequence[Layer],
                  output_index: int | str | None, input_gradient: bool = False, map_output: int | str | None = None,
                  relevance: tuple[list[str], dict[str, str]] | None = None,
                  ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None]:
    """(oracle, yardstick): logits, used class and per-layer activation and gradient (and the input
    gradient when `input_gradient`; in target mode, `class_idx` a float target: output and score;
    with `relevance`, `camrt.exporter.relevance.tail`'s answer, each layer's relevance by the same
    rules run eagerly)
    by eager autograd in float64 on a copy (the caller's model is untouched), and in float32 with
    PyTorch's native kernels. When the model cannot run in float64, the float32 run is the oracle
    and there is no yardstick."""
    with warnings.catch_warnings():  # torch warns about TF32 on Intel GPUs whenever the flags change
        warnings.simplefilter("ignore", UserWarning)
        with torch.backends.mkldnn.flags(enabled=False):  # oneDNN's conv backward is less accurate still
            f32 = _eager(model, x, class_idx, layers, output_index, input_gradient, map_output, relevance)
    try:
        f64 = _eager(copy.deepcopy(model).double(), x.double(), class_idx, layers, output_index, input_gradient,
                     map_output, relevance)
    except (RuntimeError, TypeError):  # a model with hard-wired float32 ops (a .pt2 program, for example)
        return f32, None
    return f64, f32


def _eager(model: nn.Module, x: torch.Tensor, class_idx: torch.Tensor, layers: Sequence[Layer],
           output_index: int | str | None, input_gradient: bool, map_output: int | str | None = None,
           relevance: tuple[list[str], dict[str, str]] | None = None) -> dict[str, np.ndarray]:
    """The outputs by plain autograd with respect to what each module returns; a token or
    channels-last layer's output and gradient are then put on their grid (`tokens.to_map`, the
    reshape pytorch-grad-cam's users write), independently of the exported function's rebuild."""
    modules = dict(model.named_modules())
    acts: dict[str, torch.Tensor] = {}

    def make_hook(name: str):
        def hook(_m: nn.Module, _i: object, out: torch.Tensor) -> torch.Tensor:
            acts[name] = out
            return out.clone()  # keep the recorded output safe from a following in-place op

        return hook

    handles = [modules[la.name].register_forward_hook(make_hook(la.name)) for la in layers]
    rules = lrp.rules(model, *relevance) if relevance is not None else contextlib.nullcontext()
    relevances = None
    try:
        with frozen_eval(model), rules:
            xg = x.clone().requires_grad_(True)  # so every activation is in the autograd graph
            raw = model(xg)
            logits = select_output(raw, output_index)
            own_map = select_output(raw, map_output) if map_output is not None else None
            wrt = [*(acts[la.name] for la in layers), *([xg] if input_gradient else [])]
            if class_idx.is_floating_point():  # target mode: the vector of the vector-Jacobian product
                used = (logits * class_idx.to(logits.dtype)).flatten(1).sum(1)
                grads = torch.autograd.grad(used.sum(), wrt)
                names = (OUTPUT, SCORE)
            else:
                used = torch.where(class_idx == -1, logits.argmax(1), class_idx)
                grads = torch.autograd.grad(logits[torch.arange(len(used)), used].sum(), wrt,
                                            retain_graph=relevance is not None)
                names = (LOGITS, CLASS_IDX_USED)
                if relevance is not None:
                    relevances = [r.detach() for r in lrp.relevances(logits, used, [acts[la.name] for la in layers])]
    finally:
        for h in handles:
            h.remove()
    out = {names[0]: logits.detach().numpy(), names[1]: used.detach().numpy()}
    if own_map is not None:
        out[MODEL_MAP] = own_map.detach().numpy()
    for la, g in zip(layers, grads, strict=False):
        out[activation_name(la.name)] = to_map(la, acts[la.name].detach()).numpy()
        out[gradient_name(la.name)] = to_map(la, g).numpy()
    if input_gradient:
        out[INPUT_GRADIENT] = grads[-1].numpy()
    for la, r in zip(layers, relevances or (), strict=False):
        out[relevance_name(la.name)] = to_map(la, r).numpy()
    return out


def deviation(got: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """(share of elements further than RTOL of their image's largest |ref| from ref, relative L2
    error) of an N×... tensor."""
    n = ref.shape[0]
    g, r = got.reshape(n, -1).astype(np.float64), ref.reshape(n, -1).astype(np.float64)
    scale = np.abs(r).max(axis=1, keepdims=True)
    scale[scale == 0] = 1.0
    frac = float(np.mean(np.abs(g - r) / scale > RTOL))
    l2 = float(np.linalg.norm(g - r) / max(float(np.linalg.norm(r)), 1e-300))
    return frac, l2


def compare(name: str, got: np.ndarray, ref: np.ndarray, yardstick: np.ndarray | None = None) -> Mismatch | None:
    """None when `got` matches the oracle `ref` under the criterion above, else what is off."""
    if got.shape != ref.shape:
        return Mismatch(name, f"shape {got.shape} != {ref.shape}")
    if name != CLASS_IDX_USED:
        odd = ~np.isfinite(got) & np.isfinite(ref)  # NaN and infinity compare false with every tolerance
        if odd.any():
            return Mismatch(name, f"{int(odd.sum())} elements are NaN or infinite where eager PyTorch's are finite")
    if name == CLASS_IDX_USED:
        bad = float(np.mean(got != ref))
        return Mismatch(name, f"a different class for {bad:.0%} of the images") if bad else None
    if is_gradient(name) or name.startswith(relevance_name("")):  # relevance is as discontinuous at ties
        frac, l2 = deviation(got, ref)
        frac_y, l2_y = deviation(yardstick, ref) if yardstick is not None else (0.0, 0.0)
        if frac > MAX_FLIP_FRACTION + 2 * frac_y or l2 > L2_FLOOR + 2 * l2_y:
            return Mismatch(name, f"{frac:.2%} of elements off, relative L2 error {l2:.1e} (float32 PyTorch: "
                                  f"{frac_y:.2%}, {l2_y:.1e})")
        return None
    scale = float(np.abs(ref).max()) or 1.0
    err = np.abs(got.astype(np.float64) - ref) / scale
    bad_fraction = float(np.mean(err > RTOL))
    if bad_fraction > 0:
        return Mismatch(name, f"{bad_fraction:.2%} of elements off, max relative error {err.max():.1e}")
    return None
