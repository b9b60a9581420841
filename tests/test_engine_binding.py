"""camrt.engine.binding: device-resident runs (IO binding) and fixed-batch runs (CUDA graphs).

On the CPU provider "the device" is host memory, so the IO-binding path runs here and must give
exactly the numbers of plain `session.run` (the same kernels on the same inputs): every gradient
method, a map head, the chunk graphs of the perturbation methods and a sampled method are
compared with an engine without IO binding. What stays on the device is checked by what
`Outputs.on_host` lists. CUDA graphs cannot run here; their shape condition can: `FixedBatch`
pads a smaller batch to the captured size, and the engine's run through it (installed by hand, as
`cuda_graphs=True` does on CUDA) gives the same results as without it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import camrt
from camrt.engine import Engine, open_session
from camrt.engine.binding import Binder, FixedBatch, Outputs
from camrt.errors import InputError
from camrt.methods import METHODS
from tests.tiny import TinyNet, diverse_inputs, make

SIZE = (32, 32)
LAYERS = ["layer1", "layer2"]


@pytest.fixture(scope="module")
def model() -> TinyNet:
    return make(TinyNet, seed=5)


@pytest.fixture(scope="module")
def path(tmp_path_factory, model) -> Path:
    """TinyNet exported with Grad-CAM and LayerCAM heads."""
    out = tmp_path_factory.mktemp("binding") / "tiny.cam.onnx"
    camrt.export(model, layers=LAYERS, path=out, input_shape=(1, 3, *SIZE), maps=["gradcam", "layercam"])
    return out


@pytest.fixture(scope="module")
def x(model) -> np.ndarray:
    """Five inputs of at least two predicted classes, none the export example."""
    batch = diverse_inputs(model, (5, 3, *SIZE), seed=11)
    return batch


def test_inputs_predict_several_classes(path, x):
    assert len(set(Engine(path, device="cpu").forward(x).outputs["class_idx_used"].tolist())) >= 2


def test_binder_returns_host_outputs_as_arrays_and_keeps_the_others_on_the_device(path, x):
    session = open_session(path)
    names = [o.name for o in session.get_outputs()]
    feeds = {"input": x, "class_idx": np.full(len(x), -1, np.int64)}
    ref = dict(zip(names, session.run(names, feeds), strict=True))
    binder = Binder("cpu")
    got = binder.run(session, {"input": binder.upload(x), "class_idx": feeds["class_idx"]}, names, {"logits"})
    assert isinstance(got["logits"], np.ndarray)
    assert all(not isinstance(got[n], np.ndarray) for n in names if n != "logits")
    for n in names:
        value = got[n] if isinstance(got[n], np.ndarray) else got[n].numpy()
        np.testing.assert_array_equal(value, ref[n], err_msg=n)


def test_outputs_copies_on_first_read_and_concatenates_chunks():
    binder = Binder("cpu")
    a, b = np.arange(6, dtype=np.float32).reshape(2, 3), np.ones((1, 3), np.float32)
    out = Outputs({"host": [a, b], "device": [binder.upload(a), binder.upload(b)]})
    assert out.on_host() == ["host"]
    np.testing.assert_array_equal(out["device"], np.concatenate([a, b]))
    assert sorted(out.on_host()) == ["device", "host"] and len(out) == 2
    out["class"] = np.zeros(3)
    assert set(out) == {"host", "device", "class"} and "missing" not in out and out.get("missing") is None


ENGINE_METHODS = [m.name for m in METHODS.values() if m.family == "gradient" and not m.input_gradient]


def test_io_binding_gives_the_same_maps_for_every_gradient_method(path, x):
    plain, bound = Engine(path, device="cpu", chunk_size=2), Engine(path, device="cpu", chunk_size=2, io_binding=True)
    assert plain.graphs.binder is None and bound.graphs.binder is not None
    p, q = plain.forward(x), bound.forward(x)
    for name in ENGINE_METHODS:
        r, s = plain.explain_pass(p, name), bound.explain_pass(q, name)
        np.testing.assert_array_equal(s.saliency, r.saliency, err_msg=name)
        np.testing.assert_array_equal(s.low_res, r.low_res, err_msg=name)
        np.testing.assert_array_equal(s.class_idx, r.class_idx, err_msg=name)


def test_a_map_head_leaves_activations_and_gradients_on_the_device(path, x):
    bound = Engine(path, device="cpu", chunk_size=2, io_binding=True)
    p = bound.forward(x, host=["map.gradcam.layer2", "saliency.gradcam"])
    assert set(p.outputs.on_host()) == {"logits", "class_idx_used", "map.gradcam.layer2", "saliency.gradcam"}
    r = bound.explain(x, "gradcam")
    plain = Engine(path, device="cpu", chunk_size=2)  # the same chunks: the same kernels
    ref = plain.explain(x, "gradcam")
    np.testing.assert_array_equal(r.saliency, ref.saliency)
    np.testing.assert_array_equal(r.logits, ref.logits)
    # Read later, what stayed on the device is the same as a plain run's.
    np.testing.assert_array_equal(p.outputs["gradient.layer1"], plain.forward(x).outputs["gradient.layer1"])


@pytest.mark.parametrize("method", ["scorecam", "ablationcam", "reciprocam", "rise"])
def test_io_binding_gives_the_same_perturbation_maps(path, x, method):
    """Chunk graphs fed the image and activation uploaded once per image (Score-CAM, Ablation-CAM,
    Recipro-CAM, all forced into their graphs), and a sampled input method."""
    options = {"n": 8} if method == "rise" else {}
    ref = Engine(path, device="cpu", chunk_size=4, chunk_graphs=True).explain(x[:2], method, **options)
    got = Engine(path, device="cpu", chunk_size=4, chunk_graphs=True, io_binding=True).explain(x[:2], method, **options)
    np.testing.assert_array_equal(got.saliency, ref.saliency)


def test_fixed_batch_pads_and_drops_rows(path, x):
    session = open_session(path)
    names = [o.name for o in session.get_outputs()]
    cls = np.array([-1, 3, -1, 0, 2], np.int64)
    ref = dict(zip(names, session.run(names, {"input": x, "class_idx": cls}), strict=True))
    fixed = FixedBatch(session, 4, Binder("cpu"))
    for rows in (slice(0, 4), slice(4, 5), slice(1, 3)):  # full, padded from one row, padded again
        got = dict(zip(names, fixed.run(names, {"input": x[rows], "class_idx": cls[rows]}), strict=True))
        for n in names:
            np.testing.assert_allclose(got[n], ref[n][rows], rtol=1e-6, atol=1e-7, err_msg=n)
    with pytest.raises(ValueError, match="rows given"):
        fixed.run(None, {"input": x, "class_idx": cls})
    with pytest.raises(ValueError, match="feed 'input'"):
        fixed.run(None, {"input": x[:2, :, :16], "class_idx": cls[:2]})


def test_engine_through_a_fixed_batch_gives_the_same_results(path, x):
    """What `cuda_graphs=True` installs on CUDA, installed by hand on the CPU: batches of 5 run as
    a full run of 4 and a padded run of 1."""
    ref = Engine(path, device="cpu", chunk_size=4)
    engine = Engine(path, device="cpu", chunk_size=4)
    engine._fixed = FixedBatch(open_session(path), 4, Binder("cpu"))
    for method in ("gradcam", "gradcam++", "layercam"):
        cls = [1, -1, 2, -1, 0]
        r, s = ref.explain(x, method, class_idx=cls), engine.explain(x, method, class_idx=cls)
        np.testing.assert_allclose(s.saliency, r.saliency, atol=1e-6, err_msg=method)
        np.testing.assert_array_equal(s.class_idx, r.class_idx)


def test_cuda_graphs_without_cuda_is_refused(path):
    with pytest.raises(InputError, match="cuda_graphs=True needs the CUDA execution provider.*CPUExecutionProvider"):
        Engine(path, device="cpu", cuda_graphs=True)


@pytest.mark.parametrize("kwargs", [{"io_binding": "yes"}, {"cuda_graphs": 1}])
def test_switches_must_be_booleans(path, kwargs):
    with pytest.raises(InputError, match="must be True"):
        Engine(path, device="cpu", **kwargs)


def test_cuda_graph_sets_the_cuda_provider_option(monkeypatch, path):
    """What `open_session(cuda_graph=True)` asks ONNX Runtime for where CUDA is chosen (faked here:
    the session constructor records its providers instead of opening the model)."""
    from camrt.engine import session as session_module

    seen = []

    class Recorder:
        def __init__(self, src, opts, providers):
            seen.append(providers)

    monkeypatch.setattr(session_module, "providers_for", lambda device, precision=None: ["CUDAExecutionProvider",
                                                                                        "CPUExecutionProvider"])
    monkeypatch.setattr(session_module.ort, "InferenceSession", Recorder)
    monkeypatch.setattr(session_module, "check_started", lambda session, providers: None)
    session_module.open_session(path, "cuda", cuda_graph=True)
    session_module.open_session(path, "cuda")
    assert seen == [[("CUDAExecutionProvider", {"enable_cuda_graph": "1"}), "CPUExecutionProvider"],
                    ["CUDAExecutionProvider", "CPUExecutionProvider"]]


def test_precision_without_openvino_is_refused(path):
    with pytest.raises(InputError, match="precision"):
        Engine(path, device="cpu", precision="bf16")


@pytest.mark.parametrize("io_binding", [False, True])
def test_explain_from_a_head_fetches_only_what_it_reads(path, x, monkeypatch, io_binding):
    """With a map head, explain asks the run for the logits, the classes, the map and its saliency
    only: the activations and gradients are not copied out (the same map as a full pass gives)."""
    import camrt.engine.engine as engine_module

    asked = []
    original = engine_module.run_chunked
    monkeypatch.setattr(engine_module, "run_chunked",
                        lambda session, feeds, chunk, names=None, **k: asked.append(names) or original(
                            session, feeds, chunk, names, **k))
    engine = Engine(path, device="cpu", io_binding=io_binding)
    got = engine.explain(x, "gradcam")
    assert asked == [["logits", "class_idx_used", "map.gradcam.layer2", "saliency.gradcam"]]
    ref = engine.explain_pass(engine.forward(x), "gradcam")
    np.testing.assert_array_equal(got.saliency, ref.saliency)
