"""camrt.graph.fp16: the forward pass in float16, the gradient branch and map heads in float32.

Structure on a graph written as ONNX text (which nodes compute in float16, where the Casts go,
which constants are stored twice) and on real exports of the tiny models (IO types, int64
tensors untouched, onnx.checker with full_check, strict shape inference, no Cast round trips).

Numbers: ONNX Runtime's CPU provider runs the float16 file, but it has float16 kernels for few
operators and computes the others in float32, removing the graph's own Casts on the way (a value
of 70000 cast to float16 and back comes out 70000, not inf; `test_cpu_provider_does_not_round_to_float16`
pins that down). So float16 arithmetic is checked with onnx's reference evaluator, which computes
each operator in numpy at the tensors' own types: on TinyNet with inputs of several predicted
classes, the top-1 classes are those of float32, the logits within 1e-2 of the largest, each
image's gradients and maps with a cosine similarity over 0.99 with float32. Parity on a GPU
(CUDA, TensorRT) is not measured here (docs/fp16.md).
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnx.parser
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from onnx import TensorProto, numpy_helper
from onnx.reference import ReferenceEvaluator

import camrt
from camrt.cli import main
from camrt.engine import Engine, open_session
from camrt.errors import InputError, VerificationError
from camrt.graph import add_map_heads, cast_round_trips, keep_outputs, tail, to_fp16
from camrt.graph.fp16 import (
    FP16_MAX,
    KEEP_FP32,
    Fp16RangeError,
    check_range,
    compare,
    held_in_fp16,
    plan,
)
from camrt.graph.tensorrt import check_tensorrt
from camrt.manifest import CLASS_IDX, INPUT, METADATA_KEY, Manifest
from tests.cli_checks import assert_one_line_error, run_without_torch
from tests.tiny import ResNetty, TinyNet, diverse_inputs, make

SIZE = (32, 32)
LAYERS = ["layer1", "layer2"]
F32, F16 = TensorProto.FLOAT, TensorProto.FLOAT16

# h = input @ w1 and the forward after the target `act` compute in float16; `act` and `logits`
# are written in float32 by their own nodes; ReduceSum stays float32 (KEEP_FP32); the rest reads
# class_idx (selection and gradient branch) and stays float32, except the comparison `off`,
# which reads the float16 `h` and the exact constant 0.
TEXT = """
<ir_version: 9, opset_import: ["" : 20]>
net (float[N, 3] input, int64[N] class_idx) => (float[N, 2] logits, int64[N] class_idx_used, float[N, 4] act,
                                                float[N, 4] grad) {
    h = MatMul(input, w1)
    act = Relu(h)
    t = Tanh(act)
    s = ReduceSum <keepdims = 1> (t, axis1)
    u = Add(t, s)
    logits = MatMul(u, w2)
    top = ArgMax <axis = 1, keepdims = 0> (logits)
    minus1 = Constant <value = int64 {-1}> ()
    is_default = Equal(class_idx, minus1)
    class_idx_used = Where(is_default, top, class_idx)
    cls = Unsqueeze(class_idx_used, axis1)
    hot = Equal(classes, cls)
    onehot = Cast <to = 1> (hot)
    gu = MatMul(onehot, w2t)
    gs = ReduceSum <keepdims = 1> (gu, axis1)
    gt = Add(gu, gs)
    tt = Mul(t, t)
    dt = Sub(one, tt)
    ga = Mul(gt, dt)
    off = LessOrEqual(h, zero)
    grad = Where(off, zero, ga)
}
"""


def text_model(w1_scale: float = 1.0) -> onnx.ModelProto:
    model = onnx.parser.parse_model(TEXT)
    rng = np.random.default_rng(0)
    w2 = rng.standard_normal((4, 2)).astype(np.float32)
    values = {"w1": w1_scale * rng.standard_normal((3, 4)).astype(np.float32), "w2": w2, "w2t": w2.T.copy(),
              "axis1": np.array([1]), "classes": np.arange(2), "one": np.array(1, np.float32),
              "zero": np.array(0, np.float32)}
    model.graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in values.items())
    return model


def types(model: onnx.ModelProto) -> dict[str, int]:
    g = onnx.shape_inference.infer_shapes(model, strict_mode=True).graph
    out = {v.name: v.type.tensor_type.elem_type for v in [*g.input, *g.output, *g.value_info]}
    out.update({t.name: t.data_type for t in g.initializer})
    return out


def io(model: onnx.ModelProto) -> list[tuple[str, int]]:
    g = model.graph
    return [(v.name, v.type.tensor_type.elem_type) for v in [*g.input, *g.output]]


def run(model: onnx.ModelProto | Path, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    data = model.read_bytes() if isinstance(model, Path) else model.SerializeToString()
    sess = open_session(data)
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feed), strict=True))


def reference(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The model computed operator by operator in numpy at its tensors' own types: real float16."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        out = ReferenceEvaluator(model).run(None, feed)
    return dict(zip([o.name for o in model.graph.output], out, strict=True))


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-300)


def assert_structure(before: onnx.ModelProto, after: onnx.ModelProto) -> None:
    """What every float16 model must satisfy: valid, IO as before, no Cast round trip, one Cast per
    tensor and direction, each between the two float types, integer initializers untouched."""
    onnx.checker.check_model(after, full_check=True)
    assert io(after) == io(before)
    assert cast_round_trips(after) == []
    t = types(after)
    casts = [(n.input[0], n.attribute[0].i) for n in after.graph.node if n.op_type == "Cast"]
    assert len(casts) == len(set(casts)), "a tensor cast twice to the same type"
    inserted = [n for n in after.graph.node if n.op_type == "Cast" and n.output[0].endswith(("/fp16", "/fp32"))]
    for n in inserted:
        assert {t[n.input[0]], t[n.output[0]]} == {F32, F16}, n
    ints = {i.name: i for i in before.graph.initializer if i.data_type != F32}
    assert {i.name: i for i in after.graph.initializer if i.name in ints} == ints


# --- a graph written as ONNX text ------------------------------------------------------------------


def test_plan_on_text_graph() -> None:
    model = text_model()
    p = plan(model)
    names = {model.graph.node[i].output[0] for i in p.half}
    assert names == {"h", "t", "u", "off"}
    assert {model.graph.node[i].output[0]: why for i, why in p.kept.items()} == {
        "act": "it writes a public output", "s": KEEP_FP32["ReduceSum"], "logits": "it writes a public output"}
    assert held_in_fp16(model) == ["input", "h", "act", "t", "s", "u"]


def test_pass_on_text_graph() -> None:
    model = text_model()
    before = model.SerializeToString()
    half = to_fp16(model)
    assert model.SerializeToString() == before, "the pass changed its argument"
    assert_structure(model, half)
    t = types(half)
    assert {k for k, v in t.items() if v == F16} == {
        "input/fp16", "h", "act/fp16", "t", "s/fp16", "u", "w1", "zero/fp16"}
    # One Cast per boundary: t is cast once, for ReduceSum and the gradient branch together.
    casts = sorted((n.input[0], n.output[0]) for n in half.graph.node if n.op_type == "Cast")
    assert casts == [("act", "act/fp16"), ("h", "h/fp32"), ("hot", "onehot"), ("input", "input/fp16"),
                     ("s", "s/fp16"), ("t", "t/fp32"), ("u", "u/fp32")]
    # `zero` is read on both sides, so it is stored twice; `w2` only by float32 nodes.
    inits = {i.name: i.data_type for i in half.graph.initializer}
    assert inits["zero"] == F32 and inits["zero/fp16"] == F16 and inits["w2"] == F32 and inits["w1"] == F16
    feed = {INPUT: np.random.default_rng(1).standard_normal((5, 3)).astype(np.float32),
            CLASS_IDX: np.array([-1, 0, 1, -1, -1])}
    ref, got = run(model, feed), reference(half, feed)
    assert not compare(got, ref)
    np.testing.assert_array_equal(got["class_idx_used"], ref["class_idx_used"])
    np.testing.assert_allclose(got["grad"], ref["grad"], atol=2e-2 * np.abs(ref["grad"]).max())


def test_weights_beyond_float16_are_refused_and_tiny_ones_kept_nonzero() -> None:
    with pytest.raises(Fp16RangeError, match="weight 'w1' holds .*e\\+05, beyond float16's largest value 65504"):
        to_fp16(text_model(w1_scale=1e5))
    model = text_model()
    w1 = numpy_helper.to_array(model.graph.initializer[0]).copy()
    w1[0, :2] = [1e-9, -1e-9]
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(w1, "w1"))
    got = numpy_helper.to_array(to_fp16(model).graph.initializer[0])
    assert got.dtype == np.float16 and got[0, 0] == 2.0 ** -24 and got[0, 1] == -(2.0 ** -24)


def test_source_round_trips_are_folded() -> None:
    """A forward Cast to float32 (a no-op in float32, so torch's exporter may leave one) becomes a
    Cast to float16 and must not be followed by a Cast back to float32 for the classifier."""
    text = TEXT.replace("u = Add(t, s)", "v = Add(t, s)\n    u = Cast <to = 1> (v)")
    model = onnx.parser.parse_model(text)
    model.graph.initializer.extend(text_model().graph.initializer)
    half = to_fp16(model)
    assert cast_round_trips(half) == []
    onnx.checker.check_model(half, full_check=True)
    feed = {INPUT: np.ones((2, 3), np.float32), CLASS_IDX: np.array([-1, 1])}
    assert not compare(reference(half, feed), run(model, feed))


def test_cast_round_trips_are_found() -> None:
    model = onnx.parser.parse_model("""
        <ir_version: 9, opset_import: ["" : 20]>
        g (float[2] x) => (float[2] y) {
            h = Cast <to = 10> (x)
            y = Cast <to = 1> (h)
        }""")
    assert cast_round_trips(model) == [("h", "y")]


def test_refusals() -> None:
    half = to_fp16(text_model())
    with pytest.raises(InputError, match="float16, bfloat16 or float64 tensors already"):
        to_fp16(half)
    no_logits = text_model()
    no_logits.graph.output[0].name = "scores"
    no_logits.graph.node[5].output[0] = "scores"
    with pytest.raises(InputError, match="no output 'logits'"):
        to_fp16(no_logits)
    linear = onnx.parser.parse_model("""
        <ir_version: 9, opset_import: ["" : 20]>
        g (float[N, 3] input) => (float[N, 2] logits) {
            logits = MatMul(input, w)
        }""")
    linear.graph.initializer.append(numpy_helper.from_array(np.ones((3, 2), np.float32), "w"))
    with pytest.raises(InputError, match="no operator of this graph can compute in float16 \\(it writes a public"):
        to_fp16(linear)


def test_cpu_provider_does_not_round_to_float16() -> None:
    """Why numbers are checked with the reference evaluator: ONNX Runtime's CPU provider computes
    Relu in float32 and drops the Casts around it, so float16's range and rounding are lost."""
    model = onnx.parser.parse_model("""
        <ir_version: 9, opset_import: ["" : 20]>
        g (float[3] x) => (float[3] y) {
            h = Cast <to = 10> (x)
            r = Relu(h)
            y = Cast <to = 1> (r)
        }""")
    x = np.array([70000.0, 1.0001, 3e-8], np.float32)
    assert run(model, {"x": x})["y"].tolist() == x.tolist()
    assert reference(model, {"x": x})["y"].tolist() == [np.inf, 1.0, 2.0 ** -24]


def test_check_range() -> None:
    assert check_range({"a": np.array([1.0, -65504.0]), "b": np.zeros(3)}) == 65504.0
    with pytest.raises(Fp16RangeError, match="overflow: the tensor 'b' reaches 1e\\+06 .* \\(and 1 more tensors\\)"):
        check_range({"a": np.array([7e4]), "b": np.array([-1e6]), "c": np.ones(2)})
    with pytest.raises(Fp16RangeError, match="overflow: the tensor 'a' reaches inf"):
        check_range({"a": np.array([np.inf])})
    with pytest.raises(Fp16RangeError, match="underflow: the tensor 'a' peaks at 1e-07 .* smallest normal value 6.1e"):
        check_range({"a": np.array([1e-7, 0.0]), "b": np.ones(2)})


def test_manifest_without_precision_reads_as_fp32() -> None:
    manifest = Manifest((1, 3, 8, 8), 2, ())
    d = json.loads(manifest.to_json())
    assert d["precision"] == "fp32"
    del d["precision"]
    assert Manifest.from_json(json.dumps(d)) == manifest


# --- real exports ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model() -> TinyNet:
    return make(TinyNet, seed=3)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, model) -> tuple[Path, Path]:
    """TinyNet exported twice, float32 and float16, with every map head and the input gradient."""
    folder = tmp_path_factory.mktemp("fp16")
    paths = folder / "tiny.onnx", folder / "tiny.fp16.onnx"
    for path, fp16 in zip(paths, (False, True), strict=True):
        camrt.export(model, layers=LAYERS, path=path, input_shape=(1, 3, *SIZE), maps="all", input_gradient=True,
                     fp16=fp16)
    return paths


