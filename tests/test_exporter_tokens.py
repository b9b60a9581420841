"""Token and channels-last target layers (camrt.exporter.tokens), issue 11.

Tiny configurations of the transformer families the issue names (torchvision's VisionTransformer
and SwinTransformer, timm's ViT, distilled DeiT and Swin, random weights, nothing downloaded),
each exported once with a target at two depths. Oracles: eager float64 autograd with respect to
what the module returns, put on its grid by the reshape pytorch-grad-cam documents for ViT and
Swin (written out here, not camrt's); pytorch-grad-cam's Grad-CAM, Grad-CAM++ and LayerCAM with
that `reshape_transform`; brute-force eager Score-CAM, Ablation-CAM and Recipro-CAM that put the
modified map back into the token sequence with the original prefix tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import camrt
from camrt.engine import Engine
from camrt.engine.session import open_session
from camrt.errors import LayerError
from camrt.exporter.tokens import from_map, layer_for, to_map
from camrt.exporter.trace import LayerRecord
from camrt.graph.tensorrt import check_tensorrt
from camrt.manifest import Layer

SIZE = 32
K = 5


def _init(model: nn.Module, seed: int) -> nn.Module:
    """Random weights of a scale at which the classes differ between inputs and the maps are not
    flat (default initialisations give near-constant logits in two-block models)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return model.eval()


def tv_vit() -> nn.Module:
    from torchvision.models.vision_transformer import VisionTransformer

    return VisionTransformer(image_size=SIZE, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64,
                             num_classes=K)


def tv_swin() -> nn.Module:
    from torchvision.models.swin_transformer import SwinTransformer

    return SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[1, 1], num_heads=[1, 2], window_size=[4, 4],
                           num_classes=K)


def timm_model(name: str, **kwargs) -> nn.Module:
    timm = pytest.importorskip("timm")
    return timm.create_model(name, pretrained=False, num_classes=K, img_size=SIZE, **kwargs)


@dataclass(frozen=True)
class Case:
    build: object
    layers: tuple[str, str]
    layouts: tuple[tuple, tuple]  # per layer: ("tokens", prefix, h, w) or ("nhwc", h, w)


VIT = dict(patch_size=8, depth=2, embed_dim=32, num_heads=2)
SWIN = dict(patch_size=4, embed_dim=16, depths=(1, 1), num_heads=(1, 2), window_size=4)
CASES = {
    "torchvision-vit": Case(tv_vit, ("encoder.layers.encoder_layer_0", "encoder.layers.encoder_layer_1.ln_1"),
                            (("tokens", 1, 4, 4), ("tokens", 1, 4, 4))),
    "torchvision-swin": Case(tv_swin, ("features.1", "features.3"), (("nhwc", 8, 8), ("nhwc", 4, 4))),
    "timm-vit": Case(lambda: timm_model("vit_tiny_patch16_224", **VIT), ("blocks.0", "blocks.1.norm1"),
                     (("tokens", 1, 4, 4), ("tokens", 1, 4, 4))),
    "timm-deit-distilled": Case(lambda: timm_model("deit_tiny_distilled_patch16_224", **VIT),
                                ("blocks.0", "blocks.1.norm1"), (("tokens", 2, 4, 4), ("tokens", 2, 4, 4))),
    "timm-swin": Case(lambda: timm_model("swin_tiny_patch4_window7_224", **SWIN),
                      ("layers.0", "layers.1.blocks.0.norm1"), (("nhwc", 8, 8), ("nhwc", 4, 4))),
}


def grid_of(out: torch.Tensor, layout: tuple) -> torch.Tensor:
    """pytorch-grad-cam's documented reshape_transform (ViT: drop the class token(s), reshape the
    patch tokens to h×w, channels first; Swin: channels first)."""
    if layout[0] == "tokens":
        _, p, h, w = layout
        r = out[:, p:, :].reshape(out.size(0), h, w, out.size(2))
    else:
        r = out
    return r.transpose(2, 3).transpose(1, 2)


