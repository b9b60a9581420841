"""camrt.triton and `camrt triton`: the repository entry's model runs in ONNX Runtime with
class_idx as an ordinary batched input, keeps only the outputs asked for, and its config.pbtxt
parses with Triton's own schema (tritonclient's model_config_pb2) and says what the model has.
No Triton server runs here (none installs from PyPI): the layout and schema are what is checked."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import camrt
from camrt.errors import InputError
from camrt.triton import write_repository
from tests.tiny import TinyNet, inputs, make

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
text_format = pytest.importorskip("google.protobuf.text_format")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    path = tmp_path_factory.mktemp("triton") / "tiny.cam.onnx"
    camrt.export(make(TinyNet), layers=["layer1", "layer2"], path=path, input_shape=(1, 3, 12, 12),
                 maps=["gradcam"])
    return path


def parse(folder) -> object:
    config = model_config_pb2.ModelConfig()
    text_format.Parse((folder / "config.pbtxt").read_text(), config)
    return config


def test_repository_entry_runs_and_its_config_parses(exported, tmp_path) -> None:
    folder = write_repository(exported, tmp_path / "repo", tensorrt="fp16", max_batch_size=8, instances=2)
    assert folder == tmp_path / "repo" / "tiny"
    config = parse(folder)
    assert (config.name, config.backend, config.max_batch_size) == ("tiny", "onnxruntime", 8)
    inputs_ = {i.name: i for i in config.input}
    assert list(inputs_) == ["input", "class_idx"]
    assert list(inputs_["input"].dims) == [3, 12, 12] and inputs_["input"].data_type == model_config_pb2.TYPE_FP32
    assert list(inputs_["class_idx"].dims) == [1] and list(inputs_["class_idx"].reshape.shape) == []
    outputs = {o.name: list(o.dims) for o in config.output}
    assert outputs["logits"] == [5] and outputs["activation.layer2"] == [8, 6, 6]
    assert outputs["map.gradcam.layer2"] == [6, 6]
    assert config.HasField("dynamic_batching")
    group = config.instance_group[0]
    assert group.count == 2 and group.kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    accelerator = config.optimization.execution_accelerators.gpu_execution_accelerator[0]
    assert accelerator.name == "tensorrt" and accelerator.parameters["precision_mode"] == "FP16"
    model = onnx.load(str(folder / "1" / "model.onnx"))
    assert "class_idx" not in {t.name for t in model.graph.initializer}
    sess = ort.InferenceSession(str(folder / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["input", "class_idx"]  # no longer an overridable initializer
    x = inputs((3, 3, 12, 12), seed=1)
    got = dict(zip([o.name for o in sess.get_outputs()],
                   sess.run(None, {"input": x, "class_idx": np.array([-1, 2, 4])}), strict=True))
    ref = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    want = dict(zip([o.name for o in ref.get_outputs()], ref.run(None, {"input": x, "class_idx": np.array([-1, 2, 4])}),
                    strict=True))
    for k, v in want.items():
        np.testing.assert_array_equal(got[k], v)


def test_only_the_outputs_a_deployment_needs(exported, tmp_path) -> None:
    folder = write_repository(exported, tmp_path / "repo", name="maps", outputs=["logits", "map.gradcam.layer2"],
                              kind="cpu")
    config = parse(folder)
    assert [o.name for o in config.output] == ["logits", "map.gradcam.layer2"]
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    assert not config.HasField("optimization")
    model = onnx.load(str(folder / "1" / "model.onnx"))
    assert [o.name for o in model.graph.output] == ["logits", "map.gradcam.layer2"]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"outputs": ["logits", "nope"]}, "has no output(s) nope"),
    ({"max_batch_size": 0}, "max_batch_size must be an integer ≥ 1"),
    ({"kind": "tpu"}, "kind must be one of gpu, cpu"),
    ({"tensorrt": "int8"}, "precision must be one of fp16, fp32"),
    ({"name": "../x"}, "is not a folder name"),
])
def test_bad_options_are_errors(exported, tmp_path, kwargs, message) -> None:
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        write_repository(exported, tmp_path / "repo", **kwargs)


def test_cli(exported, tmp_path) -> None:
    from click.testing import CliRunner

    from camrt.cli import main
    from tests.cli_checks import assert_one_line_error

    r = CliRunner().invoke(main, ["triton", str(exported), "--repository", str(tmp_path / "r"), "--output", "logits"])
    assert r.exit_code == 0, r.output
    assert [o.name for o in parse(tmp_path / "r" / "tiny").output] == ["logits"]
    r = CliRunner().invoke(main, ["triton", str(tmp_path / "missing.onnx"), "--repository", str(tmp_path / "r")])
    assert_one_line_error(r, "does not exist")
