"""ViT-ReciproCAM (camrt.methods.feature.vitreciprocam_explore) through the engine, by the numpy
copies and by the chunk graph, against the paper's procedure in eager PyTorch: in the target block,
the first layer norm's output and the block input that the residual adds back are both masked
around each patch (class and distillation tokens kept), and the class probability of each copy is
the map. Tiny random-weight ViTs (torchvision, timm, timm's distilled DeiT), targets in the last
block and in the one before."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import camrt
from camrt.engine import Engine
from camrt.errors import InputError
from camrt.methods.feature import _KERNELS, _position_masks, block_input, token_masks
from tests.test_exporter_tokens import SIZE, VIT, _init, _softmax, timm_model, tv_vit

CASES = {
    # name: (build, block modules, their first layer norms, prefix tokens)
    "torchvision-vit": (tv_vit, ("encoder.layers.encoder_layer_0", "encoder.layers.encoder_layer_1"), "ln_1", 1),
    "timm-vit": (lambda: timm_model("vit_tiny_patch16_224", **VIT), ("blocks.0", "blocks.1"), "norm1", 1),
    "timm-deit-distilled": (lambda: timm_model("deit_tiny_distilled_patch16_224", **VIT), ("blocks.0", "blocks.1"),
                            "norm1", 2),
}
GRID = 4  # SIZE 32, patch 8


@pytest.fixture(scope="module", params=list(CASES))
def exported(request, tmp_path_factory):
    build, blocks, norm, prefix = CASES[request.param]
    model = _init(build(), seed=3)
    layers = [f"{b}.{norm}" for b in blocks]
    path = tmp_path_factory.mktemp("vitrc") / f"{request.param}.cam.onnx"
    camrt.export(model, layers=layers, path=path, input_shape=(1, 3, SIZE, SIZE))
    return model, path, blocks, norm, layers, prefix


def eager_vitreciprocam(model: nn.Module, x: np.ndarray, block: str, norm: str, prefix: int, kernel: str
                        ) -> np.ndarray:
    """The class probabilities (h·w × K) of the paper's copies, by hooks on the block: its input X
    masked (for the residual), its layer norm fed the unmasked X and its output masked."""
    modules = dict(model.named_modules())
    n = GRID * GRID
    masks = torch.from_numpy(token_masks(_position_masks(_KERNELS[kernel], GRID, GRID, np.arange(n), np.float32),
                                         prefix))
    original = {}

    def block_pre(_m, args):
        original["x"] = args[0]
        return (args[0] * masks, *args[1:])

    hooks = [modules[block].register_forward_pre_hook(block_pre),
             modules[f"{block}.{norm}"].register_forward_pre_hook(lambda _m, args: (original["x"], *args[1:])),
             modules[f"{block}.{norm}"].register_forward_hook(lambda _m, _i, out: out * masks)]
    try:
        with torch.no_grad():
            logits = model(torch.from_numpy(np.repeat(x, n, axis=0))).double().numpy()
    finally:
        for h in hooks:
            h.remove()
    return _softmax(logits)


@pytest.mark.parametrize("kernel", ["gaussian", "onehot"])
def test_vitreciprocam_matches_the_papers_procedure_in_eager(exported, kernel) -> None:
    model, path, blocks, norm, layers, prefix = exported
    x = np.random.default_rng(11).normal(size=(1, 3, SIZE, SIZE)).astype(np.float32)
    engines = {graphs: Engine(path, device="cpu", chunk_size=7, chunk_graphs=graphs) for graphs in (False, True)}
    for block, layer in zip(blocks, layers, strict=True):
        probs = eager_vitreciprocam(model, x, block, norm, prefix, kernel)
        shown = 0
        for k in range(probs.shape[1]):
            expected = probs[:, k].reshape(GRID, GRID)
            shown += np.ptp(expected) > 1e-4
            for graphs, engine in engines.items():
                r = engine.explain(x, "vitreciprocam", class_idx=k, layer=layer, kernel=kernel)
                np.testing.assert_allclose(r.low_res[0], expected, rtol=2e-5, atol=2e-6,
                                           err_msg=f"{layer} class {k} chunk graphs {graphs}")
        assert shown >= 2, f"{layer}: the maps are flat; the comparison would be vacuous"


def test_masking_the_block_input_matters(exported) -> None:
    """Recipro-CAM with the same masks on the same layer norm output, the block input left whole for
    the residual, gives another map in the block before the last: the comparison above could not
    pass without the second mask. (In the last block the two agree: after its attention only the
    class token reaches the logits, and the residual's patch tokens never meet it.)"""
    model, path, blocks, norm, layers, prefix = exported
    x = np.random.default_rng(12).normal(size=(1, 3, SIZE, SIZE)).astype(np.float32)
    engine = Engine(path, device="cpu")
    ours = engine.explain(x, "vitreciprocam", class_idx=0, layer=layers[0]).low_res[0]
    plain = engine.explain(x, "reciprocam", class_idx=0, layer=layers[0], kernel="gaussian").low_res[0]
    assert np.abs(ours - plain).max() > 1e-3 * np.abs(ours).max()
    last = engine.explain(x, "vitreciprocam", class_idx=0, layer=layers[1]).low_res[0]
    np.testing.assert_allclose(last, engine.explain(x, "reciprocam", class_idx=0, layer=layers[1],
                                                    kernel="gaussian").low_res[0], rtol=1e-5, atol=1e-7)


def test_block_input_is_found_by_shape_or_refused() -> None:
    act = (8, 4, 4)
    assert block_input({"prefix": (1, 1, 8), "x": (1, 17, 8)}, act) == ("x", 1)
    assert block_input({"p": (1, 2, 8), "x": (1, 18, 8)}, act) == ("x", 2)
    for shapes in ({}, {"prefix": (1, 1, 8)}, {"a": (1, 17, 8), "b": (1, 17, 8)}, {"x": (1, 17, 9)}):
        with pytest.raises(InputError, match="encoder_layer_11.ln_1"):
            block_input(shapes, act)


def test_token_masks_keep_the_prefix() -> None:
    m = _position_masks(_KERNELS["gaussian"], 3, 3, np.array([0, 4]), np.float32)
    t = token_masks(m, 2)
    assert t.shape == (2, 11, 1)
    np.testing.assert_array_equal(t[:, :2, 0], 1)
    np.testing.assert_array_equal(t[:, 2:, 0], m.reshape(2, 9))
    assert m[1, 1, 1] == 0.25 and m[0, 0, 0] == 0.25 and m[0, 2, 2] == 0


def test_vitreciprocam_on_a_convolutional_layer_is_one_line(tmp_path) -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()
    path = tmp_path / "cnn.cam.onnx"
    camrt.export(net, layers=["1"], path=path, input_shape=(1, 3, 8, 8))
    x = np.random.default_rng(0).normal(size=(1, 3, 8, 8)).astype(np.float32)
    for graphs in (False, True):
        with pytest.raises(InputError) as e:
            Engine(path, device="cpu", chunk_graphs=graphs).explain(x, "vitreciprocam", layer="1")
        assert "\n" not in str(e.value) and "first layer norm of a transformer block" in str(e.value)
