"""Target mode (issue 12): `camrt.export(..., target=True)` and `camrt.engine.targets`.

Tiny random-weight models, nothing downloaded: a segmentation network returning a dict like
torchvision's ({"out": N×K×H×W, "aux": ...}) and an embedding network (N×D). Oracles: float64
eager autograd of Σ target ⊙ output (and of the cosine similarity), pytorch-grad-cam's
``SemanticSegmentationTarget`` and ``SimilarityToConceptTarget`` on the same layer, brute-force
eager perturbation. Plus torchvision's LR-ASPP MobileNetV3 at 64×64, and the one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import camrt
from camrt.engine import Engine
from camrt.engine.session import open_session
from camrt.engine.targets import ArrayTarget, ClassTarget, RegionTarget, SimilarityTarget
from camrt.errors import InputError
from camrt.manifest import OUTPUT, SCORE, TARGET

SIZE = 32
K = 3
D = 16


class TinySegmenter(nn.Module):
    """Conv stem, a stride-2 block (the target), a 1×1 classifier upsampled to the input size;
    returns a dict with an auxiliary output, as torchvision's segmentation models do."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(8, 12, 3, stride=2, padding=1), nn.BatchNorm2d(12), nn.ReLU())
        self.classifier = nn.Conv2d(12, K, 1)
        self.aux = nn.Conv2d(12, K, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.block(self.stem(x))
        up = nn.functional.interpolate(self.classifier(f), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return {"out": up, "aux": self.aux(f)}


class TinyEmbedder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(8, 12, 3, stride=2, padding=1), nn.ReLU())
        self.fc = nn.Linear(12, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))


def _init(model: nn.Module, seed: int) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1, generator=gen)
                m.running_var.uniform_(0.5, 1.5, generator=gen)
    return model.eval()


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory):
    model = _init(TinySegmenter(), 1)
    path = tmp_path_factory.mktemp("targets") / "seg.cam.onnx"
    manifest = camrt.export(model, layers=["stem", "block"], path=path, input_shape=(1, 3, SIZE, SIZE),
                            output_index="out", target=True)
    return model, path, manifest


@pytest.fixture(scope="module")
def embedder(tmp_path_factory):
    model = _init(TinyEmbedder(), 2)
    path = tmp_path_factory.mktemp("targets") / "emb.cam.onnx"
    manifest = camrt.export(model, layers=["features.3"], path=path, input_shape=(1, 3, SIZE, SIZE), target=True)
    return model, path, manifest


def images(seed: int, n: int = 2) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 3, SIZE, SIZE)).astype(np.float32)


def eager64(model: nn.Module, x: np.ndarray, layers: list[str], score_of) -> tuple[np.ndarray, dict, dict]:
    """Float64 output, and each layer's activation and gradient of Σ_n score_of(output)[n]."""
    import copy

    m = copy.deepcopy(model).double()
    modules = dict(m.named_modules())
    outs = {}
    hooks = [modules[n].register_forward_hook(lambda _m, _i, o, n=n: outs.__setitem__(n, o)) for n in layers]
    try:
        out = m(torch.from_numpy(x).double())
        out = out["out"] if isinstance(out, dict) else out
        grads = torch.autograd.grad(score_of(out).sum(), [outs[n] for n in layers])
    finally:
        for h in hooks:
            h.remove()
    acts = {n: outs[n].detach().numpy() for n in layers}
    return out.detach().numpy(), acts, dict(zip(layers, (g.numpy() for g in grads), strict=True))


def test_manifest_and_graph_io(segmenter) -> None:
    _, path, manifest = segmenter
    assert manifest.targeted and manifest.target_shape == (K, SIZE, SIZE) and manifest.num_classes == K
    sess = open_session(str(path), device="cpu")
    assert [i.name for i in sess.get_inputs()] == ["input", TARGET]
    assert [o.name for o in sess.get_outputs()][:2] == [OUTPUT, SCORE]


