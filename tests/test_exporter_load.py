"""camrt.exporter.load.load_model and camrt.export on model files: each accepted format loads the
same weights, and every refused file gets a message that says what to do."""

from __future__ import annotations

import copy
import io
import os
import sys

import numpy as np
import onnx
import pytest
import torch

import camrt
from camrt.engine import open_session
from camrt.errors import InputError, ModelLoadError
from camrt.exporter.load import build_arch, load_model
from tests.tiny import SHAPE, TinyNet, assert_matches, eager_cam, inputs, make

ARCH = "tests.tiny:TinyNet"


@pytest.fixture(scope="module")
def model() -> TinyNet:
    return make(TinyNet, seed=21)


def same_outputs(a: torch.nn.Module, b: torch.nn.Module) -> None:
    x = torch.from_numpy(inputs((3, 3, 32, 32), seed=1))
    with torch.no_grad():
        ya, yb = a.eval()(x), b.eval()(x)
    assert ya.abs().max() > 0
    torch.testing.assert_close(yb, ya, rtol=0, atol=0)


def save_pt2(model: torch.nn.Module, path, dynamic: bool = True):
    x = torch.from_numpy(inputs((2, 3, 32, 32), seed=0))
    shapes = ({0: torch.export.Dim("batch")},) if dynamic else None
    torch.export.save(torch.export.export(model, (x,), dynamic_shapes=shapes), str(path))
    return path


# --- torch.export programs -----------------------------------------------------------------------


def test_pt2_export_matches_eager_autograd(model, tmp_path) -> None:
    src = save_pt2(model, tmp_path / "tiny.pt2")
    loaded = load_model(src)
    # unflatten restores the module hierarchy: the source's names, calls and shapes
    ref = {(r.name, r.calls, r.shape) for r in camrt.list_layers(model, SHAPE)}
    assert {(r.name, r.calls, r.shape) for r in camrt.list_layers(loaded, SHAPE)} == ref
    same_outputs(model, loaded)

    out = tmp_path / "tiny.cam.onnx"
    manifest = camrt.export(src, layers=["layer1", "layer2.0"], path=out, input_shape=SHAPE)
    assert manifest.source == str(src)
    assert [la.name for la in manifest.layers] == ["layer1", "layer2.0"]
    x = inputs((3, 3, 32, 32), seed=31)  # fresh input, another batch size than the example
    cls = np.array([-1, 0, 4])
    sess = open_session(out)
    got = dict(zip([o.name for o in sess.get_outputs()],
                   sess.run(None, {"input": x, "class_idx": cls}), strict=True))
    assert_matches(got, eager_cam(model, x, cls, ["layer1", "layer2.0"]))


def test_pt2_with_fixed_batch_is_refused(model, tmp_path) -> None:
    src = save_pt2(model, tmp_path / "fixed.pt2", dynamic=False)
    with pytest.raises(ModelLoadError, match=r"fixed batch size of 2.*dynamic_shapes"):
        load_model(src)


def test_pt2_with_arch_is_refused(model, tmp_path) -> None:
    src = save_pt2(model, tmp_path / "tiny.pt2")
    with pytest.raises(ModelLoadError, match="drop --arch"):
        load_model(src, arch=ARCH)


def test_pt2_saved_in_training_mode_is_refused(model, tmp_path) -> None:
    """BatchNorm on batch statistics mixes the images of a batch; torch.export keeps the mode."""
    src = save_pt2(copy.deepcopy(model).train(), tmp_path / "train.pt2")
    with pytest.raises(ModelLoadError, match=r"exported from a model in training mode: 'layer1.1' \(batch_norm\).*"
                                             r"Call model.eval\(\) before torch.export.export"):
        load_model(src)
    with pytest.raises(ModelLoadError, match="training mode"):
        camrt.export(src, layers=["layer1"], path=tmp_path / "m.onnx", input_shape=SHAPE)
    assert not (tmp_path / "m.onnx").exists()


def test_pt2_with_active_dropout_is_refused(tmp_path) -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                              torch.nn.Dropout(0.5), torch.nn.Linear(4, 3))
    src = save_pt2(net.train(), tmp_path / "drop.pt2")
    with pytest.raises(ModelLoadError, match=r"training mode: '3' \(dropout\)"):
        load_model(src)
    assert load_model(save_pt2(net.eval(), tmp_path / "eval.pt2")) is not None  # the same net in eval mode loads


