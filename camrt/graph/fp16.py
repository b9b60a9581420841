"""Half precision: a camrt model whose forward pass computes in float16, inputs and outputs float32.

`to_fp16` is a pure `ModelProto -> ModelProto` pass (onnx and numpy only). The public contract
stays as it was: `input` float32, `class_idx` int64, `logits`, `activation.L`, `gradient.L` and the
map heads float32; the manifest's `precision` becomes "fp16".

Computed in float16 (`plan`): the nodes on the way from `input` to `logits` whose operator is in
`FP16_OPS` (convolutions, matrix products, activations, pooling, normalisation, elementwise and
shape operators), with the float32 weights and constants they read stored in float16.

Kept in float32, and why (docs/fp16.md has the measurements):
- everything that reads `class_idx`: the class selection, the gradient branch and the map heads.
  A gradient's scale falls with depth and with the input's area (global average pooling divides
  by h·w): on EfficientNet-Lite0 at 896×896, 93% of `_blocks.2`'s gradient is below float16's
  smallest normal number (6.1e-5), where float16 keeps fewer digits the smaller a value is, and
  nothing below 6e-8. The heads' normalisation divides by a map's range, which magnifies the
  rounding of small maps;
- the nodes that write public outputs: the classifier's last operator (`logits`, from which the
  top-1 class is read; one N×D×K product) and each target layer's last operator
  (`activation.L`). Their outputs are float32 anyway, and the engine's sub-graphs cut the graph at
  `activation.L` and feed it back as float32 (`camrt.graph.subgraph.tail`);
- operators in `KEEP_FP32` wherever they are (sums and products that can leave their terms'
  range, Softmax, and the operators onnxconverter-common's float16 converter blocks), and every
  operator not in `FP16_OPS`: an operator this pass does not know stays as it was.
- A comparison (a boolean result) outside the forward path runs in float16 when its float inputs
  are float16 tensors and constants that float16 holds exactly, so that ``x <= 0`` on a float16
  ReLU output needs no Cast and gives the same answer.

Casts: one per tensor and direction, placed where float32 meets float16 and shared by every reader
on the other side; a float constant read by both sides is stored twice instead. Never a Cast to one
float type directly followed by a Cast back (`cast_round_trips` finds such pairs, the pass folds
any the source graph had and refuses to return one). Integer and boolean tensors (shapes, indices,
`class_idx`) are left as they are.

Range: float16's largest finite value is `FP16_MAX` (65504). The pass refuses weights beyond it,
and turns nonzero weights below float16's smallest subnormal (2^-24) into that subnormal, keeping
their sign, rather than into 0 (as onnxconverter-common does: an epsilon must not vanish).
Computed values need a run: `check` runs the float32 graph on an input with every tensor that
becomes float16 as an extra output (`held_in_fp16`, `probe`), refuses any beyond 65504, then runs
the float16 file itself and compares it loosely with float32 (`compare`). `convert_file` is
`camrt convert --fp16`: read, convert, check, write atomically; no PyTorch.

Length: over camrt's ~350-line aim because the conversion and its checks (range, round trips,
the float16 self-check shared by `camrt export --fp16` and the torch-free `camrt convert`) are
one mechanism; splitting the checks out would leave two modules that each need the other.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from camrt import atomic
from camrt.errors import InputError, first_line
from camrt.graph._util import copy
from camrt.graph.metadata import find_manifest, load_camrt_file
from camrt.manifest import CLASS_IDX, CLASS_IDX_USED, FP16, INPUT, LOGITS, METADATA_KEY, Manifest

FP16_MAX = 65504.0
FP16_NORMAL = 2.0 ** -14  # the smallest positive normal float16, 6.1e-5
FP16_SMALLEST = 2.0 ** -24  # the smallest positive subnormal float16, 6.0e-8

# Standard operators whose float inputs and outputs may all be float16 (each one's float tensors
# are of its type T, or of types that may be float16 independently). Which have float16 kernels is
# the runtime's affair: ONNX Runtime's CPU provider has few and computes the others in float32.
# Cast and ConstantOfShape have their target type rewritten.
FP16_OPS = frozenset({
    "Abs", "Add", "ArgMax", "ArgMin", "AveragePool", "BatchNormalization", "Cast", "Ceil", "Celu", "Clip",
    "Concat", "ConstantOfShape", "Conv", "ConvTranspose", "Cos", "DepthToSpace", "Div", "Dropout", "Einsum", "Elu",
    "Equal", "Erf", "Exp", "Expand", "Flatten", "Floor", "Gather", "GatherElements", "GatherND", "Gelu", "Gemm",
    "GlobalAveragePool", "GlobalMaxPool", "Greater", "GreaterOrEqual", "GroupNormalization", "HardSigmoid",
    "HardSwish", "Identity", "InstanceNormalization", "LayerNormalization", "LeakyRelu", "Less", "LessOrEqual",
    "Log", "MatMul", "Max", "MaxPool", "Mean", "Min", "Mish", "Mul", "Neg", "Pad", "Pow", "PRelu", "Reciprocal",
    "ReduceMax", "ReduceMean", "ReduceMin", "Relu", "Reshape", "Round", "ScatterElements", "ScatterND", "Selu",
    "Sigmoid", "Sign", "Sin", "Slice", "Softplus", "Softsign", "SpaceToDepth", "Split", "Sqrt", "Squeeze", "Sub",
    "Sum", "Tanh", "ThresholdedRelu", "Tile", "Transpose", "Trilu", "Unsqueeze", "Where",
})

# Operators kept in float32 wherever they are, and why.
KEEP_FP32: dict[str, str] = {
    **dict.fromkeys(("ReduceSum", "ReduceSumSquare", "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp",
                     "ReduceProd", "CumSum"),
                    "a sum or product over many elements can leave the range of its terms"),
    **dict.fromkeys(("Softmax", "LogSoftmax"),
                    "probabilities below 6e-8 vanish in float16, and the gradient branch reads them"),
    **dict.fromkeys(("Resize", "Upsample", "RoiAlign", "NonMaxSuppression", "TopK", "Range"),
                    "onnxconverter-common's float16 converter keeps it in float32 (Resize's conversion has "
                    "known bugs; some take float32-only inputs)"),
}

_ANY_INPUT = frozenset({"Shape", "Size", "Cast"})  # read a tensor of any type: never a Cast in front
# Outputs of another type than the operator's T: LayerNormalization's Mean and InvStdDev are of its
# stash_type, float32 (camrt's gradient branch reads them).
_FLOAT32_OUTPUTS = {"LayerNormalization": frozenset({1, 2})}
_FLOATS = (TensorProto.FLOAT, TensorProto.FLOAT16)
_OTHER_FLOATS = frozenset({TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16})


class Fp16RangeError(ValueError):
    """A value the float16 model would hold is beyond float16's range (|x| > 65504)."""