@pytest.mark.parametrize("kind", ["mask", "class", "array"])
def test_segmentation_gradients_match_float64_autograd(segmenter, kind) -> None:
    model, path, _ = segmenter
    x = images(3)
    mask = np.zeros((SIZE, SIZE), bool)
    mask[4:20, 10:30] = True
    vec = np.random.default_rng(4).normal(size=(2, K, SIZE, SIZE)).astype(np.float32)
    target = {"mask": RegionTarget(2, mask), "class": ClassTarget(1), "array": ArrayTarget(vec)}[kind]
    p = Engine(path, device="cpu").forward(x, target=target)
    t = torch.from_numpy(np.array(p.outputs[TARGET])).double()  # (a copy: the engine's vector is read-only)
    out, acts, grads = eager64(model, x, ["stem", "block"], lambda o: (o * t).flatten(1).sum(1))
    np.testing.assert_allclose(p.outputs[OUTPUT], out, atol=1e-4 * np.abs(out).max())
    np.testing.assert_allclose(p.outputs[SCORE], (out * p.outputs[TARGET]).reshape(2, -1).sum(1), rtol=1e-4)
    if kind == "mask":
        assert (p.outputs[TARGET][:, 2] == mask).all() and not p.outputs[TARGET][:, [0, 1]].any()
    for layer in ("stem", "block"):
        g = p.outputs[f"gradient.{layer}"]
        assert np.abs(grads[layer]).max() > 0
        assert np.linalg.norm(g - grads[layer]) <= 1e-4 * np.linalg.norm(grads[layer]), layer


def test_the_graph_reads_the_target_in_the_backward_only(segmenter) -> None:
    """The gradient is the vector-Jacobian product with the target as the vector, and the score
    of an upsampled output is read before the upsampling (Σ t ⊙ R(s) = Σ Rᵀ(t) ⊙ s): no node
    multiplies the target by the output or by a broadcast of ones. The output is written by the
    upsampling's MatMul (`unflatten_output_matmuls`), not copied by a Reshape."""
    import onnx

    _, path, _ = segmenter
    graph = onnx.load(str(path)).graph
    readers = [n.op_type for n in graph.node if TARGET in n.input]
    assert readers and "Mul" not in readers and "Expand" not in {n.op_type for n in graph.node
                                                                  if any(TARGET in i for i in n.output)}
    assert next(n.op_type for n in graph.node if OUTPUT in n.output) == "MatMul"


def test_a_target_vector_is_reused_while_the_target_is_the_same(segmenter) -> None:
    """A stream explained for one target builds its vector once (read-only, handed out again); a
    mask changed in place, another class, another batch size or a region read from the output
    builds a new one, and the gradients are those of a fresh engine."""
    _, path, _ = segmenter
    engine = Engine(path, device="cpu")
    mask = np.zeros((SIZE, SIZE), bool)
    mask[4:20, 10:30] = True
    target = RegionTarget(2, mask)
    first = engine.forward(images(3), target=target).outputs[TARGET]
    again = engine.forward(images(4), target=target)
    assert again.outputs[TARGET] is first and not first.flags.writeable
    fresh = Engine(path, device="cpu").forward(images(4), target=RegionTarget(2, mask.copy()))
    np.testing.assert_array_equal(again.outputs["gradient.block"], fresh.outputs["gradient.block"])
    assert engine.forward(images(4), target=RegionTarget(2, mask.copy())).outputs[TARGET] is first  # same values
    mask[30, 0] = True
    changed = engine.forward(images(4), target=target).outputs[TARGET]
    assert changed is not first and changed[0, 2, 30, 0] == 1 and first[0, 2, 30, 0] == 0
    assert engine.forward(images(4), target=RegionTarget(1, mask)).outputs[TARGET][0, 1, 30, 0] == 1
    assert engine.forward(images(4, n=3), target=RegionTarget(1, mask)).outputs[TARGET].shape[0] == 3
    assert engine.forward(images(4), target=ClassTarget(0)).outputs[TARGET][:, 0].all()
    predicted = [engine.forward(images(seed), target=RegionTarget(0)).outputs[TARGET] for seed in (5, 6)]
    assert not np.array_equal(*predicted)


