"""camrt.methods.fusion: LayerCAM's multi-layer fusion, by hand and against TorchCAM's fuse_cams."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchcam.methods as tc

from camrt.errors import InputError
from camrt.methods import fuse, layercam, normalize, upsample
from tests import references as ref


def test_fuse_hand_computed() -> None:
    shallow = np.array([[[0.0, 1.0], [2.0, 4.0]]])  # / max -> (0, .25, .5, 1) -> tanh(2 ·)
    deep = np.array([[[3.0, 6.0], [0.0, 0.0]]])  # / max -> (.5, 1, 0, 0)
    out = fuse([shallow, deep], (2, 2))
    expected = np.maximum(np.tanh(2 * np.array([[0.0, 0.25], [0.5, 1.0]])), [[0.5, 1.0], [0.0, 0.0]])
    np.testing.assert_allclose(out, expected[None], rtol=1e-6)
    np.testing.assert_allclose(fuse([shallow, deep], (2, 2), gamma=1.0)[0, 1, 0], np.tanh(0.5), rtol=1e-6)


def test_fuse_resizes_and_handles_empty_maps() -> None:
    shallow = np.zeros((1, 4, 4))
    deep = np.array([[[0.0, 2.0]]])
    out = fuse([shallow, deep], (4, 4))
    np.testing.assert_allclose(out, upsample(np.array([[[0.0, 1.0]]]), (4, 4)), rtol=1e-6)
    np.testing.assert_allclose(fuse([deep], (1, 2)), [[[0.0, 1.0]]])


def test_fuse_rejects_bad_maps() -> None:
    with pytest.raises(InputError, match="at least one"):
        fuse([], (4, 4))
    with pytest.raises(InputError, match="same N"):
        fuse([np.zeros((1, 2, 2)), np.zeros((2, 2, 2))], (4, 4))


def test_fuse_matches_torchcam_fusion() -> None:
    cams = ref.torchcam_reference(tc.LayerCAM, ["layer3", "layer4"])
    eager = ref.fixed(("layer3", "layer4"))
    shallow, deep = layercam(*eager["layer3"]), layercam(*eager["layer4"])
    for theirs, mine in zip(cams, (shallow, deep), strict=True):
        np.testing.assert_allclose(theirs, normalize(mine), atol=1e-4)
    got = fuse([shallow, deep], ref.SIZE)
    # TorchCAM's fuse_cams runs _scale_cams (tanh(γ·M) on every map) then _fuse_cams (bilinear resize, element-wise
    # max). camrt scales only the shallow maps (the paper's rule) and divides by the max instead of min-max
    # normalising: give TorchCAM's two steps the maps camrt scales the same way.
    (scaled_shallow,) = tc.LayerCAM._scale_cams([torch.from_numpy(shallow / shallow.max(axis=(1, 2), keepdims=True))])
    unit_deep = torch.from_numpy(deep / deep.max(axis=(1, 2), keepdims=True))
    expected = tc.LayerCAM._fuse_cams([scaled_shallow, unit_deep], ref.SIZE).numpy()
    np.testing.assert_allclose(expected, got, atol=1e-5)
    # Through TorchCAM's public fuse_cams (deep map scaled too, min-max inputs) the maps stay alike, not equal.
    public = tc.LayerCAM.fuse_cams([torch.from_numpy(c) for c in cams], ref.SIZE).numpy()
    assert all(ref.pearson(p, g) > 0.9 for p, g in zip(public, got, strict=True))
