"""camrt.graph.reciprocam_head: Recipro-CAM computed inside the graph, in one run.

The oracle is `Engine.explain(method="reciprocam")` on the numpy path (`chunk_graphs=False`: copies
made by `camrt.methods.feature.reciprocam_inputs`, tail runs in chunks, numpy softmax), run on the
file without the head. Models: SkipNet at `block` (16×16 positions; the stem's output skips past the
block, so the tail reads a tensor from before the cut, which the head repeats per copy), and TinyNet
at `layer1` (16×16, a layer that is not the last) and `layer2` (16×16, followed by pooling and the
classifier). Maps within 1e-5 of their largest value (measured: at most 2.6e-7); saliencies equal to the
graph's own map upsampled and normalised, and to the engine's within what normalisation makes of the
maps' difference.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

import camrt
from camrt.cli import main
from camrt.engine import Engine, open_session
from camrt.errors import InputError
from camrt.graph import add_map_heads, add_reciprocam_head, forward_only, keep_outputs, tail, without_gradients
from camrt.graph import reciprocam_head as rh
from camrt.graph.map_heads import add_maps, check_maps, map_passes
from camrt.graph.reciprocam_head import ReciproCAMHead, parse_spec
from camrt.graph.tensorrt import check_tensorrt
from camrt.manifest import METADATA_KEY, Manifest, class_maps_name, is_gradient, map_name, saliency_name
from camrt.methods import normalize, upsample
from tests.cli_checks import assert_one_line_error
from tests.test_engine_perturbation import SIZE, SkipNet
from tests.test_graph_tensorrt import _is_class_idx_default
from tests.tiny import TinyNet, diverse_inputs, make

TOL = 1e-5
KERNELS = ["onehot", "gaussian"]
SPEC = "reciprocam:kernel=gaussian:all-classes"


def run(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    sess = open_session(model.SerializeToString())
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feed), strict=True))


def plain(model: onnx.ModelProto, path) -> str:
    """`model` without Recipro-CAM's head, written to `path`: the oracle's file."""
    kept = keep_outputs(model, [o.name for o in model.graph.output if "reciprocam" not in o.name])
    manifest = Manifest.from_json(next(p.value for p in kept.metadata_props if p.key == METADATA_KEY))
    for p in kept.metadata_props:
        if p.key == METADATA_KEY:
            p.value = Manifest(**{**manifest.__dict__, "maps": (), "map_options": {}}).to_json()
    onnx.save(kept, path)
    return str(path)


@pytest.fixture(scope="module")
def skip(tmp_path_factory):
    """SkipNet exported with the head through `camrt.export(maps=...)`; (model with head, oracle
    file, 3 inputs of at least two top classes)."""
    net = make(SkipNet, seed=3)
    path = tmp_path_factory.mktemp("rc") / "skip.cam.onnx"
    manifest = camrt.export(net, layers=["block"], path=path, input_shape=(1, *SIZE), maps=[SPEC])
    assert manifest.maps == ("reciprocam",) and manifest.map_options == {"reciprocam": {"kernel": "gaussian"}}
    model = onnx.load(path)
    return model, plain(model, path.with_name("plain.onnx")), diverse_inputs(net, (3, *SIZE), seed=1)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """TinyNet exported at layer1 and layer2 without heads; (model, its file, 4 inputs)."""
    net = make(TinyNet, seed=4)
    path = tmp_path_factory.mktemp("rc") / "tiny.cam.onnx"
    camrt.export(net, layers=["layer1", "layer2"], path=path, input_shape=(1, 3, 32, 32))
    return onnx.load(path), str(path), diverse_inputs(net, (4, 3, 32, 32), seed=2)


def check_against_engine(out: dict[str, np.ndarray], oracle: str, x: np.ndarray, kernel: str, layer: str,
                         class_idx: np.ndarray | None) -> None:
    ref = Engine(oracle, device="cpu", chunk_graphs=False).explain(x, "reciprocam", class_idx=class_idx, layer=layer,
                                                                   kernel=kernel)
    got = out[map_name("reciprocam", layer)]
    np.testing.assert_array_equal(out["class_idx_used"], ref.class_idx)
    assert got.shape == ref.low_res.shape and got.dtype == np.float32
    err = np.abs(got - ref.low_res).max(axis=(1, 2)) / ref.low_res.max(axis=(1, 2))
    assert err.max() <= TOL, err
    saliency = out[saliency_name("reciprocam")]
    h, w = saliency.shape[1:]
    np.testing.assert_allclose(saliency, normalize(upsample(got, (h, w))), rtol=0, atol=1e-6)
    # Min-max normalisation divides by the map's span, small on these nets (a position's features
    # alone move the probabilities by 0.01 to 4 % of their value), so the saliency is the engine's
    # within what the maps' difference becomes after it: at most 4 · difference / span.
    diff = np.abs(got - ref.low_res).max(axis=(1, 2))
    span = ref.low_res.max(axis=(1, 2)) - ref.low_res.min(axis=(1, 2))
    bound = 4 * diff / np.maximum(span, 1e-30) + 1e-6
    assert (np.abs(saliency - ref.saliency).max(axis=(1, 2)) <= bound).all()


@pytest.mark.parametrize("kernel", KERNELS)
def test_skip_connection_equals_the_engine(skip, kernel) -> None:
    model, oracle, x = skip
    assert tail(model, "block")[1], "the skip connection no longer crosses the cut"
    if kernel != "gaussian":
        model = add_reciprocam_head(kernel)(onnx.load(oracle))
    top = run(model, {"input": x})
    assert len(set(top["class_idx_used"])) > 1
    check_against_engine(top, oracle, x, kernel, "block", None)
    given = np.array([4, 0, 2], np.int64)
    check_against_engine(run(model, {"input": x, "class_idx": given}), oracle, x, kernel, "block", given)


@pytest.mark.parametrize(("kernel", "layer"), [("onehot", "layer1"), ("gaussian", "layer2"), ("onehot", None)])
def test_layers_equal_the_engine(tiny, kernel, layer) -> None:
    model, path, x = tiny
    out = run(add_reciprocam_head(kernel, layer)(model), {"input": x, "class_idx": np.array([-1], np.int64)})
    assert len(set(out["class_idx_used"])) > 1
    check_against_engine(out, path, x, kernel, layer or "layer2", None)
    assert class_maps_name("reciprocam", layer or "layer2") not in out


class MeanNet(TinyNet):
    """TinyNet whose classifier reads ``layer2(x).mean((2, 3))``: a ReduceMean without kept dims."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.layer1(self.relu(self.conv1(x))))
        return self.fc(self.layer2(x).mean((2, 3)))


