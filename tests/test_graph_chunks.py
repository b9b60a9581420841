"""Perturbation chunks as graphs (`camrt.graph.chunks`): each chunk graph gives the class scores of
the very copies the numpy path makes (run through the same network), the engine's maps are the
same with the graph path on and off (fresh inputs, two predicted classes; a half-precision model
too), chunking and progress do not change, and the graphs are standard ONNX at the model's opset
(no ScatterElements, nothing TensorRT refuses, only the chunk dynamic).

Measured on these tiny models: the logits of the copies are equal bit for bit, the softmax
probabilities within 3e-8; the maps within 2.3e-7 of their largest value (asserted: 1e-5).
Group-CAM's blurred image is a few ulps from numpy's (two MatMuls): its logits differ by at most
3e-8 (measured; asserted 1e-6 of the largest logit), and its map, a sum of differences of
probabilities that on these nets are 1e-5, is held to an absolute bound (`groupcam_atol`; measured
6e-8, 15 to 25 times below it). RISE's masks are numpy's bit for bit: its maps within 9e-8
(2.2e-7 of their largest value; `rise_atol`)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import camrt
from camrt.engine import Engine
from camrt.engine.perturbation import CHUNK_FORMS, _groupcam_rows, _rise_rows, chunk_form
from camrt.errors import InputError
from camrt.graph import (
    ablationcam_chunks,
    forward_only,
    groupcam_chunks,
    reciprocam_chunks,
    rise_chunks,
    scorecam_chunks,
    tail,
)
from camrt.graph import chunks as chunk_graphs
from camrt.graph.chunks import ACTIVATION, CHANNELS, CLASS, GRIDS, MAPS, POSITIONS, SCORES
from camrt.graph.tensorrt import check_tensorrt
from camrt.methods import METHODS, Context, softmax
from camrt.methods.feature import _KERNELS, ablation_inputs, reciprocam_inputs
from camrt.methods.masking import (
    GroupCAMOptions,
    RISEOptions,
    gaussian_blur,
    groupcam_explore,
    rise_explore,
    scorecam_inputs,
)
from tests.test_engine_masking import StrideNet
from tests.test_engine_perturbation import SIZE, SkipNet, export_block, resnet18_layer4  # noqa: F401 - a fixture

MAP_RTOL = 1e-5  # of each map's largest value; measured at most 2.3e-7


class DeadNet(SkipNet):
    """SkipNet whose target block has a channel that is always 0 and one that is always 0.5:
    Score-CAM's constant channels, which share the zero mask's run."""

    def __init__(self) -> None:
        super().__init__()
        conv = self.block[0]
        with torch.no_grad():
            conv.weight[:2] = 0.0
            conv.bias[0], conv.bias[1] = -1.0, 0.5


@pytest.fixture(scope="module")
def skip_net(tmp_path_factory):
    return export_block(tmp_path_factory, SkipNet, seed=3)


@pytest.fixture(scope="module")
def stride_net(tmp_path_factory):
    return export_block(tmp_path_factory, StrideNet, seed=5)


@pytest.fixture(scope="module")
def half_skip_net(tmp_path_factory):
    return export_block(tmp_path_factory, SkipNet, seed=3, fp16=True)


@pytest.fixture(scope="module")
def dead_net(tmp_path_factory):
    return export_block(tmp_path_factory, DeadNet, seed=7)


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def one_image(path, seed: int) -> tuple[onnx.ModelProto, np.ndarray, np.ndarray]:
    """The model, a fresh image 1×C×H×W and its activation at `block` 1×C×h×w."""
    model = onnx.load(path)
    x = np.random.default_rng(seed).normal(size=(1, *SIZE)).astype(np.float32)
    activation = session(forward_only(model, ["activation.block"])).run(["activation.block"], {"input": x})[0]
    return model, x, activation


def two_classes(path, seed: int) -> np.ndarray:
    """Two fresh images whose top-1 classes differ: noise of a random amplitude around a random
    colour per image (the tiny random nets give most noise images the same class)."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(size=(64, *SIZE)) * rng.uniform(0.1, 3, size=(64, 1, 1, 1))
    x = (noise + 3 * rng.normal(size=(64, SIZE[0], 1, 1))).astype(np.float32)
    top = Engine(path, device="cpu").forward(x, gradient=False).outputs["class_idx_used"]
    second = int(np.flatnonzero(top != top[0])[0])
    return x[[0, second]]