def test_predicted_region_is_read_from_the_output(segmenter) -> None:
    _, path, _ = segmenter
    engine = Engine(path, device="cpu")
    x = images(5)
    p = engine.forward(x, target=RegionTarget(0))
    predicted = p.outputs[OUTPUT].argmax(axis=1) == 0
    assert predicted.any() and not predicted.all()
    np.testing.assert_array_equal(p.outputs[TARGET][:, 0], predicted)


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "layercam"])
def test_segmentation_maps_match_pytorch_grad_cam(segmenter, method) -> None:
    from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, LayerCAM
    from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget

    model, path, _ = segmenter
    x = images(6)
    engine = Engine(path, device="cpu")

    class Out(nn.Module):  # pytorch-grad-cam's tutorial wraps the model to return the tensor
        def __init__(self, m: nn.Module) -> None:
            super().__init__()
            self.m = m

        def forward(self, t: torch.Tensor) -> torch.Tensor:
            return self.m(t)["out"]

    shown = 0
    for k in range(K):
        mask = np.zeros((SIZE, SIZE), np.float32)
        mask[8 * k:8 * k + 16, 4:28] = 1
        got = engine.explain(x, method, layer="block", target=RegionTarget(k, mask)).saliency
        cam = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "layercam": LayerCAM}[method]
        with cam(model=Out(model), target_layers=[model.block]) as extractor:
            expected = extractor(input_tensor=torch.from_numpy(x), targets=[SemanticSegmentationTarget(k, mask)] * 2)
        for n in range(2):
            if expected[n].std() < 1e-6:
                assert got[n].std() < 1e-6
                continue
            shown += 1
            assert np.corrcoef(got[n].ravel(), expected[n].ravel())[0, 1] >= 0.999, (k, n)
    assert shown >= 3


def test_similarity_target_gradient_and_map(embedder) -> None:
    from pytorch_grad_cam import GradCAM

    class SimilarityToConceptTarget:  # pytorch-grad-cam's tutorial defines it (the package does not ship it)
        def __init__(self, features: torch.Tensor) -> None:
            self.features = features

        def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
            return torch.nn.CosineSimilarity(dim=0)(model_output, self.features)

    model, path, manifest = embedder
    assert manifest.target_shape == (D,)
    x = images(7)
    concept = np.random.default_rng(8).normal(size=D).astype(np.float32)
    engine = Engine(path, device="cpu")
    p = engine.forward(x, target=SimilarityTarget(concept))
    c = torch.from_numpy(concept).double()
    out, _, grads = eager64(model, x, ["features.3"],
                            lambda e: torch.nn.functional.cosine_similarity(e, c[None], dim=1))
    cos = (out @ concept) / (np.linalg.norm(out, axis=1) * np.linalg.norm(concept))
    np.testing.assert_allclose(p.outputs[SCORE], cos, rtol=1e-5)
    g = p.outputs["gradient.features.3"]
    assert np.linalg.norm(g - grads["features.3"]) <= 1e-4 * np.linalg.norm(grads["features.3"])
    got = engine.explain(x, "gradcam", target=SimilarityTarget(concept)).saliency
    with GradCAM(model=model, target_layers=[model.features[3]]) as extractor:
        expected = extractor(input_tensor=torch.from_numpy(x),
                             targets=[SimilarityToConceptTarget(torch.from_numpy(concept))] * 2)
    for n in range(2):
        assert expected[n].std() > 1e-6
        assert np.corrcoef(got[n].ravel(), expected[n].ravel())[0, 1] >= 0.999


