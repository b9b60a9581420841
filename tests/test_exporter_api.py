"""The Python entry point as the issue writes it: camrt.export(model, example_input, layers=[...], path=...)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

import camrt
from camrt.errors import InputError
from tests.oracle import assert_close, eager_cam_outputs
from tests.tiny import TinyNet, make


def test_export_with_an_example_tensor(tmp_path) -> None:
    model = make(TinyNet)
    example = torch.randn(2, 3, 32, 32)
    manifest = camrt.export(model, example, layers=["layer1"], path=tmp_path / "m.onnx")
    assert manifest.input_shape == (2, 3, 32, 32)
    x = np.random.default_rng(5).normal(size=(3, 3, 32, 32)).astype(np.float32)  # not the example
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"input": x}), strict=True))
    ref = eager_cam_outputs(model, x, np.array([-1]), ["layer1"])
    assert_close("gradient", got["gradient.layer1"], ref["gradient.layer1"])


def test_example_and_shape_must_agree(tmp_path) -> None:
    with pytest.raises(InputError, match="disagrees"):
        camrt.export(make(TinyNet), torch.randn(1, 3, 32, 32), layers=["layer1"], path=tmp_path / "m.onnx",
                     input_shape=(1, 3, 64, 64))
    with pytest.raises(InputError, match="path="):
        camrt.export(make(TinyNet), torch.randn(1, 3, 32, 32), layers=["layer1"])
    assert list(tmp_path.iterdir()) == []