@pytest.fixture(scope="module", params=list(CASES))
def exported(request, tmp_path_factory):
    case = CASES[request.param]
    model = _init(case.build(), seed=3)
    path = tmp_path_factory.mktemp("tokens") / f"{request.param}.cam.onnx"
    manifest = camrt.export(model, layers=list(case.layers), path=path, input_shape=(1, 3, SIZE, SIZE))
    return request.param, case, model, path, manifest


def eager64(model: nn.Module, x: np.ndarray, classes: list[int], case: Case) -> dict[str, np.ndarray]:
    """Float64 autograd with respect to each module's own output, then put on the grid."""
    import copy

    m = copy.deepcopy(model).double().eval()
    modules = dict(m.named_modules())
    outs: dict[str, torch.Tensor] = {}
    handles = [modules[n].register_forward_hook(lambda _m, _i, o, n=n: outs.__setitem__(n, o)) for n in case.layers]
    try:
        logits = m(torch.from_numpy(x).double())
        score = logits[torch.arange(len(classes)), torch.tensor(classes)].sum()
        grads = torch.autograd.grad(score, [outs[n] for n in case.layers])
    finally:
        for h in handles:
            h.remove()
    res = {"logits": logits.detach().numpy()}
    for n, g, layout in zip(case.layers, grads, case.layouts, strict=True):
        res[f"activation.{n}"] = grid_of(outs[n].detach(), layout).numpy()
        res[f"gradient.{n}"] = grid_of(g, layout).numpy()
    return res


def test_layouts_and_grids_in_the_manifest(exported) -> None:
    _, case, _, _, manifest = exported
    for layer, layout in zip(manifest.layers, case.layouts, strict=True):
        if layout[0] == "tokens":
            assert (layer.layout, layer.prefix_tokens, layer.shape[1:]) == ("tokens", layout[1], layout[2:])
        else:
            assert (layer.layout, layer.prefix_tokens, layer.shape[1:]) == ("nhwc", 0, layout[1:])


def test_backward_is_plain_onnx_that_tensorrt_parses(exported) -> None:
    """Layer norm, softmax, GELU, attention, patch embedding, Swin's shifts and relative position
    bias, forward and backward: only operators of the standard domain (no training-only contrib
    operators such as com.microsoft's SoftmaxGrad or LayerNormalizationGrad), each one TensorRT's
    ONNX parser accepts with the types it is used at (camrt.graph.tensorrt)."""
    _, _, _, path, _ = exported
    model = onnx.load(str(path))
    domains = {n.domain for n in model.graph.node} | {d for f in model.functions for d in {n.domain for n in f.node}}
    assert domains <= {"", "ai.onnx"}, domains
    # class_idx's default is imported as a constant by TensorRT: a property of camrt's contract
    # (docs/tensorrt.md), not of the transformer's operators.
    assert [str(p) for p in check_tensorrt(model) if (p.kind, p.where) != ("constant-input", "class_idx")] == []


def test_gradients_match_float64_autograd_on_fresh_inputs(exported) -> None:
    """Two depths per model, on inputs unlike the export's example, an explicit class that is not
    the top-1 beside top-1 classes."""
    _, case, model, path, _ = exported
    x = (np.random.default_rng(11).normal(size=(3, 3, SIZE, SIZE)) * 1.5).astype(np.float32)
    sess = open_session(str(path), device="cpu")
    names = [o.name for o in sess.get_outputs()]

    def run(classes: list[int]) -> dict[str, np.ndarray]:
        return dict(zip(names, sess.run(None, {"input": x, "class_idx": np.array(classes, np.int64)}), strict=True))

    top1 = run([-1, -1, -1])["class_idx_used"]
    classes = [int(top1[0]), int(top1[1]), int((top1[2] + 1) % K)]
    got = run(classes)
    ref = eager64(model, x, classes, case)
    np.testing.assert_array_equal(got["class_idx_used"], classes)
    np.testing.assert_allclose(got["logits"], ref["logits"], rtol=1e-4, atol=1e-4 * np.abs(ref["logits"]).max())
    for name in case.layers:
        a, g = got[f"activation.{name}"], got[f"gradient.{name}"]
        ra, rg = ref[f"activation.{name}"], ref[f"gradient.{name}"]
        assert a.shape == ra.shape and g.shape == rg.shape
        np.testing.assert_allclose(a, ra, atol=1e-4 * np.abs(ra).max())
        assert np.abs(rg).max() > 0, f"{name}: a zero gradient would make the comparison vacuous"
        assert np.linalg.norm(g - rg) <= 1e-4 * np.linalg.norm(rg), name


