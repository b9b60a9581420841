"""camrt.export on tiny models: errors say what is wrong and leave nothing behind; the run-time
class_idx contract; and exported gradients against eager autograd through camrt's own backward
rules (pooling with ceil_mode and padding, adaptive pooling, strided/dilated/grouped convolutions)."""

from __future__ import annotations

import errno
import json
import os

import numpy as np
import onnx
import pytest
import torch

import camrt
from camrt import atomic
from camrt.engine import open_session
from camrt.errors import ExportError, InputError, LayerError, VerificationError
from camrt.exporter import api, verify
from camrt.manifest import METADATA_KEY, Manifest
from tests.tiny import (
    SHAPE,
    ConvNet,
    PoolNet,
    TinyNet,
    TupleNet,
    assert_matches,
    diverse_inputs,
    eager_cam,
    inputs,
    make,
)

K = 5  # TinyNet's classes


def run(sess, x: np.ndarray, class_idx: np.ndarray | None = None) -> dict[str, np.ndarray]:
    feed = {"input": x} if class_idx is None else {"input": x, "class_idx": np.asarray(class_idx, np.int64)}
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feed), strict=True))


# --- errors found before tracing -------------------------------------------------------------------


@pytest.fixture
def out_dir(tmp_path):
    d = tmp_path / "out"
    d.mkdir()
    return d


def test_unknown_layer_suggests_close_names(out_dir) -> None:
    with pytest.raises(LayerError, match=r"no layer named 'layer11'; did you mean .*\blayer1\b"):
        camrt.export(make(TinyNet), layers=["layer11"], path=out_dir / "m.onnx", input_shape=SHAPE)
    assert list(out_dir.iterdir()) == []


def test_unknown_layer_without_close_name_points_to_layers_command(out_dir) -> None:
    with pytest.raises(LayerError, match="camrt layers"):
        camrt.export(make(TinyNet), layers=["zzzzzz"], path=out_dir / "m.onnx", input_shape=SHAPE)


def test_shared_module_is_refused(out_dir) -> None:
    with pytest.raises(LayerError, match=r"'relu' \(ReLU\) runs 2 times"):
        camrt.export(make(TinyNet), layers=["relu"], path=out_dir / "m.onnx", input_shape=SHAPE)
    assert list(out_dir.iterdir()) == []


def test_two_dimensional_layer_is_refused(out_dir) -> None:
    with pytest.raises(LayerError, match=r"'fc' \(Linear\) returns output of shape \(1, 5\).*N×C×H×W"):
        camrt.export(make(TinyNet), layers=["fc"], path=out_dir / "m.onnx", input_shape=SHAPE)


def test_no_layer_and_duplicate_layer(out_dir) -> None:
    with pytest.raises(LayerError, match="no target layer"):
        camrt.export(make(TinyNet), layers=[], path=out_dir / "m.onnx", input_shape=SHAPE)
    with pytest.raises(LayerError, match="named twice"):
        camrt.export(make(TinyNet), layers=["layer1", "layer1"], path=out_dir / "m.onnx", input_shape=SHAPE)


@pytest.mark.parametrize("shape", [(1, 4, 32, 32), (1, 3, 32), (0, 3, 32, 32)])
def test_input_shape_the_model_rejects(out_dir, shape) -> None:
    per_channel = (0.5,) * (shape[1] if len(shape) == 4 else 3)
    with pytest.raises(InputError, match=r"shape .* (positive sizes|--input-shape)"):
        camrt.export(make(TinyNet), layers=["layer1"], path=out_dir / "m.onnx", input_shape=shape,
                     mean=per_channel, std=per_channel)
    assert list(out_dir.iterdir()) == []


def test_output_in_missing_directory(tmp_path) -> None:
    target = tmp_path / "missing" / "m.onnx"
    with pytest.raises(InputError, match="does not exist"):
        camrt.export(make(TinyNet), layers=["layer1"], path=target, input_shape=SHAPE)
    assert list(tmp_path.iterdir()) == []