@pytest.fixture(scope="module")
def x(model) -> np.ndarray:
    batch = diverse_inputs(model, (6, 3, *SIZE), seed=11).astype(np.float32)
    assert len(set(model(torch.from_numpy(batch)).argmax(1).tolist())) > 2
    return batch


def test_export_structure(exported) -> None:
    f32, f16 = onnx.load(exported[0]), onnx.load(exported[1])
    assert_structure(f32, f16)
    manifest = Manifest.from_json({p.key: p.value for p in f16.metadata_props}[METADATA_KEY])
    assert manifest.precision == "fp16"
    assert dataclasses.replace(manifest, precision="fp32") == Manifest.from_json(
        {p.key: p.value for p in f32.metadata_props}[METADATA_KEY])
    t = types(f16)
    writers = {t_: n for n in f16.graph.node for t_ in n.output}
    half = [n.output[0] for n in f16.graph.node if any(t.get(o) == F16 for o in n.output) and n.op_type != "Cast"]
    # conv1 and its ReLU, layer1's convolution, the ReLU after layer1, layer2's convolution, the
    # pooling and the reshape before the classifier; layer1's batch norm and layer2's ReLU write
    # the activations (float32), the classifier the logits.
    assert [writers[n].op_type for n in half] == ["Conv", "Relu", "Conv", "Relu", "Conv", "ReduceMean", "Reshape"]
    assert [writers[n].op_type for n in ("activation.layer1", "activation.layer2", "logits")] == [
        "BatchNormalization", "Relu", "Gemm"]
    # The gradient branch's ReLU masks compare the float16 ReLU outputs themselves (no Cast).
    masks = [n for n in f16.graph.node if n.op_type == "LessOrEqual"]
    assert sorted(t[n.input[0]] for n in masks) == [F32, F16, F16]
    # Nothing that reads class_idx computes in float16: the gradients and maps are float32 throughout.
    after = {CLASS_IDX}
    for n in f16.graph.node:
        if after.intersection(n.input):
            after.update(n.output)
    assert not [o for o in after if t.get(o) == F16]
    # Weights: the forward's in float16; the gradient branch's (the transposed convolution's,
    # the classifier's rows) and the classifier's own in float32.
    inits = {i.name: i.data_type for i in f16.graph.initializer}
    assert sum(v == F16 for v in inits.values()) >= 4
    assert all(inits[n.input[1]] == F32 for n in f16.graph.node if n.op_type in ("ConvTranspose", "Gemm"))