def test_round_trip_of_the_layouts() -> None:
    x = torch.randn(2, 1 + 12, 6)
    tokens = Layer("t", (6, 3, 4), "tokens", 1)
    np.testing.assert_array_equal(from_map(tokens, to_map(tokens, x), x), x)
    assert to_map(tokens, x)[1, 5, 2, 3] == x[1, 1 + 2 * 4 + 3, 5]
    y = torch.randn(2, 3, 4, 6)
    last = Layer("s", (6, 3, 4), "nhwc")
    np.testing.assert_array_equal(from_map(last, to_map(last, y), y), y)
    plain = Layer("c", (6, 3, 4))
    assert to_map(plain, y) is y


def _record(shape: tuple, name: str = "blk") -> LayerRecord:
    return LayerRecord(name, "Block", 1, shape)


def test_layer_for_infers_prefix_grid_and_layout() -> None:
    plain = nn.Module()
    assert layer_for(_record((1, 197, 768)), plain, plain, (224, 224)) == Layer("blk", (768, 14, 14), "tokens", 1)
    assert layer_for(_record((1, 198, 192)), plain, plain, (224, 224)).prefix_tokens == 2
    assert layer_for(_record((1, 196, 64)), plain, plain, (224, 224)).prefix_tokens == 0
    assert layer_for(_record((1, 1 + 8 * 16, 8)), plain, plain, (128, 256)).shape == (8, 8, 16)  # aspect
    told = nn.Module()
    told.num_prefix_tokens = 5
    assert layer_for(_record((1, 5 + 49, 8)), told, plain, (224, 224)) == Layer("blk", (8, 7, 7), "tokens", 5)
    assert layer_for(_record((1, 50, 8)), plain, plain, (224, 224), grid=(7, 7)).prefix_tokens == 1
    assert layer_for(_record((1, 50, 8)), plain, plain, (224, 224), prefix_tokens=1).shape == (8, 7, 7)
    norm = nn.LayerNorm(96)
    assert layer_for(_record((1, 7, 7, 96)), plain, norm, (224, 224)) == Layer("blk", (96, 7, 7), "nhwc")
    conv = nn.Conv2d(3, 7, 1)
    assert layer_for(_record((1, 7, 7, 96)), plain, conv, (224, 224)).layout == "nchw"  # no LayerNorm over 96
    assert layer_for(_record((1, 512, 7, 7)), plain, norm, (224, 224)) == Layer("blk", (512, 7, 7))
    assert layer_for(_record((1, 7, 7, 96)), plain, conv, (224, 224), layout="nhwc").shape == (96, 7, 7)


@pytest.mark.parametrize(("shape", "kwargs", "message"), [
    ((1, 199, 8), {"prefix_tokens": 1}, "returns 199 tokens, which are not 1 prefix tokens plus a grid"),
    ((1, 50, 8), {"grid": (6, 6)}, "returns 50 tokens, which is not 0..8 prefix tokens plus a 6×6 grid"),
    ((1, 50, 8), {"layout": "nhwc"}, "layout 'nhwc' needs a 4-D output"),
    ((1, 8, 7, 7), {"grid": (7, 7)}, "--grid and --prefix-tokens are for token layers"),
    ((1, 8, 7, 7), {"layout": "tokens"}, "layout 'tokens' needs N×T×C"),
    ((1, 8), {}, "returns output of shape (1, 8); a target layer must return an N×C×H×W feature map"),
    (None, {}, "a layer inside attention that returns a tuple cannot be a target"),
    ((1, 50, 8), {"layout": "cnhw"}, "layout 'cnhw' is not one of nchw, nhwc, tokens"),
])
def test_layer_for_refuses_what_does_not_fit(shape, kwargs, message) -> None:
    plain = nn.Module()
    with pytest.raises(LayerError, match=message.replace("(", r"\(").replace(")", r"\)")):
        layer_for(_record(shape), plain, plain, (224, 224), **kwargs)