def test_output_path_is_a_directory(out_dir) -> None:
    with pytest.raises(InputError, match="is a directory"):
        camrt.export(make(TinyNet), layers=["layer1"], path=out_dir, input_shape=SHAPE)


def test_output_in_read_only_directory(tmp_path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("permissions do not stop this user (root); see test_output_directory_refusing_files")
        with pytest.raises(InputError, match="not writable"):
            camrt.export(make(TinyNet), layers=["layer1"], path=ro / "m.onnx", input_shape=SHAPE)
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o755)


def test_output_directory_refusing_files(out_dir, monkeypatch) -> None:
    """The permission check is a hint only (root, read-only mounts): creating the file may still fail."""

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(atomic, "_open_temp", refuse)
    with pytest.raises(InputError, match=r"cannot write .*Permission denied"):
        camrt.export(make(TinyNet), layers=["layer1"], path=out_dir / "m.onnx", input_shape=SHAPE)
    assert list(out_dir.iterdir()) == []


def test_tuple_output_needs_output_index(out_dir) -> None:
    with pytest.raises(InputError, match=r"returns 2 outputs.*output-index"):
        camrt.export(make(TupleNet), layers=["layer1"], path=out_dir / "m.onnx", input_shape=SHAPE)
    with pytest.raises(InputError, match="out of range"):
        camrt.export(make(TupleNet), layers=["layer1"], path=out_dir / "m.onnx", input_shape=SHAPE, output_index=2)
    with pytest.raises(InputError, match="expected N×K"):  # output 0 is the feature map
        camrt.export(make(TupleNet), layers=["layer1"], path=out_dir / "m.onnx", input_shape=SHAPE, output_index=0)
    assert list(out_dir.iterdir()) == []


def test_labels_of_the_wrong_length(out_dir) -> None:
    with pytest.raises(InputError, match="4 labels given for 5 classes"):
        camrt.export(make(TinyNet), layers=["layer1"], path=out_dir / "m.onnx", input_shape=SHAPE, labels=list("abcd"))


def test_mean_std_of_the_wrong_length(out_dir) -> None:
    with pytest.raises(InputError, match="3 values"):
        camrt.export(make(TinyNet), layers=["layer1"], path=out_dir / "m.onnx", input_shape=SHAPE, mean=(0.5, 0.5))
    with pytest.raises(InputError, match="non-zero"):
        camrt.export(make(TinyNet), layers=["layer1"], path=out_dir / "m.onnx", input_shape=SHAPE, std=(0.5, 0.0, 0.5))


@pytest.mark.parametrize("opset", [7, 11, 13, 17, 27, 30, True, "20"], ids=str)
def test_unsupported_opset_is_refused_before_any_work(tmp_path, opset) -> None:
    """torch would write opset 18 (below 18 or past onnx's newest) or a file ONNX Runtime cannot load."""
    missing_model = tmp_path / "not-there.pth"  # the opset is checked before the model is even loaded
    with pytest.raises(InputError, match=r"opset .* is not supported: camrt writes opsets 18 to 26.*torch's ONNX "
                                         r"exporter translates from opset 18 up"):
        camrt.export(missing_model, layers=["layer1"], path=tmp_path / "m.onnx", opset=opset)
    assert list(tmp_path.iterdir()) == []


def test_channel_count_the_model_does_not_take(out_dir) -> None:
    with pytest.raises(InputError, match=r"has 4 channels but the model takes 3 \(its first convolution 'conv1' "
                                         r"has in_channels=3\); pass --input-shape N,3,H,W"):
        camrt.export(make(TinyNet), layers=["layer1"], path=out_dir / "m.onnx", input_shape=(1, 4, 32, 32))
    assert list(out_dir.iterdir()) == []
    with pytest.raises(InputError, match="has 1 channels but the model takes 3"):
        camrt.list_layers(make(TinyNet), (1, 1, 32, 32))


