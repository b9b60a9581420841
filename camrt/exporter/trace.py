"""Trace `(input, class_idx) -> (logits, class_idx_used, A_1.., G_1.. [, G_input])` into an FX graph.

The gradient G_l = ∂ logits[n, c_n] / ∂ A_l[n] (and, on request, G_input = ∂ logits[n, c_n] / ∂
input[n]) is computed by autograd inside the traced function; `make_fx` records the backward
pass as ordinary ATen ops, which the ONNX exporter can translate. The class is selected with a
one-hot product rather than `gather` (whose backward becomes ScatterElements, poorly supported
by the CUDA provider). Summing the selected scores over the batch gives per-image gradients
because images do not interact in eval mode.
"""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.fx.experimental.proxy_tensor import make_fx

from camrt.errors import ExportError, InputError, LayerError, UnsupportedOpError, first_line
from camrt.exporter.fx_passes import simplify
from camrt.exporter.interpolate import SeparableResize
from camrt.exporter.rules import backward_decompositions
from camrt.manifest import Layer


@dataclass(frozen=True)
class LayerRecord:
    """A module seen during one eager forward: how often it ran and what it returned."""

    name: str
    type: str
    calls: int
    shape: tuple[int, ...] | None  # None when the output is not a single tensor
    note: str = ""  # what a target there exports (`camrt.list_layers` fills it)


def select_output(out: object, output_index: int | str | None) -> torch.Tensor:
    """Pick the explained tensor from whatever the model returns: the only tensor, or the output
    `output_index` of a tuple or list (an index) or of a dict (a key, or an index in its order)."""
    if isinstance(out, torch.Tensor):
        if output_index not in (None, 0):
            raise InputError(f"the model returns one tensor; --output-index {output_index} does not exist")
        return out
    if isinstance(output_index, str):
        if not isinstance(out, dict):
            raise InputError(f"--output-index '{output_index}' is a name, and the model returns a "
                             f"{type(out).__name__}; give an index 0..{len(out) - 1 if hasattr(out, '__len__') else 0}")
        if output_index not in out:
            raise InputError(f"the model's outputs are named {', '.join(map(str, out))}; '{output_index}' is not one")
        chosen = out[output_index]
        if isinstance(chosen, torch.Tensor):
            return chosen
        raise InputError(f"the model's output '{output_index}' is a {type(chosen).__name__}, not a tensor")
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        if output_index is None:
            raise InputError(
                f"the model returns {len(out)} outputs; choose the class scores with --output-index "
                "(output_index=) 0.." + str(len(out) - 1)
            )
        if not -len(out) <= output_index < len(out):
            raise InputError(f"--output-index {output_index} is out of range: the model returns {len(out)} outputs")
        chosen = out[output_index]
        if isinstance(chosen, torch.Tensor):
            return chosen
    raise InputError(f"the model's output is a {type(out).__name__}, not a tensor of class scores")


@contextlib.contextmanager
def frozen_eval(model: nn.Module) -> Iterator[None]:
    """Eval mode and no parameter gradients for the duration; the caller's model is put back."""
    training = model.training
    grads = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in grads:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in grads:
            p.requires_grad_(flag)
        model.train(training)


def _program_input_shape(model: nn.Module) -> tuple[int | None, ...] | None:
    """The input shape a module unflattened from a torch.export program was exported for (None in
    each dynamic dimension), or None for an ordinary module."""
    placeholders = getattr(model, "input_placeholders", None)
    if not placeholders:
        return None
    val = placeholders[0].meta.get("val")
    if not isinstance(val, torch.Tensor):
        return None
    return tuple(d if isinstance(d, int) else None for d in val.shape)


def _check_program_shape(model: nn.Module, shape: tuple[int, ...]) -> None:
    """A torch.export program fixes every dimension it was not told is dynamic (camrt needs the
    batch dynamic; C, H and W usually are not): say which one differs instead of torch's guard error."""
    expected = _program_input_shape(model)
    if expected is None or len(expected) != len(shape):
        return
    wanted = "×".join("N" if i == 0 else str(d) if d is not None else "?" for i, d in enumerate(expected))
    fix = ",".join(["N", *(str(shape[i] if d is None else d) for i, d in enumerate(expected) if i > 0)])
    if expected[1] is not None and expected[1] != shape[1]:
        raise InputError(f"input shape {shape} has {shape[1]} channels but the model takes {expected[1]} (the program "
                         f"was exported for {wanted}); pass --input-shape {fix}")
    for i, name in ((2, "height"), (3, "width")):
        if expected[i] is not None and expected[i] != shape[i]:
            raise InputError(f"input shape {shape} has {name} {shape[i]} but the program was exported for {wanted} "
                             f"(torch.export fixed its {name}); pass --input-shape {fix}")


