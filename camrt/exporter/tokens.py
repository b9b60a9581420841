"""Target layers that are not N×C×h×w: token sequences (ViT, DeiT) and channels-last maps (Swin).

camrt's graph contract is one N×C×h×w `activation.L` and `gradient.L` per target layer, whatever
the layer returns, so that every method, the CLI, video and the map heads work unchanged. A layer
returns its map in one of three layouts (`camrt.manifest.LAYOUTS`):

- ``nchw``: N×C×h×w, the map itself (convolutional networks);
- ``nhwc``: N×h×w×C, channels last (torchvision's and timm's Swin stages); the map is its
  transpose ``A = X.permute(0, 3, 1, 2)``;
- ``tokens``: N×T×C with T = P + h·w, P prefix tokens (a class token, DeiT's distillation token,
  registers) before the h·w patch tokens in row-major order; the map is the patch tokens on their
  grid, ``A[n, c, i, j] = X[n, P + i·w + j, c]``, the prefix dropped. This is pytorch-grad-cam's
  documented ``reshape_transform`` for ViT.

The exported function turns the layer's output into the map (`to_map`), makes the map the tensor
the gradient is taken with respect to, and hands the network its output rebuilt from the map
(`from_map`: the prefix tokens, then the map's positions as tokens), so the layers after the
target read the map: the tail sub-graph of the perturbation methods takes the N×C×h×w activation
back to tokens, and the prefix tokens cross the cut as tensors of the forward pass
(`camrt.graph.subgraph.tail`). Since the rebuilt output equals the original, the gradient with
respect to the map is the gradient with respect to the patch tokens, transposed.

How a layout is told (`layer_for`): a 3-D output is tokens; a 4-D output is channels last when
its two middle sizes are equal, its last differs, and the module holds a LayerNorm over that last
size (Swin's blocks normalise their channels; convolutional blocks hold no LayerNorm over the
width of a map), else N×C×h×w. ``layout=`` says it outright. The prefix of a token layer is
``prefix_tokens=``, else the model's ``num_prefix_tokens`` (timm), else the smallest P ≤ 8 that
leaves a grid of the input's aspect ratio; the grid is ``grid=`` or that one.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from camrt.errors import LayerError
from camrt.exporter.trace import LayerRecord
from camrt.manifest import LAYOUTS, Layer

MAX_PREFIX = 8  # the most prefix tokens tried when the model does not say how many it has


def to_map(layer: Layer, out: torch.Tensor) -> torch.Tensor:
    """The N×C×h×w map of the layer's output."""
    if layer.layout == "nchw":
        return out
    if layer.layout == "nhwc":
        return out.permute(0, 3, 1, 2)
    c, h, w = layer.shape
    return out[:, layer.prefix_tokens:, :].reshape(out.shape[0], h, w, c).permute(0, 3, 1, 2)