def _as_global_average_pool(model: onnx.ModelProto, activation: str) -> onnx.ModelProto:
    """`model` with the ReduceMean over h×w that reads `activation` written as GlobalAveragePool."""
    model = copy.deepcopy(model)
    node = next(n for n in model.graph.node if n.op_type == "ReduceMean" and n.input[0] == activation)
    assert onnx.helper.get_attribute_value(next(a for a in node.attribute if a.name == "keepdims")) == 1
    node.op_type = "GlobalAveragePool"
    del node.input[1:]
    del node.attribute[:]
    return model


def _copied_ops(model: onnx.ModelProto) -> set[str]:
    return {n.op_type for n in model.graph.node if n.name.startswith("reciprocam/")}


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("form", ["reducemean-keepdims", "reducemean", "globalaveragepool"])
def test_a_tail_that_starts_with_global_pooling_pools_without_copies(tmp_path, kernel, form) -> None:
    """The tail's mean over h×w is computed from the activation by one MatMul with the masks (the
    copies are never built); equal to the engine, which builds and pools them."""
    net = make(MeanNet if form == "reducemean" else TinyNet, seed=5)
    path = tmp_path / "net.cam.onnx"
    camrt.export(net, layers=["layer2"], path=path, input_shape=(1, 3, 32, 32))
    model = onnx.load(path)
    if form == "globalaveragepool":
        model = _as_global_average_pool(model, "activation.layer2")
        onnx.save(model, path)
    pools = [n.op_type for n in model.graph.node if n.op_type in ("ReduceMean", "GlobalAveragePool")
             and n.input[0] == "activation.layer2"]
    assert pools == ["GlobalAveragePool" if form == "globalaveragepool" else "ReduceMean"]
    headed = add_reciprocam_head(kernel)(model)
    assert not _copied_ops(headed) & {"ReduceMean", "GlobalAveragePool"}, "the copies were pooled in the graph"
    assert not any(n.op_type == "Mul" and "activation.layer2" in n.input for n in headed.graph.node)
    x = diverse_inputs(net, (4, 3, 32, 32), seed=6)
    out = run(headed, {"input": x, "class_idx": np.array([-1], np.int64)})
    assert len(set(out["class_idx_used"])) > 1
    check_against_engine(out, str(path), x, kernel, "layer2", None)


