"""camrt.engine.Engine on a tiny exported model: explanations against hand computations from the
raw graph outputs, chunking, sampled methods, multi-layer fusion, errors, providers, image inputs.

The model is exported once for the module (TinyNet, 3×32×32, target layers layer1 and layer2).
layer2 is followed by global-average-pool → linear, so its gradient is constant over the map;
layer1 is not, so methods that only differ through a varying gradient are told apart there.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F  # noqa: N812

import camrt
from camrt.engine import Engine
from camrt.engine import session as session_module
from camrt.errors import InputError
from camrt.manifest import METADATA_KEY
from camrt.methods import METHODS, fuse, normalize, upsample
from tests.tiny import TinyNet, diverse_inputs, make

SIZE = (32, 32)
K = 5  # TinyNet's classes
LAYERS = ["layer1", "layer2"]
GRADIENT_METHODS = [n for n, m in METHODS.items() if m.family == "gradient"]


@pytest.fixture(scope="module")
def model() -> TinyNet:
    return make(TinyNet, seed=3)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory, model):
    path = tmp_path_factory.mktemp("engine") / "tiny.cam.onnx"
    camrt.export(model, layers=LAYERS, path=path, input_shape=(1, 3, *SIZE))
    return path


@pytest.fixture(scope="module")
def engine(model_path) -> Engine:
    return Engine(model_path, device="cpu")


@pytest.fixture(scope="module")
def x(model) -> np.ndarray:
    """Five preprocessed inputs whose top-1 classes are not all the same."""
    batch = diverse_inputs(model, (5, 3, *SIZE), seed=0).astype(np.float32)
    assert len(set(model(torch.from_numpy(batch)).argmax(1).tolist())) > 1
    return batch


@pytest.fixture(scope="module")
def raw(model_path):
    """A plain onnxruntime session on the file: the graph outputs without the engine."""
    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]

    def run(batch: np.ndarray, cls: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip(names, sess.run(None, {"input": batch, "class_idx": cls.astype(np.int64)}), strict=True))

    return run


def hand_gradcam(a: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM written out: weights = spatial mean of the gradient, ReLU(Σ w A), torch's bilinear
    upsampling (half-pixel centres) to the input size, then per-image min-max scaling."""
    w = g.astype(np.float64).mean(axis=(2, 3))
    low = np.maximum((w[:, :, None, None] * a).sum(axis=1), 0.0)
    up = F.interpolate(torch.from_numpy(low)[:, None], size=SIZE, mode="bilinear", align_corners=False)[:, 0].numpy()
    lo, hi = up.min(axis=(1, 2), keepdims=True), up.max(axis=(1, 2), keepdims=True)
    return low, (up - lo) / (hi - lo)


def softmax(z: np.ndarray) -> np.ndarray:
    return torch.softmax(torch.from_numpy(z).double(), dim=1).numpy()


# --- explanations vs the raw graph outputs --------------------------------------------------------------


def test_provider_is_cpu(engine) -> None:
    assert engine.provider == "CPUExecutionProvider"
    assert engine.input_size == SIZE


def test_run_returns_the_graph_outputs(engine, raw, x) -> None:
    cls = np.array([-1, 2, -1, 0, 4], np.int64)
    got, expected = engine.run(x, cls), raw(x, cls)
    assert set(got) == set(expected)
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)


@pytest.mark.parametrize("layer", LAYERS)
def test_gradcam_top1_by_hand(engine, raw, model, x, layer) -> None:
    out = raw(x, np.array([-1], np.int64))
    low, saliency = hand_gradcam(out[f"activation.{layer}"], out[f"gradient.{layer}"])
    t0 = time.perf_counter()
    r = engine.explain(x, "gradcam", layer=layer)
    wall = time.perf_counter() - t0
    assert r.method == "gradcam" and r.layers == (layer,)
    assert r.saliency.shape == (5, *SIZE) and r.saliency.dtype == np.float32
    np.testing.assert_allclose(r.low_res, low, rtol=1e-5, atol=1e-6 * np.abs(low).max())
    np.testing.assert_allclose(r.saliency, saliency, atol=1e-5)
    assert r.saliency.min() == 0.0 and r.saliency.max() == 1.0
    with torch.no_grad():
        top1 = model(torch.from_numpy(x)).argmax(1).numpy()
    np.testing.assert_array_equal(r.class_idx, top1)
    np.testing.assert_array_equal(r.logits, out["logits"])
    np.testing.assert_allclose(r.scores, softmax(out["logits"])[np.arange(5), top1], rtol=1e-5)
    # The two timed parts are both measured, and are parts of the call: their sum cannot exceed it.
    assert r.timings["inference"] > 0 and r.timings["method"] > 0
    assert r.timings["inference"] + r.timings["method"] <= wall