def tokens_of(grid: torch.Tensor, out: torch.Tensor, layout: tuple) -> torch.Tensor:
    """The inverse of `grid_of` for a batch of B maps of one image whose own output is `out`
    (1×T×C or 1×h×w×C): the maps' positions as patch tokens after the image's prefix tokens."""
    b, c, h, w = grid.shape
    last = grid.permute(0, 2, 3, 1)
    if layout[0] != "tokens":
        return last
    return torch.cat([out[:, :layout[1], :].expand(b, -1, -1), last.reshape(b, h * w, c)], dim=1)


def eager_with_maps(model: nn.Module, x: np.ndarray, layer: str, layout: tuple, maps: np.ndarray) -> np.ndarray:
    """Logits of one image with `layer`'s map replaced by each of `maps` (B×C×h×w)."""
    module = dict(model.named_modules())[layer]
    handle = module.register_forward_hook(lambda _m, _i, o: tokens_of(torch.from_numpy(maps), o, layout))
    try:
        with torch.no_grad():
            return model(torch.from_numpy(np.repeat(x, len(maps), axis=0))).numpy()
    finally:
        handle.remove()


def eager_map(model: nn.Module, x: np.ndarray, layer: str, layout: tuple) -> np.ndarray:
    module = dict(model.named_modules())[layer]
    seen = []
    handle = module.register_forward_hook(lambda _m, _i, o: seen.append(grid_of(o, layout)))
    try:
        with torch.no_grad():
            model(torch.from_numpy(x))
    finally:
        handle.remove()
    return seen[0].numpy()


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@pytest.mark.parametrize("method", ["ablationcam", "reciprocam"])
def test_feature_perturbation_through_the_token_cut(exported, method) -> None:
    """Ablation-CAM and Recipro-CAM run the tail from the grid-shaped map back through the tokens,
    the prefix tokens crossing the cut: equal to eager runs with the map put back by hand."""
    _, case, model, path, _ = exported
    x = np.random.default_rng(5).normal(size=(1, 3, SIZE, SIZE)).astype(np.float32)
    engine = Engine(path, device="cpu", chunk_size=16)
    for layer, layout in zip(case.layers, case.layouts, strict=True):
        a = eager_map(model, x, layer, layout)[0]
        c, h, w = a.shape
        with torch.no_grad():
            base = model(torch.from_numpy(x)).numpy()[0]
        if method == "ablationcam":
            copies = np.repeat(a[None], c, axis=0)
            copies[np.arange(c), np.arange(c)] = 0
        else:
            copies = np.zeros((h * w, c, h, w), np.float32)
            for p in range(h * w):
                copies[p, :, p // w, p % w] = a[:, p // w, p % w]
        logits = eager_with_maps(model, x, layer, layout, copies)
        shown = 0
        for k in range(K):  # every class: with random weights some Ablation-CAM maps are all zero after the ReLU
            r = engine.explain(x, method, class_idx=k, layer=layer)
            if method == "ablationcam":
                expected = np.maximum(np.einsum("c,chw->hw", (base[k] - logits[:, k]) / base[k], a), 0)
            else:
                expected = _softmax(logits)[:, k].reshape(h, w)
            shown += np.ptp(expected) > 0
            # Ablation-CAM's (y − y_k) / y cancels: float32 scores differ by ~1e-7·|y|, which is up to ~1e-4
            # of the map's largest value where y − y_k is small.
            np.testing.assert_allclose(r.low_res[0], expected, rtol=1e-4, atol=1e-4 * max(np.abs(expected).max(), 1e-6))
        assert shown >= 2, f"{layer}: {shown} of {K} maps not flat; the comparison would be vacuous"


def test_scorecam_matches_brute_force_eager(exported) -> None:
    """Score-CAM on the map (upsampled as camrt.methods.upsample, i.e. torch's bilinear with
    align_corners=False) against the paper's loop in eager PyTorch."""
    _, case, model, path, _ = exported
    x = np.random.default_rng(6).normal(size=(1, 3, SIZE, SIZE)).astype(np.float32)
    layer, layout = case.layers[1], case.layouts[1]
    r = Engine(path, device="cpu", chunk_size=16).explain(x, "scorecam", class_idx=1, layer=layer)
    acts = torch.from_numpy(eager_map(model, x, layer, layout))
    up = torch.nn.functional.interpolate(acts, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    lo, hi = up.flatten(2).min(-1).values[..., None, None], up.flatten(2).max(-1).values[..., None, None]
    masks = ((up - lo) / (hi - lo))[0]
    with torch.no_grad():
        scores = model(torch.from_numpy(x) * masks[:, None])[:, 1]
    expected = torch.relu(torch.einsum("c,chw->hw", scores.softmax(0), acts[0])).numpy()
    assert np.ptp(expected) > 0
    np.testing.assert_allclose(r.low_res[0], expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())


def _gradcampp_with_epsilon(a: np.ndarray, g: np.ndarray) -> np.ndarray:
    """pytorch-grad-cam's GradCAMPlusPlus weights written out: the paper's α with 1e-6 added to its
    denominator, on activations and gradients (N×C×h×w); the map before resizing."""
    g2, g3 = g ** 2, g ** 3
    alpha = g2 / (2 * g2 + a.sum(axis=(2, 3), keepdims=True) * g3 + 1e-6)
    alpha = np.where(g != 0, alpha, 0)
    w = (np.maximum(g, 0) * alpha).sum(axis=(2, 3))
    return np.maximum(np.einsum("nc,nchw->nhw", w, a), 0)


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "layercam", "scorecam"])
def test_maps_match_pytorch_grad_cam_with_its_reshape_transform(exported, method) -> None:
    """pytorch-grad-cam's extractor on the same module with the reshape_transform its docs give for
    ViT and Swin, for every class of two images: the same maps (correlation ≥ 0.999), the same
    maps flat (all zero after the ReLU, common with random weights), at least three not flat.

    Documented differences, each checked rather than skipped:
    - Grad-CAM++: pytorch-grad-cam adds 1e-6 to α's denominator 2G² + ΣA·G³. With a transformer's
      signed activations that denominator crosses zero, and the epsilon changes the map
      (correlation 0.77-0.90 with the paper's form here). So its map is compared with camrt's
      activation and gradient through its own formula (`_gradcampp_with_epsilon`), and camrt's
      Grad-CAM++ with the paper's form (tests/test_methods_gradient.py).
    - Score-CAM: pytorch-grad-cam upsamples the activations with align_corners=True
      (UpsamplingBilinear2d), the paper and camrt with align_corners=False: correlation ≥ 0.99.
    """
    from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, LayerCAM, ScoreCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from camrt.methods import normalize, upsample

    cam_class = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "layercam": LayerCAM, "scorecam": ScoreCAM}[method]
    _, case, model, path, _ = exported
    x = np.random.default_rng(7).normal(size=(2, 3, SIZE, SIZE)).astype(np.float32)
    engine = Engine(path, device="cpu", chunk_size=16)
    shown = 0  # over both layers: Score-CAM's maps at the first Swin stage are all flat here, on both sides
    for layer, layout in zip(case.layers, case.layouts, strict=True):
        module = dict(model.named_modules())[layer]
        for c in range(K):
            if method == "gradcam++":
                p = engine.forward(x, class_idx=c)
                low = _gradcampp_with_epsilon(p.outputs[f"activation.{layer}"], p.outputs[f"gradient.{layer}"])
                got = normalize(upsample(low, (SIZE, SIZE)))
            else:
                got = engine.explain(x, method, class_idx=c, layer=layer).saliency
            with cam_class(model=model, target_layers=[module],
                           reshape_transform=lambda t, lay=layout: grid_of(t, lay)) as extractor:
                expected = extractor(input_tensor=torch.from_numpy(x), targets=[ClassifierOutputTarget(c)] * 2)
            for n in range(2):
                flat = got[n].std() < 1e-6
                assert flat == (expected[n].std() < 1e-6), (layer, n, c, got[n].std(), expected[n].std())
                if not flat:
                    shown += 1
                    corr = float(np.corrcoef(got[n].ravel(), expected[n].ravel())[0, 1])
                    assert corr >= (0.99 if method == "scorecam" else 0.999), (layer, n, c, corr)
    assert shown >= 3, f"{shown} maps not flat of {4 * K}; the comparison would be vacuous"