@dataclass(frozen=True)
class Plan:
    """Which nodes of a float32 camrt graph compute in float16.

    Attributes:
        half: indices into `graph.node` of the nodes that compute in float16.
        kept: for each node on the way to `logits` that stays float32 and has a float32 output,
            why (an output's writer, an operator in `KEEP_FP32` or not in `FP16_OPS`, other types).
    """

    half: frozenset[int]
    kept: Mapping[int, str]


def _types(model: onnx.ModelProto) -> dict[str, int]:
    """The element type of every tensor whose type is known, after onnx shape inference."""
    g = onnx.shape_inference.infer_shapes(model).graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*g.input, *g.output, *g.value_info]
             if v.type.HasField("tensor_type") and v.type.tensor_type.elem_type}
    types.update({t.name: t.data_type for t in g.initializer})
    return types


def _consumers(graph: onnx.GraphProto) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for i, node in enumerate(graph.node):
        for t in node.input:
            if t:
                out.setdefault(t, []).append(i)
    return out


def _ancestors(graph: onnx.GraphProto, target: str) -> set[int]:
    prod = {t: i for i, n in enumerate(graph.node) for t in n.output if t}
    seen: set[int] = set()
    todo = [target]
    while todo:
        i = prod.get(todo.pop())
        if i is not None and i not in seen:
            seen.add(i)
            todo += [t for t in graph.node[i].input if t]
    return seen


def _descendants(graph: onnx.GraphProto, source: str) -> set[int]:
    consumers = _consumers(graph)
    seen: set[int] = set()
    todo = [source]
    while todo:
        for i in consumers.get(todo.pop(), []):
            if i not in seen:
                seen.add(i)
                todo += [t for t in graph.node[i].output if t]
    return seen