@pytest.mark.parametrize("method", ["ablationcam", "scorecam"])
def test_perturbation_methods_judge_copies_by_the_target(segmenter, method) -> None:
    """Each copy's score is Σ target ⊙ output of the copy: brute force in eager PyTorch."""
    model, path, _ = segmenter
    x = images(9, n=1)
    mask = np.zeros((SIZE, SIZE), np.float32)
    mask[6:22, 6:22] = 1
    target = RegionTarget(1, mask)
    engine = Engine(path, device="cpu", chunk_size=5)
    r = engine.explain(x, method, layer="block", target=target)
    vec = torch.from_numpy(target.vector(None, (K, SIZE, SIZE), 1))
    with torch.no_grad():
        feats = {}
        h = model.block.register_forward_hook(lambda _m, _i, o: feats.__setitem__("a", o))
        base = float((model(torch.from_numpy(x))["out"] * vec).sum())
        h.remove()
        a = feats["a"][0]
        c = a.shape[0]
        if method == "ablationcam":
            copies = a[None].repeat(c, 1, 1, 1)
            copies[torch.arange(c), torch.arange(c)] = 0
            h = model.block.register_forward_hook(lambda _m, _i, o: copies)
            scores = (model(torch.from_numpy(x).repeat(c, 1, 1, 1))["out"] * vec).flatten(1).sum(1)
            h.remove()
            expected = torch.relu(torch.einsum("c,chw->hw", (base - scores) / base, a)).numpy()
        else:
            up = nn.functional.interpolate(a[None], size=(SIZE, SIZE), mode="bilinear", align_corners=False)[0]
            lo = up.flatten(1).min(1).values[:, None, None]
            hi = up.flatten(1).max(1).values[:, None, None]
            masks = torch.where(hi > lo, (up - lo) / (hi - lo).clamp_min(1e-30), torch.zeros_like(up))
            scores = (model(torch.from_numpy(x) * masks[:, None])["out"] * vec).flatten(1).sum(1)
            expected = torch.relu(torch.einsum("c,chw->hw", scores.softmax(0), a)).numpy()
    assert np.ptp(expected) > 0
    np.testing.assert_allclose(r.low_res[0], expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_lraspp_mobilenet_v3_in_target_mode(tmp_path) -> None:
    """torchvision's LR-ASPP MobileNetV3-Large (random weights, 64×64): dict output picked by name,
    verified at export, Grad-CAM for a class region."""
    import torchvision

    model = torchvision.models.segmentation.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None,
                                                                       num_classes=4).eval()
    path = tmp_path / "lraspp.cam.onnx"
    manifest = camrt.export(model, layers=["backbone.12"], path=path, input_shape=(1, 3, 64, 64),
                            output_index="out", target=True)
    assert manifest.target_shape == (4, 64, 64)
    mask = np.zeros((64, 64), bool)
    mask[16:48, 16:48] = True
    r = Engine(path, device="cpu").explain(images(10)[:, :, :, :].repeat(2, axis=2).repeat(2, axis=3), "gradcam",
                                           target=RegionTarget(1, mask))
    assert r.saliency.shape == (2, 64, 64) and r.logits.shape == (2, 4, 64, 64) and np.isfinite(r.scores).all()


@pytest.mark.parametrize(("target", "message"), [
    (RegionTarget(1, np.ones((8, 8), bool)), "the mask is 8×8 and the model's output is 32×32"),
    (RegionTarget(5, np.ones((SIZE, SIZE), bool)), "target class 5 is out of range"),
    (ArrayTarget(np.ones((2, 2))), "the target has shape (2, 2)"),
    (SimilarityTarget(np.ones(D)), "a similarity target needs an N×D output"),
    ("class 1", "target must be a camrt.engine.targets builder"),
    # finite in float64, infinite in the model's float32: the engine does not sum such vectors again
    (RegionTarget(1, np.full((SIZE, SIZE), 1e300)), "the mask's values overflow float32"),
    (ArrayTarget(np.full((K, SIZE, SIZE), -1e300)), "the target array's values overflow float32"),
])
def test_bad_targets_are_one_line_errors(segmenter, target, message) -> None:
    _, path, _ = segmenter
    with pytest.raises(InputError) as e:
        Engine(path, device="cpu").explain(images(11), "gradcam", target=target)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_builder_of_its_own_with_a_non_finite_vector_is_refused(segmenter) -> None:
    class Broken(ClassTarget):  # a user's builder: its vector is checked by the engine
        finite_vector = False

        def vector(self, output, shape, n):
            v = super().vector(output, shape, n)
            v[-1, 0, 0, 0] = np.nan
            return v

    _, path, _ = segmenter
    with pytest.raises(InputError, match="NaN or infinite values for image 1"):
        Engine(path, device="cpu").explain(images(12)[:2], "gradcam", target=Broken(1))