@pytest.fixture(scope="module")
def vit_file(tmp_path_factory):
    """The tiny torchvision ViT as a state dict, built by --arch tests.test_exporter_tokens:tv_vit."""
    path = tmp_path_factory.mktemp("cli") / "vit.pt"
    torch.save(_init(tv_vit(), seed=3).state_dict(), path)
    return path


def _cli(*args):
    from click.testing import CliRunner

    from camrt.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


def test_cli_layers_marks_token_layers(vit_file) -> None:
    r = _cli("layers", vit_file, "--arch", "tests.test_exporter_tokens:tv_vit", "--input-shape", "1,3,32,32")
    assert r.exit_code == 0, r.output
    rows = {line.split()[0]: line for line in r.output.splitlines()[1:]}
    assert rows["encoder.layers.encoder_layer_1"].endswith("tokens: 1 prefix + 4×4 grid, C=32")
    assert rows["conv_proj"].endswith("feature map")
    assert "tokens: 1 prefix + 4×4 grid" not in rows["encoder.layers.encoder_layer_1.self_attention"]


def test_cli_export_with_grid_and_prefix(vit_file, tmp_path) -> None:
    out = tmp_path / "vit.cam.onnx"
    r = _cli("export", vit_file, "--arch", "tests.test_exporter_tokens:tv_vit", "--input-shape", "1,3,32,32",
             "--layer", "encoder.layers.encoder_layer_1.ln_1", "--grid", "4x4", "--prefix-tokens", "1", "-o", out)
    assert r.exit_code == 0, r.output
    assert "encoder.layers.encoder_layer_1.ln_1 32×4×4 (tokens, 1 prefix tokens)" in r.output
    m = Engine(out, device="cpu").manifest
    assert m.layers[0] == Layer("encoder.layers.encoder_layer_1.ln_1", (32, 4, 4), "tokens", 1)