def test_other_tails_pool_the_copies(tiny) -> None:
    """At layer1 the tail starts with a convolution: the copies are built and run through it."""
    headed = add_reciprocam_head("onehot", "layer1")(tiny[0])
    assert {"Conv", "ReduceMean"} <= _copied_ops(headed)
    assert "ReduceMean" not in _copied_ops(add_reciprocam_head("onehot", "layer2")(tiny[0]))


def test_all_classes_equal_the_engine_per_class(skip) -> None:
    model, oracle, x = skip
    out = run(model, {"input": x})
    every = out[class_maps_name("reciprocam", "block")]
    assert every.shape == (3, 5, 16, 16)
    np.testing.assert_array_equal(every[np.arange(3), out["class_idx_used"]], out[map_name("reciprocam", "block")])
    engine = Engine(oracle, device="cpu", chunk_graphs=False)
    for k in range(5):
        ref = engine.explain(x, "reciprocam", class_idx=k, kernel="gaussian").low_res
        assert (np.abs(every[:, k] - ref).max(axis=(1, 2)) / ref.max(axis=(1, 2))).max() <= TOL
    np.testing.assert_allclose(every.sum(axis=1), 1, atol=1e-5)  # each copy's probabilities


def test_graph_is_valid_and_tensorrt_finds_nothing_to_refuse(skip, tiny) -> None:
    for model in (skip[0], add_reciprocam_head("onehot", "layer1", all_classes=True)(tiny[0]),
                  without_gradients(skip[0])):
        onnx.checker.check_model(model, full_check=True)
        assert [str(p) for p in check_tensorrt(model) if not _is_class_idx_default(p)] == []


def test_without_gradients_runs_the_forward_pass_and_the_head_only(skip, tmp_path) -> None:
    model, oracle, x = skip
    stripped = without_gradients(model)
    names = [o.name for o in stripped.graph.output]
    assert names == ["logits", "class_idx_used", "activation.block", "map.reciprocam.block", "saliency.reciprocam",
                     "class_maps.reciprocam.block"]
    assert len(stripped.graph.node) == len(forward_only(model, names[1:]).graph.node) < len(model.graph.node)
    full, alone = run(model, {"input": x}), run(stripped, {"input": x})
    for name in names:
        np.testing.assert_array_equal(alone[name], full[name], err_msg=name)
    path = tmp_path / "stripped.onnx"
    onnx.save(stripped, path)
    engine = Engine(path, device="cpu")
    assert not engine.manifest.gradients and engine.manifest.maps == ("reciprocam",)
    ref = Engine(oracle, device="cpu").explain(x, "reciprocam", kernel="gaussian").low_res
    np.testing.assert_allclose(engine.explain(x, "reciprocam", kernel="gaussian").low_res, ref, rtol=1e-6, atol=1e-8)
    with pytest.raises(InputError, match="needs the gradient"):
        engine.explain(x, "gradcam")