def test_wrong_contract_and_options_are_refused(segmenter, embedder, tmp_path) -> None:
    _, seg, _ = segmenter
    _, emb, _ = embedder
    x = images(12)
    with pytest.raises(InputError, match="exported in target mode: give target="):
        Engine(seg, device="cpu").explain(x, "gradcam", class_idx=1)
    with pytest.raises(InputError, match="needs a target"):
        Engine(seg, device="cpu").explain(x, "gradcam")
    with pytest.raises(InputError, match="concept vector has 3 values and the embedding 16"):
        Engine(emb, device="cpu").explain(x, "gradcam", target=SimilarityTarget(np.ones(3)))
    with pytest.raises(InputError, match="not offered in target mode"):
        Engine(seg, device="cpu", chunk_graphs=True).explain(x, "scorecam", target=ClassTarget(0))
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()
    path = tmp_path / "cls.cam.onnx"
    camrt.export(net, layers=["1"], path=path, input_shape=(1, 3, SIZE, SIZE))
    with pytest.raises(InputError, match="exported for classes"):
        Engine(path, device="cpu").explain(x, "gradcam", target=ClassTarget(0))
    from camrt.explain import read_target

    with pytest.raises(InputError, match="exported for classes; --target-class, --mask and --concept are for"):
        read_target(Engine(path, device="cpu"), target_class=0)
    with pytest.raises(InputError, match="'aux', 'out'|out, aux"):
        camrt.export(TinySegmenter().eval(), layers=["block"], path=tmp_path / "x.onnx", input_shape=(1, 3, SIZE, SIZE),
                     output_index="logits", target=True)
    with pytest.raises(InputError, match="map heads and fp16 are not offered in target mode"):
        camrt.export(TinySegmenter().eval(), layers=["block"], path=tmp_path / "x.onnx", input_shape=(1, 3, SIZE, SIZE),
                     output_index="out", target=True, maps=["gradcam"])


def tiny_segmenter() -> nn.Module:
    """For `--arch tests.test_engine_targets:tiny_segmenter`."""
    return TinySegmenter()


def _cli(*args):
    from click.testing import CliRunner

    from camrt.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def cli_files(tmp_path_factory):
    """The tiny segmenter exported by `camrt export --target --output-index out`, an image, a mask
    of the output's size and one of another size."""
    from camrt.visual.overlay import write_image

    d = tmp_path_factory.mktemp("cli")
    torch.save(_init(TinySegmenter(), 1).state_dict(), d / "seg.pt")
    r = _cli("export", d / "seg.pt", "--arch", "tests.test_engine_targets:tiny_segmenter", "--input-shape",
             f"1,3,{SIZE},{SIZE}", "--layer", "block", "--target", "--output-index", "out", "-o", d / "seg.cam.onnx")
    assert r.exit_code == 0, r.output
    assert "output 3×32×32 per image, explained for a target" in r.output
    rng = np.random.default_rng(0)
    write_image(d / "img.png", rng.integers(0, 255, size=(48, 40, 3), dtype=np.uint8))
    mask = np.zeros((SIZE, SIZE, 3), np.uint8)
    mask[5:20, 8:24] = 255
    write_image(d / "mask.png", mask)
    write_image(d / "small.png", mask[:16, :16])
    np.save(d / "concept.npy", np.ones(5, np.float32))
    return d


