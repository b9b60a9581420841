"""models/shapes_lfi.py (LFI-CAM on the shapes benchmark) through `camrt export --map-output` and the
method `model-map`.

Margins fixed before LFI-CAM's branches were trained or any of these numbers seen (committed with
this file), the same as CALM's: held-out accuracy on `generate(500, 0)` at least 0.85 (the shapes
CNN's floor); on 60 held-out images (seed 4), explaining the true class, LFI-CAM's own attention
map hits the object in the pointing game (15 px) at least 0.30 more often than a centred Gaussian
prior. The served map equals the model's eager "cam" output within 1e-4 of each map's maximum, on
the held-out images and on fresh random inputs.

    python -m tests.test_models_shapes_lfi

prints the pointing rate and mean mask energy of LFI-CAM's map, of Grad-CAM at `backbone.block5`
of the same model and of the centre prior on those 60 images (the figures in models/README.md).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import camrt
from camrt.engine import Engine
from camrt.manifest import MODEL_MAP
from models.shapes import CLASSES, MEAN, SIZE, STD, generate, preprocess
from models.shapes_lfi import LAYER, WEIGHTS, load_model
from tests.test_models_shapes import energy, pointing_hits
from tests.test_models_shapes_detector import centre_prior_hits

HELD_OUT_SEED = 4
ACCURACY_FLOOR = 0.85
POINTING_MARGIN = 0.30
MAP_RTOL = 1e-4  # of each map's maximum

trained = pytest.mark.skipif(not WEIGHTS.is_file(), reason="models/shapes_lfi.pt not trained")


def export(path) -> torch.nn.Module:
    model = load_model()
    manifest = camrt.export(model, layers=[LAYER], path=path, input_shape=(1, 3, SIZE, SIZE), mean=MEAN, std=STD,
                            labels=list(CLASSES), output_index="logits", map_output="cam")
    assert manifest.model_map
    return model


@pytest.fixture(scope="module")
def lfi(tmp_path_factory):
    path = tmp_path_factory.mktemp("lfi") / "lfi.cam.onnx"
    return export(path), path


def assert_same_maps(served: np.ndarray, eager: np.ndarray) -> None:
    assert served.shape == eager.shape, (served.shape, eager.shape)
    scale = eager.reshape(len(eager), -1).max(1)
    error = np.abs(served - eager).reshape(len(eager), -1).max(1)
    assert (error <= MAP_RTOL * scale).all(), (error / scale).max()


@trained
def test_held_out_accuracy() -> None:
    images, labels, _, _ = generate(500, 0)
    model = load_model()
    with torch.no_grad():
        logits = torch.cat([model(torch.from_numpy(preprocess(images[i:i + 100])))["logits"]
                            for i in range(0, len(images), 100)])
    accuracy = float((logits.argmax(1).numpy() == labels).mean())
    assert accuracy >= ACCURACY_FLOOR, accuracy


@trained
def test_model_map_serves_the_attention_map_and_points_at_the_object(lfi) -> None:
    model, path = lfi
    images, labels, _, masks = generate(60, HELD_OUT_SEED)
    x = preprocess(images)
    engine = Engine(path, device="cpu")
    r = engine.explain(x, "model-map", class_idx=labels)
    with torch.no_grad():
        eager = model(torch.from_numpy(x))["cam"].numpy()
    assert_same_maps(r.low_res, eager)
    ours = pointing_hits(r.saliency, masks).mean()
    centre = centre_prior_hits(masks)
    assert ours >= centre + POINTING_MARGIN, (ours, centre)
    p = engine.forward(x[:2], class_idx=labels[:2])  # the full graph's pass serves it too
    assert MODEL_MAP in p.outputs
    np.testing.assert_allclose(engine.explain_pass(p, "model-map").low_res, r.low_res[:2], rtol=1e-5, atol=1e-7)


@trained
def test_model_map_on_fresh_inputs(lfi) -> None:
    model, path = lfi
    x = np.random.default_rng(7).normal(size=(4, 3, SIZE, SIZE)).astype(np.float32)
    r = Engine(path, device="cpu").explain(x, "model-map")
    with torch.no_grad():
        eager = model(torch.from_numpy(x))["cam"].numpy()
    assert_same_maps(r.low_res, eager)


def localisation(path) -> dict[str, dict[str, float]]:
    """Pointing rate and mean energy inside the mask on the 60 held-out images, explaining the true
    class: LFI-CAM's own map, Grad-CAM at `LAYER` of the same model, the centred Gaussian prior."""
    images, labels, _, masks = generate(60, HELD_OUT_SEED)
    engine = Engine(path, device="cpu")
    out = {}
    for method in ("model-map", "gradcam"):
        s = engine.explain(preprocess(images), method, class_idx=labels).saliency
        e = energy(s, masks)
        out[method] = {"pointing": round(float(pointing_hits(s, masks).mean()), 3),
                       "energy": round(float(np.nanmean(e)), 3), "flat_maps": int(np.isnan(e).sum())}
    yy, xx = np.mgrid[:SIZE, :SIZE]
    prior = np.exp(-((yy - SIZE / 2) ** 2 + (xx - SIZE / 2) ** 2) / (2 * (SIZE / 4) ** 2))
    out["centre"] = {"pointing": round(centre_prior_hits(masks), 3),
                     "energy": round(float(energy(np.repeat(prior[None], len(masks), axis=0), masks).mean()), 3)}
    return out


if __name__ == "__main__":
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        export(Path(d) / "lfi.cam.onnx")
        print(json.dumps(localisation(Path(d) / "lfi.cam.onnx")))