def test_without_gradients_drops_the_gradient_heads(tiny) -> None:
    model = add_map_heads(["gradcam", "reciprocam:layer=layer1", "layercam-fusion"])(tiny[0])
    stripped = without_gradients(model)
    manifest = Manifest.from_json(next(p.value for p in stripped.metadata_props if p.key == METADATA_KEY))
    assert manifest.maps == ("reciprocam",) and not manifest.gradients and not manifest.input_gradient
    assert not any(is_gradient(o.name) or "gradcam" in o.name or "fusion" in o.name for o in stripped.graph.output)
    with pytest.raises(InputError, match="written without them"):
        add_map_heads("gradcam")(stripped)


@pytest.mark.parametrize(("spec", "head"), [
    ("reciprocam", ReciproCAMHead()),
    ("reciprocam:kernel=gaussian", ReciproCAMHead("gaussian")),
    ("reciprocam:all-classes:layer=layer3.1", ReciproCAMHead(layer="layer3.1", all_classes=True)),
    ("gradcam", None),
    ("reciprocamx", None),
])
def test_specs(spec, head) -> None:
    assert parse_spec(spec) == head


@pytest.mark.parametrize(("spec", "fragment"), [
    ("reciprocam:kernel=box", "kernel must be one of onehot, gaussian, got 'box'"),
    ("reciprocam:kernl=gaussian", "at 'kernl=gaussian': write reciprocam[:kernel=onehot|gaussian]"),
    ("reciprocam:all-classes=1", "at 'all-classes=1'"),
    ("reciprocam:kernel", "at 'kernel'"),
    ("reciprocam:layer=", "layer must be a layer name"),
    ("reciprocam:kernel=onehot:kernel=gaussian", "at 'kernel=gaussian'"),
])
def test_bad_specs(spec, fragment) -> None:
    with pytest.raises(InputError, match=fragment.replace("[", r"\[").replace("|", r"\|")):
        check_maps([spec])


def test_passes_keep_the_order_given_and_refuse_a_second_head(tiny) -> None:
    assert len(map_passes(["gradcam", "layercam", "reciprocam", "hirescam"])) == 3
    with pytest.raises(InputError, match="reciprocam given twice"):
        check_maps(["reciprocam", "reciprocam:kernel=gaussian"])
    assert "(or all), and reciprocam[:kernel=" in str(pytest.raises(InputError, check_maps, ["rise"]).value)
    once = add_reciprocam_head()(tiny[0])
    with pytest.raises(InputError, match="already has a Recipro-CAM head"):
        add_reciprocam_head("gaussian", "layer1")(once)
    with pytest.raises(InputError, match="no target layer 'layer9'; it was exported with: layer1, layer2"):
        add_reciprocam_head(layer="layer9")(tiny[0])


def test_refuses_maps_with_too_many_positions(tiny, monkeypatch) -> None:
    monkeypatch.setattr(rh, "MAX_POSITIONS", 255)
    with pytest.raises(InputError, match=r"'layer2' \(16×16 = 256 positions\).*at most 255.*Engine.explain"):
        add_reciprocam_head()(tiny[0])


# --- the command line -------------------------------------------------------------------------------