def test_cpu_provider_runs_the_export(exported, x) -> None:
    feed = {INPUT: x, CLASS_IDX: np.full(len(x), -1)}
    ref, got = run(exported[0], feed), run(exported[1], feed)
    assert {k: v.dtype for k, v in got.items()} == {k: v.dtype for k, v in ref.items()}
    assert not compare(got, ref)
    np.testing.assert_array_equal(got["class_idx_used"], ref["class_idx_used"])


def test_float16_numbers(exported, x) -> None:
    """Real float16 arithmetic (the reference evaluator) against the float32 graph."""
    feed = {INPUT: x, CLASS_IDX: np.array([-1, -1, -1, 4, 0, -1])}
    ref, got = run(exported[0], feed), reference(onnx.load(exported[1]), feed)
    assert not compare(got, ref)
    np.testing.assert_array_equal(got["class_idx_used"], ref["class_idx_used"])
    scale = np.abs(ref["logits"]).max()
    assert np.abs(got["logits"] - ref["logits"]).max() < 1e-2 * scale
    for name in ref:
        if name.startswith(("activation.", "gradient.", "map.", "saliency.")):
            assert cosines(got[name], ref[name]).min() > 0.99, name
    assert np.abs(got["saliency.gradcam"] - ref["saliency.gradcam"]).max() < 0.05


