"""The tests' one eager-autograd oracle (`eager_cam`), written independently of camrt's own check,
and brute-force definitions of the perturbation methods to compare the engine with."""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import torch


def eager_cam(model: torch.nn.Module, x: np.ndarray, class_idx: np.ndarray | int, layers: list[str] | tuple[str, ...],
              *, input_gradient: bool = False, output_index: int | None = None,
              dtype: torch.dtype = torch.float64) -> dict[str, np.ndarray]:
    """The tests' one eager-autograd oracle: logits, the class used, and per target layer its
    output ("activation.L") and ∂ logits[n, c_n] / ∂ output[n] ("gradient.L"); with
    `input_gradient` also "gradient.input" = ∂ logits[n, c_n] / ∂ x[n]. `class_idx` has length 1
    or N; -1 means the top class. `output_index` picks the class scores of a model that returns
    several outputs.

    It runs on a copy of the model in eval mode (the caller's model is never changed), with
    PyTorch's native kernels (oneDNN's convolution backward deviates ~1e-2 from float64 on CPU),
    in float64 by default: two float32 computations can disagree on ReLU ties, and float64 is the
    closer truth (see camrt/exporter/verify.py). `dtype=torch.float32` gives the yardstick, what
    float32 PyTorch itself computes."""
    model = copy.deepcopy(model).to(dtype).eval()
    modules = dict(model.named_modules())
    seen: dict[str, torch.Tensor] = {}

    def hook(name):
        def f(_m, _i, out):
            seen[name] = out
            return out.clone()  # a following in-place op must not alter the recorded output

        return f

    handles = [modules[n].register_forward_hook(hook(n)) for n in layers]
    try:
        with torch.backends.mkldnn.flags(enabled=False):
            xt = torch.from_numpy(np.asarray(x)).to(dtype).requires_grad_(True)
            out = model(xt)
            logits = out if output_index is None else out[output_index]
            cls = torch.as_tensor(np.asarray(class_idx, dtype=np.int64).reshape(-1)).expand(len(xt))
            used = torch.where(cls == -1, logits.argmax(1), cls)
            score = logits[torch.arange(len(xt)), used].sum()  # per-image scores: images do not interact
            grads = torch.autograd.grad(score, [seen[n] for n in layers] + ([xt] if input_gradient else []))
    finally:
        for h in handles:
            h.remove()
    result = {"logits": logits.detach().numpy(), "class_idx_used": used.numpy()}
    for n, g in zip(layers, grads, strict=False):
        result[f"activation.{n}"] = seen[n].detach().numpy()
        result[f"gradient.{n}"] = g.numpy()
    if input_gradient:
        result["gradient.input"] = grads[-1].numpy()
    return result


def eager_cam_outputs(model: torch.nn.Module, x: np.ndarray, class_idx: np.ndarray, layers: list[str],
                      input_gradient: bool = False) -> dict:
    """`eager_cam` in float64 (the name the exporter tests import)."""
    return eager_cam(model, x, class_idx, layers, input_gradient=input_gradient)


def assert_close(name: str, got: np.ndarray, ref: np.ndarray, rtol: float = 1e-4, max_flipped: float = 0.0) -> None:
    """Relative error |got - ref| / max|ref| below rtol for all elements, except at most a
    fraction `max_flipped` of them (gradients: ReLU / max-pool ties flipped by rounding)."""
    assert got.shape == ref.shape, f"{name}: shape {got.shape} != {ref.shape}"
    scale = float(np.abs(ref).max()) or 1.0
    err = np.abs(got.astype(np.float64) - ref) / scale
    frac = float(np.mean(err > rtol))
    assert frac <= max_flipped, f"{name}: {frac:.3%} of elements exceed rtol {rtol} (max error {err.max():.2e})"