@pytest.mark.parametrize(("shape", "message"), [
    ((1, 4, 32, 32), r"has 4 channels but the model takes 3 \(the program was exported for N×3×32×32\); "
                     r"pass --input-shape N,3,32,32"),
    ((1, 3, 64, 32), r"has height 64 but the program was exported for N×3×32×32 \(torch.export fixed its height\)"),
], ids=["channels", "height"])
def test_pt2_input_shape_other_than_the_program(model, tmp_path, shape, message) -> None:
    src = save_pt2(model, tmp_path / "tiny.pt2")
    with pytest.raises(InputError, match=message):
        camrt.export(src, layers=["layer1"], path=tmp_path / "m.onnx", input_shape=shape,
                     mean=(0.5,) * shape[1], std=(0.5,) * shape[1])
    with pytest.raises(InputError, match=message):
        camrt.list_layers(src, shape)
    assert not (tmp_path / "m.onnx").exists()


def test_corrupt_pt2(tmp_path) -> None:
    src = tmp_path / "bad.pt2"
    src.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ModelLoadError, match="not a readable torch.export program"):
        load_model(src)


# --- state dicts --------------------------------------------------------------------------------


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "model"])
def test_state_dict_with_arch(model, tmp_path, wrap) -> None:
    sd = model.state_dict()
    obj = sd if wrap == "plain" else {wrap: sd, "epoch": 3}
    torch.save(obj, tmp_path / "w.pth")
    loaded = load_model(tmp_path / "w.pth", arch=ARCH)
    assert isinstance(loaded, TinyNet)
    for k, v in sd.items():
        assert torch.equal(loaded.state_dict()[k], v), k
    same_outputs(model, loaded)


def test_state_dict_without_arch(model, tmp_path) -> None:
    torch.save(model.state_dict(), tmp_path / "w.pth")
    with pytest.raises(ModelLoadError, match=r"state dict.*--arch MODULE:CALLABLE"):
        load_model(tmp_path / "w.pth")


def test_state_dict_that_does_not_fit_the_arch(model, tmp_path) -> None:
    sd = model.state_dict()
    torch.save(sd, tmp_path / "w.pth")
    with pytest.raises(ModelLoadError, match=r"do not fit --arch tests.tiny:tiny_net_7.*size mismatch"):
        load_model(tmp_path / "w.pth", arch="tests.tiny:tiny_net_7")
    with pytest.raises(ModelLoadError, match=rf"fit --arch torch.nn:Identity: 0 missing keys.*{len(sd)} unexpected"):
        load_model(tmp_path / "w.pth", arch="torch.nn:Identity")
    del sd["fc.bias"]
    torch.save(sd, tmp_path / "partial.pth")
    with pytest.raises(ModelLoadError, match=r"1 missing keys \(e.g. \['fc.bias'\]\), 0 unexpected"):
        load_model(tmp_path / "partial.pth", arch=ARCH)


def test_arch_from_a_python_file(model, tmp_path) -> None:
    (tmp_path / "my_arch.py").write_text("from tests.tiny import TinyNet\n\ndef build():\n    return TinyNet()\n")
    torch.save(model.state_dict(), tmp_path / "w.pth")
    same_outputs(model, load_model(tmp_path / "w.pth", arch=f"{tmp_path / 'my_arch.py'}:build"))


@pytest.mark.parametrize(("spec", "message"), [
    ("tests.tiny", "is not MODULE:CALLABLE"),
    (":TinyNet", "is not MODULE:CALLABLE"),
    ("tests.tiny:", "is not MODULE:CALLABLE"),
    ("camrt_no_such_module_xyz:build", "cannot import module 'camrt_no_such_module_xyz'"),
    ("tests.tiny:NoSuchNet", "has no attribute 'NoSuchNet'"),
    ("tests.tiny:SHAPE", "is not callable"),
    ("tests.tiny:broken_arch", r"calling 'tests.tiny:broken_arch\(\)' failed: boom"),
    ("tests.tiny:not_a_module", "returned a int, not a torch.nn.Module"),
    ("/no/such/file.py:build", "does not exist"),
])
def test_bad_arch_spec(spec, message) -> None:
    with pytest.raises(ModelLoadError, match=message):
        build_arch(spec)