def _constant_value(node: onnx.NodeProto) -> np.ndarray | None:
    """The float32 value of a Constant node, or None when it is not float32."""
    for a in node.attribute:
        if a.name == "value" and a.t.data_type == TensorProto.FLOAT:
            return numpy_helper.to_array(a.t)
        if a.name == "value_float":
            return np.array(a.f, np.float32)
        if a.name == "value_floats":
            return np.array(a.floats, np.float32)
    return None


def _sources(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Float32 values known before any run: initializers that are not inputs, and Constant nodes."""
    g = model.graph
    inputs = {i.name for i in g.input}
    out = {t.name: numpy_helper.to_array(t) for t in g.initializer
           if t.data_type == TensorProto.FLOAT and t.name not in inputs}
    for node in g.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            value = _constant_value(node)
            if value is not None:
                out[node.output[0]] = value
    return out


def _eligible(node: onnx.NodeProto, types: Mapping[str, int]) -> str | None:
    """None when `node` may compute in float16, else why not."""
    if node.domain not in ("", "ai.onnx") or node.op_type not in FP16_OPS:
        return KEEP_FP32.get(node.op_type, f"{node.op_type} is not in FP16_OPS")
    if node.op_type == "Cast" and _attr(node, "to") != TensorProto.FLOAT:
        return "a Cast to another type than float32"
    for t in [*node.input, *node.output]:
        if t and t not in types:
            return f"the type of '{t}' is unknown"
        if t and types[t] in _OTHER_FLOATS:
            return f"'{t}' is {TensorProto.DataType.Name(types[t])}"
    return None


def _attr(node: onnx.NodeProto, name: str) -> object:
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return None


def _exact(value: np.ndarray) -> bool:
    return bool(np.array_equal(value.astype(np.float16).astype(np.float32), value))


def plan(model: onnx.ModelProto) -> Plan:
    """Which nodes of the float32 camrt graph `model` compute in float16 (see the module docstring)."""
    g = model.graph
    types = _types(model)
    forward = _ancestors(g, LOGITS)
    after_class = _descendants(g, CLASS_IDX)
    prod = {t: i for i, n in enumerate(g.node) for t in n.output if t}
    writers = {prod[o.name] for o in g.output if o.name in prod}
    half: set[int] = set()
    kept: dict[int, str] = {}
    for i in sorted(forward - after_class):
        node = g.node[i]
        if node.op_type == "Constant" or not any(types.get(t) == TensorProto.FLOAT for t in node.output):
            continue
        why = "it writes a public output" if i in writers else _eligible(node, types)
        if why is None:
            half.add(i)
        else:
            kept[i] = why
    # Comparisons of float16 tensors (with exact constants) give the same booleans in float16.
    half_out = _half_outputs(g, half, types)
    sources = _sources(model)
    for i, node in enumerate(g.node):
        if i in half or node.op_type in _ANY_INPUT or _eligible(node, types) is not None:
            continue
        floats = [t for t in node.input if t and types.get(t) == TensorProto.FLOAT]
        if any(types.get(t) == TensorProto.FLOAT for t in node.output) or not any(t in half_out for t in floats):
            continue
        if all(t in half_out or (t in sources and _exact(sources[t])) for t in floats):
            half.add(i)
    return Plan(frozenset(half), kept)


def _half_outputs(graph: onnx.GraphProto, half: frozenset[int] | set[int], types: Mapping[str, int]) -> set[str]:
    """The float32 tensors that the nodes `half` write in float16."""
    out = set()
    for i in half:
        node = graph.node[i]
        fixed = _FLOAT32_OUTPUTS.get(node.op_type, frozenset())
        out.update(t for k, t in enumerate(node.output) if t and k not in fixed and types.get(t) == TensorProto.FLOAT)
    return out


def held_in_fp16(model: onnx.ModelProto) -> list[str]:
    """The tensors (not weights) of the float32 graph `model` whose values the float16 model holds
    in float16, in graph order: the float outputs of the nodes that compute in float16 and the
    float32 tensors cast to float16 for them (`input`, `activation.L`, ...)."""
    g = model.graph
    p = plan(model)
    types = _types(model)
    sources = _sources(model)
    half_out = _half_outputs(g, p.half, types)
    names: list[str] = []
    for i, node in enumerate(g.node):
        if i not in p.half:
            continue
        ins = [t for t in node.input if types.get(t) == TensorProto.FLOAT] if node.op_type not in _ANY_INPUT else []
        for t in [*ins, *(t for t in node.output if t in half_out)]:
            if t and t not in sources and t not in names:
                names.append(t)
    return names


def _fresh(used: set[str], name: str) -> str:
    out, k = name, 1
    while out in used:
        k += 1
        out = f"{name}_{k}"
    used.add(out)
    return out


def _to_half(name: str, value: np.ndarray) -> np.ndarray:
    big = np.abs(value) > FP16_MAX
    if big.any():
        raise Fp16RangeError(f"the weight '{name}' holds {float(np.abs(value).max()):.3g}, beyond float16's largest "
                             f"value {FP16_MAX:.0f}; this model cannot be stored in float16 (keep it in float32)")
    tiny = (value != 0) & (np.abs(value) < FP16_SMALLEST)
    return np.where(tiny, np.copysign(FP16_SMALLEST, value), value).astype(np.float16)


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """The camrt model `model` computing its forward pass in float16 (see the module docstring),
    with the manifest's `precision` set to "fp16". Its argument is left untouched.

    Raises:
        InputError: a model without a `logits` output, one already in float16 (its manifest
            says so, or it holds float16 tensors), one with nothing to compute in float16.
        Fp16RangeError: a weight beyond float16's range.
    """
    manifest = find_manifest(model)
    if manifest is not None and manifest.precision == FP16:
        raise InputError("the model computes in float16 already (its manifest's precision is fp16)")
    g0 = model.graph
    if LOGITS not in {o.name for o in g0.output}:
        raise InputError(f"the model has no output '{LOGITS}': float16 conversion takes a camrt model")
    types = _types(model)
    if any(t in _OTHER_FLOATS for t in types.values()):
        raise InputError("the model holds float16, bfloat16 or float64 tensors already; float16 conversion takes a "
                         "float32 camrt model")
    p = plan(model)
    sources = _sources(model)
    out = copy(model)
    g = out.graph
    used = {t for n in g.node for t in [*n.input, *n.output]} | {t.name for t in g.initializer} \
        | {i.name for i in g.input} | {o.name for o in g.output}
    half_out = _half_outputs(g, p.half, types)
    if not half_out:
        raise InputError("no operator of this graph can compute in float16 (" + "; ".join(sorted(set(p.kept.values())))
                         + "); it is left in float32")
    precision = {t: (TensorProto.FLOAT16 if t in half_out else TensorProto.FLOAT)
                 for t, k in types.items() if k == TensorProto.FLOAT}

    # Where each float constant is read: in float16, in float32, or both (then it is stored twice).
    wants: dict[str, set[int]] = {}
    for i, node in enumerate(g.node):
        for t in node.input:
            if t in sources:
                side = TensorProto.FLOAT16 if i in p.half and node.op_type not in _ANY_INPUT else TensorProto.FLOAT
                wants.setdefault(t, set()).add(side)
    for o in g.output:
        if o.name in sources:
            wants.setdefault(o.name, set()).add(TensorProto.FLOAT)
    half_name: dict[str, str] = {}
    for t, sides in wants.items():
        if TensorProto.FLOAT16 in sides:
            half_name[t] = t if sides == {TensorProto.FLOAT16} else _fresh(used, f"{t}/fp16")
            precision[half_name[t]] = TensorProto.FLOAT16
    inits = {t.name: t for t in g.initializer}
    for t, new in half_name.items():
        if t in inits:
            tensor = numpy_helper.from_array(_to_half(t, sources[t]), new)
            if new == t:
                inits[t].CopyFrom(tensor)
            else:
                g.initializer.append(tensor)

    casts: dict[tuple[str, int], str] = {}
    nodes: list[onnx.NodeProto] = []

    def cast(t: str, to: int) -> str:
        if (t, to) not in casts:
            name = _fresh(used, f"{t}/{'fp16' if to == TensorProto.FLOAT16 else 'fp32'}")
            nodes.append(helper.make_node("Cast", [t], [name], name=name, to=to))
            casts[(t, to)] = name
            precision[name] = to
        return casts[(t, to)]

    for i, original in enumerate(g.node):
        node = onnx.NodeProto()
        node.CopyFrom(original)
        is_half = i in p.half
        if node.op_type == "Constant" and node.output[0] in half_name:
            value = _to_half(node.output[0], sources[node.output[0]])
            if half_name[node.output[0]] != node.output[0]:  # read on both sides: a float16 twin
                nodes.append(node)
                node = helper.make_node("Constant", [], [half_name[node.output[0]]], name=half_name[node.output[0]],
                                        value=numpy_helper.from_array(value))
            else:
                del node.attribute[:]
                node.attribute.append(helper.make_attribute("value", numpy_helper.from_array(value)))
        if is_half and node.op_type == "Cast":
            for a in node.attribute:
                if a.name == "to":
                    a.i = TensorProto.FLOAT16
        if is_half and node.op_type == "ConstantOfShape":
            value = _attr(node, "value")
            fill = numpy_helper.to_array(value) if value is not None else np.zeros(1, np.float32)
            del node.attribute[:]
            node.attribute.append(helper.make_attribute("value", numpy_helper.from_array(_to_half("value", fill))))
        if node.op_type not in _ANY_INPUT:
            need = TensorProto.FLOAT16 if is_half else TensorProto.FLOAT
            for k, t in enumerate(node.input):
                if t in sources:
                    if need == TensorProto.FLOAT16:
                        node.input[k] = half_name[t]
                elif t in precision and precision[t] != need:
                    node.input[k] = cast(t, need)
        nodes.append(node)
    del g.node[:]
    g.node.extend(nodes)
    _fold_round_trips(g, precision)
    for v in g.value_info:
        if precision.get(v.name) == TensorProto.FLOAT16:
            v.type.tensor_type.elem_type = TensorProto.FLOAT16
    if manifest is not None:
        for prop in out.metadata_props:
            if prop.key == METADATA_KEY:
                prop.value = dataclasses.replace(manifest, precision=FP16).to_json()
    left = cast_round_trips(out)
    halved = [o.name for o in g.output if precision.get(o.name) == TensorProto.FLOAT16]
    if left or halved:  # a bug in this pass, not in the model
        raise RuntimeError(f"float16 pass: Casts there and back {left}, float16 outputs {halved}")
    return out


def fp16_passes() -> list[Callable[[onnx.ModelProto], onnx.ModelProto]]:
    """What `camrt export --fp16` (after its float32 self-check) and `camrt convert --fp16` do to a
    camrt model, in order."""
    return [to_fp16]


def _fold_round_trips(graph: onnx.GraphProto, precision: Mapping[str, int]) -> None:
    """Make a Cast to a float type that reads a Cast to another float type read the first one's
    input instead (or drop it, when that input has its type already); drop first Casts left unread."""
    prod = {t: n for n in graph.node for t in n.output}
    outputs = {o.name for o in graph.output}
    renames: dict[str, str] = {}
    dropped: list[onnx.NodeProto] = []
    firsts: list[onnx.NodeProto] = []
    for node in graph.node:
        first = prod.get(node.input[0]) if node.op_type == "Cast" and _attr(node, "to") in _FLOATS else None
        if first is None or first.op_type != "Cast" or _attr(first, "to") not in _FLOATS:
            continue
        firsts.append(first)
        src = first.input[0]
        if precision.get(src) == _attr(node, "to") and node.output[0] not in outputs:
            renames[node.output[0]] = src
            dropped.append(node)
        else:
            node.input[0] = src
    for node in graph.node:
        for k, t in enumerate(node.input):
            while t in renames:
                t = renames[t]
            node.input[k] = t
    keep = [n for n in graph.node if not any(n is d for d in dropped)]
    read = {t for n in keep for t in n.input} | outputs
    keep = [n for n in keep if not any(n is f for f in firsts) or any(t in read for t in n.output)]
    del graph.node[:]
    graph.node.extend(keep)


def cast_round_trips(model: onnx.ModelProto) -> list[tuple[str, str]]:
    """(first, second) output names of every Cast to a float type that directly reads a Cast to
    the other float type: float16 → float32 → float16 or float32 → float16 → float32."""
    g = model.graph
    prod = {t: n for n in g.node for t in n.output}
    pairs = []
    for node in g.node:
        if node.op_type != "Cast" or _attr(node, "to") not in _FLOATS:
            continue
        first = prod.get(node.input[0])
        if first is not None and first.op_type == "Cast" and _attr(first, "to") in _FLOATS \
                and _attr(first, "to") != _attr(node, "to"):
            pairs.append((first.output[0], node.output[0]))
    return pairs


def probe(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of `model` that also outputs the float32 tensors `names`."""
    out = copy(model)
    have = {o.name for o in out.graph.output}
    out.graph.output.extend(helper.make_tensor_value_info(t, TensorProto.FLOAT, None) for t in names if t not in have)
    return out


def check_range(values: Mapping[str, np.ndarray], what: str = "the self-check input",
                ops: Mapping[str, str] | None = None) -> float:
    """The largest magnitude in `values` (tensors a float16 model holds): each tensor's must be
    finite, at most `FP16_MAX`, and 0 or at least float16's smallest normal number `FP16_NORMAL`.
    `ops` names the operator writing each tensor, for the message.

    Returns:
        The largest magnitude over all tensors (for the headroom below 65504).

    Raises:
        Fp16RangeError: naming the tensors beyond float16's range (largest first), or else those
            that would hold nothing but subnormal numbers (smallest first).
    """
    peaks = {t: float(np.max(np.abs(v))) if v.size else 0.0 for t, v in values.items()}
    over = sorted((t for t, m in peaks.items() if not m <= FP16_MAX), key=lambda t: -np.nan_to_num(peaks[t], nan=1e300))
    under = sorted((t for t, m in peaks.items() if 0 < m < FP16_NORMAL), key=lambda t: peaks[t])
    bad = over or under
    if not bad:
        return max(peaks.values(), default=0.0)
    more = f" (and {len(bad) - 1} more tensors)" if len(bad) > 1 else ""
    op = f" ({ops[bad[0]]} output)" if ops and bad[0] in ops else ""
    if over:
        raise Fp16RangeError(f"float16 overflow: the tensor '{bad[0]}'{op} reaches {peaks[bad[0]]:.3g} on {what}"
                             f"{more}, beyond float16's largest value {FP16_MAX:.0f}, so the float16 model would "
                             "compute infinities there; keep this model in float32 (export without --fp16)")
    raise Fp16RangeError(f"float16 underflow: the tensor '{bad[0]}'{op} peaks at {peaks[bad[0]]:.3g} on {what}{more}, "
                         f"below float16's smallest normal value {FP16_NORMAL:.2g}, where float16 keeps fewer digits "
                         "the smaller a value is (none below 6e-8); keep this model in float32 (export without --fp16)")


# The loose agreement `compare` asks of the float16 graph: it catches a wrong graph (a value in
# the wrong place, a missing Cast), not float16's rounding, which reaches 1e-3 relative per
# operation and, through ReLU and max-pool ties, flips some gradient elements (docs/fp16.md).
LOGITS_TOL = 2e-2  # of the largest |logit| in the batch
MIN_COSINE = 0.99  # per image, between the float16 and float32 graphs' activations, gradients and maps


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        return 1.0 if na == nb else 0.0
    return float(a @ b / (na * nb))


def compare(got: Mapping[str, np.ndarray], ref: Mapping[str, np.ndarray]) -> list[str]:
    """What is off between the float16 graph's outputs `got` and the float32 graph's `ref` (the same
    input): types, shapes, values that are not finite where float32's are, logits further than
    `LOGITS_TOL` of the largest, another class where float32's top-1 is no near tie, and per image
    (of those explaining the same class) a cosine similarity under `MIN_COSINE` for the rest."""
    problems = []
    logits = ref[LOGITS].astype(np.float64)
    scale = float(np.abs(logits).max()) or 1.0
    same = np.ones(logits.shape[0], bool)
    for name, r in ref.items():
        g = got.get(name)
        if g is None or g.dtype != r.dtype or g.shape != r.shape:
            problems.append(f"{name}: {None if g is None else (g.dtype, g.shape)} instead of {(r.dtype, r.shape)}")
            continue
        if r.dtype.kind == "f" and not np.isfinite(g[np.isfinite(r)]).all():
            problems.append(f"{name}: infinite or NaN values where float32 has finite ones (a float16 overflow)")
            continue
        if name == CLASS_IDX_USED:
            same = g == r
            top2 = np.sort(logits, axis=1)[:, -2:] if logits.shape[1] > 1 else np.zeros((len(r), 2))
            clear = (top2[:, 1] - top2[:, 0]) > 2 * LOGITS_TOL * scale
            if (~same & clear).any():
                problems.append(f"{name}: another class for {int((~same & clear).sum())} images whose top-1 is clear")
        elif name == LOGITS:
            err = float(np.abs(g - logits).max()) / scale
            if err > LOGITS_TOL:
                problems.append(f"{name}: off by {err:.1e} of the largest logit (at most {LOGITS_TOL:g})")
    for name, r in ref.items():
        g = got.get(name)
        if name in (LOGITS, CLASS_IDX_USED) or r.dtype.kind != "f" or g is None or g.shape != r.shape:
            continue
        cos = [_cosine(g[n], r[n]) for n in range(r.shape[0]) if same[n]]
        if cos and min(cos) < MIN_COSINE:
            problems.append(f"{name}: cosine similarity {min(cos):.4f} with float32 (at least {MIN_COSINE:g})")
    return problems


def check(model: onnx.ModelProto, half: bytes, feeds: Mapping[str, np.ndarray]) -> float:
    """Check the float16 model `half` (serialized, as written) made from the float32 `model`, on
    the input `feeds`, with ONNX Runtime's CPU provider (`camrt.engine.open_session`, imported here):
    every tensor that becomes float16 stays within float16's range when the float32 graph runs,
    and the float16 graph agrees with it (`compare`).

    Returns:
        The largest magnitude of a tensor held in float16 (65504 at most), for the headroom.

    Raises:
        Fp16RangeError: a tensor beyond float16's range (`check_range`).
        ValueError: the float16 graph disagrees with the float32 one; RuntimeError: ONNX Runtime
            cannot run one of them (its message).
    """
    from camrt.engine.session import open_session  # the engine owns onnxruntime

    names = held_in_fp16(model)
    ref_sess = open_session(probe(model, names).SerializeToString(), device="cpu")
    ref = dict(zip([o.name for o in ref_sess.get_outputs()], ref_sess.run(None, dict(feeds)), strict=True))
    peak = check_range({t: ref[t] for t in names}, ops={t: n.op_type for n in model.graph.node for t in n.output})
    try:
        sess = open_session(half, device="cpu")
        got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, dict(feeds)), strict=True))
    except Exception as e:  # noqa: BLE001 - onnxruntime's own exception types
        first = first_line(e)
        raise RuntimeError(f"ONNX Runtime's CPU provider cannot run the float16 graph: {first}") from e
    problems = compare(got, {o.name: ref[o.name] for o in model.graph.output})
    if problems:
        raise ValueError("the float16 graph disagrees with the float32 graph: " + "; ".join(problems))
    return peak