@pytest.mark.parametrize(("args", "fragments"), [
    (["--layer", "encoder.layers.encoder_layer_1", "--grid", "5x5"],
     ["returns 17 tokens, which is not 0..8 prefix tokens plus a 5×5 grid"]),
    (["--layer", "encoder.layers.encoder_layer_1", "--prefix-tokens", "3"],
     ["returns 17 tokens, which are not 3 prefix tokens plus a grid"]),
    (["--layer", "encoder.layers.encoder_layer_0.self_attention"],
     ["returns output not a single tensor", "a layer inside attention that returns a tuple cannot be a target"]),
    (["--layer", "encoder.layers.encoder_layer_1", "--grid", "4by4"], ["'4by4' is not HxW"]),
])
def test_cli_export_refuses_bad_token_layers(vit_file, tmp_path, args, fragments) -> None:
    from tests.cli_checks import assert_one_line_error

    r = _cli("export", vit_file, "--arch", "tests.test_exporter_tokens:tv_vit", "--input-shape", "1,3,32,32", *args,
             "-o", tmp_path / "x.cam.onnx")
    assert_one_line_error(r, *fragments)
    assert not (tmp_path / "x.cam.onnx").exists()


def test_timm_arch_by_name(tmp_path) -> None:
    """--arch timm:NAME builds timm's architecture (random weights; the file's weights go into it);
    an unknown name is one line with the closest names."""
    pytest.importorskip("timm")
    from camrt.exporter.load import build_arch
    from tests.cli_checks import assert_one_line_error

    model = build_arch("timm:vit_tiny_patch16_224")
    assert type(model).__name__ == "VisionTransformer" and model.num_prefix_tokens == 1
    path = tmp_path / "w.pt"
    torch.save(model.state_dict(), path)
    r = _cli("layers", path, "--arch", "timm:vit_tiny_patch16_224")
    assert r.exit_code == 0, r.output
    assert any(line.startswith("blocks.11.norm1 ") and line.endswith("tokens: 1 prefix + 14×14 grid, C=192")
               for line in r.output.splitlines())
    assert_one_line_error(_cli("layers", path, "--arch", "timm:vit_tiny_patch16_244"),
                          "timm has no model 'vit_tiny_patch16_244'; did you mean vit_tiny_patch16_224")
