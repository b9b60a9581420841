"""Perturbation methods against brute-force eager oracles: Ablation-CAM and Recipro-CAM through
the graph's tail (the oracle re-runs the whole model with the target's output replaced), and
Score-CAM through the forward-only graph (the oracle masks the input in torch)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import camrt
from camrt.engine import Engine
from camrt.graph import tail

SIZE = (3, 16, 16)


class SkipNet(nn.Module):
    """The stem's output skips past the target block, so it crosses the tail's cut."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.block = nn.Sequential(nn.Conv2d(6, 6, 3, padding=1), nn.ReLU())
        self.head = nn.Conv2d(6, 6, 3, padding=1)
        self.fc = nn.Linear(6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.relu(self.stem(x))
        y = torch.relu(self.head(self.block(s)) + s)
        return self.fc(y.mean((2, 3)))


def export_block(tmp_path_factory, net: type[nn.Module], seed: int, **options) -> tuple[nn.Module, object]:
    """A `net` seeded with `seed`, and its export at the layer `block` for SIZE inputs."""
    torch.manual_seed(seed)
    model = net().eval()
    path = tmp_path_factory.mktemp(net.__name__) / f"{net.__name__}.cam.onnx"
    camrt.export(model, layers=["block"], path=path, input_shape=(1, *SIZE), **options)
    return model, path


@pytest.fixture(scope="module")
def model_and_path(tmp_path_factory):
    return export_block(tmp_path_factory, SkipNet, seed=3)


def eager_scores(model: nn.Module, x: np.ndarray, perturbed: np.ndarray, cls: int, probability: bool) -> np.ndarray:
    """Class scores of the whole model with the block's output replaced by each perturbed map."""
    out = []
    for a in perturbed:
        handle = model.block.register_forward_hook(lambda m, i, o, a=a: torch.from_numpy(a[None]))
        try:
            with torch.no_grad():
                z = model(torch.from_numpy(x))
        finally:
            handle.remove()
        out.append(float((z.softmax(1) if probability else z)[0, cls]))
    return np.array(out)


def test_the_tail_reads_the_skip_from_the_original_pass(model_and_path) -> None:
    import onnx

    _, boundary = tail(onnx.load(model_and_path[1]), "block")
    assert boundary, "the stem's output should cross the cut"


@pytest.mark.parametrize("method", ["ablationcam", "reciprocam"])
def test_matches_brute_force_eager(model_and_path, method: str) -> None:
    model, path = model_and_path
    x = np.random.default_rng(0).normal(size=(2, *SIZE)).astype(np.float32)
    engine = Engine(path, device="cpu", chunk_size=7)
    r = engine.explain(x, method, class_idx=[1, 4])
    with torch.no_grad():
        acts = model.block(torch.relu(model.stem(torch.from_numpy(x)))).numpy()
    for n, cls in enumerate([1, 4]):
        a = acts[n]
        c, h, w = a.shape
        if method == "ablationcam":
            copies = np.repeat(a[None], c, axis=0)
            copies[np.arange(c), np.arange(c)] = 0
            scores = eager_scores(model, x[n:n + 1], copies, cls, probability=False)
            with torch.no_grad():
                base = float(model(torch.from_numpy(x[n:n + 1]))[0, cls])
            expected = np.maximum(np.einsum("c,chw->hw", (base - scores) / base, a), 0)
        else:
            copies = np.zeros((h * w, c, h, w), np.float32)
            for p in range(h * w):
                copies[p, :, p // w, p % w] = a[:, p // w, p % w]
            expected = eager_scores(model, x[n:n + 1], copies, cls, probability=True).reshape(h, w)
        np.testing.assert_allclose(r.low_res[n], expected, rtol=1e-4, atol=1e-6)


def test_scorecam_matches_brute_force_eager(model_and_path) -> None:
    model, path = model_and_path
    x = np.random.default_rng(4).normal(size=(2, *SIZE)).astype(np.float32)
    r = Engine(path, device="cpu", chunk_size=4).explain(x, "scorecam", class_idx=[0, 3])
    xt = torch.from_numpy(x)
    with torch.no_grad():
        acts = model.block(torch.relu(model.stem(xt)))
        up = torch.nn.functional.interpolate(acts, size=SIZE[1:], mode="bilinear", align_corners=False)
        lo = up.flatten(2).min(-1).values[..., None, None]
        hi = up.flatten(2).max(-1).values[..., None, None]
        masks = (up - lo) / (hi - lo)
        for n, cls in enumerate([0, 3]):
            scores = torch.stack([model(xt[n:n + 1] * masks[n, k])[0, cls] for k in range(masks.shape[1])])
            expected = torch.relu(torch.einsum("c,chw->hw", scores.softmax(0), acts[n])).numpy()
            np.testing.assert_allclose(r.low_res[n], expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("method", ["ablationcam", "reciprocam", "scorecam"])
def test_chunk_size_does_not_change_results_and_progress_is_reported(model_and_path, method: str) -> None:
    _, path = model_and_path
    x = np.random.default_rng(1).normal(size=(3, *SIZE)).astype(np.float32)
    results = []
    for chunk in (1, 5, 300):
        calls: list[tuple[int, int]] = []
        results.append(Engine(path, device="cpu", chunk_size=chunk).explain(
            x, method, progress=lambda d, t, calls=calls: calls.append((d, t))))
        total = calls[-1][1]
        assert calls[-1][0] == total and total == 3 * (16 * 16 if method == "reciprocam" else 6)
        assert all(b[0] > a[0] for a, b in zip(calls, calls[1:], strict=False))
        assert len(calls) == sum(-(-(total // 3) // chunk) for _ in range(3))
    for other in results[1:]:
        np.testing.assert_allclose(other.low_res, results[0].low_res, rtol=1e-5, atol=1e-7)


def test_progress_callback_can_stop_a_run(model_and_path) -> None:
    def stop(done: int, total: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Engine(model_and_path[1], device="cpu", chunk_size=4).explain(
            np.zeros((1, *SIZE), np.float32), "reciprocam", progress=stop)


@pytest.fixture(scope="module")
def resnet18_layer4(tmp_path_factory):
    """A random-weight resnet18 exported at layer4, and one fixed input: (model, path, x)."""
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    path = tmp_path_factory.mktemp("r18") / "r18.cam.onnx"
    camrt.export(model, layers=["layer4"], path=path)
    return model, path, np.random.default_rng(2).normal(size=(1, 3, 224, 224)).astype(np.float32)


@pytest.mark.slow
def test_ablationcam_matches_pytorch_grad_cam(resnet18_layer4) -> None:
    """pytorch-grad-cam's AblationCAM re-runs the whole model; camrt only the tail: same map."""
    from pytorch_grad_cam import AblationCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model, path, x = resnet18_layer4
    ours = Engine(path, device="cpu", chunk_size=64).explain(x, "ablationcam", class_idx=7).saliency[0]
    with AblationCAM(model=model, target_layers=[model.layer4]) as ref:
        theirs = ref(input_tensor=torch.from_numpy(x), targets=[ClassifierOutputTarget(7)])[0]
    assert np.corrcoef(ours.ravel(), theirs.ravel())[0, 1] >= 0.999


@pytest.mark.slow
def test_scorecam_matches_torchcam(resnet18_layer4) -> None:
    """TorchCAM normalises each channel's map before upsampling it, camrt after (as the paper's
    M_k = norm(up(A_k))); the masks differ slightly at the borders, so the maps agree closely but
    not to rounding."""
    from torchcam.methods import ScoreCAM

    model, path, x = resnet18_layer4
    ours = Engine(path, device="cpu", chunk_size=64).explain(x, "scorecam", class_idx=7).low_res[0]
    with ScoreCAM(model, "layer4", batch_size=64) as extractor:
        with torch.no_grad():
            model(torch.from_numpy(x))
        theirs = extractor(class_idx=7, normalized=False)[0][0].numpy()
    assert np.corrcoef(ours.ravel(), theirs.ravel())[0, 1] >= 0.99


def test_methods_without_gradient_skip_the_gradient_branch(model_and_path) -> None:
    """The same maps from a forward-only run; and a gradient method refuses such a run."""
    _, path = model_and_path
    engine = Engine(path, device="cpu")
    x = np.random.default_rng(5).normal(size=(2, *SIZE)).astype(np.float32)
    full, light = engine.forward(x, [1, -1]), engine.forward(x, [1, -1], gradient=False)
    assert "gradient.block" not in light.outputs
    np.testing.assert_array_equal(light.outputs["class_idx_used"], full.outputs["class_idx_used"])
    for method in ("eigencam", "reciprocam", "scorecam", "ablationcam"):
        np.testing.assert_allclose(engine.explain_pass(light, method).saliency,
                                   engine.explain_pass(full, method).saliency, rtol=1e-5, atol=1e-6)
    with pytest.raises(camrt.errors.InputError, match="gradient=False"):
        engine.explain_pass(light, "gradcam")
