"""camrt.graph passes on small graphs written in ONNX text, run through ONNX Runtime, and the
sub-graph passes on a real export of a tiny residual network."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
import pytest
import torch

import camrt
from camrt.engine import open_session
from camrt.graph import (
    attach_manifest,
    default_class_idx,
    export_passes,
    forward_only,
    guard_class_idx,
    keep_outputs,
    run_passes,
    tail,
)
from camrt.manifest import METADATA_KEY, Layer, Manifest
from tests.tiny import ResNetty, inputs, make

# logits = the input; class_idx_used = class_idx, or the top class where it is -1.
CLASSIFIER = """
<ir_version: 9, opset_import: ["" : 20]>
classifier (float[N, 4] input, int64[N] class_idx) => (float[N, 4] logits, int64[N] class_idx_used) {
    top = ArgMax <axis = 1, keepdims = 0> (input)
    minus1 = Constant <value = int64 {-1}> ()
    is_default = Equal(class_idx, minus1)
    class_idx_used = Where(is_default, top, class_idx)
    logits = Identity(input)
}
"""

X = np.array([[0.0, 3.0, 1.0, 2.0], [5.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 9.0]], dtype=np.float32)


def session(model: onnx.ModelProto):
    onnx.checker.check_model(model)
    return open_session(model.SerializeToString())


def outputs(sess, **feed) -> dict[str, np.ndarray]:
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feed), strict=True))


@pytest.fixture(scope="module")
def guarded():
    model = onnx.parser.parse_model(CLASSIFIER)
    out = run_passes(model, [guard_class_idx(4), default_class_idx])
    return model, out, session(out)


def test_guard_leaves_its_argument_untouched(guarded) -> None:
    model, out, _ = guarded
    assert len(model.graph.node) == 5 and len(model.graph.initializer) == 0
    assert len(out.graph.node) > 5 and [t.name for t in out.graph.initializer] == ["class_idx"]


def test_class_idx_may_be_omitted(guarded) -> None:
    sess = guarded[2]
    assert [i.name for i in sess.get_inputs()] == ["input"]
    assert [i.name for i in sess.get_overridable_initializers()] == ["class_idx"]
    assert outputs(sess, input=X)["class_idx_used"].tolist() == [1, 0, 3]


@pytest.mark.parametrize(("cls", "used"), [
    ([2], [2, 2, 2]),
    ([-1], [1, 0, 3]),
    ([0, 3, -1], [0, 3, 3]),
    ([3, -1, 0], [3, 0, 0]),
])
def test_valid_class_idx(guarded, cls, used) -> None:
    got = outputs(guarded[2], input=X, class_idx=np.array(cls, np.int64))
    assert got["class_idx_used"].tolist() == used
    np.testing.assert_array_equal(got["logits"], X)


@pytest.mark.parametrize("cls", [[4], [-2], [4, 4, 4], [0, 4, 1], [-2, -1, 0], [0, 1], [0, 1, 2, 3], []], ids=str)
def test_invalid_class_idx_fails(guarded, cls) -> None:
    with pytest.raises(Exception, match="class_idx"):
        outputs(guarded[2], input=X, class_idx=np.array(cls, np.int64))


def test_guard_with_batch_one(guarded) -> None:
    sess = guarded[2]
    assert outputs(sess, input=X[1:2], class_idx=np.array([2]))["class_idx_used"].tolist() == [2]
    with pytest.raises(Exception, match="class_idx"):
        outputs(sess, input=X[1:2], class_idx=np.array([4]))


def test_passes_need_a_class_idx_input() -> None:
    model = onnx.parser.parse_model("""
    <ir_version: 9, opset_import: ["" : 20]>
    g (float[N, 4] input) => (float[N, 4] logits) { logits = Identity(input) }
    """)
    with pytest.raises(ValueError, match="no input named 'class_idx'"):
        guard_class_idx(4)(model)
    with pytest.raises(ValueError, match="no input named 'class_idx'"):
        default_class_idx(model)


def _manifest(**kw) -> Manifest:
    return Manifest(input_shape=(1, 3, 8, 8), num_classes=4, layers=(Layer("conv", (2, 8, 8)),),
                    labels=("a", "b", "c", "d"), source="hand-written", **kw)


def test_attach_manifest_round_trip_and_refuses_a_second() -> None:
    model = onnx.parser.parse_model(CLASSIFIER)
    manifest = _manifest()
    out = attach_manifest(manifest.to_json())(model)
    assert len(model.metadata_props) == 0  # the argument is untouched
    meta = {p.key: p.value for p in out.metadata_props}
    assert list(meta) == [METADATA_KEY] and out.producer_name == "camrt"
    assert Manifest.from_json(meta[METADATA_KEY]) == manifest
    # the manifest survives serialisation and ONNX Runtime reads it too
    assert session(out).get_modelmeta().custom_metadata_map[METADATA_KEY] == manifest.to_json()
    with pytest.raises(ValueError, match="already carries a camrt manifest"):
        attach_manifest(_manifest(opset=20).to_json())(out)


def test_export_passes_in_order() -> None:
    out = run_passes(onnx.parser.parse_model(CLASSIFIER), export_passes(4, _manifest().to_json()))
    sess = session(out)
    assert outputs(sess, input=X)["class_idx_used"].tolist() == [1, 0, 3]
    with pytest.raises(Exception, match="class_idx"):
        outputs(sess, input=X, class_idx=np.array([4]))
    assert Manifest.from_json(sess.get_modelmeta().custom_metadata_map[METADATA_KEY]) == _manifest()


# --- forward_only / tail on a hand-written graph ------------------------------------------------

# a = relu(x); act = 2a; s = -a; logits = sum((act + s) * 0.5 * w); the gradient branch is apart.
SKIP = """
<ir_version: 9, opset_import: ["" : 20]>
skip (float[N, 3] input, int64[N] class_idx)
    => (float[N, 1] logits, float[N, 3] "activation.L", float[N, 3] "gradient.L")
    <float[3] w = {1.0, 2.0, 3.0}, float two = {2.0}> {
    a = Relu(input)
    "activation.L" = Mul(a, two)
    s = Neg(a)
    t = Add("activation.L", s)
    half = Constant <value = float {0.5}> ()
    u = Mul(t, half)
    v = Mul(u, w)
    axes = Constant <value = int64[1] {1}> ()
    logits = ReduceSum <keepdims = 1> (v, axes)
    g0 = Cast <to = 1> (class_idx)
    g1 = Unsqueeze(g0, axes)
    "gradient.L" = Mul(w, g1)
}
"""

XS = np.array([[1.0, -2.0, 3.0], [0.5, 0.5, -1.0]], dtype=np.float32)


def test_forward_only_on_hand_written_graph() -> None:
    model = onnx.parser.parse_model(SKIP)
    fwd = forward_only(model)
    assert [o.name for o in fwd.graph.output] == ["logits"]
    assert [i.name for i in fwd.graph.input] == ["input"]  # class_idx fed only the gradient branch
    assert {n.op_type for n in fwd.graph.node} == {"Relu", "Mul", "Neg", "Add", "Constant", "ReduceSum"}
    got = outputs(session(fwd), input=XS)["logits"]
    a = np.maximum(XS, 0)
    np.testing.assert_allclose(got, ((2 * a - a) * 0.5 * [1, 2, 3]).sum(1, keepdims=True), rtol=1e-6)
    with pytest.raises(ValueError, match="no tensors named"):
        forward_only(model, extra_outputs=["nope"])


def test_tail_on_hand_written_graph() -> None:
    model = onnx.parser.parse_model(SKIP)
    sub, boundary = tail(model, "L")
    assert boundary == ["s"]  # the skip around the cut
    assert [i.name for i in sub.graph.input] == ["activation.L", "s"]
    assert {n.op_type for n in sub.graph.node} == {"Add", "Constant", "Mul", "ReduceSum"}
    assert {t.name for t in sub.graph.initializer} == {"w"}
    feed = outputs(session(forward_only(model, extra_outputs=["activation.L", *boundary])), input=XS)
    got = outputs(session(sub), **{"activation.L": feed["activation.L"], "s": feed["s"]})["logits"]
    np.testing.assert_allclose(got, feed["logits"], rtol=1e-6)
    # and it is a function of the activation: a changed activation changes the logits as it should
    act = feed["activation.L"] + 1.0
    got = outputs(session(sub), **{"activation.L": act, "s": feed["s"]})["logits"]
    np.testing.assert_allclose(got, ((act + feed["s"]) * 0.5 * [1, 2, 3]).sum(1, keepdims=True), rtol=1e-6)
    with pytest.raises(ValueError, match="no activation output for layer 'M'"):
        tail(model, "M")


def test_keep_outputs_on_hand_written_graph() -> None:
    model = default_class_idx(onnx.parser.parse_model(SKIP))
    before = model.SerializeToString()
    grad = keep_outputs(model, ["gradient.L"])
    assert [i.name for i in grad.graph.input] == ["class_idx"]  # the forward branch is gone
    assert {n.op_type for n in grad.graph.node} == {"Cast", "Constant", "Unsqueeze", "Mul"}
    assert {t.name for t in grad.graph.initializer} == {"w", "class_idx"}  # the default [-1] stays
    sess = session(grad)
    assert [i.name for i in sess.get_overridable_initializers()] == ["class_idx"]
    np.testing.assert_array_equal(outputs(sess)["gradient.L"], [[-1.0, -2.0, -3.0]])
    np.testing.assert_array_equal(outputs(sess, class_idx=np.array([2, 1]))["gradient.L"], [[2, 4, 6], [1, 2, 3]])

    both = keep_outputs(model, ["gradient.L", "logits"])  # in the order asked for
    assert [o.name for o in both.graph.output] == ["gradient.L", "logits"]
    assert [i.name for i in both.graph.input] == ["input", "class_idx"]
    full = outputs(session(model), input=XS, class_idx=np.array([0, 1]))
    got = outputs(session(both), input=XS, class_idx=np.array([0, 1]))
    assert all(np.array_equal(got[k], full[k]) for k in got)
    assert model.SerializeToString() == before  # the argument is untouched


@pytest.mark.parametrize("names", [["nope"], [], ["logits", "logits"], ["a"]], ids=str)
def test_keep_outputs_needs_distinct_output_names(names) -> None:
    with pytest.raises(ValueError, match="distinct output names of the model.*logits, activation.L, gradient.L"):
        keep_outputs(onnx.parser.parse_model(SKIP), names)


# --- forward_only / tail on a real export ---------------------------------------------------------

SHAPE = (1, 3, 16, 16)


@pytest.fixture(scope="module")
def residual(tmp_path_factory):
    model = make(ResNetty, seed=5)
    path = tmp_path_factory.mktemp("res") / "res.onnx"
    camrt.export(model, layers=["block.2"], path=path, input_shape=SHAPE)
    return model, onnx.load(path)


def test_forward_only_drops_the_gradient_branch(residual) -> None:
    model, full = residual
    fwd = forward_only(full)
    ops_full = [n.op_type for n in full.graph.node]
    ops_fwd = [n.op_type for n in fwd.graph.node]
    assert "ConvTranspose" in ops_full and "ConvTranspose" not in ops_fwd
    assert ops_fwd.count("Conv") == 4 and len(ops_fwd) < len(ops_full) / 2
    assert [i.name for i in fwd.graph.input] == ["input"] and [o.name for o in fwd.graph.output] == ["logits"]
    assert {p.key for p in fwd.metadata_props} == {METADATA_KEY}
    x = inputs((3, *SHAPE[1:]), seed=3)
    got = outputs(session(fwd), input=x)["logits"]
    np.testing.assert_allclose(got, outputs(session(full), input=x)["logits"], rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        np.testing.assert_allclose(got, model(torch.from_numpy(x)).numpy(), rtol=1e-4, atol=1e-5)


def test_tail_with_a_skip_across_the_cut(residual) -> None:
    model, full = residual
    sub, boundary = tail(full, "block.2")
    assert len(boundary) == 1  # relu(stem(x)), read by the residual addition after the cut
    assert "ConvTranspose" not in [n.op_type for n in sub.graph.node]
    assert [i.name for i in sub.graph.input] == ["activation.block.2", *boundary]
    x = inputs((3, *SHAPE[1:]), seed=4)
    feed = outputs(session(forward_only(full, extra_outputs=["activation.block.2", *boundary])), input=x)
    with torch.no_grad():
        skip = torch.relu(model.stem(torch.from_numpy(x))).numpy()
    np.testing.assert_allclose(feed[boundary[0]], skip, rtol=1e-4, atol=1e-5)

    tail_sess = session(sub)
    got = outputs(tail_sess, **{"activation.block.2": feed["activation.block.2"], boundary[0]: feed[boundary[0]]})
    np.testing.assert_allclose(got["logits"], feed["logits"], rtol=1e-5, atol=1e-6)

    # A perturbed activation gives the logits eager PyTorch gives with that activation.
    act = feed["activation.block.2"] * np.linspace(0, 2, feed["activation.block.2"].size, dtype=np.float32).reshape(
        feed["activation.block.2"].shape)
    got = outputs(tail_sess, **{"activation.block.2": act, boundary[0]: feed[boundary[0]]})["logits"]
    handle = model.block[2].register_forward_hook(lambda _m, _i, _o: torch.from_numpy(act))
    try:
        with torch.no_grad():
            ref = model(torch.from_numpy(x)).numpy()
    finally:
        handle.remove()
    assert np.abs(ref - feed["logits"]).max() > 1e-3  # the perturbation matters
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
