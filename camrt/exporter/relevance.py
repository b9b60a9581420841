"""Relevance-CAM's layer-wise relevance (LRP) at the target layers, computed inside the graph.

Relevance-CAM (Lee et al., CVPR 2021, https://arxiv.org/abs/2106.02052) weights each channel of
the target layer by its total relevance, ``L = ReLU(Σ_k (Σ_ij R_kij) A_k)``, where R is the
layer-wise relevance propagated from the class output down to the target by the rules the paper
uses (its authors' code: https://github.com/mongeoroo/Relevance-CAM):

* the contrastive initial relevance (CLRP): ``t = e_c − (1 − e_c) / K`` on the K class scores,
  the relevance of class c minus the mean of the others';
* convolutions and linear layers by the z⁺ rule (αβ with α = 1, β = 0), batch norm folded into
  the convolution it follows: ``R_x = x⁺ ⊙ W⁺ᵀ S + x⁻ ⊙ W⁻ᵀ S``, ``S = R_y / (W⁺ x⁺ + W⁻ x⁻)``
  (0 where the denominator is 0; biases take no relevance);
* sums (residual connections) split in proportion to their inputs, ``R_a = a / (a + b) · R_y``;
  average pooling likewise (the z rule), max pooling to the winner; element-wise activations
  pass the relevance through unchanged, as does a batch norm that follows no convolution.

How it is computed: as a second, modified backward pass over the same forward. Every rule above
is linear in the relevance, and written for the quantity ``c = R / x`` (relevance per unit of the
tensor) it is the ordinary gradient for sums, pooling, reshapes and ReLU; only convolutions and
linear layers (with their batch norm) and non-ReLU activations need their own backward. Their
outputs are wrapped in `_Rule`, an identity in the forward pass whose backward is the ordinary
one, or the rule's while `relevance_mode` is on. The traced function runs
``autograd.grad(logits, A, grad_outputs=t / logits)`` in that mode (so that ``y ⊙ c = t`` at the
logits) and returns ``relevance.L = A ⊙ c``. make_fx records the rules' arithmetic as ordinary
ATen ops, so the ONNX graph computes it, and `camrt.exporter.verify` compares it with the same
rules run eagerly in float64; the rules themselves are tested against zennit's LRP.

Which layers may follow a target: `tail` refuses a leaf module after the first target that
has no rule here (LayerNorm, attention, gating products); operations written as functions in a
model's forward (``out += identity``, ``torch.flatten``, ``F.relu``) cannot be seen from modules
and are propagated as their gradient, which is the rule for sums, reshapes, pooling and ReLU.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from camrt.errors import LayerError

# The modules whose ordinary gradient is their rule in the c = R / x form.
_PLAIN = (nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Flatten,
          nn.Dropout, nn.Identity, nn.ZeroPad2d)
# Element-wise activations: the relevance passes through unchanged (c_x = c_y ⊙ y / x).
_PASS = (nn.ReLU6, nn.Hardtanh, nn.LeakyReLU, nn.SiLU, nn.GELU, nn.ELU, nn.Hardswish)
_LINEAR = (nn.Conv2d, nn.Linear)

_mode = {"relevance": False}


@contextlib.contextmanager
def relevance_mode() -> Iterator[None]:
    """While on, `_Rule` outputs propagate relevance instead of gradients."""
    _mode["relevance"] = True
    try:
        yield
    finally:
        _mode["relevance"] = False


def _safe_divide(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a / b, and 0 where b is 0."""
    nonzero = b != 0
    return torch.where(nonzero, a / torch.where(nonzero, b, torch.ones_like(b)), torch.zeros_like(a))