def _deviation(got: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    n = len(ref)
    g, r = got.reshape(n, -1).astype(np.float64), ref.reshape(n, -1).astype(np.float64)
    scale = np.abs(r).max(axis=1, keepdims=True)
    scale[scale == 0] = 1.0
    return float(np.mean(np.abs(g - r) / scale > 1e-4)), float(np.linalg.norm(g - r) / np.linalg.norm(r))


def assert_gradient_close(name: str, got: np.ndarray, ref: np.ndarray, yardstick: np.ndarray) -> None:
    """The gradient criterion of camrt/exporter/verify.py, restated: against the float64 oracle
    `ref`, the share of elements off by more than 1e-4 of their image's largest value is at most
    0.5% plus twice that of float32 eager PyTorch (`yardstick`), and the relative L2 error at
    most 1e-3 plus twice PyTorch's: rounding-level tie flips, as PyTorch itself has, and no more."""
    assert got.shape == ref.shape, f"{name}: shape {got.shape} != {ref.shape}"
    frac, l2 = _deviation(got, ref)
    frac_y, l2_y = _deviation(yardstick, ref)
    assert frac <= 5e-3 + 2 * frac_y, f"{name}: {frac:.2%} of elements off (float32 PyTorch {frac_y:.2%})"
    assert l2 <= 1e-3 + 2 * l2_y, f"{name}: relative L2 error {l2:.1e} (float32 PyTorch {l2_y:.1e})"


def eager_float32_gradients(model: torch.nn.Module, x: np.ndarray, class_idx: np.ndarray,
                            layers: list[str], input_gradient: bool = False) -> dict[str, np.ndarray]:
    """The yardstick: the same gradients by float32 eager autograd with PyTorch's native kernels."""
    out = eager_cam(model, x, class_idx, layers, input_gradient=input_gradient, dtype=torch.float32)
    return {k: v for k, v in out.items() if k.startswith("gradient.")}


# Perturbation methods: a harness for their explore coroutines and brute-force definitions.


def drive(explore, scorer: Callable[[np.ndarray], np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Run an explore coroutine as the engine does: (its map, the batches it yielded)."""
    batches = []
    try:
        batch = next(explore)
        while True:
            batches.append(batch)
            batch = explore.send(scorer(batch))
    except StopIteration as stop:
        return stop.value, batches


def ablationpp_brute(activation, scorer, base, groups, threshold):
    """Ablation-CAM++ from its docstring, round by round: (map, runs)."""
    c = len(activation)
    means = activation.reshape(c, -1).mean(axis=1)
    order = sorted(range(c), key=lambda k: (-means[k], k))
    sizes = [c // groups + (g < c % groups) for g in range(min(groups, c))]
    pending, start = [], 0
    for size in sizes:
        pending.append(order[start:start + size])
        start += size
    weights, runs = np.zeros(c), 0
    while pending:
        copies = np.repeat(activation[None], len(pending), axis=0)
        for i, part in enumerate(pending):
            copies[i, part] = 0
        drops = (base - scorer(copies)) / base
        runs += len(pending)
        top = np.abs(drops).max()
        nxt = []
        for part, d in zip(pending, drops, strict=True):
            if len(part) > 1 and top > 0 and abs(d) >= threshold * top:
                nxt += [part[:len(part) // 2], part[len(part) // 2:]]
            else:
                weights[part] = d / len(part)
        pending = nxt
    return np.maximum(np.einsum("c,chw->hw", weights, activation), 0)[None], runs


def gaussian_mask(h: int, w: int, i: int, j: int) -> np.ndarray:
    """``[1 2 1; 2 4 2; 1 2 1] / 16`` centred on (i, j), cut at the borders, written out by hand."""
    m = np.zeros((h, w))
    for di in (-1, 0, 1):
        for dj in (-1, 0, 1):
            if 0 <= i + di < h and 0 <= j + dj < w:
                m[i + di, j + dj] = (2 - abs(di)) * (2 - abs(dj)) / 16
    return m