def self_check_feeds(manifest: Manifest, seed: int = 1234) -> dict[str, np.ndarray]:
    """A random input for a self-check without PyTorch: another batch size than the manifest's
    example, standard normal values (what preprocessing gives), the last image's class explicit."""
    n = 2 if manifest.input_shape[0] != 2 else 3
    x = np.random.default_rng(seed).standard_normal((n, *manifest.input_shape[1:])).astype(np.float32)
    cls = np.full(n, -1, dtype=np.int64)
    cls[-1] = (n * 7919) % manifest.num_classes
    return {INPUT: x, CLASS_IDX: cls}


def convert_file(model: str | os.PathLike, output: str | os.PathLike) -> Manifest:
    """Convert the camrt model file `model` to float16 compute (`to_fp16`), check it (`check`, on
    `self_check_feeds`) and write it to `output` (which may be `model` itself), completely or not at
    all (`camrt.atomic`). Needs no PyTorch.

    Returns:
        The manifest of the written model.

    Raises:
        InputError: a missing or unreadable file, one without a camrt manifest or already in
            float16, a value beyond float16's range, a float16 graph that fails its check, or a
            failed write (with its cause).
    """
    src, dst = Path(model), Path(output)
    proto, manifest = load_camrt_file(src)
    try:
        half = proto
        for p in fp16_passes():
            half = p(half)
        data = half.SerializeToString()
        check(proto, data, self_check_feeds(manifest))
    except (ValueError, RuntimeError) as e:
        raise InputError(f"'{src}': {e}; nothing was written") from e
    try:
        atomic.write_bytes(dst, data)
    except OSError as e:
        raise InputError(f"cannot write '{dst}': {e.strerror or e}") from e
    return dataclasses.replace(manifest, precision=FP16)
