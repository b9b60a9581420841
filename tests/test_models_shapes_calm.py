"""models/shapes_calm.py (CALM on the shapes benchmark) through `camrt export --map-output` and the
method `model-map`, and the map-output contract's errors.

Margins fixed before CALM's heads were trained or any of these numbers seen (committed with this
file): held-out accuracy at least 0.85 (the shapes CNN's floor); on 60 held-out images (seed 4),
explaining the true class, CALM's own map hits the object in the pointing game (15 px) at least
0.30 more often than a centred Gaussian prior. The served map equals the model's p(y = c, z | x)
in eager PyTorch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import camrt
from camrt.engine import Engine
from camrt.errors import InputError
from camrt.manifest import MODEL_MAP
from models.shapes import CLASSES, MEAN, SIZE, STD, generate, preprocess
from models.shapes_calm import LAYER, WEIGHTS, load_model
from tests.test_models_shapes import pointing_hits
from tests.test_models_shapes_detector import centre_prior_hits

HELD_OUT_SEED = 4
ACCURACY_FLOOR = 0.85
POINTING_MARGIN = 0.30

trained = pytest.mark.skipif(not WEIGHTS.is_file(), reason="models/shapes_calm.pt not trained")


@pytest.fixture(scope="module")
def calm(tmp_path_factory):
    model = load_model()
    path = tmp_path_factory.mktemp("calm") / "calm.cam.onnx"
    manifest = camrt.export(model, layers=[LAYER], path=path, input_shape=(1, 3, SIZE, SIZE), mean=MEAN, std=STD,
                            labels=list(CLASSES), output_index="logits", map_output="cam")
    assert manifest.model_map
    return model, path


@trained
def test_model_map_serves_calms_joint_probability(calm) -> None:
    model, path = calm
    images, labels, _, masks = generate(60, HELD_OUT_SEED)
    x = preprocess(images)
    engine = Engine(path, device="cpu")
    r = engine.explain(x, "model-map", class_idx=labels)
    with torch.no_grad():
        out = model(torch.from_numpy(x))
    expected = out["cam"].numpy()[np.arange(len(x)), labels]
    np.testing.assert_allclose(r.low_res, expected, rtol=1e-4, atol=1e-6 * expected.max())
    accuracy = float((out["logits"].argmax(1).numpy() == labels).mean())
    assert accuracy >= ACCURACY_FLOOR, accuracy
    ours = pointing_hits(r.saliency, masks).mean()
    centre = centre_prior_hits(masks)
    assert ours >= centre + POINTING_MARGIN, (ours, centre)
    p = engine.forward(x[:2], class_idx=labels[:2])  # the full graph's pass serves it too
    assert MODEL_MAP in p.outputs
    np.testing.assert_allclose(engine.explain_pass(p, "model-map").low_res, r.low_res[:2], rtol=1e-5, atol=1e-7)


class Attending(nn.Module):
    """A tiny model returning (logits, a class-agnostic N×h×w map)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = torch.relu(self.conv(x))
        return self.fc(f.mean((2, 3))), f.mean(1)


def test_a_class_agnostic_map_and_the_errors(tmp_path) -> None:
    torch.manual_seed(0)
    model = Attending().eval()
    path = tmp_path / "att.cam.onnx"
    camrt.export(model, layers=["conv"], path=path, input_shape=(1, 3, 8, 8), output_index=0, map_output=1)
    x = np.random.default_rng(0).normal(size=(2, 3, 8, 8)).astype(np.float32)
    r = Engine(path, device="cpu").explain(x, "model-map")
    with torch.no_grad():
        np.testing.assert_allclose(r.low_res, model(torch.from_numpy(x))[1].numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(InputError, match="--map-output needs N×K×h×w"):
        camrt.export(model, layers=["conv"], path=tmp_path / "x.onnx", input_shape=(1, 3, 8, 8), output_index=0,
                     map_output=0)
    plain = tmp_path / "plain.cam.onnx"
    camrt.export(model, layers=["conv"], path=plain, input_shape=(1, 3, 8, 8), output_index=0)
    with pytest.raises(InputError, match="has none; export a model that returns its map"):
        Engine(plain, device="cpu").explain(x, "model-map")