def test_overflow_fails_the_export_and_writes_nothing(tmp_path) -> None:
    big = make(TinyNet, seed=3)
    with torch.no_grad():
        big.conv1.weight.mul_(1e5)
        big.conv1.bias.mul_(1e5)
    ok = tmp_path / "f32.onnx"
    camrt.export(big, layers=LAYERS, path=ok, input_shape=(1, 3, *SIZE))  # float32 holds it
    path = tmp_path / "m.onnx"
    path.write_bytes(b"old")
    with pytest.raises(VerificationError, match="float16 overflow: the tensor 'convolution' \\(Conv output\\) reaches "
                                                ".*e\\+0[56] on the "
                                                "self-check input.*65504.*nothing was written"):
        camrt.export(big, layers=LAYERS, path=path, input_shape=(1, 3, *SIZE), fp16=True)
    assert path.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["f32.onnx", "m.onnx"]


def test_underflow_fails_the_export(tmp_path) -> None:
    small = make(TinyNet, seed=3)
    with torch.no_grad():
        small.conv1.weight.mul_(1e-7)
        small.conv1.bias.mul_(1e-7)
    with pytest.raises(VerificationError, match="float16 underflow: the tensor 'convolution' \\(Conv output\\) "
                                                "peaks at .*e-0[67]"):
        camrt.export(small, layers=LAYERS, path=tmp_path / "m.onnx", input_shape=(1, 3, *SIZE), fp16=True)
    assert list(tmp_path.iterdir()) == []