@pytest.mark.parametrize("class_idx", [3, [4, 3, 2, 1, 0], np.array([0, 0, 1, 1, -1])])
def test_gradcam_explicit_class_by_hand(engine, raw, x, class_idx) -> None:
    cls = np.broadcast_to(np.asarray(class_idx, np.int64), (5,))
    out = raw(x, cls.copy())
    low, saliency = hand_gradcam(out["activation.layer1"], out["gradient.layer1"])
    r = engine.explain(x, "gradcam", class_idx=class_idx, layer="layer1")
    expected_cls = np.where(cls == -1, out["logits"].argmax(1), cls)
    np.testing.assert_array_equal(r.class_idx, expected_cls)
    np.testing.assert_allclose(r.low_res, low, rtol=1e-5, atol=1e-6 * np.abs(low).max())
    np.testing.assert_allclose(r.saliency, saliency, atol=1e-5)
    np.testing.assert_allclose(r.scores, softmax(out["logits"])[np.arange(5), expected_cls], rtol=1e-5)
    # Another class gives another map (the class reaches the graph).
    other = engine.explain(x, "gradcam", class_idx=(expected_cls + 1) % K, layer="layer1")
    assert np.abs(other.saliency - r.saliency).max() > 0.1


def test_default_layer_is_the_last_exported(engine, x) -> None:
    assert engine.explain(x, "gradcam").layers == ("layer2",)
    np.testing.assert_array_equal(engine.explain(x, "gradcam").saliency,
                                  engine.explain(x, "gradcam", layer="layer2").saliency)


@pytest.mark.parametrize("method", [m for m in GRADIENT_METHODS if m != "cam"])
def test_each_gradient_method_is_dispatched(engine, raw, x, method) -> None:
    # At layer1 the gradient varies over the map, so the gradient methods give different maps.
    out = raw(x, np.array([-1], np.int64))
    a, g = out["activation.layer1"], out["gradient.layer1"]
    expected = METHODS[method].map(a, g)
    r = engine.explain(x, method, layer="layer1")
    np.testing.assert_allclose(r.low_res, expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())
    np.testing.assert_allclose(r.saliency, normalize(upsample(expected, SIZE)), atol=1e-5)
    if method != "gradcam":
        assert np.abs(r.saliency - engine.explain(x, "gradcam", layer="layer1").saliency).max() > 1e-2


def test_cam_on_a_pooled_layer(engine, raw, model, x) -> None:
    # layer2 → GAP → fc: CAM's weights are the classifier row of the class.
    out = raw(x, np.array([-1], np.int64))
    r = engine.explain(x, "cam")
    w = model.fc.weight.detach().numpy()[r.class_idx]
    expected = np.maximum(np.einsum("nc,nchw->nhw", w, out["activation.layer2"]), 0)
    np.testing.assert_allclose(r.low_res, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())
    with pytest.raises(InputError, match="global-average-pool"):
        engine.explain(x, "cam", layer="layer1")


# --- chunking ---------------------------------------------------------------------------------------------


class CountingSession:
    """Wraps an onnxruntime session and records the batch size of every run."""

    def __init__(self, sess) -> None:
        self.sess, self.batches = sess, []

    def run(self, names, feeds):
        self.batches.append(len(feeds["input"]))
        return self.sess.run(names, feeds)

    def __getattr__(self, name):
        return getattr(self.sess, name)


def assert_same(a, b, atol: float = 1e-6) -> None:
    np.testing.assert_array_equal(a.class_idx, b.class_idx)
    np.testing.assert_allclose(a.logits, b.logits, atol=atol)
    np.testing.assert_allclose(a.scores, b.scores, atol=atol)
    np.testing.assert_allclose(a.low_res, b.low_res, atol=atol)
    np.testing.assert_allclose(a.saliency, b.saliency, atol=atol)


