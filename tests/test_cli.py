"""The `camrt` command: `layers` and `export` on a tiny state dict, and one-line errors (exit 2,
no traceback) for the mistakes users make."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

import camrt
from camrt.cli import main
from camrt.engine import open_session
from camrt.errors import ModelLoadError
from camrt.manifest import METADATA_KEY, Manifest
from tests.cli_checks import assert_one_line_error
from tests.tiny import TinyNet, assert_matches, eager_cam, inputs, make

ROOT = Path(__file__).resolve().parents[1]
ARCH = ["--arch", "tests.tiny:TinyNet", "--input-shape", "1,3,32,32"]


@pytest.fixture
def model() -> TinyNet:
    return make(TinyNet, seed=41)


@pytest.fixture
def weights(tmp_path, model) -> Path:
    path = tmp_path / "tiny.pth"
    torch.save(model.state_dict(), path)
    return path


def invoke(*args: str, traceback: bool = False):
    result = CliRunner().invoke(main, (["--traceback"] if traceback else []) + [str(a) for a in args])
    return result


def test_layers(weights) -> None:
    result = invoke("layers", weights, *ARCH)
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines()[1:]}
    assert result.stdout.splitlines()[0].split()[:4] == ["name", "type", "output", "shape"]
    assert list(rows) == ["conv1", "relu", "layer1", "layer1.0", "layer1.1", "layer2", "layer2.0", "layer2.1",
                          "pool", "fc"]
    assert rows["conv1"] == ["Conv2d", "1×4×32×32", "feature", "map"]
    assert rows["relu"][0] == "ReLU" and " ".join(rows["relu"][2:]) == "runs 2× (not a target)"
    assert rows["layer1"] == ["Sequential", "1×6×16×16", "feature", "map"]
    assert rows["pool"] == ["AdaptiveAvgPool2d", "1×8×1×1", "feature", "map"]
    assert rows["fc"] == ["Linear", "1×5"]


def test_layers_follows_input_shape(weights) -> None:
    result = invoke("layers", weights, "--arch", "tests.tiny:TinyNet", "--input-shape", "2,3,20,20")
    assert result.exit_code == 0, result.output
    assert "2×6×10×10" in next(line for line in result.stdout.splitlines() if line.startswith("layer1 "))


def test_export_happy_path(tmp_path, weights, model, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    # A byte-order mark, Windows line ends, spaces around a name and blank lines at the end are fine.
    (tmp_path / "labels.txt").write_bytes("\ufeffzero\r\none\r\n  two \r\nthree\r\nfour\r\n\r\n\n".encode())
    result = invoke("export", weights, *ARCH, "--layer", "layer1", "--layer", "layer2",
                    "--labels", "labels.txt", "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25")
    assert result.exit_code == 0, (result.output, result.exception)
    assert result.stdout.startswith("wrote tiny.cam.onnx: 5 classes; layers layer1 6×16×16, layer2 8×16×16")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.txt", "tiny.cam.onnx", "tiny.pth"]

    proto = onnx.load(tmp_path / "tiny.cam.onnx")
    manifest = Manifest.from_json({p.key: p.value for p in proto.metadata_props}[METADATA_KEY])
    assert manifest.labels == ("zero", "one", "two", "three", "four")
    assert manifest.preprocessing.mean == (0.5,) * 3 and manifest.preprocessing.std == (0.25,) * 3
    assert manifest.source == str(weights)

    sess = open_session(tmp_path / "tiny.cam.onnx")
    x = inputs((3, 3, 32, 32), seed=2)
    cls = np.array([-1, 4, 0])
    got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"input": x, "class_idx": cls}), strict=True))
    assert_matches(got, eager_cam(model, x, cls, ["layer1", "layer2"]))


def test_missing_model_file(tmp_path) -> None:
    assert_one_line_error(invoke("export", tmp_path / "nope.pth", *ARCH, "--layer", "layer1", "-o",
                                 tmp_path / "m.onnx"), "nope.pth' does not exist")
    assert_one_line_error(invoke("layers", tmp_path / "nope.pth", *ARCH), "does not exist")
    assert list(tmp_path.iterdir()) == []


def test_unknown_layer(tmp_path, weights) -> None:
    line = assert_one_line_error(invoke("export", weights, *ARCH, "--layer", "layer11", "-o", tmp_path / "m.onnx"),
                                 "no layer named 'layer11'", "did you mean")
    assert "layer1" in line.split("did you mean")[1]
    assert not (tmp_path / "m.onnx").exists()


def test_shared_layer(tmp_path, weights) -> None:
    assert_one_line_error(invoke("export", weights, *ARCH, "--layer", "relu", "-o", tmp_path / "m.onnx"),
                          "runs 2 times")


def test_state_dict_without_arch(tmp_path, weights) -> None:
    assert_one_line_error(invoke("export", weights, "--layer", "layer1", "-o", tmp_path / "m.onnx"), "--arch")


def test_pickle_without_trust(tmp_path, model) -> None:
    torch.save(model, tmp_path / "whole.pt")
    assert_one_line_error(invoke("layers", tmp_path / "whole.pt", "--input-shape", "1,3,32,32"), "--trust-pickle")
    result = invoke("layers", tmp_path / "whole.pt", "--input-shape", "1,3,32,32", "--trust-pickle")
    assert result.exit_code == 0 and "layer1" in result.stdout


@pytest.mark.parametrize("where", ["missing-dir", "is-a-dir"])
def test_unwritable_output(tmp_path, weights, where) -> None:
    out = tmp_path / "missing" / "m.onnx" if where == "missing-dir" else tmp_path
    before = sorted(tmp_path.iterdir())
    line = assert_one_line_error(invoke("export", weights, *ARCH, "--layer", "layer1", "-o", out), "cannot write")
    assert ("does not exist" if where == "missing-dir" else "is a directory") in line
    assert sorted(tmp_path.iterdir()) == before


def test_foreign_file(tmp_path) -> None:
    (tmp_path / "notes.txt").write_text("not a model\n")
    assert_one_line_error(invoke("layers", tmp_path / "notes.txt"), "not a PyTorch model file")


@pytest.mark.parametrize(("args", "fragment"), [
    (["--input-shape", "1,3,32"], "--input-shape: '1,3,32' needs 4 values"),
    (["--input-shape", "a,b,c,d"], "--input-shape: 'a,b,c,d' is not a comma-separated list of integers"),
    (["--mean", "a,b,c"], "--mean: 'a,b,c' is not a comma-separated list of numbers"),
    (["--labels", "/no/such/labels.txt"], "--labels: cannot read '/no/such/labels.txt'"),
], ids=["shape-count", "shape-text", "mean", "labels"])
def test_bad_option_values(tmp_path, weights, args, fragment) -> None:
    result = invoke("export", weights, "--arch", "tests.tiny:TinyNet", "--layer", "layer1",
                    "-o", tmp_path / "m.onnx", *args)
    assert_one_line_error(result, fragment)
    assert not (tmp_path / "m.onnx").exists()


def test_traceback_flag_shows_the_exception(tmp_path) -> None:
    result = invoke("layers", tmp_path / "nope.pth", traceback=True)
    assert isinstance(result.exception, ModelLoadError)


def test_error_in_a_real_process(tmp_path) -> None:
    """The installed entry point: exit status 2, one line on stderr, nothing on stdout."""
    proc = subprocess.run(
        [sys.executable, "-m", "camrt.cli", "export", str(tmp_path / "nope.pth"), "--layer", "layer1"],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.splitlines() == [f"camrt: error: model file '{tmp_path / 'nope.pth'}' does not exist"]


def test_export_input_gradient_flag(tmp_path, weights, model) -> None:
    out = tmp_path / "grad.cam.onnx"
    result = invoke("export", weights, *ARCH, "--layer", "layer2", "--input-gradient", "-o", out)
    assert result.exit_code == 0, (result.output, result.exception)
    proto = onnx.load(out)
    assert Manifest.from_json({p.key: p.value for p in proto.metadata_props}[METADATA_KEY]).input_gradient
    assert [o.name for o in proto.graph.output][-1] == "gradient.input"
    x = torch.from_numpy(inputs((2, 3, 32, 32), seed=5)).double().requires_grad_()
    got = open_session(out).run(["gradient.input"], {"input": x.detach().float().numpy(),
                                                     "class_idx": np.array([1, 3])})[0]
    logits = model.double()(x)
    expected, = torch.autograd.grad(logits[0, 1] + logits[1, 3], x)
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize(("content", "fragment"), [
    ("zéro\none\n".encode("latin-1"), "is not UTF-8 text (byte 0xe9 on line 1); save it as UTF-8"),
    (b"zero\none\n\ntwo\nthree\nfour\n", "line 3 is blank; give one class name per line"),
    (b"zero\n \t\none\n", "line 2 is blank"),
    (b"\n\n", "holds no class names"),
    (b"zero\none\ntwo\nthree\n", "4 labels given for 5 classes"),
    (b"\xef\xbb\xbfa\nb\nc\nd\ne\nf\n", "6 labels given for 5 classes"),
], ids=["latin-1", "blank-line", "whitespace-line", "empty", "too-few", "too-many"])
def test_bad_label_files(tmp_path, weights, content, fragment) -> None:
    (tmp_path / "labels.txt").write_bytes(content)
    result = invoke("export", weights, *ARCH, "--layer", "layer1", "--labels", tmp_path / "labels.txt",
                    "-o", tmp_path / "m.onnx")
    assert_one_line_error(result, fragment)
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("opset", ["7", "11", "13", "17", "30"])
def test_unsupported_opset(tmp_path, weights, opset) -> None:
    result = invoke("export", weights, *ARCH, "--layer", "layer1", "--opset", opset, "-o", tmp_path / "m.onnx")
    assert_one_line_error(result, f"opset {opset} is not supported: camrt writes opsets 18 to 26")
    assert not (tmp_path / "m.onnx").exists()


def test_opset_in_file_and_manifest(tmp_path, weights) -> None:
    result = invoke("export", weights, *ARCH, "--layer", "layer1", "--opset", "19", "-o", tmp_path / "m.onnx")
    assert result.exit_code == 0, result.output
    proto = onnx.load(tmp_path / "m.onnx")
    assert [o.version for o in proto.opset_import if o.domain == ""] == [19]
    assert Manifest.from_json({p.key: p.value for p in proto.metadata_props}[METADATA_KEY]).opset == 19


@pytest.mark.parametrize("command", ["export", "layers"])
def test_channel_count_other_than_the_model(tmp_path, weights, command) -> None:
    """With the default (3-channel) --mean and --std, the message is about the channels, not them."""
    extra = ["--layer", "layer1", "-o", tmp_path / "m.onnx"] if command == "export" else []
    result = invoke(command, weights, "--arch", "tests.tiny:TinyNet", "--input-shape", "1,4,32,32", *extra)
    assert_one_line_error(result, "has 4 channels but the model takes 3", "--input-shape N,3,H,W")
    assert not (tmp_path / "m.onnx").exists()


def test_pt2_in_training_mode(tmp_path, model) -> None:
    x = torch.from_numpy(inputs((2, 3, 32, 32), seed=0))
    program = torch.export.export(model.train(), (x,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, tmp_path / "train.pt2")
    result = invoke("export", tmp_path / "train.pt2", "--layer", "layer1", "--input-shape", "1,3,32,32",
                    "-o", tmp_path / "m.onnx")
    assert_one_line_error(result, "training mode: 'layer1.1' (batch_norm)", "model.eval()")
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX resource limits")
def test_disk_full_is_one_line_and_leaves_nothing(tmp_path, weights) -> None:
    """A file-size limit makes the kernel refuse the write with EFBIG, as a full disk does with
    ENOSPC: the export must say so, exit non-zero and leave neither a truncated file nor a
    temporary one (the weights are read, and nothing else is written)."""
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "m.onnx"
    limit = 4096  # TinyNet's graph is several times larger

    def limit_file_size() -> None:
        import resource
        import signal

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = subprocess.run(
        [sys.executable, "-m", "camrt.cli", "export", str(weights), *ARCH, "--layer", "layer1", "-o", str(out)],
        capture_output=True, text=True, cwd=ROOT, timeout=300, preexec_fn=limit_file_size,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [f"camrt: error: cannot write '{out}': File too large"]
    assert proc.stdout == ""
    assert list(out_dir.iterdir()) == []


def test_runtime_choices_match_the_engine():
    """The CLI lists the engine's devices without importing onnxruntime at start-up."""
    from camrt import cli
    from camrt.engine.session import DEVICES, PRECISIONS

    assert cli.DEVICES == DEVICES and set(cli.PRECISIONS) == {"f32", *PRECISIONS}


@pytest.mark.parametrize("command", ["explain", "eval", "video"])
def test_precision_without_openvino_is_one_line(tmp_path, command):
    """--precision bf16 on the CPU provider is refused by the engine, in one line, before any work."""
    model = tmp_path / "m.cam.onnx"
    camrt.export(make(TinyNet, seed=0), layers=["layer2"], path=model, input_shape=(1, 3, 32, 32))
    source = tmp_path / "in.png"
    source.write_bytes(b"not read")
    args = {"explain": ["explain", str(model), str(source), "-o", str(tmp_path / "o")],
            "eval": ["eval", str(model), str(source), "-o", str(tmp_path / "r")],
            "video": ["video", str(model), str(source), "-o", str(tmp_path / "v.mp4")]}[command]
    result = CliRunner().invoke(main, [*args, "--device", "cpu", "--precision", "bf16"])
    assert_one_line_error(result, "precision")
