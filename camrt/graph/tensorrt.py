"""What TensorRT's ONNX parser accepts, and `check_tensorrt`, which holds a graph against it.

Source of the table: `docs/operators.md` of onnx/onnx-tensorrt, the support matrix of TensorRT
10.15 GA ("TensorRT 10.15 supports operators in the inclusive range of opset 9 to opset 24";
the repository's docs/Changelog.md dates that release 2026-02-02). Read on 2026-12-03 from a
stored copy of the repository's files that did not record the commit. The 10.1-GA tag (commit
96e781103cfc4adf4a6bb557e94bac8e693f6f4c, 2024-06-17) was read as well, with the parser source
behind two rules the matrix words loosely:
- MaxPool: onnxOpCheckers.cpp refuses a node with more than one output ("TensorRT does not
  support the indices output in MaxPool!"); it counts the outputs the node lists, so an Indices
  output that nothing reads is refused too.
- An initializer that is also listed as a graph input (camrt's `class_idx` default) is imported
  as weights, not as a network input (ModelImporter.cpp, importInputs): an engine built from the
  file always uses the default.
onnxruntime-gpu 1.31's TensorRT provider links libnvinfer.so.10, so the TensorRT 10 matrix is
the one that applies to it.

Restrictions that matter for camrt's graphs, in this project's words:
- ScatterElements: no restriction in 10.x (a `reduction` is accepted since 10.0 EA). torch
  writes the backward of `gather` that way, which is why camrt selects the class with a one-hot
  product or a row gather (the CUDA provider handles ScatterElements with a reduction poorly).
- ConvTranspose: 1D to 3D; any `group` (the 10.1 importer passes it to
  `IDeconvolutionLayer::setNbGroups`), weights may be initializers or tensors. Grouped and
  depthwise deconvolutions are accepted; their speed is another matter (see docs/tensorrt.md).
- Pooling: 2D or 3D only, `dilations` all ones; MaxPool with a single output (above).
- Reduce*: `axes` must be an initializer (camrt's graphs use initializers or Constant nodes,
  which the parser imports as weights); Squeeze, Unsqueeze, CumSum's axis and OneHot's depth must
  be constants at build time.
- ScatterND: no `reduction`. Dropout: `is_training` absent or a false initializer. TopK: sorted,
  K below 3840. Resize: nearest or linear, no antialiasing. LayerNormalization: only output Y.
- Types: since TensorRT 9.0 INT64 is a native type (no implicit cast to INT32); an operator
  accepts the types its row lists; UINT8 only as a network input or output; DOUBLE is cast down
  to FLOAT.
- Dynamic shapes: every dynamic input dimension needs an optimisation profile (min/opt/max);
  camrt keeps C×H×W static and only the batch (dimension 0) dynamic.

Length: over camrt's ~350-line aim because about 200 lines are the operator table itself, kept
verbatim beside the checker so that a table update is one diff.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import onnx
from onnx import TensorProto

TENSORRT_VERSION = "10.15"
OPSET_RANGE = range(9, 25)  # opsets 9 to 24, inclusive

# The support matrix: operator, then the types it accepts; "-" marks an operator the parser
# does not support.
_MATRIX = """
Abs FP32 FP16 BF16 INT32 INT64
Acos FP32 FP16 BF16
Acosh FP32 FP16 BF16
Add FP32 FP16 BF16 INT32 INT64
AffineGrid -
And BOOL
ArgMax FP32 FP16 BF16 INT32 INT64
ArgMin FP32 FP16 BF16 INT32 INT64
Asin FP32 FP16 BF16
Asinh FP32 FP16 BF16
Atan FP32 FP16 BF16
Atanh FP32 FP16 BF16
Attention FP32 FP16 BF16 INT8 FP8
AveragePool FP32 FP16 BF16
BatchNormalization FP32 FP16 BF16
Bernoulli -
BitShift -
BitwiseAnd -
BitwiseNot -
BitwiseOr -
BitwiseXor -
BlackmanWindow FP32 FP16
Cast FP32 FP16 BF16 INT32 INT64 UINT8 BOOL
CastLike FP32 FP16 BF16 INT32 INT64 UINT8 BOOL
Ceil FP32 FP16 BF16
Celu FP32 FP16 BF16
CenterCropPad -
Clip FP32 FP16 BF16
Col2Im -
Compress -
Concat FP32 FP16 BF16 INT32 INT64 BOOL
ConcatFromSequence -
Constant FP32 FP16 BF16 FP8 FP4 INT4 INT32 INT64 BOOL
ConstantOfShape FP32 FP16 BF16 FP8 FP4 INT4 INT32 INT64 BOOL
Conv FP32 FP16 BF16
ConvInteger -
ConvTranspose FP32 FP16 BF16
Cos FP32 FP16 BF16
Cosh FP32 FP16 BF16
CumSum FP32 FP16 BF16
DFT -
DeformConv FP32 FP16
DepthToSpace FP32 FP16 BF16 INT32 INT64
DequantizeLinear INT8 FP8 FP4 INT4
Det -
Div FP32 FP16 BF16 INT32 INT64
Dropout FP32 FP16 BF16
DynamicQuantizeLinear -
Einsum FP32 FP16 BF16
Elu FP32 FP16 BF16
Equal FP32 FP16 BF16 INT32 INT64
Erf FP32 FP16 BF16
Exp FP32 FP16 BF16
Expand FP32 FP16 BF16 INT32 INT64 BOOL
EyeLike FP32 FP16 BF16 INT32 INT64 BOOL
Flatten FP32 FP16 BF16 INT32 INT64 BOOL
Floor FP32 FP16 BF16
Gather FP32 FP16 BF16 INT32 INT64 BOOL
GatherElements FP32 FP16 BF16 INT32 INT64 BOOL
GatherND FP32 FP16 BF16 INT32 INT64 BOOL
Gelu FP32 FP16 BF16 INT8 INT32 INT64
Gemm FP32 FP16 BF16
GlobalAveragePool FP32 FP16 BF16
GlobalLpPool FP32 FP16 BF16
GlobalMaxPool FP32 FP16 BF16
Greater FP32 FP16 BF16 INT32 INT64
GreaterOrEqual FP32 FP16 BF16 INT32 INT64
GridSample FP32 FP16
GroupNormalization FP32 FP16 BF16
GRU FP32 FP16 BF16
HammingWindow FP32 FP16
HannWindow FP32 FP16
HardSigmoid FP32 FP16 BF16
HardSwish FP32 FP16 BF16
Hardmax FP32 FP16 BF16
Identity FP32 FP16 BF16 INT32 INT64 BOOL
If FP32 FP16 BF16 INT32 INT64 BOOL
ImageDecoder -
ImageScaler FP32 FP16 BF16
InstanceNormalization FP32 FP16 BF16
IsInf FP32 FP16 BF16
IsNaN FP32 FP16 BF16 INT32 INT64
LayerNormalization FP32 FP16 BF16
LeakyRelu FP32 FP16 BF16
Less FP32 FP16 BF16 INT32 INT64
LessOrEqual FP32 FP16 BF16 INT32 INT64
Log FP32 FP16 BF16
LogSoftmax FP32 FP16 BF16
Loop FP32 FP16 BF16 INT32 INT64 BOOL
LRN FP32 FP16 BF16
LSTM FP32 FP16 BF16
LpNormalization FP32 FP16 BF16
LpPool FP32 FP16 BF16
MatMul FP32 FP16 BF16
MatMulInteger -
Max FP32 FP16 BF16 INT32 INT64
MaxPool FP32 FP16 BF16
MaxRoiPool -
MaxUnpool -
Mean FP32 FP16 BF16 FP8 INT32 INT64
MeanVarianceNormalization FP32 FP16 BF16
MelWeightMatrix -
Min FP32 FP16 BF16 INT32 INT64
Mish FP32 FP16
Mod FP32 FP16 BF16 INT32 INT64
Mul FP32 FP16 BF16 INT32 INT64
Multinomial -
Neg FP32 FP16 BF16 INT32 INT64
NegativeLogLikelihoodLoss -
NonMaxSuppression FP32 FP16
NonZero FP32 FP16
Not BOOL
OneHot FP32 FP16 BF16 INT32 INT64 BOOL
Optional -
OptionalGetElement -
OptionalHasElement -
Or BOOL
Pad FP32 FP16 BF16 INT32 INT64
ParametricSoftplus FP32 FP16 BF16
Pow FP32 FP16 BF16 INT32 INT64
PRelu FP32 FP16 BF16
QLinearConv -
QLinearMatMul -
QuantizeLinear FP32 FP16 BF16
RandomNormal FP32 FP16 BF16
RandomNormalLike FP32 FP16 BF16
RandomUniform FP32 FP16 BF16
RandomUniformLike FP32 FP16 BF16
Range FP32 FP16 BF16 INT32 INT64
Reciprocal FP32 FP16 BF16
ReduceL1 FP32 FP16 BF16 INT32 INT64
ReduceL2 FP32 FP16 BF16 INT32 INT64
ReduceLogSum FP32 FP16 BF16 INT32 INT64
ReduceLogSumExp FP32 FP16 BF16 INT32 INT64
ReduceMax FP32 FP16 BF16 INT32 INT64
ReduceMean FP32 FP16 BF16 INT32 INT64
ReduceMin FP32 FP16 BF16 INT32 INT64
ReduceProd FP32 FP16 BF16 INT32 INT64
ReduceSum FP32 FP16 BF16 INT32 INT64
ReduceSumSquare FP32 FP16 BF16 INT32 INT64
RegexFullMatch -
Relu FP32 FP16 BF16 INT32 INT64
Reshape FP32 FP16 BF16 INT32 INT64 BOOL
Resize FP32 FP16 BF16
ReverseSequence FP32 FP16 BF16 INT32 INT64 BOOL
RMSNormalization FP32 FP16 BF16
RNN FP32 FP16 BF16
RoiAlign FP32 FP16
RotaryEmbedding FP32 FP16 BF16
Round FP32 FP16 BF16
STFT FP32
ScaledTanh FP32 FP16 BF16
Scan FP32 FP16 BF16
Scatter FP32 FP16 BF16 INT32 INT64
ScatterElements FP32 FP16 BF16 INT32 INT64
ScatterND FP32 FP16 BF16 INT32 INT64
Selu FP32 FP16 BF16
SequenceAt -
SequenceConstruct -
SequenceEmpty -
SequenceErase -
SequenceInsert -
SequenceLength -
SequenceMap -
Shape FP32 FP16 BF16 INT32 INT64 BOOL
Shrink FP32 FP16 BF16 INT32 INT64
Sigmoid FP32 FP16 BF16
Sign FP32 FP16 BF16 INT32 INT64
Sin FP32 FP16 BF16
Sinh FP32 FP16 BF16
Size FP32 FP16 BF16 INT32 INT64 BOOL
Slice FP32 FP16 BF16 INT32 INT64 BOOL
Softmax FP32 FP16 BF16
SoftmaxCrossEntropyLoss -
Softplus FP32 FP16 BF16
Softsign FP32 FP16 BF16
SpaceToDepth FP32 FP16 BF16 INT32 INT64
Split FP32 FP16 BF16 INT32 INT64 BOOL
SplitToSequence -
Sqrt FP32 FP16 BF16
Squeeze FP32 FP16 BF16 INT32 INT64 BOOL
StringConcat -
StringNormalizer -
StringSplit -
Sub FP32 FP16 BF16 INT32 INT64
Sum FP32 FP16 BF16 INT32 INT64
Tan FP32 FP16 BF16
Tanh FP32 FP16 BF16
TensorScatter FP32 FP16 BF16 INT32
TfIdfVectorizer -
ThresholdedRelu FP32 FP16 BF16
Tile FP32 FP16 BF16 INT32 INT64 BOOL
TopK FP32 FP16 BF16 INT32 INT64
Transpose FP32 FP16 BF16 INT32 INT64 BOOL
Trilu FP32 FP16 BF16 INT32 INT64 BOOL
Unique -
Unsqueeze FP32 FP16 BF16 INT32 INT64 BOOL
Upsample FP32 FP16 BF16
Where FP32 FP16 BF16 INT32 INT64 BOOL
Xor BOOL
"""


def _parse(matrix: str) -> dict[str, frozenset[str]]:
    table: dict[str, frozenset[str]] = {}
    for line in matrix.strip().splitlines():
        op, *types = line.split()
        table[op] = frozenset() if types == ["-"] else frozenset(types)
    return table


# op type -> the types TensorRT accepts; an empty set: listed as unsupported.
OPERATORS: dict[str, frozenset[str]] = _parse(_MATRIX)

# The matrix's restrictions for the operators camrt writes or may write, paraphrased; each is
# checked by `_restriction_problems`.
RESTRICTIONS: dict[str, str] = {
    "AveragePool": "2D or 3D pooling only; dilations empty or all ones",
    "MaxPool": "2D or 3D pooling only; no Indices output (even unused); dilations empty or all ones",
    "CumSum": "axis must be a build-time constant",
    "Dropout": "is_training must be an initializer that is false",
    "LayerNormalization": "only the first output (Y)",
    "OneHot": "depth must be a build-time constant",
    "Resize": "modes nearest or linear; no antialiasing; aspect-ratio policy stretch; coordinate "
              "transformation half_pixel, pytorch_half_pixel, tf_half_pixel_for_nn, asymmetric or align_corners",
    "ScatterND": "no reduction",
    "Squeeze": "axes must resolve to a constant",
    "Unsqueeze": "axes must resolve to a constant",
    "TopK": "sorted must be 1; K below 3840",
    "Constant": "no sparse_value, value_string or value_strings",
    **{f"Reduce{r}": "axes must be an initializer" for r in (
        "L1", "L2", "LogSum", "LogSumExp", "Max", "Mean", "Min", "Prod", "Sum", "SumSquare")},
}

# ONNX element type -> the matrix's type name. DOUBLE is cast down to FLOAT by the parser.
_TYPE_NAMES = {
    TensorProto.FLOAT: "FP32", TensorProto.FLOAT16: "FP16", TensorProto.BFLOAT16: "BF16",
    TensorProto.DOUBLE: "FP32", TensorProto.INT32: "INT32", TensorProto.INT64: "INT64",
    TensorProto.INT8: "INT8", TensorProto.UINT8: "UINT8", TensorProto.BOOL: "BOOL",
    TensorProto.FLOAT8E4M3FN: "FP8", TensorProto.FLOAT4E2M1: "FP4", TensorProto.INT4: "INT4",
}

# The operand whose type the matrix's column describes: the data input (index 0) except where
# the first input is a condition.
_DATA_INPUT = {"Where": 1}


@dataclass(frozen=True)
class Problem:
    """One reason TensorRT would refuse a graph, or run it otherwise than ONNX Runtime does.

    kind: "opset", "operator" (not in the matrix, or listed unsupported), "restriction" (a
    per-operator rule), "type" (a tensor type the operator's row does not list),
    "dynamic-shape" (a dynamic input dimension other than the batch) or "constant-input" (an
    input with a default, which the parser imports as a constant).
    where: the node (op type and name) or the input concerned.
    """

    kind: str
    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


def _node_label(node: onnx.NodeProto) -> str:
    return f"{node.op_type} '{node.name or (node.output[0] if node.output else '?')}'"


def _walk(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Every node, including those of If/Loop/Scan bodies."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _walk(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _walk(g)


def _constants(graph: onnx.GraphProto) -> tuple[set[str], set[str]]:
    """(weights, folded): tensors the parser imports as weights (initializers, including those
    listed as inputs, and Constant outputs), and those plus what nodes compute from weights only
    (what "resolvable to a constant" allows)."""
    weights = {t.name for t in graph.initializer}
    weights |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    folded = set(weights)
    for node in graph.node:  # topological order
        ins = [t for t in node.input if t]
        if ins and all(t in folded for t in ins) and not node.op_type.startswith("Random"):
            folded.update(node.output)
    return weights, folded


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _restriction_problems(node: onnx.NodeProto, weights: set[str], folded: set[str],
                          ranks: dict[str, int]) -> list[str]:
    """The restrictions of `node`'s row that it breaks, each as a sentence."""
    op, out = node.op_type, []

    def operand(i: int) -> str:
        return node.input[i] if len(node.input) > i else ""

    if op in ("MaxPool", "AveragePool"):
        if op == "MaxPool" and len(node.output) > 1:
            out.append(f"lists {len(node.output)} outputs; TensorRT refuses MaxPool's Indices output "
                       f"('{node.output[1]}'), even when nothing reads it")
        if any(d != 1 for d in _attr(node, "dilations", [])):
            out.append("dilations other than 1")
        rank = ranks.get(operand(0))
        if rank is not None and rank not in (4, 5):
            out.append(f"{rank - 2}D pooling; TensorRT pools in 2D or 3D only")
    elif op.startswith("Reduce") and operand(1) and operand(1) not in weights:
        out.append(f"axes '{operand(1)}' is computed, not an initializer")
    elif op in ("Squeeze", "Unsqueeze") and operand(1) and operand(1) not in folded:
        out.append(f"axes '{operand(1)}' does not resolve to a constant")
    elif op == "CumSum" and operand(1) not in folded:
        out.append(f"axis '{operand(1)}' is not a build-time constant")
    elif op == "OneHot" and operand(1) not in folded:
        out.append(f"depth '{operand(1)}' is not a build-time constant")
    elif op == "ScatterND" and _attr(node, "reduction", b"none") not in (b"none", "none"):
        out.append("ScatterND with a reduction")
    elif op == "Dropout" and operand(2) and operand(2) not in weights:
        out.append("is_training is not an initializer")
    elif op == "TopK" and _attr(node, "sorted", 1) != 1:
        out.append("sorted=0")
    elif op == "Resize":
        if _attr(node, "mode", b"nearest") not in (b"nearest", b"linear"):
            out.append(f"mode {_attr(node, 'mode').decode()}")
        if _attr(node, "antialias", 0):
            out.append("antialiasing")
        if _attr(node, "keep_aspect_ratio_policy", b"stretch") != b"stretch":
            out.append(f"keep_aspect_ratio_policy {_attr(node, 'keep_aspect_ratio_policy').decode()}")
        ctm = _attr(node, "coordinate_transformation_mode", b"half_pixel")
        if ctm not in (b"half_pixel", b"pytorch_half_pixel", b"tf_half_pixel_for_nn", b"asymmetric", b"align_corners"):
            out.append(f"coordinate_transformation_mode {ctm.decode()}")
    elif op == "LayerNormalization" and any(node.output[1:]):
        out.append("outputs other than Y")
    elif op == "Constant" and any(a.name in ("sparse_value", "value_string", "value_strings")
                                  for a in node.attribute):
        out.append("a sparse or string value")
    return out


def check_tensorrt(model: onnx.ModelProto) -> list[Problem]:
    """Why TensorRT's ONNX parser (version `TENSORRT_VERSION`) would refuse `model`, or build an
    engine that differs from the graph: an empty list when it would not.

    Checks the default-domain opset, every operator against `OPERATORS` (nodes of a model-local
    function are checked in its body; other domains are custom operators TensorRT lacks),
    the restrictions of `_restriction_problems`, the type of each node's data operand against its
    row (so an INT64 tensor reaching an operator whose row has no INT64 is reported), every input
    dimension but the batch (dimension 0) being static, and inputs that have a default.
    """
    problems: list[Problem] = []
    g = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is not None and opset not in OPSET_RANGE:
        problems.append(Problem("opset", "model", f"opset {opset}; TensorRT {TENSORRT_VERSION} parses opsets "
                                                  f"{OPSET_RANGE.start} to {OPSET_RANGE.stop - 1}"))

    inits = {t.name for t in g.initializer}
    for inp in g.input:
        if inp.name in inits:
            problems.append(Problem("constant-input", inp.name, "has a default (an initializer of the same name), "
                                    "which TensorRT imports as a constant: an engine built from this graph "
                                    "ignores any value fed for it"))
            continue
        dims = inp.type.tensor_type.shape.dim
        for axis, d in enumerate(dims[1:], start=1):
            if not (d.HasField("dim_value") and d.dim_value > 0):
                problems.append(Problem("dynamic-shape", inp.name, f"dimension {axis} is dynamic "
                                        f"('{d.dim_param or '?'}'); only the batch (dimension 0) may be"))

    inferred = onnx.shape_inference.infer_shapes(model)
    infos = [*inferred.graph.input, *inferred.graph.output, *inferred.graph.value_info]
    types = {v.name: v.type.tensor_type.elem_type for v in infos if v.type.HasField("tensor_type")}
    types.update({t.name: t.data_type for t in g.initializer})
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in infos
             if v.type.HasField("tensor_type") and v.type.tensor_type.HasField("shape")}
    weights, folded = _constants(g)
    functions = {(f.domain, f.name): f for f in model.functions}

    def check_nodes(nodes) -> None:
        for node in nodes:
            where = _node_label(node)
            if node.domain not in ("", "ai.onnx"):
                fn = functions.get((node.domain, node.op_type))
                if fn is not None:
                    check_nodes(fn.node)
                else:
                    problems.append(Problem("operator", where, f"custom operator of domain '{node.domain}'"))
                continue
            accepted = OPERATORS.get(node.op_type)
            if not accepted:
                problems.append(Problem("operator", where, f"{node.op_type} is not supported by TensorRT "
                                        f"{TENSORRT_VERSION}'s ONNX parser"))
                continue
            problems.extend(Problem("restriction", where, m)
                            for m in _restriction_problems(node, weights, folded, ranks))
            i = _DATA_INPUT.get(node.op_type, 0)
            operand = node.input[i] if len(node.input) > i else (node.output[0] if not node.input else "")
            elem = types.get(operand, TensorProto.UNDEFINED)
            if elem == TensorProto.UNDEFINED:  # unknown to shape inference: nothing to hold against the row
                continue
            name = _TYPE_NAMES.get(elem, TensorProto.DataType.Name(elem))
            if name in accepted:
                continue
            problems.append(Problem("type", where, f"operand '{operand}' is {name}; TensorRT's {node.op_type} "
                                    f"accepts {', '.join(sorted(accepted))}"))

    check_nodes(_walk(g))
    return problems