@pytest.mark.parametrize("net", ["skip_net", "stride_net"])
@pytest.mark.parametrize("method", ["scorecam", "ablationcam", "reciprocam:onehot", "reciprocam:gaussian"])
def test_the_chunk_graph_scores_the_numpy_copies(request, net: str, method: str) -> None:
    """Rows 2..k of one image through the chunk graph against the numpy copies of the same rows
    through the forward-only graph or the tail (fed the tensors crossing the cut, repeated)."""
    model, x, a = one_image(request.getfixturevalue(net)[1], seed=11)
    name, _, kernel = method.partition(":")
    cls = 3
    if name == "scorecam":
        graph, boundary = scorecam_chunks(model, "block"), []
        rows, copies = np.arange(2, 6), next(scorecam_inputs(x[0], a[0], 6))[2:6]
        network, feed, probability = session(forward_only(model)), "input", False
    else:
        if name == "ablationcam":
            graph, boundary = ablationcam_chunks(model, "block")
            rows, copies, probability = np.arange(2, 6), next(ablation_inputs(a[0], 6))[2:6], False
        else:
            graph, boundary = reciprocam_chunks(model, "block", _KERNELS[kernel])
            hw = a.shape[2] * a.shape[3]
            rows, copies, probability = np.arange(2, hw), next(reciprocam_inputs(a[0], hw, kernel))[2:], True
        network, feed = session(tail(model, "block")[0]), "activation.block"
    crossing = dict(zip(boundary, session(forward_only(model, boundary)).run(boundary, {"input": x}), strict=True)) \
        if boundary else {}
    assert (net == "skip_net") == bool(boundary) or name == "scorecam"
    got = session(graph).run([SCORES], {ACTIVATION: a, CLASS: np.asarray(cls, np.int64), **crossing,
                                        (CHANNELS if name != "reciprocam" else POSITIONS): rows,
                                        **({"input": x} if name == "scorecam" else {})})[0]
    z = network.run(None, {feed: copies, **{k: np.repeat(v, len(rows), axis=0) for k, v in crossing.items()}})[0]
    if probability:
        np.testing.assert_allclose(got, softmax(z)[:, cls], rtol=0, atol=1e-7)
    else:
        np.testing.assert_array_equal(got, z[:, cls])  # the same copies through the same network


METHOD_OPTIONS = [("scorecam", {}), ("ablationcam", {}), ("reciprocam", {"kernel": "onehot"}),
                  ("reciprocam", {"kernel": "gaussian"})]


def both_paths(path, x, method: str, options: dict, chunk: int = 4, **kw) -> tuple[Engine, object, object]:
    """The engine's result with the chunk graph (True) and with the numpy copies (False)."""
    engine = Engine(path, device="cpu", chunk_size=chunk)
    results = {}
    for on in (True, False):
        engine.graphs.chunk_graphs = on
        results[on] = engine.explain(x, method, **kw, **options)
    return engine, results[True], results[False]


def assert_same_maps(graph, numpy_) -> None:
    """The maps within MAP_RTOL of their largest value. The saliency is the map upsampled (weights
    summing to 1) and min-max normalised, so an error e in the map moves it by at most 2e / span:
    Recipro-CAM's maps on these tiny nets are probabilities with spans of 1e-4 of their values."""
    np.testing.assert_array_equal(graph.class_idx, numpy_.class_idx)
    for g, n, gs, ns in zip(graph.low_res, numpy_.low_res, graph.saliency, numpy_.saliency, strict=True):
        atol = MAP_RTOL * np.abs(n).max()
        np.testing.assert_allclose(g, n, rtol=0, atol=atol)
        span = n.max() - n.min()
        np.testing.assert_allclose(gs, ns, rtol=0, atol=(2 * atol / span if span > 0 else 0) + 1e-6)


@pytest.mark.parametrize("net", ["skip_net", "stride_net"])
@pytest.mark.parametrize(("method", "options"), METHOD_OPTIONS)
def test_the_engine_maps_are_the_same_on_both_paths(request, net: str, method: str, options: dict) -> None:
    path = request.getfixturevalue(net)[1]
    x = two_classes(path, seed=21)
    engine, graph, numpy_ = both_paths(path, x, method, options)
    assert graph.class_idx[0] != graph.class_idx[1]
    assert_same_maps(graph, numpy_)
    assert any(key[0] == method for key in engine.graphs._chunks), "the graph path ran no chunk graph"
    # explicit classes, one per image
    _, graph, numpy_ = both_paths(path, x, method, options, class_idx=[4, 0])
    assert_same_maps(graph, numpy_)


