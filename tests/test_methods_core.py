"""camrt.methods._core (combine, normalize, upsample) and the METHODS table."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from camrt.errors import InputError
from camrt.methods import METHODS, Method, Options, combine, normalize, relu, upsample

ROOT = Path(__file__).resolve().parents[1]


def test_combine_hand_computed() -> None:
    weights = np.array([[1.0, -2.0]])
    activation = np.array([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 1.0], [1.0, 0.0]]]])
    np.testing.assert_array_equal(combine(weights, activation), [[[1.0, 0.0], [1.0, 4.0]]])


def test_combine_rejects_mismatched_shapes() -> None:
    with pytest.raises(InputError, match=r"\(N, C\)"):
        combine(np.ones((1, 3)), np.ones((1, 2, 4, 4)))


def test_relu() -> None:
    np.testing.assert_array_equal(relu(np.array([-1.5, 0.0, 2.0])), [0.0, 0.0, 2.0])


def test_normalize_hand_computed() -> None:
    maps = np.array([[[1.0, 3.0], [5.0, 9.0]], [[-2.0, 0.0], [2.0, 0.0]]])
    np.testing.assert_allclose(normalize(maps), [[[0.0, 0.25], [0.5, 1.0]], [[0.0, 0.5], [1.0, 0.5]]])


def test_normalize_constant_map_is_zero_without_warnings() -> None:
    maps = np.array([[[2.0, 2.0], [2.0, 2.0]], [[0.0, 1.0], [0.0, 0.0]]], dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = normalize(maps)
    np.testing.assert_array_equal(out[0], np.zeros((2, 2)))
    np.testing.assert_array_equal(out[1], [[0.0, 1.0], [0.0, 0.0]])
    assert out.dtype == np.float32


def test_upsample_hand_computed() -> None:
    # Output pixel i samples source (i + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25 -> clamped to [0, 1].
    out = upsample(np.array([[[0.0, 1.0]]]), (1, 4))
    np.testing.assert_allclose(out, [[[0.0, 0.25, 0.75, 1.0]]])
    out = upsample(np.array([[[0.0], [4.0]]]), (4, 2))
    np.testing.assert_allclose(out[0, :, 0], [0.0, 1.0, 3.0, 4.0])
    np.testing.assert_allclose(out[0, :, 1], out[0, :, 0])


@pytest.mark.parametrize(("src", "dst"), [((7, 7), (224, 224)), ((5, 3), (160, 97)), ((1, 1), (4, 4)),
                                          ((9, 8), (4, 5)), ((6, 6), (6, 6))])
def test_upsample_matches_torch_bilinear(src: tuple[int, int], dst: tuple[int, int]) -> None:
    maps = np.random.default_rng(0).standard_normal((2, *src)).astype(np.float32)
    ref = F.interpolate(torch.from_numpy(maps)[:, None], size=dst, mode="bilinear", align_corners=False)[:, 0]
    out = upsample(maps, dst)
    assert out.shape == (2, *dst) and out.dtype == np.float32
    np.testing.assert_allclose(out, ref.numpy(), atol=1e-5, rtol=0)


def test_upsample_rejects_bad_arguments() -> None:
    with pytest.raises(InputError, match="size"):
        upsample(np.zeros((1, 2, 2)), (0, 4))
    with pytest.raises(InputError, match=r"\(N, h, w\)"):
        upsample(np.zeros((2, 2)), (4, 4))


def test_methods_table() -> None:
    assert list(METHODS) == ["cam", "gradcam", "gradcam++", "xgradcam", "layercam", "hirescam",
                             "gradcam-elementwise", "abscam", "eigencam", "eigengradcam", "smoothgradcam++",
                             "integratedgradcam", "ablationcam", "ablationcam++", "reciprocam", "vitreciprocam",
                             "scorecam", "abscam-final", "sscam", "iscam", "groupcam", "rise", "opticam",
                             "relevancecam", "model-map"]
    for name, method in METHODS.items():
        assert isinstance(method, Method) and method.name == name
        assert method.paper.startswith("https://") and "\n" not in method.description
        assert method.family in ("gradient", "sampled", "feature", "input", "model", "relevance")
        assert (method.samples is not None) == (method.family == "sampled")
        assert (method.map is not None) == (method.family in ("gradient", "sampled", "model", "relevance"))
        assert (method.explore is not None and method.runs is not None) == method.perturbation
        assert method.perturbation == (method.family in ("feature", "input"))
        assert issubclass(method.options, Options) and method.configure({}) == method.options()
    assert [n for n, m in METHODS.items() if not m.uses_gradient] == [
        "eigencam", "ablationcam", "ablationcam++", "reciprocam", "vitreciprocam", "scorecam", "sscam", "iscam", "rise",
        "opticam", "model-map"]
    with pytest.raises(AttributeError):
        METHODS["gradcam"].name = "other"  # type: ignore[misc]


def test_gradient_family_runs_on_a_batch() -> None:
    rng = np.random.default_rng(0)
    activation = np.abs(rng.standard_normal((2, 4, 3, 5))).astype(np.float32)
    gradient = np.broadcast_to(rng.standard_normal((2, 4, 1, 1)), activation.shape).astype(np.float32)
    for method in METHODS.values():
        if method.family == "gradient":
            out = method.map(activation, gradient)
            assert out.shape == (2, 3, 5) and np.all(out >= 0), method.name
            np.testing.assert_allclose(method.map(activation[1:], gradient[1:]), out[1:], rtol=1e-6,
                                       err_msg=method.name)


def test_gradient_family_rejects_mismatched_shapes() -> None:
    for method in METHODS.values():
        if method.family == "gradient" and method.uses_gradient:
            with pytest.raises(InputError, match="same shape"):
                method.map(np.ones((1, 2, 3, 3), np.float32), np.ones((1, 2, 3, 4), np.float32))


def test_import_methods_loads_numpy_only() -> None:
    code = ("import sys, camrt.methods; "
            "print(' '.join(m for m in ('torch', 'onnxruntime', 'cv2') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "", f"import camrt.methods loaded {out.stdout.strip()}"
