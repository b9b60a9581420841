"""The exporter on real architectures, checked against eager autograd on fresh inputs.

Each model is exported once (example batch 1, seed 0); the checks then use other inputs:
batch sizes 1, 3 and 8, top-1 and explicit (different) classes. The oracle is eager autograd in
float64 and the yardstick float32 eager PyTorch. Criterion (measured and justified in
camrt/exporter/verify.py): logits and activations within 1e-4 of the largest reference value;
gradients off by more than 1e-4 in at most 0.5% of the elements plus twice float32 PyTorch's own
share, relative L2 error at most 1e-3 plus twice PyTorch's (ReLU and max-pool ties flipped by
rounding, which PyTorch suffers as much, and nothing more).
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torchvision

import camrt
from tests.oracle import assert_close, assert_gradient_close, eager_cam_outputs, eager_float32_gradients

ZOO = {
    # layer3.0's output also feeds the identity skip of layer3.1, past that block's convolutions.
    "resnet18": ["layer2", "layer3.0", "layer3", "layer4"],
    "resnet50": ["layer2", "layer3", "layer4"],
    "vgg16_bn": ["features.41"],  # a BatchNorm followed by ReLU(inplace=True)
    "mobilenet_v2": ["features.18"],
    "mobilenet_v3_large": ["features.16"],
    "efficientnet_b0": ["features.8"],
    "densenet121": ["features.denseblock3"],  # the backward crosses avg-pool transitions
    "convnext_tiny": ["features.7"],
    "regnet_y_400mf": ["trunk_output"],
}


def check_against_eager(model: torch.nn.Module, path: str, layers: list[str], x: np.ndarray, cls: np.ndarray,
                        feed_class: bool = True) -> dict:
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    feed = {"input": x, "class_idx": cls} if feed_class else {"input": x}
    got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feed), strict=True))
    ref = eager_cam_outputs(model, x, cls, layers)
    yardstick = eager_float32_gradients(model, x, cls, layers)
    np.testing.assert_array_equal(got["class_idx_used"], ref["class_idx_used"])
    assert_close("logits", got["logits"], ref["logits"])
    for layer in layers:
        assert_close(f"activation.{layer}", got[f"activation.{layer}"], ref[f"activation.{layer}"])
        g, r = got[f"gradient.{layer}"], ref[f"gradient.{layer}"]
        assert_gradient_close(f"gradient.{layer}", g, r, yardstick[f"gradient.{layer}"])
        assert np.abs(r).max() > 0, "a zero reference gradient proves nothing"
    return got


def fresh_inputs(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 3, 224, 224)).astype(np.float32)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_matches_eager_autograd(name: str, tmp_path) -> None:
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)().eval()
    path = str(tmp_path / f"{name}.cam.onnx")
    layers = ZOO[name]
    manifest = camrt.export(model, layers=layers, path=path)
    assert [la.name for la in manifest.layers] == layers
    k = manifest.num_classes
    check_against_eager(model, path, layers, fresh_inputs(1, 1), np.array([-1]))
    check_against_eager(model, path, layers, fresh_inputs(3, 2), np.array([-1, 3, k - 1]))
    got = check_against_eager(model, path, layers, fresh_inputs(8, 3), np.arange(8) * 97 % k)
    assert len(set(got["class_idx_used"].tolist())) == 8  # eight different classes in one run
    # class_idx omitted means the top-1 class of each image.
    check_against_eager(model, path, layers, fresh_inputs(3, 4), np.array([-1]), feed_class=False)


@pytest.mark.slow
def test_pretrained_efficientnet_lite0_on_real_photos(lite0) -> None:
    """The pretrained edge model on real photos with different predicted classes."""
    from skimage import data, transform

    from models.efficientnet_lite0 import LAYERS, imagenet_labels

    model, path = lite0
    layers = list(LAYERS)
    photos = [data.chelsea(), data.coffee(), data.astronaut()]
    x = np.stack([
        ((transform.resize(p, (224, 224), order=1, anti_aliasing=False) - 0.5) / 0.5).transpose(2, 0, 1)
        for p in photos
    ]).astype(np.float32)
    got = check_against_eager(model, path, layers, x, np.array([-1]))
    names = [imagenet_labels()[k] for k in got["class_idx_used"]]
    assert names[0] in {"tabby", "tiger cat", "Egyptian cat"}, names
    assert names[1] in {"espresso", "cup"}, names
    # An explicit class: the cat photo explained for "espresso".
    espresso = imagenet_labels().index("espresso")
    check_against_eager(model, path, layers, x[:1], np.array([espresso]))