def survey(model: nn.Module, example: torch.Tensor) -> dict[str, LayerRecord]:
    """Run the model once eagerly and record, for every named module, its call count and output shape.

    Raises:
        InputError: the model does not take an input of the example's shape; a channel count
            that differs from the model's first convolution (or the program's input) is named.
    """
    shape = tuple(example.shape)
    _check_program_shape(model, shape)
    calls: dict[str, int] = {}
    shapes: dict[str, tuple[int, ...] | None] = {}
    first_conv: list[tuple[str, int, int]] = []  # (name, in_channels, channels it was given)
    handles = []

    def make_hook(name: str):
        def hook(_mod: nn.Module, _inp: object, out: object) -> None:
            calls[name] = calls.get(name, 0) + 1
            shapes[name] = tuple(out.shape) if isinstance(out, torch.Tensor) else None

        return hook

    def pre_hook(name: str):
        def hook(mod: nn.Module, inp: tuple) -> None:
            if not first_conv and inp and isinstance(inp[0], torch.Tensor) and inp[0].dim() > 1:
                first_conv.append((name, int(mod.in_channels), int(inp[0].shape[1])))

        return hook

    modules = {n: m for n, m in model.named_modules() if n}
    for name, mod in modules.items():
        handles.append(mod.register_forward_hook(make_hook(name)))
        if isinstance(getattr(mod, "in_channels", None), int) and mod.in_channels > 0:  # convolutions
            handles.append(mod.register_forward_pre_hook(pre_hook(name)))
    try:
        with frozen_eval(model), torch.no_grad():
            model(example)
    except Exception as e:  # noqa: BLE001 - any failure here means the shape is wrong for this model
        if first_conv and first_conv[0][2] == shape[1] != first_conv[0][1]:
            name, wanted, _ = first_conv[0]
            raise InputError(f"input shape {shape} has {shape[1]} channels but the model takes {wanted} (its first "
                             f"convolution '{name}' has in_channels={wanted}); pass --input-shape N,{wanted},H,W"
                             ) from e
        first = first_line(e)
        raise InputError(f"the model rejects an input of shape {shape}: {first}. "
                         "Pass the shape it expects with --input-shape N,C,H,W") from e
    finally:
        for h in handles:
            h.remove()
    return {
        n: LayerRecord(n, type(m).__name__, calls.get(n, 0), shapes.get(n))
        for n, m in modules.items()
    }