def test_logits_beyond_float16_are_fine(tmp_path, x) -> None:
    """The classifier computes in float32, so logits beyond 65504 need no float16."""
    big = make(TinyNet, seed=3)
    with torch.no_grad():
        big.fc.weight.mul_(3e5)
    path = tmp_path / "m.onnx"
    camrt.export(big, layers=LAYERS, path=path, input_shape=(1, 3, *SIZE), fp16=True)
    got = reference(onnx.load(path), {INPUT: x, CLASS_IDX: np.full(len(x), -1)})
    with torch.no_grad():
        ref = big(torch.from_numpy(x)).numpy()
    assert np.abs(ref).max() > FP16_MAX and np.isfinite(got["logits"]).all()
    np.testing.assert_array_equal(got["class_idx_used"], ref.argmax(1))
    assert np.abs(got["logits"] - ref).max() < 1e-2 * np.abs(ref).max()


def test_engine_and_tail_on_a_skip_connection(tmp_path) -> None:
    """The engine's sub-graphs on a float16 model: the tail at `block.2` reads the float32
    activation and, as an extra input, the float16 skip tensor from before the cut."""
    net = make(ResNetty, seed=1)
    paths = tmp_path / "r.onnx", tmp_path / "r16.onnx"
    for path, fp16 in zip(paths, (False, True), strict=True):
        camrt.export(net, layers=["block.2"], path=path, input_shape=(1, 3, 16, 16), fp16=fp16)
    half, extra = tail(onnx.load(paths[1]), "block.2")
    assert [i.name for i in half.graph.input][0] == "activation.block.2" and extra
    assert types(half)["activation.block.2"] == F32 and all(types(half)[t] == F16 for t in extra)
    batch = diverse_inputs(net, (4, 3, 16, 16), seed=2).astype(np.float32)
    for method in ("gradcam", "ablationcam"):
        ref = Engine(paths[0], device="cpu").explain(batch, method=method)
        got = Engine(paths[1], device="cpu").explain(batch, method=method)
        np.testing.assert_array_equal(got.class_idx, ref.class_idx)
        assert cosines(got.saliency, ref.saliency).min() > 0.99, method


