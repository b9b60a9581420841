"""camrt.graph.tensorrt: the support matrix, `check_tensorrt` on graphs written in ONNX text, and
every graph camrt writes for the tiny test models held against TensorRT's ONNX parser.

The models are exported with `input_gradient=True`: every node (op type and attributes) of a
default export also appears in that graph (checked for TinyNet and ConvNet with torch 2.14.1),
which adds the input-gradient branch and the sub-graph the engine cuts for it.
"""

from __future__ import annotations

import onnx
import onnx.parser
import pytest

import camrt
from camrt.graph import forward_only, keep_outputs, tail
from camrt.graph._util import copy
from camrt.graph.tensorrt import OPERATORS, OPSET_RANGE, RESTRICTIONS, Problem, check_tensorrt
from camrt.manifest import CLASS_IDX, INPUT, INPUT_GRADIENT, LOGITS, activation_name
from tests.tiny import SHAPE, ConvNet, PoolNet, ResNetty, TinyNet, make

HEADER = '<ir_version: 9, opset_import: ["" : 20]>'
W = "<float[4, 3, 1, 1] w = {1.0,1.0,1.0,1.0,1.0,1.0,1.0,1.0,1.0,1.0,1.0,1.0}, int64[2] axes = {2, 3}>"


def parse(body: str, inputs: str = "float[N, 3, 8, 8] input", outputs: str = "float[N, 4] logits",
          header: str = HEADER, inits: str = W) -> onnx.ModelProto:
    model = onnx.parser.parse_model(f"{header}\ng ({inputs}) => ({outputs})\n{inits}\n{{\n{body}\n}}")
    onnx.checker.check_model(model)
    return model


CLEAN = """
    c = Conv(input, w)
    logits = ReduceMean <keepdims = 0> (c, axes)
"""


def kinds(problems: list[Problem]) -> list[tuple[str, str]]:
    return [(p.kind, p.where) for p in problems]


# --- the matrix --------------------------------------------------------------------------------


def test_matrix_rows() -> None:
    assert len(OPERATORS) == 200  # the 10.15 matrix's rows: 10.1-GA's 196 plus Attention, RMSNormalization,
    # RotaryEmbedding and TensorScatter
    for op in ("Conv", "ConvTranspose", "Gemm", "MaxPool", "AveragePool", "ScatterElements", "GatherND", "Where"):
        assert "FP32" in OPERATORS[op], op
    assert "INT64" in OPERATORS["ReduceSum"] and "INT64" not in OPERATORS["Clip"]
    for op in ("Unique", "Col2Im", "SequenceAt", "MaxUnpool", "Optional"):
        assert OPERATORS[op] == frozenset(), op
    assert set(RESTRICTIONS) <= {op for op, types in OPERATORS.items() if types}
    assert (OPSET_RANGE.start, OPSET_RANGE.stop - 1) == (9, 24)


# --- check_tensorrt on ONNX text ---------------------------------------------------------------


def test_clean_graph() -> None:
    assert check_tensorrt(parse(CLEAN)) == []


def test_unsupported_and_custom_operators() -> None:
    model = parse("""
        c = Conv(input, w)
        f = Flatten(c)
        u = Unique(f)
        logits = ReduceMean <keepdims = 0> (c, axes)
    """, outputs="float[N, 4] logits, float[M] u")
    assert kinds(check_tensorrt(model)) == [("operator", "Unique 'u'")]
    model.graph.node[1].domain = "com.microsoft"
    model.opset_import.add(domain="com.microsoft", version=1)
    assert [p.kind for p in check_tensorrt(model)] == ["operator", "operator"]
    assert "custom operator of domain 'com.microsoft'" in str(check_tensorrt(model)[0])


def test_maxpool_indices_output_refused_even_unused() -> None:
    one = parse("""
        c = Conv(input, w)
        p = MaxPool <kernel_shape = [2, 2], strides = [2, 2]> (c)
        logits = ReduceMean <keepdims = 0> (p, axes)
    """)
    assert check_tensorrt(one) == []
    two = parse("""
        c = Conv(input, w)
        p, idx = MaxPool <kernel_shape = [2, 2], strides = [2, 2]> (c)
        logits = ReduceMean <keepdims = 0> (p, axes)
    """)
    (problem,) = check_tensorrt(two)
    assert problem.kind == "restriction" and "Indices output ('idx')" in problem.message