@pytest.mark.parametrize(("chunk", "runs"), [(1, [1] * 5), (2, [2, 2, 1]), (16, [5])])
def test_chunking_gives_the_same_results(model_path, engine, x, chunk, runs) -> None:
    chunked = Engine(model_path, device="cpu", chunk_size=chunk)
    counter = chunked._session = CountingSession(chunked._session)
    for layer in LAYERS:
        assert_same(chunked.explain(x, "gradcam", layer=layer), engine.explain(x, "gradcam", layer=layer))
    assert counter.batches == runs * 2
    counter.batches.clear()
    # 5 images × 4 noisy copies = 20 rows for the copies, in chunks too; same seed, same noise.
    got = chunked.explain(x, "smoothgradcam++", layer="layer1", seed=3)
    assert_same(got, engine.explain(x, "smoothgradcam++", layer="layer1", seed=3))
    assert max(counter.batches) <= chunk and sum(counter.batches) == 5 + 5 * 4


def test_chunk_size_must_be_positive(model_path) -> None:
    for bad in (0, -1, 1.5):
        with pytest.raises(InputError, match="chunk_size"):
            Engine(model_path, device="cpu", chunk_size=bad)


# --- sampled methods ------------------------------------------------------------------------------------


def test_sampled_method_is_seeded(engine, x) -> None:
    a = engine.explain(x, "smoothgradcam++", layer="layer1", seed=1)
    b = engine.explain(x, "smoothgradcam++", layer="layer1", seed=1)
    c = engine.explain(x, "smoothgradcam++", layer="layer1", seed=2)
    np.testing.assert_array_equal(a.saliency, b.saliency)
    np.testing.assert_array_equal(a.low_res, b.low_res)
    assert np.abs(a.saliency - c.saliency).max() > 1e-3
    # The copies are explained for the input's class, not their own top-1.
    np.testing.assert_array_equal(a.class_idx, engine.explain(x, "gradcam").class_idx)
    assert a.timings["inference"] > 0


def test_sampled_options(engine, x) -> None:
    few = engine.explain(x, "smoothgradcam++", layer="layer1", seed=1, n=2)
    many = engine.explain(x, "smoothgradcam++", layer="layer1", seed=1)  # n=4 by default
    assert np.abs(few.saliency - many.saliency).max() > 1e-3
    zero_noise = engine.explain(x, "smoothgradcam++", layer="layer1", sigma=0.0)
    np.testing.assert_allclose(zero_noise.low_res, engine.explain(x, "gradcam++", layer="layer1").low_res,
                               rtol=1e-4, atol=1e-6)  # without noise the copies are the input
    with pytest.raises(InputError, match="no option.*bogus"):
        engine.explain(x, "smoothgradcam++", bogus=1)
    with pytest.raises(InputError, match="gradcam.*takes no options"):
        engine.explain(x, "gradcam", n=3)


def test_integratedgradcam_uses_the_black_image_as_baseline(engine, raw, x) -> None:
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    black = ((0 - mean) / std).astype(np.float32)[None, :, None, None]
    steps = 3
    r = engine.explain(x, "integratedgradcam", layer="layer1", steps=steps)
    cls = r.class_idx
    maps = []
    for k in range(1, steps + 1):
        out = raw((black + k / steps * (x - black)).astype(np.float32), cls)
        maps.append(METHODS["gradcam"].map(out["activation.layer1"], out["gradient.layer1"]))
    expected = np.mean(maps, axis=0)
    np.testing.assert_allclose(r.low_res, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())


# --- multi-layer fusion ---------------------------------------------------------------------------------


def test_fusion_of_two_layers(engine, x) -> None:
    one = engine.explain(x, "layercam", layer="layer1")
    two = engine.explain(x, "layercam", layer="layer2")
    fused = engine.explain(x, "layercam", layer=["layer1", "layer2"])
    assert fused.layers == ("layer1", "layer2")
    np.testing.assert_allclose(fused.saliency, fuse([one.low_res, two.low_res], SIZE), atol=1e-6)
    np.testing.assert_array_equal(fused.low_res, two.low_res)  # the deepest layer's map
    assert np.abs(fused.saliency - two.saliency).max() > 1e-2
    assert fused.saliency.min() >= 0 and fused.saliency.max() <= 1


# --- one run, several methods ------------------------------------------------------------------------------