@pytest.mark.parametrize(("method", "options"), METHOD_OPTIONS)
def test_a_half_precision_model_gives_the_same_maps_on_both_paths(half_skip_net, method: str, options: dict) -> None:
    """`export(fp16=True)` keeps the activation and logits float32 (the chunk graphs' boundary);
    the network between computes in float16 on both paths."""
    _, path = half_skip_net
    x = np.random.default_rng(9).normal(size=(2, *SIZE)).astype(np.float32)
    _, graph, numpy_ = both_paths(path, x, method, options, chunk=5)
    assert_same_maps(graph, numpy_)


def test_score_cam_constant_channels_share_one_run_on_both_paths(dead_net) -> None:
    _, path = dead_net
    x = np.random.default_rng(8).normal(size=(2, *SIZE)).astype(np.float32)
    calls = {}
    for on in (True, False):
        engine = Engine(path, device="cpu", chunk_size=3)
        engine.graphs.chunk_graphs = on
        calls[on] = []
        result = engine.explain(x, "scorecam", progress=lambda d, t, on=on: calls[on].append((d, t)))
        calls[on].append(result.low_res)
    assert calls[True][-2] == (10, 10)  # per image: 4 non-constant channels + 1 shared run
    assert calls[True][:-1] == calls[False][:-1]
    np.testing.assert_allclose(calls[True][-1], calls[False][-1], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(("method", "options"), METHOD_OPTIONS)
def test_chunk_size_and_progress_are_the_same_on_both_paths(skip_net, method: str, options: dict) -> None:
    _, path = skip_net
    x = np.random.default_rng(1).normal(size=(2, *SIZE)).astype(np.float32)
    first = None
    for chunk in (1, 5, 300):
        for on in (True, False):
            engine = Engine(path, device="cpu", chunk_size=chunk)
            engine.graphs.chunk_graphs = on
            calls: list[tuple[int, int]] = []
            r = engine.explain(x, method, progress=lambda d, t, calls=calls: calls.append((d, t)), **options)
            per_image = calls[-1][1] // 2
            assert len(calls) == 2 * -(-per_image // chunk)
            first = first if first is not None else r.low_res
            np.testing.assert_allclose(r.low_res, first, rtol=1e-5, atol=1e-7)


def test_recipro_cam_masks_from_offsets_equal_the_mask_table(skip_net, monkeypatch) -> None:
    """Past MASK_TABLE_LIMIT values the masks are read through per-position offsets instead."""
    model, _, a = one_image(skip_net[1], seed=2)
    for kernel in ("onehot", "gaussian"):
        feed = {ACTIVATION: a, CLASS: np.asarray(1, np.int64), POSITIONS: np.arange(40, 100)}
        table = reciprocam_chunks(model, "block", _KERNELS[kernel])[0]
        with monkeypatch.context() as m:
            m.setattr(chunk_graphs, "MASK_TABLE_LIMIT", 0)
            offsets = reciprocam_chunks(model, "block", _KERNELS[kernel])[0]
        assert len(offsets.graph.node) > len(table.graph.node)
        boundary = tail(model, "block")[1]
        x = np.random.default_rng(2).normal(size=(1, *SIZE)).astype(np.float32)
        feed.update(zip(boundary, session(forward_only(model, boundary)).run(boundary, {"input": x}), strict=True))
        np.testing.assert_array_equal(session(offsets).run([SCORES], feed)[0], session(table).run([SCORES], feed)[0])


@pytest.mark.parametrize("opset", [18, 23])
def test_chunk_graphs_are_standard_onnx_at_the_models_opset(tmp_path, opset: int) -> None:
    torch.manual_seed(0)
    path = tmp_path / "skip.cam.onnx"
    camrt.export(SkipNet().eval(), layers=["block"], path=path, input_shape=(1, *SIZE), opset=opset)
    model = onnx.load(path)
    graphs = [scorecam_chunks(model, "block"), ablationcam_chunks(model, "block")[0],
              reciprocam_chunks(model, "block", _KERNELS["gaussian"])[0], groupcam_chunks(model, "block"),
              rise_chunks(model, "block")]
    for graph in graphs:
        onnx.checker.check_model(graph, full_check=True)
        imports = [(o.domain, o.version) for o in graph.opset_import]
        assert imports == [(o.domain, o.version) for o in model.opset_import] and ("", opset) in imports
        assert all(n.op_type != "ScatterElements" for n in graph.graph.node)
        assert check_tensorrt(graph) == []
        for v in graph.graph.input:  # static sizes; only the rows (the chunk) are dynamic
            dims = v.type.tensor_type.shape.dim
            assert all(d.HasField("dim_value") for d in dims) == (v.name not in (CHANNELS, POSITIONS, MAPS, GRIDS)), \
                v.name
        assert [o.name for o in graph.graph.output] == [SCORES]


def test_the_switch(skip_net, monkeypatch) -> None:
    """None (the default) uses the forms measured not slower on the CPU; True every form; False none;
    anything else is refused; a model older than opset 18 falls back to the numpy copies."""
    _, path = skip_net
    engine = Engine(path, device="cpu")
    assert engine.graphs.chunk_graphs is None
    defaults = {"scorecam": True, "ablationcam": False, "reciprocam": False, "reciprocam:gaussian": True,
                "groupcam": False, "rise": False}
    for spec, default in defaults.items():
        name, _, kernel = spec.partition(":")
        method, form = METHODS[name], CHUNK_FORMS[name]
        options = method.configure({"kernel": kernel} if kernel else {})
        assert chunk_form(method, options, None) is (form if default else None)
        assert chunk_form(method, options, True) is form
        assert chunk_form(method, options, False) is None
    assert chunk_form(METHODS["sscam"], METHODS["sscam"].configure(), True) is None
    with pytest.raises(InputError, match="chunk_graphs must be"):
        engine.graphs.chunk_graphs = "yes"
    x = np.random.default_rng(3).normal(size=(1, *SIZE)).astype(np.float32)
    expected = engine.explain(x, "reciprocam").low_res
    fresh = Engine(path, device="cpu")
    fresh.graphs.chunk_graphs = True
    monkeypatch.setattr(chunk_graphs, "MIN_OPSET", 99)  # as if the model's opset were too old
    np.testing.assert_allclose(fresh.explain(x, "reciprocam").low_res, expected, rtol=1e-6, atol=1e-8)
    assert list(fresh.graphs._chunks.values()) == [None] and fresh.graphs._tails


def test_a_model_using_the_chunk_names_is_refused(skip_net) -> None:
    model = onnx.load(skip_net[1])
    node = next(n for n in model.graph.node if n.op_type == "Conv")
    old, new = node.output[0], "chunk/mine"
    for n in model.graph.node:
        n.input[:] = [new if t == old else t for t in n.input]
    node.output[0] = new
    with pytest.raises(ValueError, match="already has tensors named"):
        scorecam_chunks(model, "block")


# Group-CAM and RISE ------------------------------------------------------------------------------

SCORE_ATOL = 1e-7  # the probabilities' tolerance above: ONNX Runtime's softmax against numpy's


def groupcam_atol(options: dict, channels: int) -> float:
    """Group-CAM's map is ``Σ_g ReLU(s_g − s_b) M_g`` with masks in [0, 1], the same on both paths:
    scores within ε move it by at most 2ε per group. An absolute bound: on the tiny nets the
    masks move the probabilities by 1e-5, so a relative one would measure the cancellation."""
    return 2 * min(options.get("groups", 32), channels) * SCORE_ATOL


def rise_atol(options: dict) -> float:
    """RISE's map is ``Σ_i s_i M_i / (n p)`` with masks in [0, 1], bit for bit the same on both
    paths: scores within ε move it by at most ε / p, plus the float32 sums' rounding (1e-7)."""
    return SCORE_ATOL / options.get("p", 0.5) + 1e-7


NEW_METHOD_OPTIONS = [("groupcam", {}), ("groupcam", {"groups": 4, "blur_kernel": 5, "blur_sigma": 1.5}),
                      ("rise", {"n": 40}), ("rise", {"n": 27, "cells": 3, "p": 0.25})]


def new_method_atol(method: str, options: dict, path) -> float:
    return groupcam_atol(options, onnx_channels(path)) if method == "groupcam" else rise_atol(options)


def onnx_channels(path) -> int:
    return chunk_graphs._info(onnx.load(path), "activation.block")[1][0]


@pytest.mark.parametrize(("size", "kernel", "sigma"), [((16, 16), 51, 50.0), ((7, 12), 5, 1.5), ((224, 200), 51, 50.0)])
def test_the_blur_matrices_blur_as_numpy(size, kernel: int, sigma: float) -> None:
    """`_blur_matrix` on both axes against `gaussian_blur`, reflect padding wider than the image too."""
    x = np.random.default_rng(4).normal(size=(3, *size)).astype(np.float32)
    rows, columns = (chunk_graphs._blur_matrix(n, kernel, sigma).astype(np.float32) for n in size)
    want = gaussian_blur(x, kernel, sigma)
    np.testing.assert_allclose(rows @ x @ columns.T, want, rtol=0, atol=1e-6 * np.abs(want).max())


def first_batches(path, method: str, options, seed: int = 5, chunk: int = 6):
    """One image's model, first batch of numpy copies (the method's own coroutine) and first chunk
    rows (the chunk graph's coroutine) for `method`, with the image and class."""
    model = onnx.load(path)
    x = np.random.default_rng(seed).normal(size=(1, *SIZE)).astype(np.float32)
    out = Engine(path, device="cpu").forward(x).outputs
    ctx = Context(out["activation.block"][0], x[0], out["gradient.block"][0], seed=seed, chunk=chunk)
    explore, rows = (groupcam_explore, _groupcam_rows) if method == "groupcam" else (rise_explore, _rise_rows)
    return model, x, next(explore(ctx, options)), next(rows(ctx, options)), ctx


@pytest.mark.parametrize("net", ["skip_net", "stride_net"])
@pytest.mark.parametrize(("method", "options"), [("groupcam", GroupCAMOptions(groups=8)),
                                                 ("groupcam", GroupCAMOptions(blur_kernel=5, blur_sigma=1.5)),
                                                 ("rise", RISEOptions(n=9)), ("rise", RISEOptions(n=9, cells=4))])
def test_groupcam_and_rise_chunk_graphs_score_the_numpy_copies(request, net: str, method: str, options) -> None:
    """The first chunk's rows through the chunk graph (logits and probabilities) against the first
    batch of numpy copies through the forward-only graph: RISE's masks are numpy's bit for bit,
    Group-CAM's copies differ by its blur's ulps."""
    path = request.getfixturevalue(net)[1]
    model, x, copies, rows, ctx = first_batches(path, method, options)
    assert len(rows) == len(copies) > 1
    z = session(forward_only(model)).run(None, {"input": copies})[0]
    cls = 2
    for probability in (False, True):
        if method == "groupcam":
            graph = groupcam_chunks(model, "block", options.blur_kernel, options.blur_sigma, probability)
        else:
            graph = rise_chunks(model, "block", options.cells, probability)
        rows_name = MAPS if method == "groupcam" else GRIDS
        got = session(graph).run([SCORES], {"input": x, ACTIVATION: ctx.activation[None],
                                            CLASS: np.asarray(cls, np.int64), rows_name: rows})[0]
        if probability:
            np.testing.assert_allclose(got, softmax(z)[:, cls], rtol=0, atol=SCORE_ATOL)
        elif method == "rise":
            np.testing.assert_array_equal(got, z[:, cls])  # the same copies through the same network
        else:
            np.testing.assert_allclose(got, z[:, cls], rtol=0, atol=1e-6 * np.abs(z).max())


def assert_close_maps(graph, numpy_, atol: float) -> None:
    """The maps within `atol`, the saliencies (min-max normalised) within 2 atol / span."""
    np.testing.assert_array_equal(graph.class_idx, numpy_.class_idx)
    for g, n, gs, ns in zip(graph.low_res, numpy_.low_res, graph.saliency, numpy_.saliency, strict=True):
        np.testing.assert_allclose(g, n, rtol=0, atol=atol)
        span = n.max() - n.min()
        np.testing.assert_allclose(gs, ns, rtol=0, atol=(2 * atol / span if span > 0 else 0) + 1e-6)


@pytest.mark.parametrize("net", ["skip_net", "stride_net"])
@pytest.mark.parametrize(("method", "options"), NEW_METHOD_OPTIONS)
def test_groupcam_and_rise_maps_are_the_same_on_both_paths(request, net: str, method: str, options: dict) -> None:
    path = request.getfixturevalue(net)[1]
    x = two_classes(path, seed=21)
    atol = new_method_atol(method, options, path)
    for class_idx in (None, [4, 0]):
        engine, graph, numpy_ = both_paths(path, x, method, options, class_idx=class_idx, seed=3)
        assert_close_maps(graph, numpy_, atol)
        assert any(key[0] == method for key in engine.graphs._chunks), "the graph path ran no chunk graph"
        assert np.abs(numpy_.low_res).max() > 10 * atol or net == "skip_net"  # the stride net's maps are not noise


def test_groupcam_and_rise_seeds_and_half_precision(half_skip_net, stride_net) -> None:
    """Another seed gives another RISE map on both paths alike; a half-precision model too."""
    x = np.random.default_rng(9).normal(size=(2, *SIZE)).astype(np.float32)
    maps = {}
    for seed in (0, 1):
        _, graph, numpy_ = both_paths(stride_net[1], x, "rise", {"n": 20}, seed=seed)
        assert_close_maps(graph, numpy_, rise_atol({}))
        maps[seed] = numpy_.low_res
    assert np.abs(maps[0] - maps[1]).max() > 1e-3
    for method, options in NEW_METHOD_OPTIONS[1:3]:
        _, graph, numpy_ = both_paths(half_skip_net[1], x, method, options, chunk=5)
        assert_close_maps(graph, numpy_, new_method_atol(method, options, half_skip_net[1]))


@pytest.mark.parametrize(("method", "options"), [NEW_METHOD_OPTIONS[1], ("rise", {"n": 12})])
def test_groupcam_and_rise_chunk_size_and_progress_are_the_same_on_both_paths(stride_net, method: str,
                                                                              options: dict) -> None:
    _, path = stride_net
    x = np.random.default_rng(1).normal(size=(2, *SIZE)).astype(np.float32)
    first, progress = None, {}
    for chunk in (1, 5, 300):
        for on in (True, False):
            engine = Engine(path, device="cpu", chunk_size=chunk)
            engine.graphs.chunk_graphs = on
            calls: list[tuple[int, int]] = []
            r = engine.explain(x, method, progress=lambda d, t, calls=calls: calls.append((d, t)), **options)
            progress.setdefault(chunk, calls)
            assert calls == progress[chunk]
            per_image = calls[-1][1] // 2
            assert len(calls) == 2 * -(-per_image // chunk)
            first = first if first is not None else r.low_res
            np.testing.assert_allclose(r.low_res, first, rtol=0, atol=new_method_atol(method, options, path))


@pytest.mark.slow
@pytest.mark.parametrize(("method", "options"), [("groupcam", {}), ("rise", {"n": 64})])
def test_resnet18_groupcam_and_rise_maps_are_the_same_on_both_paths(resnet18_layer4, method: str,  # noqa: F811
                                                                    options: dict) -> None:
    _, path, x = resnet18_layer4
    for class_idx in (None, 7):
        _, graph, numpy_ = both_paths(path, x, method, options, chunk=16, class_idx=class_idx)
        assert_close_maps(graph, numpy_, groupcam_atol(options, 512) if method == "groupcam" else rise_atol(options))


@pytest.mark.slow
@pytest.mark.parametrize(("method", "options"), METHOD_OPTIONS)
def test_resnet18_maps_are_the_same_on_both_paths(resnet18_layer4, method: str, options: dict) -> None:  # noqa: F811
    _, path, x = resnet18_layer4
    for class_idx in (None, 7):
        _, graph, numpy_ = both_paths(path, x, method, options, chunk=16, class_idx=class_idx)
        assert_same_maps(graph, numpy_)


def test_engine_takes_the_switch(tmp_path) -> None:
    """`Engine(..., chunk_graphs=...)` sets its graphs' switch, and a bad value is refused."""
    from tests.tiny import TinyNet, make

    path = tmp_path / "tiny.cam.onnx"
    camrt.export(make(TinyNet), None, layers=["layer2"], path=path, input_shape=(1, 3, 32, 32))
    for value in (True, False, None):
        assert Engine(path, device="cpu", chunk_graphs=value).graphs.chunk_graphs is value
    with pytest.raises(InputError):
        Engine(path, device="cpu", chunk_graphs="yes")
