"""camrt.export on tiny models: errors say what is wrong and leave nothing behind; the run-time
class_idx contract; and exported gradients against eager autograd through camrt's own backward
rules (pooling with ceil_mode and padding, adaptive pooling, strided/dilated/grouped convolutions)."""

from __future__ import annotations

import json
import os

import numpy as np
import onnx
import pytest
import torch

import camrt
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

    monkeypatch.setattr(api.tempfile, "mkstemp", refuse)
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
    def half_save(proto, path, *args, **kwargs):
        with open(path, "wb") as f:
            f.write(proto.SerializeToString()[:100])
        raise ValueError("Message onnx.ModelProto exceeds maximum protobuf size of 2GB")

    monkeypatch.setattr(api.onnx, "save", half_save)
    with pytest.raises(ExportError, match="writing the ONNX file failed"):
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