def test_explain_pass_serves_several_methods_from_one_run(engine, x, monkeypatch) -> None:
    methods = ("gradcam", "gradcam++", "layercam", "eigencam")
    expected = {m: engine.explain(x, m, layer="layer1") for m in methods}  # one run each
    calls = []
    original = engine.run
    monkeypatch.setattr(engine, "run", lambda batch, cls, *h: calls.append(len(batch)) or original(batch, cls, *h))
    p = engine.forward(x)
    assert calls == [5]
    for m in methods:
        r = engine.explain_pass(p, m, layer="layer1")
        np.testing.assert_array_equal(r.saliency, expected[m].saliency)
        np.testing.assert_array_equal(r.class_idx, expected[m].class_idx)
        np.testing.assert_array_equal(r.scores, expected[m].scores)
    assert calls == [5]  # no further run of the graph
    engine.explain_pass(p, "smoothgradcam++", layer="layer1", n=2)
    assert calls == [5, 10]  # a sampled method runs its copies only


def test_errors_are_raised_before_running_the_model(engine, x, monkeypatch) -> None:
    monkeypatch.setattr(engine, "run", lambda *a: pytest.fail("the model ran"))
    with pytest.raises(InputError):
        engine.explain(x, "nope")
    with pytest.raises(InputError):
        engine.explain(x, "gradcam", layer="conv1")


# --- errors -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "fragments"), [
    ({"method": "nope"}, ["unknown method 'nope'", "gradcam", "camrt methods"]),
    ({"layer": "conv1"}, ["layer 'conv1' was not exported", "layer1, layer2"]),
    ({"layer": ["layer1", "fc"]}, ["layer 'fc' was not exported"]),
    ({"layer": []}, ["empty"]),
    ({"class_idx": K}, [f"class_idx {K} is out of range", f"{K} classes", "-1 means the top-1"]),
    ({"class_idx": -2}, ["class_idx -2 is out of range"]),
    ({"class_idx": [0, 1, 7, 1, 1]}, ["class_idx 7 is out of range"]),
    ({"class_idx": [0, 1]}, ["2 entries for 5 images"]),
    # a float or a string is refused, not truncated (2.7 was class 2) or parsed
    ({"class_idx": 2.7}, ["class_idx must be an integer class", "got 2.7"]),
    ({"class_idx": "3"}, ["class_idx must be an integer class", "got '3'"]),
    ({"class_idx": [1.0, 2.0, 0.0, 1.0, 1.0]}, ["class_idx must be an integer class"]),
    ({"class_idx": True}, ["class_idx must be an integer class"]),
    ({"class_idx": []}, ["class_idx must be an integer class"]),
])
def test_explain_errors(engine, x, kwargs, fragments) -> None:
    with pytest.raises(InputError) as e:
        engine.explain(x, **kwargs)
    for f in fragments:
        assert f in str(e.value), str(e.value)


@pytest.mark.parametrize(("images", "fragment"), [
    (np.zeros((2, 3, 16, 16), np.float32), "N×3×32×32 (the model's input), got shape (2, 3, 16, 16)"),
    (np.zeros((2, 1, 32, 32), np.float32), "N×3×32×32"),
    (np.zeros((32, 32, 3), np.uint8), "list of images"),
    ([], "no images"),
    ([np.zeros((8, 8, 3), np.float64)], "uint8 or uint16"),
    ([np.zeros((8, 8, 2), np.uint8)], "H×W×3"),
    (np.zeros((0, 3, 32, 32), np.float32), "no images given"),
    (np.zeros((2, 3, 32, 32), np.float64), "must be float32, got float64"),
    (np.where(np.arange(2)[:, None, None, None] == 1, np.nan, 0).astype(np.float32) * np.ones((2, 3, 32, 32),
                                                                                            np.float32),
     "NaN or infinite values (image 1)"),
    (np.full((1, 3, 32, 32), np.inf, np.float32), "NaN or infinite values (image 0)"),
])
def test_bad_inputs(engine, images, fragment) -> None:
    with pytest.raises(InputError) as e:
        engine.explain(images)
    assert fragment in str(e.value), str(e.value)


def test_not_a_camrt_model(tmp_path, model_path) -> None:
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "plain", [x], [y])
    plain = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(plain, tmp_path / "plain.onnx")
    with pytest.raises(InputError, match="has no camrt manifest.*camrt export"):
        Engine(tmp_path / "plain.onnx", device="cpu")

    proto = onnx.load(model_path)
    for prop in proto.metadata_props:
        if prop.key == METADATA_KEY:
            prop.value = '{"format_version": 99}'
    onnx.save(proto, tmp_path / "future.onnx")
    with pytest.raises(InputError, match="unreadable camrt manifest.*format 99"):
        Engine(tmp_path / "future.onnx", device="cpu")

    (tmp_path / "notes.onnx").write_text("this is not a model\n")
    with pytest.raises(InputError, match="'.*notes.onnx' is not a loadable ONNX model"):
        Engine(tmp_path / "notes.onnx", device="cpu")

    with pytest.raises(InputError, match="'.*missing.onnx' does not exist"):
        Engine(tmp_path / "missing.onnx", device="cpu")
    with pytest.raises(InputError, match="does not exist"):
        Engine(tmp_path, device="cpu")  # a directory is not a model file