def test_cli_explains_a_region_and_a_predicted_region(cli_files, tmp_path) -> None:
    d = cli_files
    r = _cli("explain", d / "seg.cam.onnx", d / "img.png", "--target-class", 2, "--mask", d / "mask.png",
             "-m", "gradcam,ablationcam", "-o", tmp_path / "a")
    assert r.exit_code == 0, r.output
    assert "img.png: score " in r.output and (tmp_path / "a" / "img.grid.png").is_file()
    from camrt.visual.overlay import read_image

    plain = _cli("explain", d / "seg.cam.onnx", d / "img.png", "--target-class", 2, "--mask", d / "mask.png",
                 "-o", tmp_path / "c", "--alpha", "0.5")
    assert plain.exit_code == 0
    tile, _ = read_image(tmp_path / "c" / "img.gradcam.png")
    # the region's outline is drawn in white over the overlay: pure white pixels along its boundary
    assert (tile == 255).all(axis=2).sum() > 20
    r = _cli("explain", d / "seg.cam.onnx", d / "img.png", "--target-class", 0, "-o", tmp_path / "b")
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize(("args", "fragment"), [
    (["--target-class", 1, "--mask", "small.png"], "the mask is 16×16 and the model's output is 32×32"),
    (["--concept", "concept.npy"], "a similarity target needs an N×D output"),
    (["--class-idx", 1], "exported in target mode: use --target-class"),
    ([], "say what to explain with --target-class K"),
    (["--target-class", 7], "target class 7 is out of range"),
])
def test_cli_bad_targets_are_one_line(cli_files, tmp_path, args, fragment) -> None:
    from tests.cli_checks import assert_one_line_error

    d = cli_files
    full = [d / a if isinstance(a, str) and a.endswith((".png", ".npy")) else a for a in args]
    r = _cli("explain", d / "seg.cam.onnx", d / "img.png", *full, "-o", tmp_path / "x")
    assert_one_line_error(r, fragment)


def test_box_target_picks_the_anchors_that_overlap() -> None:
    from camrt.engine.targets import BoxTarget, box_iou, box_region

    # three anchors, K = 2: boxes (cx, cy, w, h) then two class scores
    out = np.array([[[20, 20, 10, 10, 0.1, 0.2], [22, 21, 10, 12, 0.3, 0.4], [60, 60, 10, 10, 0.5, 0.6]]], np.float32)
    t = BoxTarget((15, 15, 25, 25), 1)
    t.check((3, 6))
    v = t.vector(out, (3, 6), 1)
    np.testing.assert_array_equal(v[0, :, 5], [1, 1, 0])
    assert v[0, :, :5].sum() == 0
    assert np.isclose(t.score(out, v[0])[0], 0.2 + 0.4)
    assert np.isclose(box_iou(np.array([[0, 0, 2, 2]], float), np.array([1, 1, 3, 3], float))[0], 1 / 7)
    assert box_region((1, 2, 3, 5), (6, 6)).sum() == 6
    with pytest.raises(InputError, match="no anchor's box overlaps the given box with IoU ≥ 0.5 in image 0"):
        BoxTarget((40, 0, 50, 10), 0).vector(out, (3, 6), 1)
    with pytest.raises(InputError, match="lies outside the 30×20 image"):
        BoxTarget((15, 15, 35, 25), 0, within=(20, 30)).check((3, 6))
    with pytest.raises(InputError, match="x0 < x1 and y0 < y1"):
        BoxTarget((5, 5, 5, 9), 0).check((3, 6))
    with pytest.raises(InputError, match="needs an N×A×\\(4\\+K\\) detection output"):
        BoxTarget((1, 1, 2, 2), 0).check((3, 4, 5))
    with pytest.raises(InputError, match="target class 2 is out of range"):
        BoxTarget((1, 1, 2, 2), 2).check((3, 6))
    scaled = BoxTarget((10, 20, 30, 40), 0).scaled((100, 50), (200, 200))
    assert scaled.box == (40.0, 40.0, 120.0, 80.0) and scaled.within == (200, 200)
    with pytest.raises(InputError, match="outside the 50×100 image"):
        BoxTarget((10, 20, 60, 40), 0).scaled((100, 50), (200, 200))