def check_layers(records: dict[str, LayerRecord], layers: Sequence[str]) -> None:
    """Each target layer must exist and run exactly once per forward (what it returns is checked
    by `camrt.exporter.tokens.layer_for`)."""
    if not layers:
        raise LayerError("no target layer given; pick one from `camrt layers MODEL` and pass --layer NAME")
    if len(set(layers)) != len(layers):
        raise LayerError(f"a target layer is named twice in {list(layers)}")
    for name in layers:
        rec = records.get(name)
        if rec is None:
            close = difflib.get_close_matches(name, list(records), n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else "; `camrt layers MODEL` lists them"
            raise LayerError(f"the model has no layer named '{name}'{hint}")
        if rec.calls != 1:
            raise LayerError(
                f"layer '{name}' ({rec.type}) runs {rec.calls} times per forward, so its output is not one "
                "feature map; choose a module that runs once (a shared activation such as one ReLU "
                "reused by several blocks cannot be a target: pick the block or the layer before it)"
            )


def cam_function(model: nn.Module, layers: Sequence[Layer], output_index: int | str | None,
                 input_gradient: bool = False, targeted: bool = False, map_output: int | str | None = None,
                 relevance: tuple[list[str], dict[str, str]] | None = None, resizes: SeparableResize | None = None):
    """The function that is traced: (x, class_idx) -> (logits, class_idx_used, *A, *G), with the
    input gradient appended when `input_gradient`. A is each layer's N×C×h×w map
    (`camrt.exporter.tokens.to_map` of what the module returns) and G the gradient with respect
    to it; the network goes on from the output rebuilt from A (`from_map`). With `targeted`:
    (x, target) -> (output, score, *A, *G), score[n] = Σ target[n] ⊙ output[n] and G its gradient
    (the class one-hot of the default is one choice of the target). With `map_output`, the model's
    own map output (`select_output` of it) is appended last. With `relevance` (the tail and
    batch-norm pairs of `camrt.exporter.relevance.tail`), each layer's relevance A ⊙ c follows the
    gradients (and the input gradient), from a second, modified backward pass of the same forward.
    `resizes`: the `SeparableResize` mode the function is traced under; in target mode, when the
    output is one of its resizes (a segmenter's upsampled logits), the score is read before that
    resize (below)."""
    from camrt.exporter import relevance as lrp
    from camrt.exporter.tokens import from_map, to_map

    modules = dict(model.named_modules())

    def f(x: torch.Tensor, class_idx: torch.Tensor):  # class_idx: the target when `targeted`
        acts: dict[str, torch.Tensor] = {}
        if input_gradient:
            # With the input in the autograd graph every target stays in it too (none becomes a
            # leaf below), and the backward runs on through the stem to the input.
            x = x.detach().requires_grad_(True)

        def make_hook(layer: Layer):
            def hook(_mod: nn.Module, _inp: object, out: torch.Tensor) -> torch.Tensor:
                # The first target in execution order becomes a leaf; later targets stay in the
                # autograd graph so the gradient still flows through them to earlier targets.
                act = to_map(layer, out)
                if not act.requires_grad:
                    act = act.detach().requires_grad_(True)
                acts[layer.name] = act
                # The network continues on a copy, so an in-place op that follows (ReLU(inplace=True)
                # after a BatchNorm target) cannot overwrite the recorded activation.
                return from_map(layer, act, out).clone()

            return hook

        handles = [modules[la.name].register_forward_hook(make_hook(la)) for la in layers]
        rules = lrp.rules(model, *relevance) if relevance is not None else contextlib.nullcontext()
        try:
            with torch.enable_grad(), rules:
                raw = model(x)
                logits = select_output(raw, output_index)
                own_map = select_output(raw, map_output) if map_output is not None else None
                source = None
                if targeted:
                    # The gradient is the vector-Jacobian product with the target as the vector;
                    # `(logits * target).sum()` differentiated instead traces a backward that
                    # broadcasts ones over the whole output and multiplies them by the target (two
                    # passes over an N×K×H×W output, 22 MB for a segmenter's at 4×21×256×256).
                    score, cotangent = logits, class_idx
                    source = resizes.source(logits) if resizes is not None else None
                    if source is None or not source.requires_grad:
                        # The score is a read-out beside the gradient (Mul and ReduceSum: ONNX
                        # Runtime ran the same dot product as a batched MatMul ten times slower).
                        source, used = None, (logits.detach() * class_idx).flatten(1).sum(1)
                else:
                    top = logits.argmax(dim=1)
                    used = torch.where(class_idx == -1, top, class_idx)
                    onehot = (torch.arange(logits.shape[1], device=logits.device) == used[:, None]).to(logits.dtype)
                    score, cotangent = (logits * onehot).sum(), None
                wrt = [*(acts[la.name] for la in layers), *([x] if input_gradient else [])]
                grads = torch.autograd.grad(score, [*wrt, *([source] if source is not None else [])],
                                            grad_outputs=cotangent, retain_graph=relevance is not None)
                if source is not None:
                    # The output is a linear resize R(s) of s, so Σ t ⊙ R(s) = Σ Rᵀ(t) ⊙ s, and Rᵀ(t)
                    # is the gradient at s the backward computes anyway: the score is read at the
                    # resize's input (21×16×16 per image for DeepLabV3) instead of over the output.
                    grad_source, grads = grads[-1], grads[:-1]
                    used = (grad_source * source.detach()).flatten(1).sum(1)
                relevances: tuple[torch.Tensor, ...] = ()
                if relevance is not None:
                    relevances = tuple(lrp.relevances(logits, used, [acts[la.name] for la in layers]))
        finally:
            for h in handles:
                h.remove()
        extra = () if own_map is None else (own_map.detach(),)
        return (logits.detach(), used.detach(), *(acts[la.name].detach() for la in layers), *grads,
                *(r.detach() for r in relevances), *extra)

    return f


def traceable_example(example: torch.Tensor) -> torch.Tensor:
    """The example with a batch of at least 2: symbolic tracing specialises a size-1 batch to a
    constant, and the ONNX export must see the batch the trace saw."""
    return torch.cat([example, example.flip(0)]) if example.shape[0] == 1 else example


def second_input(example: torch.Tensor, target_shape: Sequence[int] = ()) -> torch.Tensor:
    """The traced function's second argument for `example` (batch ≥ 2): class_idx -1 for each
    image, or in target mode a random target of `target_shape` per image."""
    if target_shape:
        gen = torch.Generator().manual_seed(7)
        return torch.randn((example.shape[0], *target_shape), generator=gen)
    return torch.full((example.shape[0],), -1, dtype=torch.int64)


def trace(
    model: nn.Module, example: torch.Tensor, layers: Sequence[Layer], output_index: int | str | None,
    input_gradient: bool = False, target_shape: Sequence[int] = (), map_output: int | str | None = None,
    relevance: tuple[list[str], dict[str, str]] | None = None,
) -> torch.fx.GraphModule:
    """Trace the CAM function symbolically (dynamic batch) with camrt's backward decompositions;
    `input_gradient` adds ∂ score / ∂ input as the last output; a `target_shape` traces target mode;
    `relevance` (`camrt.exporter.relevance.tail`'s answer) adds each layer's relevance."""
    resizes = SeparableResize()
    f = cam_function(model, layers, output_index, input_gradient, targeted=bool(target_shape), map_output=map_output,
                     relevance=relevance, resizes=resizes)
    example = traceable_example(example)
    cls = second_input(example, target_shape)
    try:
        with frozen_eval(model), torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH), \
                resizes:
            gm = make_fx(
                f, tracing_mode="symbolic", _allow_non_fake_inputs=True,
                decomposition_table=backward_decompositions(),
            )(example, cls)
    except NotImplementedError as e:
        raise UnsupportedOpError(f"tracing the gradient failed on an unsupported operation: {e}") from e
    except RuntimeError as e:
        raise ExportError(f"tracing the model with its gradient failed: {e}") from e
    return simplify(gm)