def test_unknown_device(model_path) -> None:
    with pytest.raises(InputError, match="device 'gpu' is not one of auto, cpu, cuda"):
        Engine(model_path, device="gpu")


def test_cuda_falls_back_to_cpu_with_a_warning(model_path, x, engine, monkeypatch, caplog) -> None:
    # As on a machine without a GPU, whether onnxruntime-gpu or onnxruntime is installed.
    monkeypatch.setattr(session_module, "_cuda_driver_present", lambda: False)
    with caplog.at_level(logging.WARNING, logger="camrt"):
        cuda = Engine(model_path, device="cuda")
    assert cuda.provider == "CPUExecutionProvider"
    warnings = [r for r in caplog.records if r.name == "camrt" and r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "CUDA" in warnings[0].getMessage()
    assert "CPUExecutionProvider" in warnings[0].getMessage()
    np.testing.assert_array_equal(cuda.explain(x).saliency, engine.explain(x).saliency)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="camrt"):
        assert Engine(model_path, device="auto").provider == "CPUExecutionProvider"
    assert not [r for r in caplog.records if r.name == "camrt"]  # auto falls back silently


@pytest.mark.parametrize("class_idx", [2**64 - 1, np.uint64(2**64 - 1), np.array([0, 1, 2, 3, 2**64 - 1], np.uint64)])
def test_class_idx_too_large_for_int64_is_refused(engine, x, class_idx) -> None:
    """Regression (found by tests/test_fuzz_engine.py): 2**64 - 1 became -1 in the int64 cast, the top-1 class."""
    with pytest.raises(InputError, match="class_idx 18446744073709551615 is out of range"):
        engine.explain(x, class_idx=class_idx)


def test_ragged_class_idx_is_an_input_error(engine, x) -> None:
    """Regression: numpy's ValueError for a ragged list escaped as is."""
    with pytest.raises(InputError, match="class_idx must be an integer class"):
        engine.explain(x, class_idx=[[1], [2, 3]])


@pytest.mark.parametrize("layer", [5, b"layer1", ["layer1", None], {"layer1": 1}])
def test_layer_of_another_type_is_an_input_error(engine, x, layer) -> None:
    """Regression: layer=5 raised TypeError ('int' object is not iterable); bytes were read as integers."""
    with pytest.raises(InputError, match="layer must be a layer name or a list of names"):
        engine.explain(x, layer=layer)


@pytest.mark.parametrize("seed", [-1, 1.5, "1", None, True])
def test_seed_must_be_a_non_negative_integer(engine, x, seed) -> None:
    """Regression: a negative seed raised numpy's ValueError (a float or a string, TypeError) after the
    model had run; None gave a different map each call."""
    with pytest.raises(InputError, match="seed must be a non-negative integer"):
        engine.explain(x, "smoothgradcam++", seed=seed, n=2)
    with pytest.raises(InputError, match="seed must be a non-negative integer"):
        engine.explain_pass(engine.forward(x), "gradcam", seed=seed)


def test_finite_input_that_overflows_the_model_is_an_error_not_a_nan_map(engine, x) -> None:
    """Regression: a finite batch near float32's largest value gave NaN logits and an all-NaN saliency."""
    huge = np.full((2, 3, *SIZE), np.finfo(np.float32).max, np.float32)
    huge[:, :, ::2] *= -1
    with pytest.raises(InputError, match=r"NaN or infinite values for images 0, 1: its float32 arithmetic overflowed"):
        engine.explain(np.concatenate([huge, x[:1]]), "gradcam")


def test_option_values_that_overflow_are_an_error_not_a_nan_map(engine, x) -> None:
    """Regression: SS-CAM's infinite input noise made every copy's score NaN, and the map NaN. An
    infinite sigma is refused by the option check; a finite one whose noise overflows float32 in
    the network is refused after the run."""
    with pytest.raises(InputError, match="option sigma must be a number ≥ 0, got inf"):
        engine.explain(x[:1], "sscam", layer="layer2", n=1, sigma=float("inf"), noise="input")
    with pytest.raises(InputError, match="method 'sscam' gave NaN or infinite values .* float32 overflowed"):
        engine.explain(x[:1], "sscam", layer="layer2", n=1, sigma=1e38, noise="input")