def from_map(layer: Layer, act: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """The layer's output rebuilt from its map `act` (and, for tokens, the prefix tokens of `out`)."""
    if layer.layout == "nchw":
        return act
    if layer.layout == "nhwc":
        return act.permute(0, 2, 3, 1)
    c, h, w = layer.shape
    patches = act.permute(0, 2, 3, 1).reshape(act.shape[0], h * w, c)
    return torch.cat([out[:, :layer.prefix_tokens, :], patches], dim=1) if layer.prefix_tokens else patches


def _has_channel_norm(module: nn.Module, channels: int) -> bool:
    return any(isinstance(m, nn.LayerNorm) and tuple(m.normalized_shape) == (channels,) for m in module.modules())


def _grids(t: int, prefix_options: list[int], input_hw: tuple[int, int]) -> list[tuple[int, int, int]]:
    """(P, h, w) with P + h·w = t and h:w = H:W, for each P offered, in order."""
    big_h, big_w = input_hw
    out = []
    for p in prefix_options:
        n = t - p
        if n < 1:
            continue
        h = round(math.sqrt(n * big_h / big_w))
        for hh in {h - 1, h, h + 1}:
            if hh > 0 and n % hh == 0 and hh * big_w == (n // hh) * big_h:
                out.append((p, hh, n // hh))
    return out


def layer_for(record: LayerRecord, model: nn.Module, module: nn.Module, input_hw: tuple[int, int],
              layout: str | None = None, grid: tuple[int, int] | None = None,
              prefix_tokens: int | None = None) -> Layer:
    """The manifest's `Layer` for a target whose eager output is `record.shape` (module docstring).

    Raises:
        LayerError: the output is not 3-D or 4-D, a layout that does not fit, or a token count
            that is not the prefix plus the grid (the message says what was tried and what to pass).
    """
    shape = record.shape
    name = record.name
    if layout is not None and layout not in LAYOUTS:
        raise LayerError(f"layout '{layout}' is not one of {', '.join(LAYOUTS)}")
    if shape is None or len(shape) not in (3, 4):
        got = "not a single tensor" if shape is None else f"of shape {shape}"
        raise LayerError(f"layer '{name}' ({record.type}) returns output {got}; a target layer must return an "
                         "N×C×H×W feature map, an N×H×W×C one (channels last) or N×T×C tokens (a layer inside "
                         "attention that returns a tuple cannot be a target: pick the block that contains it)")
    if len(shape) == 4:
        if layout == "tokens":
            raise LayerError(f"layer '{name}' returns a 4-D output {shape}; layout 'tokens' needs N×T×C")
        _, a, b, c = shape
        if layout is None:
            layout = "nhwc" if a == b != c and _has_channel_norm(module, c) else "nchw"
        if grid is not None or prefix_tokens:
            raise LayerError(f"layer '{name}' returns a {shape} map, not tokens: --grid and --prefix-tokens are for "
                             "token layers (N×T×C)")
        return Layer(name, (c, a, b) if layout == "nhwc" else (a, b, c), layout)
    if layout not in (None, "tokens"):
        raise LayerError(f"layer '{name}' returns N×T×C tokens {shape}; layout '{layout}' needs a 4-D output")
    _, t, c = shape
    if prefix_tokens is not None:
        if isinstance(prefix_tokens, bool) or not isinstance(prefix_tokens, int) or prefix_tokens < 0:
            raise LayerError(f"prefix tokens must be an integer ≥ 0, got {prefix_tokens!r}")
        options = [prefix_tokens]
    else:
        known = getattr(model, "num_prefix_tokens", None)
        options = [known] if isinstance(known, int) and not isinstance(known, bool) and known >= 0 else list(
            range(MAX_PREFIX + 1))
    if grid is not None:
        h, w = grid
        fits = [p for p in options if p + h * w == t]
        if not fits:
            said = f"{options[0]} prefix tokens" if len(options) == 1 else f"0..{MAX_PREFIX} prefix tokens"
            raise LayerError(f"layer '{name}' returns {t} tokens, which is not {said} plus a {h}×{w} grid; "
                             "pass the grid and --prefix-tokens that make up its tokens")
        return Layer(name, (c, h, w), "tokens", fits[0])
    found = _grids(t, options, input_hw)
    if not found:
        said = f"{options[0]} prefix tokens" if len(options) == 1 else f"0 to {MAX_PREFIX} prefix tokens"
        raise LayerError(f"layer '{name}' returns {t} tokens, which are not {said} plus a grid of the input's "
                         f"{input_hw[0]}×{input_hw[1]} aspect; pass --grid HxW and --prefix-tokens P "
                         "(P + H·W must be the token count)")
    p, h, w = found[0]
    return Layer(name, (c, h, w), "tokens", p)


def describe(layer: Layer) -> str:
    """A short note for `camrt layers` and messages: the layout and grid of a target."""
    c, h, w = layer.shape
    if layer.layout == "tokens":
        return f"tokens: {layer.prefix_tokens} prefix + {h}×{w} grid, C={c}"
    if layer.layout == "nhwc":
        return f"channels last: {h}×{w} grid, C={c}"
    return "feature map"