class _Rule(torch.autograd.Function):
    """Identity on `y` in the forward pass; the ordinary gradient of `y` in the backward pass, or in
    `relevance_mode` the rule's c_x sent straight to `x` (and nothing through y's own graph)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None, conv: dict | None):
        ctx.save_for_backward(x, y, weight)
        ctx.conv = conv
        return y.clone()

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        if not _mode["relevance"]:
            return None, g, None, None
        x, y, weight = ctx.saved_tensors
        r = y * g  # the relevance of y
        if weight is None:  # pass-through: R_x = R_y
            return _safe_divide(r, x), None, None, None
        wp, wn = weight.clamp(min=0), weight.clamp(max=0)
        xp, xn = x.clamp(min=0), x.clamp(max=0)
        if ctx.conv is None:
            s = _safe_divide(r, F.linear(xp, wp) + F.linear(xn, wn))
            up, un = s @ wp, s @ wn
        else:
            k = ctx.conv
            s = _safe_divide(r, F.conv2d(xp, wp, None, **k) + F.conv2d(xn, wn, None, **k))
            up = torch.nn.grad.conv2d_input(x.shape, wp, s, **k)
            un = torch.nn.grad.conv2d_input(x.shape, wn, s, **k)
        return torch.where(x > 0, up, torch.where(x < 0, un, torch.zeros_like(up))), None, None, None


def _conv_args(m: nn.Conv2d) -> dict:
    return {"stride": m.stride, "padding": m.padding, "dilation": m.dilation, "groups": m.groups}


def _conv_input(m: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """What F.conv2d receives in `m`'s forward: the input, or for a same-padding convolution that
    pads in its forward (efficientnet-pytorch's Conv2dStaticSamePadding) the padded input."""
    pad = getattr(m, "static_padding", None)
    return pad(x) if pad is not None and type(m).forward is not nn.Conv2d.forward else x


def _folded(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> torch.Tensor:
    """The convolution's weight with the batch norm folded in (its scale per output channel)."""
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    return conv.weight * scale.reshape(-1, *([1] * (conv.weight.dim() - 1)))


def _units(modules: dict[str, nn.Module]) -> list[str]:
    """The modules a rule applies to as a whole: leaf modules, and convolutions and linear layers
    with whatever they hold (the padding module of a same-padding convolution)."""
    whole = [n for n, m in modules.items() if n and isinstance(m, _LINEAR)]
    return [n for n, m in modules.items() if n and (n in whole or not any(True for _ in m.children()))
            and not any(n.startswith(w + ".") for w in whole)]


def tail(model: nn.Module, example: torch.Tensor, targets: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """Run the model once and return the leaf modules that start after the first of `targets` has
    finished (the layers relevance flows back through), checked to have a rule, and the pairs
    {batch norm: convolution} among them whose batch norm takes that convolution's output.

    Raises:
        LayerError: a module after the target has no relevance rule, naming it and saying what to do.
    """
    modules = dict(model.named_modules())
    state: dict[str, str] = {}
    seen: dict[str, nn.Module] = {}
    outputs: dict[int, str] = {}  # id of a convolution's output -> its name
    pairs: dict[str, str] = {}

    def pre(name: str):
        def hook(m: nn.Module, inp: tuple) -> None:
            if state:
                seen.setdefault(name, m)
                if isinstance(m, nn.BatchNorm2d) and inp and id(inp[0]) in outputs:
                    pairs[name] = outputs[id(inp[0])]
        return hook

    def post(name: str):
        def hook(m: nn.Module, _inp: tuple, out: object) -> None:
            if name in targets and not state:
                state["first"] = name
            elif state and isinstance(m, nn.Conv2d) and isinstance(out, torch.Tensor):
                outputs[id(out)] = name
        return hook

    handles = []
    for name in _units(modules):
        handles.append(modules[name].register_forward_pre_hook(pre(name)))
    for name, m in modules.items():
        if name:
            handles.append(m.register_forward_hook(post(name)))
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    for name, m in seen.items():
        if isinstance(m, (*_PLAIN, *_PASS, nn.BatchNorm2d)):
            continue
        if isinstance(m, nn.Linear) and type(m).forward is nn.Linear.forward:
            continue
        if isinstance(m, nn.Conv2d) and (type(m).forward is nn.Conv2d.forward or hasattr(m, "static_padding")):
            continue
        raise LayerError(
            f"Relevance-CAM cannot propagate relevance through '{name}' ({type(m).__name__}), which runs after the "
            f"target layer '{state['first']}': camrt's rules cover convolutions, linear layers, batch norm, "
            "element-wise activations, pooling, sums and reshapes; export --relevance with a later target layer")
    return list(seen), pairs


@contextlib.contextmanager
def rules(model: nn.Module, names: Sequence[str], pairs: dict[str, str]) -> Iterator[None]:
    """Wrap the outputs of the modules `names` (the tail `tail` accepted, by name) in `_Rule`
    for the duration: convolutions and linear layers with the z⁺ rule (a convolution followed by
    its batch norm `pairs` at the batch norm's output, with the folded weight), non-ReLU
    activations and lone batch norms with the pass-through rule."""
    modules = dict(model.named_modules())
    folded_convs = {conv: bn for bn, conv in pairs.items()}
    inputs: dict[str, torch.Tensor] = {}
    handles = []

    def hook(name: str):
        m = modules[name]

        def run(_m: nn.Module, inp: tuple, out: torch.Tensor) -> torch.Tensor | None:
            x = inp[0]
            if isinstance(m, nn.Conv2d):
                if name in folded_convs:
                    inputs[name] = _conv_input(m, x)
                    return None
                return _Rule.apply(_conv_input(m, x), out, m.weight, _conv_args(m))
            if isinstance(m, nn.Linear):
                return _Rule.apply(x, out, m.weight, None)
            if isinstance(m, nn.BatchNorm2d) and name in pairs:
                conv = modules[pairs[name]]
                return _Rule.apply(inputs.pop(pairs[name]), out, _folded(conv, m), _conv_args(conv))
            return _Rule.apply(x, out, None, None)  # pass-through

        return run

    for name in names:
        m = modules[name]
        if isinstance(m, (*_LINEAR, *_PASS, nn.BatchNorm2d)):
            # before any other hook: a target layer's hook then records the rule's output
            handles.append(m.register_forward_hook(hook(name), prepend=True))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def contrastive_seed(logits: torch.Tensor, used: torch.Tensor) -> torch.Tensor:
    """The grad_outputs at the logits that give the initial relevance t = e_c − (1 − e_c) / K
    (CLRP) in the c = R / y form: t / logits (0 where a logit is exactly 0)."""
    k = logits.shape[1]
    onehot = (torch.arange(k, device=logits.device) == used[:, None]).to(logits.dtype)
    t = onehot - (1 - onehot) / k
    return _safe_divide(t, logits.detach())


def relevances(logits: torch.Tensor, used: torch.Tensor, acts: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Each activation's relevance A ⊙ c for the classes `used`: the modified backward pass from
    the contrastive seed, through the `_Rule` outputs of a forward run inside `rules` (the
    forward's graph must still be alive: the caller's gradient pass keeps it with retain_graph)."""
    with relevance_mode():
        cs = torch.autograd.grad(logits, list(acts), contrastive_seed(logits, used))
    return [a * c for a, c in zip(acts, cs, strict=True)]