@pytest.mark.parametrize(("sigma", "message"), [
    (float("inf"), "option sigma must be a number ≥ 0, got inf"),  # refused before any run
    (1e300, "'smoothgradcam[+][+]' gave copies or outputs with NaN or infinite values"),  # infinite in float32
])
def test_sampled_copies_that_overflow_are_an_error_not_a_meaningless_map(engine, x, sigma, message) -> None:
    """Regression: Smooth Grad-CAM++ with sigma=inf (or 1e300, infinite in float32) ran all-infinite copies
    and still returned a finite map."""
    with pytest.raises(InputError, match=message):
        engine.explain(x[:2], "smoothgradcam++", n=2, sigma=sigma)


# --- image inputs -----------------------------------------------------------------------------------------


def torch_preprocess(image: np.ndarray) -> np.ndarray:
    """RGB uint8 → the model input, independently: torch's antialiased bilinear resize, ImageNet stats."""
    t = torch.from_numpy(image.astype(np.float64) / 255.0).permute(2, 0, 1)[None]
    t = F.interpolate(t, size=SIZE, mode="bilinear", antialias=True, align_corners=False)[0].numpy()
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    return ((t - mean[:, None, None]) / std[:, None, None]).astype(np.float32)


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    rng = np.random.default_rng(5)
    # Blocky random images (4×4 blocks), larger and smaller than the model's 32×32, one of another aspect.
    return [np.kron(rng.integers(0, 256, (h // 4, w // 4, 3)), np.ones((4, 4, 1))).astype(np.uint8)
            for h, w in ((48, 64), (20, 28), (32, 32), (96, 40))]


def test_list_of_images_of_different_sizes(engine, images) -> None:
    expected = np.stack([torch_preprocess(im) for im in images])
    np.testing.assert_allclose(engine.prepare(images), expected, atol=1e-5)
    got = engine.explain(images, "gradcam", layer="layer1")
    want = engine.explain(engine.prepare(images), "gradcam", layer="layer1")
    np.testing.assert_array_equal(got.saliency, want.saliency)
    assert got.saliency.shape == (len(images), *SIZE)  # at the model's input size, whatever the image's
    np.testing.assert_allclose(engine.explain(expected, "gradcam", layer="layer1").saliency, got.saliency,
                               atol=1e-3)


def test_image_conversions(engine, images) -> None:
    rgb = images[0]
    gray = rgb[:, :, 1]
    # RGBA is composited over white, as `camrt explain` reads an RGBA file: rgb·a + 255·(1 − a)
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 7, np.uint8)])
    over_white = rgb.astype(np.float64) * (7 / 255) + 255.0 * (1 - 7 / 255)
    wide = rgb.astype(np.uint16) * 257  # 16-bit with the same values on [0, 1]
    got = engine.prepare([gray, gray[:, :, None], rgba, wide])
    np.testing.assert_allclose(got[0], torch_preprocess(np.repeat(gray[:, :, None], 3, axis=2)), atol=1e-5)
    np.testing.assert_array_equal(got[1], got[0])
    np.testing.assert_allclose(got[2], torch_preprocess(over_white), atol=1e-4)
    np.testing.assert_allclose(got[3], engine.prepare([rgb])[0], atol=1e-5)
    r = engine.explain([rgb, gray, rgba, wide], "gradcam", layer="layer1")
    np.testing.assert_array_equal(r.saliency[2], engine.explain(got[2:3], "gradcam", layer="layer1").saliency[0])
    assert np.abs(r.saliency[2] - r.saliency[0]).max() > 1e-3  # the composite is another image
    np.testing.assert_allclose(r.saliency[3], r.saliency[0], atol=1e-3)
    assert np.abs(r.saliency[1] - r.saliency[0]).max() > 1e-3  # gray is another image


def test_spinning_off_gives_the_same_results(engine, model_path, x) -> None:
    quiet = Engine(model_path, device="cpu", spinning=False)
    entry = "session.intra_op.allow_spinning"
    assert quiet._session.get_session_options().get_session_config_entry(entry) == "0"
    with pytest.raises(RuntimeError):  # not set: ONNX Runtime's default, spinning
        engine._session.get_session_options().get_session_config_entry(entry)
    np.testing.assert_array_equal(quiet.explain(x, "gradcam").saliency, engine.explain(x, "gradcam").saliency)