def test_pooling_dilations() -> None:
    model = parse("""
        c = Conv(input, w)
        p = AveragePool <kernel_shape = [2, 2], dilations = [2, 2]> (c)
        logits = ReduceMean <keepdims = 0> (p, axes)
    """)
    assert [p.message for p in check_tensorrt(model)] == ["dilations other than 1"]


def test_resize_modes() -> None:
    body = """
        c = Conv(input, w)
        r = Resize <{attrs}> (c, , scales)
        logits = ReduceMean <keepdims = 0> (r, axes)
    """
    scales = W[:-1] + ", float[4] scales = {1.0, 1.0, 2.0, 2.0}>"
    assert check_tensorrt(parse(body.format(attrs='mode = "linear"'), inits=scales)) == []
    model = parse(body.format(attrs='mode = "cubic", antialias = 1, coordinate_transformation_mode = '
                              '"tf_crop_and_resize"'), inits=scales)
    assert [p.message for p in check_tensorrt(model)] == [
        "mode cubic", "antialiasing", "coordinate_transformation_mode tf_crop_and_resize"]


def test_reduce_axes_must_be_an_initializer() -> None:
    model = parse("""
        c = Conv(input, w)
        shape = Shape <start = 2> (c)
        ax = Identity(axes)
        logits = ReduceMean <keepdims = 0> (c, ax)
    """)
    (problem,) = check_tensorrt(model)
    assert problem.kind == "restriction" and "axes 'ax' is computed" in problem.message
    # Unsqueeze axes need only resolve to a constant: Identity of an initializer does.
    model = parse("""
        c = Conv(input, w)
        ax = Identity(axes)
        u = Unsqueeze(c, ax)
        logits = ReduceMean <keepdims = 0> (c, axes)
    """, outputs="float[N, 4] logits, float[N, 4, 1, 1, 8, 8] u")
    assert check_tensorrt(model) == []


def test_int64_into_an_operator_without_int64() -> None:
    model = parse("""
        c = Conv(input, w)
        logits = ReduceMean <keepdims = 0> (c, axes)
        top = ArgMax <axis = 1> (logits)
        clipped = Clip(top)
    """, outputs="float[N, 4] logits, int64[N, 1] clipped")
    (problem,) = check_tensorrt(model)
    assert (problem.kind, problem.where) == ("type", "Clip 'clipped'")
    assert "'top' is INT64" in problem.message


def test_dynamic_spatial_dimension() -> None:
    model = parse(CLEAN, inputs="float[N, 3, H, 8] input")
    assert [(p.kind, p.where, p.message) for p in check_tensorrt(model)] == [
        ("dynamic-shape", "input", "dimension 2 is dynamic ('H'); only the batch (dimension 0) may be")]


def test_opset_out_of_range() -> None:
    model = parse(CLEAN, header='<ir_version: 10, opset_import: ["" : 25]>')
    assert kinds(check_tensorrt(model)) == [("opset", "model")]


def test_input_with_a_default_is_a_constant() -> None:
    model = parse("""
        c = Conv(input, w)
        r = ReduceMean <keepdims = 0> (c, axes)
        logits = Mul(r, scale)
    """, inputs="float[N, 3, 8, 8] input, float[1] scale", inits=W[:-1] + ", float[1] scale = {2.0}>")
    assert kinds(check_tensorrt(model)) == [("constant-input", "scale")]


# --- every graph camrt writes for the tiny models ----------------------------------------------

MODELS = {  # name: (class, target layers, input shape)
    "TinyNet": (TinyNet, ["layer1", "layer2"], SHAPE),
    "PoolNet": (PoolNet, ["avg1", "adapt"], PoolNet.SHAPE),
    "ConvNet": (ConvNet, ["c2", "mp"], ConvNet.SHAPE),  # c2's tail holds the max pool, mp's does not
    "ResNetty": (ResNetty, ["block.2"], (1, 3, 16, 16)),
}

