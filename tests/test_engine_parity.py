"""End-to-end parity: torchvision resnet18 exported once with camrt, explained by `Engine` through
ONNX Runtime, against the reference implementations run eagerly in PyTorch (pytorch-grad-cam 1.5.7
and TorchCAM 0.5.0) on the same 224×224 input and class.

This closes the loop that the unit tests leave open: tests/test_methods_*.py compare camrt's numpy
methods with the references on eager tensors, tests/test_exporter_*.py compare the graph's outputs
with eager autograd; here the deployed path (ONNX graph → engine → method → upsample → normalise)
is compared with what a PyTorch user of the references would get.

Where camrt follows the paper rather than a reference (see the docstrings in camrt/methods/):
- Grad-CAM++: no epsilon in the α denominator (pytorch-grad-cam adds 1e-6). The classifier is scaled
  by 1e3 (as in tests/references.py) so that |G| ~ 0.4 and the epsilon is negligible.
  TorchCAM 0.5.0's GradCAMpp never applies the division at all, so it is not compared here
  (tests/test_methods_gradient.py pins that difference down).
- XGrad-CAM: a channel whose activations sum to 0 gets weight 0; the references add 1e-7/1e-8 to the sum.
- CAM: camrt rectifies the map (TorchCAM's formula does, its code does not): TorchCAM's raw map is
  compared after a ReLU.
- pytorch-grad-cam min-max scales the low-resolution map, then resizes it with cv2; camrt upsamples
  (torch's bilinear, half-pixel) and then scales. Bilinear resizing is affine, so the two differ
  only where the upsampled extrema fall between pixels (measured: ~5e-6 here; 3.5e-4 for Grad-CAM++,
  its epsilon): hence a correlation criterion plus a bound on the largest difference, not equality.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchcam.methods as tc
from pytorch_grad_cam import GradCAM, GradCAMElementWise, GradCAMPlusPlus, HiResCAM, LayerCAM, XGradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

import camrt
from camrt.engine import Engine
from camrt.methods import normalize, relu
from tests import references as support

SIZE = 224
CLASS = 281  # fixed class, explained explicitly (with random weights the top-1 is arbitrary)
LAYER = "layer4"


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    # torch.manual_seed(0) resnet18 in eval mode with the head scaled by 1e3: the same model as
    # tests/references.py (shared, cached; export leaves it as it was).
    return support.model()


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    gen = torch.Generator().manual_seed(7)
    return torch.randn(1, 3, SIZE, SIZE, generator=gen).numpy()


@pytest.fixture(scope="module")
def engine(tmp_path_factory, model) -> Engine:
    path = tmp_path_factory.mktemp("parity") / "resnet18.cam.onnx"
    camrt.export(model, layers=[LAYER], path=path, input_shape=(1, 3, SIZE, SIZE))
    return Engine(path, device="cpu")


def grad_cam_reference(model: torch.nn.Module, image: np.ndarray, cam_class: type) -> np.ndarray:
    """pytorch-grad-cam's output: (1, 224, 224), scaled to [0, 1] by the library."""
    with support.native_kernels(), cam_class(model=model, target_layers=[model.layer4]) as extractor:
        return extractor(input_tensor=torch.from_numpy(image), targets=[ClassifierOutputTarget(CLASS)])


def torchcam_reference(model: torch.nn.Module, image: np.ndarray, cam_class: type, normalized: bool = True,
                       **options) -> np.ndarray:
    """TorchCAM's low-resolution map, (1, 7, 7) (min-max scaled by the library when `normalized`)."""
    with support.native_kernels(), cam_class(model, LAYER, **options) as extractor:
        scores = model(torch.from_numpy(image))
        (maps,) = extractor(class_idx=CLASS, scores=scores, normalized=normalized)
    return maps.detach().numpy()


@pytest.fixture(scope="module")
def results(engine, image):
    """`Engine.explain_pass` per method on one run of the graph (one ORT run of resnet18 is ~1 s here)."""
    p = engine.forward(image, class_idx=CLASS)
    cache: dict = {}

    def get(method: str):
        if method not in cache:
            cache[method] = engine.explain_pass(p, method)
        return cache[method]

    return get


PYTORCH_GRAD_CAM = {
    "gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "xgradcam": XGradCAM, "layercam": LayerCAM,
    "hirescam": HiResCAM, "gradcam-elementwise": GradCAMElementWise,
}


def test_engine_explains_the_fixed_class(results, model, image) -> None:
    r = results("gradcam")
    assert r.class_idx.tolist() == [CLASS]
    with torch.no_grad():
        logits = model(torch.from_numpy(image)).numpy()
    np.testing.assert_allclose(r.logits, logits, rtol=1e-4, atol=1e-4 * np.abs(logits).max())
    assert r.saliency.shape == (1, SIZE, SIZE) and r.low_res.shape == (1, 7, 7)


@pytest.mark.parametrize("method", list(PYTORCH_GRAD_CAM))
def test_matches_pytorch_grad_cam(method, results, model, image) -> None:
    expected = grad_cam_reference(model, image, PYTORCH_GRAD_CAM[method])
    got = results(method).saliency
    assert expected.shape == got.shape == (1, SIZE, SIZE)
    assert got.std() > 0.1  # a constant map would make the comparison vacuous
    assert support.pearson(expected, got) >= 0.999
    assert np.abs(expected - got).max() < 2e-3


@pytest.mark.parametrize(("method", "reference"), [
    ("gradcam", tc.GradCAM), ("xgradcam", tc.XGradCAM), ("layercam", tc.LayerCAM),
])
def test_low_res_matches_torchcam(method, reference, results, model, image) -> None:
    expected = torchcam_reference(model, image, reference)
    np.testing.assert_allclose(normalize(results(method).low_res), expected, atol=1e-4)


def test_cam_low_res_matches_torchcam(results, model, image) -> None:
    raw = torchcam_reference(model, image, tc.CAM, normalized=False, fc_layer="fc")  # not normalised, not rectified
    assert raw.min() < 0 < raw.max()  # the ReLU matters for this input
    np.testing.assert_allclose(normalize(results("cam").low_res), normalize(relu(raw)), atol=1e-4)


def test_methods_differ_as_expected(results) -> None:
    # At layer4 of a ResNet (ReLU'd activations A >= 0, then GAP → linear) the gradient is constant over
    # each channel's map, so XGrad-CAM's and HiResCAM's maps are Grad-CAM's (up to scale), and
    # element-wise Grad-CAM's is LayerCAM's: the parity above cannot tell those apart (tests/test_engine.py
    # checks the dispatch on a layer with a varying gradient). Every other pair must differ.
    maps = {m: results(m).saliency for m in PYTORCH_GRAD_CAM}
    same = [{"gradcam", "xgradcam", "hirescam"}, {"layercam", "gradcam-elementwise"}]
    for a in maps:
        for b in maps:
            if a < b:
                diff = np.abs(maps[a] - maps[b]).max()
                if any({a, b} <= group for group in same):
                    assert diff < 1e-4, (a, b, diff)
                else:
                    assert diff > 0.05, (a, b, diff)