def test_map_heads_added_after_conversion(exported) -> None:
    """`camrt add-maps` on a float16 file: the heads read the float32 outputs, so they are float32."""
    f32 = onnx.load(exported[0])
    plain = keep_outputs(f32, [o.name for o in f32.graph.output if not o.name.startswith(("map.", "saliency."))])
    manifest = Manifest.from_json({p.key: p.value for p in plain.metadata_props}[METADATA_KEY])
    for p in plain.metadata_props:
        if p.key == METADATA_KEY:
            p.value = dataclasses.replace(manifest, maps=()).to_json()
    with_heads = add_map_heads(["gradcam"])(to_fp16(plain))
    onnx.checker.check_model(with_heads, full_check=True)
    assert types(with_heads)["saliency.gradcam"] == F32


def test_tensorrt_check_finds_nothing_new(exported) -> None:
    f32, f16 = onnx.load(exported[0]), onnx.load(exported[1])
    assert {str(p) for p in check_tensorrt(f16)} <= {str(p) for p in check_tensorrt(f32)}


# --- the command line ---------------------------------------------------------------------------------


def test_convert_command_without_torch(exported, tmp_path) -> None:
    """`camrt convert --fp16` in a fresh interpreter: the float16 file, and torch never imported."""
    out = tmp_path / "half.onnx"
    proc = run_without_torch("convert", exported[0], "--fp16", "-o", out)
    assert proc.stdout.strip() == (f"wrote {out}: float16 compute, float32 inputs and outputs, float16 ranges "
                                   "checked")
    converted, exported16 = onnx.load(out), onnx.load(exported[1])
    assert_structure(onnx.load(exported[0]), converted)
    assert types(converted) == types(exported16)
    assert Engine(out, device="cpu").manifest.precision == "fp16"


def test_convert_errors_are_one_line_and_leave_nothing(exported, tmp_path) -> None:
    out = tmp_path / "out.onnx"
    runner = CliRunner()
    assert_one_line_error(runner.invoke(main, ["convert", str(exported[0]), "-o", str(out)]), "--fp16")
    assert_one_line_error(runner.invoke(main, ["convert", str(exported[1]), "--fp16", "-o", str(out)]),
                   "computes in float16 already")
    plain = tmp_path / "plain.onnx"
    onnx.save(text_model(), plain)
    assert_one_line_error(runner.invoke(main, ["convert", str(plain), "--fp16", "-o", str(out)]), "no camrt manifest")
    assert_one_line_error(runner.invoke(main, ["convert", str(tmp_path / "missing.onnx"), "--fp16", "-o", str(out)]),
                   "does not exist")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain.onnx"]


def test_export_command_fp16(model, tmp_path) -> None:
    weights = tmp_path / "tiny.pt"
    torch.save(model.state_dict(), weights)
    out = tmp_path / "tiny.cam.onnx"
    result = CliRunner().invoke(main, ["export", str(weights), "--arch", "tests.tiny:TinyNet", "--layer", "layer2",
                                       "--input-shape", "1,3,32,32", "--fp16", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert result.output.strip().endswith("verified against eager PyTorch; float16 compute, float32 inputs and "
                                          "outputs, float16 ranges checked")
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert json.loads(sess.get_modelmeta().custom_metadata_map["camrt"])["precision"] == "fp16"
    assert [i.type for i in sess.get_inputs()] == ["tensor(float)"]
    assert {o.type for o in sess.get_outputs()} == {"tensor(float)", "tensor(int64)"}