def _graph_names(layers: list[str]) -> list[str]:
    return ["full", "forward", "activations", *(f"tail:{layer}" for layer in layers), "input-gradient"]


# ConvNet's max pool once made every graph holding it fail (a MaxPool node with an Indices output,
# which camrt's max-pool backward read): it is now a single-output MaxPool (test_maxpool_has_one_output).
CASES = [pytest.param(name, graph, id=f"{name}-{graph}")
         for name, (_, layers, _) in MODELS.items() for graph in _graph_names(layers)]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """name -> the full graph camrt exports for that tiny model (exported on first use)."""
    cache: dict[str, onnx.ModelProto] = {}

    def get(name: str) -> onnx.ModelProto:
        if name not in cache:
            cls, layers, shape = MODELS[name]
            path = tmp_path_factory.mktemp(name) / f"{name}.cam.onnx"
            camrt.export(make(cls), layers=layers, path=path, input_shape=shape, input_gradient=True)
            cache[name] = onnx.load(path)
        return cache[name]

    return get


def _sub_graph(full: onnx.ModelProto, layers: list[str], graph: str) -> onnx.ModelProto:
    """The graph the engine would run for `graph` (camrt/engine/graphs.py)."""
    if graph == "full":
        return full
    if graph == "forward":
        return forward_only(full)
    if graph == "activations":
        return forward_only(full, [activation_name(layer) for layer in layers])
    if graph == "input-gradient":
        return keep_outputs(full, [LOGITS, INPUT_GRADIENT])
    return tail(full, graph.removeprefix("tail:"))[0]


def _is_class_idx_default(p: Problem) -> bool:
    return p.kind == "constant-input" and p.where == CLASS_IDX


@pytest.mark.parametrize(("name", "graph"), CASES)
def test_camrt_graph_is_accepted(exported, name: str, graph: str) -> None:
    layers = MODELS[name][1]
    model = _sub_graph(exported(name), layers, graph)
    # class_idx's default is the one known constant input (test_class_idx_default below).
    assert [str(p) for p in check_tensorrt(model) if not _is_class_idx_default(p)] == []
    inits = {t.name for t in model.graph.initializer}
    for inp in model.graph.input:
        if inp.name not in inits:
            dims = inp.type.tensor_type.shape.dim
            assert dims[0].dim_param, f"{inp.name}: the batch is not dynamic"


@pytest.mark.parametrize("graph", _graph_names(MODELS["ConvNet"][1]))
def test_maxpool_has_one_output(exported, graph: str) -> None:
    """ConvNet's max pool is one MaxPool node with one output in every graph (camrt's max-pool
    backward finds the maxima without the Indices output, so nothing else needs one); a tail cut
    after the pool has none, every other graph has it."""
    model = _sub_graph(exported("ConvNet"), MODELS["ConvNet"][1], graph)
    pools = [n for n in model.graph.node if n.op_type == "MaxPool"]
    assert len(pools) == (0 if graph == "tail:mp" else 1)
    assert all(len(n.output) == 1 for n in pools)


def test_class_idx_default(exported) -> None:
    """The full graph's one other problem: class_idx's default [-1] is an initializer of the same
    name, which TensorRT imports as a constant. Without it, class_idx is a plain int64 input of
    dynamic length (1 or N, its dimension 0) and the graph passes."""
    full = exported("TinyNet")
    assert kinds(check_tensorrt(full)) == [("constant-input", CLASS_IDX)]
    assert kinds(check_tensorrt(keep_outputs(full, [LOGITS, INPUT_GRADIENT]))) == [("constant-input", CLASS_IDX)]
    plain = copy(full)
    kept = [t for t in plain.graph.initializer if t.name != CLASS_IDX]
    del plain.graph.initializer[:]
    plain.graph.initializer.extend(kept)
    assert check_tensorrt(plain) == []
    assert [i.name for i in plain.graph.input] == [INPUT, CLASS_IDX]