def test_add_maps_command(tiny, tmp_path) -> None:
    out = tmp_path / "rc.onnx"
    result = CliRunner().invoke(main, ["add-maps", tiny[1], "--maps", "reciprocam:kernel=gaussian", "--no-gradients",
                                       "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"wrote {out}: map heads reciprocam; without gradients"
    manifest = json.loads(onnx.load(out).metadata_props[0].value)
    assert manifest["map_options"] == {"reciprocam": {"kernel": "gaussian"}} and manifest["gradients"] is False
    assert add_maps(out, [], tmp_path / "again.onnx", gradients=False).maps == ("reciprocam",)


@pytest.mark.parametrize(("args", "fragments"), [
    (["--maps", "reciprocam:kernel=box"], ["kernel must be one of onehot, gaussian"]),
    ([], ["add-maps needs --maps", "--no-gradients"]),
    (["--maps", "gradcam,reciprocam", "--no-gradients"], ["map heads of gradcam read the gradients"]),
    (["--maps", "reciprocam:layer=fc"], ["no target layer 'fc'"]),
])
def test_add_maps_errors_are_one_line(tiny, tmp_path, args, fragments) -> None:
    out = tmp_path / "out.onnx"
    assert_one_line_error(CliRunner().invoke(main, ["add-maps", tiny[1], *args, "-o", str(out)]), *fragments)
    assert not out.exists()


# --- the engine reads the head ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def head_files(skip, tmp_path_factory):
    """SkipNet's file with the Gaussian head (and gradients), and the same without gradients."""
    model, oracle, x = skip
    folder = tmp_path_factory.mktemp("rc-engine")
    with_gradients, without = folder / "head.cam.onnx", folder / "head.nograd.onnx"
    onnx.save(model, with_gradients)
    onnx.save(without_gradients(model), without)
    return with_gradients, without, oracle, x


def _no_numpy_path(monkeypatch):
    import camrt.engine.engine as engine_module

    monkeypatch.setattr(engine_module, "perturbation_map", lambda *a, **k: pytest.fail("the numpy path ran"))


@pytest.mark.parametrize("which", [0, 1])
@pytest.mark.parametrize("io_binding", [False, True])
def test_engine_explains_from_the_head(head_files, monkeypatch, which, io_binding) -> None:
    """With the kernel the head was built with, `Engine.explain` reads the head's map and saliency
    from one run (no perturbation runs), with or without the gradient branch in the file."""
    path, oracle, x = head_files[which], head_files[2], head_files[3]
    ref = Engine(oracle, device="cpu").explain(x, "reciprocam", kernel="gaussian")
    ref_given = Engine(oracle, device="cpu").explain(x, "reciprocam", class_idx=[2, 0, 4], kernel="gaussian")
    _no_numpy_path(monkeypatch)
    engine = Engine(path, device="cpu", io_binding=io_binding)
    got = engine.explain(x, "reciprocam", kernel="gaussian")
    np.testing.assert_array_equal(got.class_idx, ref.class_idx)
    err = np.abs(got.low_res - ref.low_res).max(axis=(1, 2)) / ref.low_res.max(axis=(1, 2))
    assert err.max() <= TOL, err
    assert got.saliency.shape == ref.saliency.shape and 0 <= got.saliency.min() and got.saliency.max() <= 1
    given = engine.explain(x, "reciprocam", class_idx=[2, 0, 4], kernel="gaussian")
    np.testing.assert_array_equal(given.class_idx, [2, 0, 4])
    err = np.abs(given.low_res - ref_given.low_res).max(axis=(1, 2)) / ref_given.low_res.max(axis=(1, 2))
    assert err.max() <= TOL, err


def test_engine_runs_the_method_when_the_options_differ(head_files, monkeypatch) -> None:
    """The head was built with the Gaussian kernel: a one-hot request runs the perturbation path."""
    path, _, oracle, x = head_files
    calls = []
    import camrt.engine.engine as engine_module

    original = engine_module.perturbation_map
    monkeypatch.setattr(engine_module, "perturbation_map", lambda *a, **k: calls.append(1) or original(*a, **k))
    got = Engine(path, device="cpu").explain(x, "reciprocam", kernel="onehot")
    assert calls
    ref = Engine(oracle, device="cpu").explain(x, "reciprocam", kernel="onehot")
    np.testing.assert_allclose(got.low_res, ref.low_res, rtol=1e-5, atol=1e-7)


def test_engine_on_a_file_without_gradients(head_files) -> None:
    _, path, _, x = head_files
    engine = Engine(path, device="cpu")
    with pytest.raises(InputError, match="--no-gradients"):
        engine.explain(x, "gradcam")
    assert engine.explain(x, "scorecam").saliency.shape == (len(x), *SIZE[1:])
