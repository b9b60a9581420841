"""Map heads: the closed-form gradient CAMs computed inside the graph.

`add_map_heads(methods)` adds to an exported camrt model, for each method M asked for, the outputs
`map.M.L` (N×h×w, the method's map after its ReLU) for every target layer L and `saliency.M`
(N×H×W at the input size, bilinear as `camrt.methods.upsample`, min-max normalised per image to
[0, 1] as `camrt.methods.normalize`) for the last target layer, the engine's default. So a plain
ONNX Runtime caller gets the map from `session.run` with no post-processing. `layercam-fusion`
adds only `saliency.layercam-fusion`: `camrt.methods.fuse` of the LayerCAM maps of every target
layer, in manifest order (the order they were exported, which should be shallow to deep).
Saliencies are clipped to [0, 1]: their last rounding can land one ulp above 1.

Each head is the numpy function of `camrt.methods.gradient` written in standard ONNX operators at
the model's opset (18 or later: ReduceMean, ReduceMax and ReduceMin take their axes as an input),
zero denominators included: where numpy divides only where the denominator is non-zero, the graph
divides by `Where(d != 0, d, 1)` and selects 0 where `d == 0`, so no NaN or infinity appears.
Bilinear resizing uses `upsample`'s own taps (half-pixel centres, source coordinates clamped to
the border) and arithmetic, as Gather, Sub, Mul and Add; why not `Resize`: `_Builder.upsample`.

What cannot be a head:
- CAM's check that the gradient is constant over each map (the layer is followed by global
  average pooling → linear) cannot raise inside a graph without failing every output of the run.
  The head computes the map from the weights ``Σ_ij G_kij`` regardless: on a layer that fails the
  check it is Grad-CAM's map times h·w (the same saliency as `saliency.gradcam`), not CAM.
  The engine keeps the numpy check when it reads a CAM head.
- Eigen-CAM and Eigen-Grad-CAM need a singular value decomposition, which ONNX has no operator for.
- Sampled and perturbation methods run the network on other inputs than the one given; one of
  them, Recipro-CAM, runs only the layers after the target on copies of its activation, which the
  graph can hold: its head is `camrt.graph.reciprocam_head`, reached through the same functions
  (`check_maps`, `map_passes`, `add_maps`).

The pass reads the target layers and input size from the manifest, refuses to add an output that
exists, and records the new methods in the manifest's `maps`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from camrt import atomic
from camrt.errors import InputError
from camrt.graph._util import constant_value, copy
from camrt.graph.metadata import load_camrt_file, read_manifest
from camrt.manifest import METADATA_KEY, Manifest, map_name, saliency_name
from camrt.methods._core import _interpolation_taps  # the one definition of the bilinear taps

MIN_OPSET = 18
FUSION = "layercam-fusion"
FUSION_GAMMA = 2.0  # `camrt.methods.fuse`'s default tanh scale for the shallow maps
_PREFIX = "map_heads/"  # internal tensor names
_WITHOUT_HEADS = {
    "eigencam": "it needs a singular value decomposition, which ONNX has no operator for",
    "eigengradcam": "it needs a singular value decomposition, which ONNX has no operator for",
}


class _Builder:
    """Appends nodes to a graph. Identical nodes (same operator, inputs and attributes) are built
    once, so methods and layers share their common terms (ReLU(G), Σ A, the LayerCAM map of fusion)."""

    def __init__(self, graph: onnx.GraphProto, dtype: np.dtype) -> None:
        self.graph = graph
        self.dtype = dtype
        self.used = {n for node in graph.node for n in node.output} | {i.name for i in graph.input} \
            | {i.name for i in graph.initializer}
        self.seen: dict[tuple, str] = {}
        self.count = 0

    def _fresh(self, hint: str) -> str:
        while True:
            self.count += 1
            name = f"{_PREFIX}{hint}_{self.count}"
            if name not in self.used:
                self.used.add(name)
                return name

    def op(self, op_type: str, *inputs: str, **attrs: object) -> str:
        key = (op_type, inputs, tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in attrs.items())))
        if key not in self.seen:
            out = self._fresh(op_type)
            self.graph.node.append(helper.make_node(op_type, list(inputs), [out], name=out, **attrs))
            self.seen[key] = out
        return self.seen[key]

    def const(self, value: object, dtype: np.dtype | None = None) -> str:
        array = np.asarray(value, dtype=self.dtype if dtype is None else dtype)
        key = ("Constant", array.dtype.str, array.shape, array.tobytes())
        if key not in self.seen:
            out = self._fresh("Constant")
            self.graph.node.append(helper.make_node("Constant", [], [out], name=out,
                                                    value=onnx.numpy_helper.from_array(array)))
            self.seen[key] = out
        return self.seen[key]

    def spatial_mean(self, g: str) -> str:
        """The mean of the N×C×h×w tensor `g` over h×w, N×C×1×1. When `g` is one value per channel
        broadcast over the map, as the gradient of a layer followed by global average pooling is
        traced (``Expand(v)``, or ``Expand(v) / k`` with a scalar k, v a Reshape to N×C×1×1), the
        mean is that value: the head reads ``v / k`` and does not depend on `g`, so a file that
        drops the gradient outputs (`maps_only`) computes no N×C×h×w broadcast at all."""
        producers = {o: n for n in self.graph.node for o in n.output}
        node, scale = producers.get(g), None
        if node is not None and node.op_type in ("Div", "Mul"):
            k = constant_value(self.graph, node.input[1])
            if k is not None and k.size == 1 and k.dtype == self.dtype:
                node, scale = producers.get(node.input[0]), node
        if node is not None and node.op_type == "Expand":
            source = producers.get(node.input[0])
            shape = None if source is None or source.op_type != "Reshape" else constant_value(self.graph,
                                                                                                source.input[1])
            if shape is not None and shape.shape == (4,) and shape[2] == 1 and shape[3] == 1 and shape[1] > 0:
                v = node.input[0]
                return v if scale is None else self.op(scale.op_type, v, scale.input[1])
        return self.op("ReduceMean", g, self.axes(2, 3), keepdims=1)

    def axes(self, *axes: int) -> str:
        return self.const(list(axes), np.int64)

    # The shared steps of `camrt.methods._core` and `camrt.methods.fusion`.

    def combine(self, weights: str, activation: str) -> str:
        """``Σ_k w_k A_k`` for weights N×C×1×1: N×h×w, before the ReLU."""
        return self.op("ReduceSum", self.op("Mul", weights, activation), self.axes(1), keepdims=0)

    def safe_divide(self, num: str, den: str, where: str) -> str:
        """``num / den`` where the boolean `where` holds, else 0; never divides by 0."""
        zero, one = self.const(0.0), self.const(1.0)
        return self.op("Where", where, self.op("Div", num, self.op("Where", where, den, one)), zero)

    def nonzero(self, x: str) -> str:
        return self.op("Not", self.op("Equal", x, self.const(0.0)))

    def upsample(self, maps: str, shape: tuple[int, int], size: tuple[int, int]) -> str:
        """N×h×w → N×H×W, as `camrt.methods.upsample` (torch's bilinear, align_corners=False), with
        its taps and its arithmetic ``a + (b − a) · t`` per axis, so a constant map stays constant.

        Not ONNX `Resize` (linear, half-pixel), which samples the same points but computes
        ``(1 − t) · a + t · b``: on a constant map that is off by an ulp here and there, and min-max
        normalisation then blows the ulps up to a map of noise in [0, 1] instead of all zeros."""
        for axis, n_in, n_out in ((1, shape[0], size[0]), (2, shape[1], size[1])):
            lo, hi, frac = _interpolation_taps(n_in, n_out)
            a = self.op("Gather", maps, self.const(lo, np.int64), axis=axis)
            b = self.op("Gather", maps, self.const(hi, np.int64), axis=axis)
            t = self.const(frac.reshape(-1, 1) if axis == 1 else frac)
            maps = self.op("Add", a, self.op("Mul", self.op("Sub", b, a), t))
        return maps

    def normalize(self, maps: str) -> str:
        """Per-map min-max scaling to [0, 1], a constant map → 0, as `camrt.methods.normalize`."""
        low = self.op("ReduceMin", maps, self.axes(1, 2), keepdims=1)
        span = self.op("Sub", self.op("ReduceMax", maps, self.axes(1, 2), keepdims=1), low)
        inverse = self.safe_divide(self.const(1.0), span, self.op("Greater", span, self.const(0.0)))
        return self.unit(self.op("Mul", self.op("Sub", maps, low), inverse))

    def unit(self, x: str) -> str:
        """`x` clipped to [0, 1]: the last rounding (``span · (1 / span)``, or a resize of values
        equal to 1) can land one ulp above 1, and a saliency output promises [0, 1]."""
        return self.op("Clip", x, self.const(0.0), self.const(1.0))

    def scaled_by_max(self, maps: str) -> str:
        """``M / max M`` per map, 0 where the max is not positive (`camrt.methods.fusion`)."""
        top = self.op("ReduceMax", maps, self.axes(1, 2), keepdims=1)
        return self.safe_divide(maps, top, self.op("Greater", top, self.const(0.0)))


# One function per method: (builder, A, G) -> the N×h×w map after the method's ReLU, as the numpy
# function of the same name in `camrt.methods.gradient` computes it.

def _cam(b: _Builder, a: str, g: str) -> str:
    return b.op("Relu", b.combine(b.op("ReduceSum", g, b.axes(2, 3), keepdims=1), a))


def _gradcam(b: _Builder, a: str, g: str) -> str:
    return b.op("Relu", b.combine(b.spatial_mean(g), a))


def _gradcampp(b: _Builder, a: str, g: str) -> str:
    grad2 = b.op("Mul", g, g)
    grad3 = b.op("Mul", grad2, g)
    total = b.op("ReduceSum", a, b.axes(2, 3), keepdims=1)
    denom = b.op("Add", b.op("Mul", b.const(2.0), grad2), b.op("Mul", total, grad3))
    alpha = b.safe_divide(grad2, denom, b.nonzero(denom))
    weights = b.op("ReduceSum", b.op("Mul", alpha, b.op("Relu", g)), b.axes(2, 3), keepdims=1)
    return b.op("Relu", b.combine(weights, a))


def _xgradcam(b: _Builder, a: str, g: str) -> str:
    total = b.op("ReduceSum", a, b.axes(2, 3), keepdims=1)
    weighted = b.op("ReduceSum", b.op("Mul", a, g), b.axes(2, 3), keepdims=1)
    return b.op("Relu", b.combine(b.safe_divide(weighted, total, b.nonzero(total)), a))


def _layercam(b: _Builder, a: str, g: str) -> str:
    return b.op("Relu", b.op("ReduceSum", b.op("Mul", b.op("Relu", g), a), b.axes(1), keepdims=0))


def _hirescam(b: _Builder, a: str, g: str) -> str:
    return b.op("Relu", b.op("ReduceSum", b.op("Mul", g, a), b.axes(1), keepdims=0))


def _gradcam_elementwise(b: _Builder, a: str, g: str) -> str:
    return b.op("ReduceSum", b.op("Relu", b.op("Mul", g, a)), b.axes(1), keepdims=0)


def _abscam(b: _Builder, a: str, g: str) -> str:
    return b.op("Relu", b.combine(b.op("ReduceMean", b.op("Abs", g), b.axes(2, 3), keepdims=1), a))


HEADS: dict[str, Callable[[_Builder, str, str], str]] = {
    "cam": _cam,
    "gradcam": _gradcam,
    "gradcam++": _gradcampp,
    "xgradcam": _xgradcam,
    "layercam": _layercam,
    "hirescam": _hirescam,
    "gradcam-elementwise": _gradcam_elementwise,
    "abscam": _abscam,
}
"""The methods with a map head: `map.M.L` per layer and `saliency.M` for the last layer."""

HEAD_METHODS: tuple[str, ...] = (*HEADS, FUSION)
"""The gradient methods with heads (`all` means these); `add_map_heads` also takes Recipro-CAM's
(`camrt.graph.reciprocam_head.parse_spec`)."""


def check_maps(methods: Sequence[str] | str) -> tuple[str, ...]:
    """The methods named in `methods`, checked: each has a head, none is given twice; ``"all"``
    stands for every gradient method with a head. Recipro-CAM's head is named with its options
    (`camrt.graph.reciprocam_head.parse_spec`: ``reciprocam:kernel=gaussian``, say); it is not
    part of ``"all"``, as it runs the tail h·w times per image.

    Raises:
        InputError: an unknown method (the message lists those with heads), a method that cannot be
            a head (and why), an unreadable Recipro-CAM spec, an empty list or a method given twice.
    """
    from camrt.graph.reciprocam_head import SPEC_HELP, parse_spec  # it builds on this module

    names = [methods] if isinstance(methods, str) else list(methods)
    if names == ["all"]:
        return HEAD_METHODS
    known = f"{', '.join(HEAD_METHODS)} (or all), and {SPEC_HELP}"
    if not names:
        raise InputError(f"no methods given for map heads; methods with heads: {known}")
    for name in names:
        if name in _WITHOUT_HEADS:
            raise InputError(f"'{name}' cannot be a map head: {_WITHOUT_HEADS[name]}; methods with heads: {known}")
        if name not in HEAD_METHODS and parse_spec(name) is None:
            raise InputError(f"no map head for method '{name}'; methods with heads: {known}")
    methods_of = [name.split(":")[0] for name in names]
    twice = sorted({n for n in methods_of if methods_of.count(n) > 1})
    if twice:
        raise InputError(f"map heads: {', '.join(twice)} given twice")
    return tuple(names)


def _output(graph: onnx.GraphProto, name: str) -> onnx.ValueInfoProto:
    for o in graph.output:
        if o.name == name:
            return o
    raise InputError(f"the model has no output '{name}', which its manifest lists; re-export it with `camrt export`")


def add_map_heads(methods: Sequence[str] | str) -> Callable[[onnx.ModelProto], onnx.ModelProto]:
    """A pass adding the map heads of `methods` (see the module docstring; Recipro-CAM's:
    `camrt.graph.reciprocam_head`) and recording them in the manifest's `maps`.

    Raises (when the pass runs):
        InputError: a method without a head (at once, when the pass is made), a model without a
            camrt manifest, an opset below 18, activations that are not float32, an output that
            exists already (heads are added once), gradient heads on a file without gradients, or
            what `add_reciprocam_head` refuses.
    """
    passes = map_passes(methods)
    if len(passes) == 1:
        return passes[0]

    def add(model: onnx.ModelProto) -> onnx.ModelProto:
        for p in passes:
            model = p(model)
        return model

    return add


def _gradient_heads(wanted: Sequence[str]) -> Callable[[onnx.ModelProto], onnx.ModelProto]:
    """The pass of `add_map_heads` for the gradient methods `wanted` (checked names of `HEADS` and `FUSION`)."""

    def add(model: onnx.ModelProto) -> onnx.ModelProto:
        manifest = read_manifest(model)
        if not manifest.gradients:
            raise InputError(f"map heads of {', '.join(wanted)} read the gradients, and this file was written without "
                             "them (--no-gradients); add them to the file `camrt export` wrote")
        opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
        if opset < MIN_OPSET:
            raise InputError(f"map heads need opset {MIN_OPSET} or later (Reduce operators with axes as an input); "
                             f"the model imports opset {opset}: re-export it with --opset {MIN_OPSET} or later")
        names = [(m, map_name(m, la.name)) for m in wanted if m != FUSION for la in manifest.layers]
        names += [(m, saliency_name(m)) for m in wanted]
        existing = {o.name for o in model.graph.output}
        clash = [n for _, n in names if n in existing]
        if clash:
            raise InputError(f"the model already has the output '{clash[0]}': map heads are added once (this model "
                             f"has heads for {', '.join(manifest.maps) or 'no method'})")
        model = copy(model)
        g = model.graph
        first = _output(g, manifest.layers[0].activation).type.tensor_type
        for la in manifest.layers:
            for tensor in (la.activation, la.gradient):
                if _output(g, tensor).type.tensor_type.elem_type != TensorProto.FLOAT:
                    raise InputError(f"map heads need float32 activations and gradients; '{tensor}' is "
                                     f"{TensorProto.DataType.Name(_output(g, tensor).type.tensor_type.elem_type)}")
        b = _Builder(g, np.dtype(np.float32))
        batch = first.shape.dim[0] if first.HasField("shape") and first.shape.dim else None
        size = (int(manifest.input_shape[2]), int(manifest.input_shape[3]))
        last = manifest.layers[-1]

        def output(name: str, value: str, shape: tuple[int, int]) -> None:
            g.node.append(helper.make_node("Identity", [value], [name], name=name))
            info = helper.make_tensor_value_info(name, TensorProto.FLOAT, [None, *shape])
            if batch is not None:
                info.type.tensor_type.shape.dim[0].CopyFrom(batch)
            g.output.append(info)

        for method in wanted:
            if method == FUSION:
                maps = [_layercam(b, la.activation, la.gradient) for la in manifest.layers]
                scaled = [b.op("Tanh", b.op("Mul", b.const(FUSION_GAMMA), b.scaled_by_max(m))) for m in maps[:-1]]
                scaled.append(b.scaled_by_max(maps[-1]))
                up = [b.upsample(m, la.shape[1:], size) for m, la in zip(scaled, manifest.layers, strict=True)]
                output(saliency_name(method), b.unit(b.op("Max", *up)), size)
                continue
            for la in manifest.layers:
                output(map_name(method, la.name), HEADS[method](b, la.activation, la.gradient), la.shape[1:])
            low = HEADS[method](b, last.activation, last.gradient)
            output(saliency_name(method), b.normalize(b.upsample(low, last.shape[1:], size)), size)
        updated = dataclasses.replace(manifest, maps=(*manifest.maps, *wanted))
        for p in model.metadata_props:
            if p.key == METADATA_KEY:
                p.value = updated.to_json()
        return model

    return add


def map_passes(methods: Sequence[str] | str) -> list[Callable[[onnx.ModelProto], onnx.ModelProto]]:
    """What `camrt add-maps` and `camrt export --maps` do to a camrt model, in order: one pass for
    each run of gradient methods, one for Recipro-CAM's head, in the order given."""
    from camrt.graph.reciprocam_head import add_reciprocam_head, parse_spec  # it builds on this module

    passes, pending = [], []
    for name in check_maps(methods):
        head = parse_spec(name)
        if head is None:
            pending.append(name)
            continue
        if pending:
            passes.append(_gradient_heads(pending))
            pending = []
        passes.append(add_reciprocam_head(head.kernel, head.layer, head.all_classes))
    if pending:
        passes.append(_gradient_heads(pending))
    return passes


def add_maps(model: str | os.PathLike, methods: Sequence[str] | str, output: str | os.PathLike,
             gradients: bool = True, maps_only: bool = False, saliency: bool = True) -> Manifest:
    """Add the map heads of `methods` to the camrt model file `model` and write it to `output`
    (which may be `model` itself), completely or not at all (`camrt.atomic`). Needs no PyTorch.
    With ``gradients=False`` the file is written without the gradient branch
    (`camrt.graph.reciprocam_head.without_gradients`); `methods` may then be empty. With
    ``maps_only=True`` it keeps only the logits, the classes and the heads' outputs
    (`camrt.graph.reciprocam_head.maps_only`): the file to deploy one method, computed in the graph.
    With ``saliency=False`` the heads' `saliency.M` outputs are left out (`without_saliency`).

    Returns:
        The manifest of the written model.

    Raises:
        InputError: a missing or unreadable file, one without a camrt manifest, a method without a
            head, heads already there, no methods with gradients kept, or a failed write (with its cause).
    """
    from camrt.graph.reciprocam_head import maps_only as only_maps
    from camrt.graph.reciprocam_head import without_gradients, without_saliency

    for value, name in ((gradients, "gradients"), (maps_only, "maps_only"), (saliency, "saliency")):
        if not isinstance(value, bool):
            raise InputError(f"{name} must be True or False, got {value!r}")
    given = [methods] if isinstance(methods, str) else list(methods)
    passes = map_passes(given) if given or (gradients and not maps_only and saliency) else []  # names checked first
    needing = [m for m in check_maps(given) if m in HEAD_METHODS] if given else []
    if needing and not gradients:
        raise InputError(f"the map heads of {', '.join(needing)} read the gradients, which --no-gradients leaves out; "
                         "add only heads that need no gradient (reciprocam)")
    if not gradients:
        passes.append(without_gradients)
    if maps_only:
        passes.append(only_maps)
    if not saliency:
        passes.append(without_saliency)
    dst = Path(output)
    proto, _ = load_camrt_file(model)
    for p in passes:
        proto = p(proto)
    size = proto.ByteSize()
    if size > onnx.checker.MAXIMUM_PROTOBUF:
        raise InputError(f"cannot write '{dst}': the model is {size / 2**30:.2f} GB, over protobuf's 2 GB limit")
    try:
        atomic.write_bytes(dst, proto.SerializeToString())
    except OSError as e:
        raise InputError(f"cannot write '{dst}': {e.strerror or e}") from e
    return read_manifest(proto)