# --- pickles, TorchScript and foreign files ------------------------------------------------------


def test_pickled_module_needs_trust(model, tmp_path) -> None:
    torch.save(model, tmp_path / "whole.pt")
    with pytest.raises(ModelLoadError, match=r"pickled object.*--trust-pickle"):
        load_model(tmp_path / "whole.pt")
    loaded = load_model(tmp_path / "whole.pt", trust_pickle=True)
    assert isinstance(loaded, TinyNet) and loaded is not model
    same_outputs(model, loaded)
    with pytest.raises(ModelLoadError, match="drop --arch"):
        load_model(tmp_path / "whole.pt", arch=ARCH, trust_pickle=True)


def test_pickle_whose_class_is_gone(tmp_path, monkeypatch) -> None:
    (tmp_path / "ghost_arch.py").write_text("import torch\n\nclass Ghost(torch.nn.Linear):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import ghost_arch

    torch.save(ghost_arch.Ghost(2, 2), tmp_path / "ghost.pt")
    monkeypatch.delitem(sys.modules, "ghost_arch")
    (tmp_path / "ghost_arch.py").unlink()
    with pytest.raises(ModelLoadError, match=r"unpickling '.*ghost.pt' failed: .*ghost_arch"):
        load_model(tmp_path / "ghost.pt", trust_pickle=True)


def test_torchscript_is_refused(model, tmp_path) -> None:
    torch.jit.script(model).save(str(tmp_path / "scripted.pt"))
    with pytest.raises(ModelLoadError, match="TorchScript") as info:
        load_model(tmp_path / "scripted.pt", trust_pickle=True)
    for fmt in (".pt2", "--arch", "--trust-pickle"):
        assert fmt in str(info.value)


def test_missing_file(tmp_path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(tmp_path / "nope.pth")


def test_directory(tmp_path) -> None:
    with pytest.raises(ModelLoadError, match=r"is a directory; give the model file"):
        load_model(tmp_path)


def _onnx_bytes() -> bytes:
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    return onnx.helper.make_model(graph).SerializeToString()


def _npy_bytes() -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.arange(10.0))
    return buf.getvalue()


@pytest.mark.parametrize("trust", [False, True], ids=["untrusted", "trusted"])
@pytest.mark.parametrize("content", [b"hello, I am a text file\n", bytes(range(256)) * 8, b"", _onnx_bytes(),
                                     _npy_bytes()], ids=["text", "bytes", "empty", "onnx", "npy"])
def test_not_a_pytorch_file(tmp_path, content, trust) -> None:
    """Foreign files are named as such; in particular they are not called pickles needing trust."""
    (tmp_path / "m.pth").write_bytes(content)
    with pytest.raises(ModelLoadError, match=r"not a PyTorch model file.*expected a torch.export program"):
        load_model(tmp_path / "m.pth", trust_pickle=trust)


@pytest.mark.parametrize("obj", [{"epoch": 3, "lr": 0.1}, [torch.zeros(2)], {}], ids=["dict", "list", "empty"])
def test_file_without_weights(tmp_path, obj) -> None:
    torch.save(obj, tmp_path / "m.pth")
    with pytest.raises(ModelLoadError, match=f"holds a {type(obj).__name__}, not a model or a state dict"):
        load_model(tmp_path / "m.pth", arch=ARCH)


def test_unreadable_file(model, tmp_path) -> None:
    torch.save(model.state_dict(), tmp_path / "w.pth")
    (tmp_path / "w.pth").chmod(0)
    try:
        if os.access(tmp_path / "w.pth", os.R_OK):
            pytest.skip("permissions do not stop this user (root)")
        with pytest.raises(ModelLoadError, match="not readable"):
            load_model(tmp_path / "w.pth", arch=ARCH)
    finally:
        (tmp_path / "w.pth").chmod(0o644)


def test_export_from_a_missing_file_writes_nothing(tmp_path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        camrt.export(tmp_path / "nope.pth", layers=["layer1"], path=tmp_path / "m.onnx", input_shape=SHAPE, arch=ARCH)
    assert list(tmp_path.iterdir()) == []