def test_model_error_is_reported_on_one_line(out_dir) -> None:
    class TwoLines(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError("first line\nsecond line")

    with pytest.raises(InputError, match="rejects an input of shape") as info:
        camrt.export(TwoLines(), layers=["x"], path=out_dir / "m.onnx", input_shape=SHAPE)
    assert "\n" not in str(info.value) and "first line" in str(info.value)


# --- failures after tracing leave nothing behind -------------------------------------------------


def test_verification_failure_writes_nothing(out_dir, monkeypatch) -> None:
    target = out_dir / "m.onnx"
    target.write_bytes(b"previous export")
    monkeypatch.setattr(verify, "compare", lambda name, got, ref, yardstick=None: verify.Mismatch(name, "forced"))
    with pytest.raises(VerificationError, match="disagrees with eager PyTorch.*logits"):
        camrt.export(make(TinyNet), layers=["layer1"], path=target, input_shape=SHAPE)
    assert [p.name for p in out_dir.iterdir()] == ["m.onnx"]
    assert target.read_bytes() == b"previous export"


def test_failed_write_leaves_no_partial_file(out_dir, monkeypatch) -> None:
    """The data is written, then the disk turns out to be full when it is synced (as a delayed
    allocation or a network file system reports it): nothing is left and the old file stays.
    A real short write under a file-size limit is in tests/test_cli.py and tests/test_atomic.py."""
    target = out_dir / "m.onnx"
    target.write_bytes(b"previous export")

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", full)
    with pytest.raises(ExportError, match=r"cannot write '.*m.onnx': No space left on device"):
        camrt.export(make(TinyNet), layers=["layer1"], path=target, input_shape=SHAPE)
    assert [p.name for p in out_dir.iterdir()] == ["m.onnx"]
    assert target.read_bytes() == b"previous export"


def test_model_over_the_protobuf_limit_writes_nothing(out_dir, monkeypatch) -> None:
    """protobuf cannot hold one message over 2 GB; a tiny model stands in with a lower limit."""
    monkeypatch.setattr(api.onnx.checker, "MAXIMUM_PROTOBUF", 1000)
    with pytest.raises(ExportError, match=r"cannot write '.*m.onnx': the model is .* over protobuf's 2 GB limit"):
        camrt.export(make(TinyNet), layers=["layer1"], path=out_dir / "m.onnx", input_shape=SHAPE)
    assert list(out_dir.iterdir()) == []


@pytest.mark.parametrize("opset", [18, 26])
def test_opset_is_honoured_and_recorded(tmp_path, opset) -> None:
    path = tmp_path / "m.onnx"
    manifest = camrt.export(make(TinyNet), layers=["layer2"], path=path, input_shape=SHAPE, opset=opset)
    proto = onnx.load(path)
    assert api.file_opset(proto) == opset == manifest.opset
    assert Manifest.from_json({p.key: p.value for p in proto.metadata_props}[METADATA_KEY]).opset == opset
    x = inputs((2, 3, 32, 32), seed=3)
    assert_matches(run(open_session(path), x, [-1]), eager_cam(make(TinyNet), x, np.array([-1]), ["layer2"]))


def test_opset_torch_did_not_write_is_an_error(out_dir, monkeypatch) -> None:
    """Should torch fall back to another opset without failing, the manifest must not claim the asked one."""
    real = api._to_onnx

    def fallback(*args, **kwargs):
        proto = real(*args, **kwargs)
        for o in proto.opset_import:
            if o.domain == "":
                o.version = 18
        return proto

    monkeypatch.setattr(api, "_to_onnx", fallback)
    with pytest.raises(ExportError, match="wrote opset 18 instead of the requested 20"):
        camrt.export(make(TinyNet), layers=["layer1"], path=out_dir / "m.onnx", input_shape=SHAPE, opset=20)
    assert list(out_dir.iterdir()) == []


def test_selection_product_in_an_unknown_form_is_an_error(out_dir, monkeypatch) -> None:
    """A torch that traces the class selection differently: the gather rewrite finds nothing, and
    the export says so instead of writing a graph that reads the whole classifier per image."""
    real = api._to_onnx

    def other_form(*args, **kwargs):
        proto = real(*args, **kwargs)
        nodes, equal = [], set()
        for node in proto.graph.node:  # Cast(Equal(...)) becomes Cast(Identity(Equal(...))): same values
            node.input[:] = [f"{i}_id" if i in equal else i for i in node.input]
            nodes.append(node)
            if node.op_type == "Equal":
                equal.add(node.output[0])
                nodes.append(onnx.helper.make_node("Identity", [node.output[0]], [f"{node.output[0]}_id"]))
        del proto.graph.node[:]
        proto.graph.node.extend(nodes)
        onnx.checker.check_model(proto)
        return proto

    monkeypatch.setattr(api, "_to_onnx", other_form)
    with pytest.raises(ExportError, match=r"gather_selected_rows: 'logits' is a linear layer.*nothing was written"):
        camrt.export(make(TinyNet), layers=["layer1"], path=out_dir / "m.onnx", input_shape=SHAPE)
    assert list(out_dir.iterdir()) == []


# --- one export shared by the run-time tests --------------------------------------------------------


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """TinyNet handed over in train mode with conv1 frozen; records its state before and after."""
    model = make(TinyNet).train()
    model.conv1.requires_grad_(False)
    before = {
        "modes": {n: m.training for n, m in model.named_modules()},
        "grads": {n: p.requires_grad for n, p in model.named_parameters()},
        "state": {k: v.clone() for k, v in model.state_dict().items()},
    }
    path = tmp_path_factory.mktemp("tiny") / "tiny.cam.onnx"
    manifest = camrt.export(model, layers=["layer1", "layer2"], path=path, input_shape=SHAPE,
                            labels=[f"c{i}" for i in range(K)], mean=(0.5, 0.4, 0.3), std=(0.2, 0.2, 0.25))
    return {"model": model, "path": path, "manifest": manifest, "before": before,
            "sess": open_session(path, device="cpu")}


def test_caller_model_is_left_as_it_was(exported) -> None:
    model, before = exported["model"], exported["before"]
    assert {n: m.training for n, m in model.named_modules()} == before["modes"]
    assert {n: p.requires_grad for n, p in model.named_parameters()} == before["grads"]
    assert not before["grads"]["conv1.weight"] and before["grads"]["fc.weight"]
    for k, v in model.state_dict().items():  # BatchNorm statistics did not move
        assert torch.equal(v, before["state"][k]), k


def test_manifest_in_file(exported) -> None:
    proto = onnx.load(exported["path"])
    assert exported["manifest"].opset == api.file_opset(proto) == 20  # the default, as the file has it
    meta = {p.key: p.value for p in proto.metadata_props}
    m = Manifest.from_json(meta[METADATA_KEY])
    assert m == exported["manifest"]
    assert [(la.name, la.shape) for la in m.layers] == [("layer1", (6, 16, 16)), ("layer2", (8, 16, 16))]
    assert m.num_classes == K and m.labels == tuple(f"c{i}" for i in range(K))
    assert m.preprocessing.mean == (0.5, 0.4, 0.3) and m.preprocessing.std == (0.2, 0.2, 0.25)
    assert m.weights_sha256 == api._weights_hash(exported["model"])
    assert json.loads(meta[METADATA_KEY])["source"] == "TinyNet"
    assert [i.name for i in proto.graph.input] == ["input", "class_idx"]


@pytest.mark.parametrize("bad", [[K], [-2], [K, K, K], [0, K, 1], [-2, -1, 0], [100]], ids=str)
def test_out_of_range_class_idx_fails_at_run_time(exported, bad) -> None:
    x = inputs((3, 3, 32, 32), seed=5)
    with pytest.raises(Exception, match="class_idx") as info:
        run(exported["sess"], x, bad)
    assert f"[0, {K})" in str(info.value)


def test_class_idx_of_wrong_length_fails_at_run_time(exported) -> None:
    with pytest.raises(Exception, match="class_idx"):
        run(exported["sess"], inputs((3, 3, 32, 32), seed=5), [0, 1])


def test_class_idx_omitted_is_top1(exported) -> None:
    x = diverse_inputs(exported["model"], (4, 3, 32, 32), seed=6)
    got = run(exported["sess"], x)
    ref = eager_cam(exported["model"], x, np.array([-1]), ["layer1", "layer2"])
    assert len(set(ref["class_idx_used"].tolist())) > 1  # the images differ in their top class
    assert_matches(got, ref)


@pytest.mark.parametrize("c", [0, K - 1])
def test_class_idx_of_length_one_broadcasts(exported, c) -> None:
    x = inputs((4, 3, 32, 32), seed=7)
    got = run(exported["sess"], x, [c])
    assert got["class_idx_used"].tolist() == [c] * 4
    assert_matches(got, eager_cam(exported["model"], x, np.array([c]), ["layer1", "layer2"]))
    # and it differs from asking for another class
    other = run(exported["sess"], x, [(c + 1) % K])
    assert not np.allclose(other["gradient.layer2"], got["gradient.layer2"])


def test_tuple_output_with_output_index(tmp_path) -> None:
    model = make(TupleNet, seed=3)
    path = tmp_path / "tuple.onnx"
    camrt.export(model, layers=["layer2"], path=path, input_shape=SHAPE, output_index=1)
    x = inputs((3, 3, 32, 32), seed=8)
    cls = np.array([-1, 2, 4])
    assert_matches(run(open_session(path), x, cls), eager_cam(model, x, cls, ["layer2"], output_index=1))


# --- correctness of camrt's backward rules --------------------------------------------------------

POOL_LAYERS = ["conv_a", "avg1", "conv_b", "conv_c", "conv_d"]
CONV_LAYERS = ["c1", "c2", "c3", "c4"]


@pytest.fixture(scope="module")
def pool_export(tmp_path_factory):
    model = make(PoolNet, seed=11)
    path = tmp_path_factory.mktemp("pool") / "pool.onnx"
    camrt.export(model, layers=POOL_LAYERS, path=path, input_shape=PoolNet.SHAPE)
    return model, open_session(path)


@pytest.fixture(scope="module")
def conv_export(tmp_path_factory):
    model = make(ConvNet, seed=12)
    path = tmp_path_factory.mktemp("conv") / "conv.onnx"
    camrt.export(model, layers=CONV_LAYERS, path=path, input_shape=ConvNet.SHAPE)
    return model, open_session(path)


def _classes(n: int, k: int, mode: str) -> np.ndarray:
    if mode == "top1":
        return np.full(n, -1)
    if mode == "explicit":
        return np.arange(n) * 3 % k
    return np.where(np.arange(n) % 2 == 0, -1, (np.arange(n) + 1) % k)  # mixed


@pytest.mark.parametrize("mode", ["top1", "explicit", "mixed"])
@pytest.mark.parametrize("n", [1, 3, 8])
def test_pooling_rules_match_eager(pool_export, n, mode) -> None:
    model, sess = pool_export
    x = inputs((n, *PoolNet.SHAPE[1:]), seed=100 + n)
    cls = _classes(n, 6, mode)
    assert_matches(run(sess, x, cls), eager_cam(model, x, cls, POOL_LAYERS))


@pytest.mark.parametrize("mode", ["top1", "explicit", "mixed"])
@pytest.mark.parametrize("n", [1, 3, 8])
def test_convolution_rules_match_eager(conv_export, n, mode) -> None:
    model, sess = conv_export
    x = inputs((n, *ConvNet.SHAPE[1:]), seed=200 + n)
    cls = _classes(n, 7, mode)
    assert_matches(run(sess, x, cls), eager_cam(model, x, cls, CONV_LAYERS))


def test_unused_input_column_has_zero_gradient(conv_export) -> None:
    """c3 reads no window over the last column of c2's output: its gradient there is exactly 0,
    and the rest is not (the transposed convolution is padded back to the input size)."""
    model, sess = conv_export
    g = run(sess, inputs((2, 3, 31, 31), seed=9), [-1])["gradient.c2"]
    assert g.shape == (2, 6, 14, 14)
    assert np.all(g[..., 13] == 0) and np.all(np.abs(g[..., :13]).sum(axis=(0, 1, 2)) > 0)
