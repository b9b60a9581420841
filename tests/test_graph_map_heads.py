"""camrt.graph.map_heads: the closed-form gradient CAMs computed inside the graph.

Every head is compared, through ONNX Runtime, with the numpy method of `camrt.methods` applied to
the activation and gradient of the same run: maps within 1e-5 of their image's largest value,
saliencies (at input size, in [0, 1]) within 1e-5 absolute. On a real export of TinyNet (targets
layer1, 16×16, whose gradient varies over the map, and layer2, followed by global average pooling
→ linear) with inputs of several predicted classes, and on a graph written as ONNX text that feeds
the activations and gradients in directly, so zero denominators, all-zero and constant maps and odd
resize ratios (3×5 and 2×2 → 31×29) can be set by hand.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnx
import onnx.parser
import pytest
import torch
from click.testing import CliRunner

import camrt
from camrt.cli import main
from camrt.engine import Engine, open_session
from camrt.errors import InputError
from camrt.graph import add_map_heads, export_passes, map_passes, run_passes
from camrt.graph.map_heads import FUSION, HEAD_METHODS, HEADS, add_maps, check_maps
from camrt.manifest import METADATA_KEY, Layer, Manifest, map_name, saliency_name
from camrt.methods import METHODS, fuse, normalize, upsample
from tests.cli_checks import assert_one_line_error, run_without_torch
from tests.tiny import TinyNet, diverse_inputs, make

SIZE = (32, 32)
LAYERS = ["layer1", "layer2"]
TOL = 1e-5


def numpy_map(method: str, a: np.ndarray, g: np.ndarray) -> np.ndarray:
    """The numpy method; for CAM, its formula without the check (the head does not check)."""
    if method == "cam":
        return np.maximum(np.einsum("nc,nchw->nhw", g.sum(axis=(2, 3)), a), 0)
    return METHODS[method].map(a, g)


def map_error(got: np.ndarray, ref: np.ndarray) -> float:
    """Largest difference relative to the map's largest value over the batch.

    Not per image: an image whose map nearly cancels (an explicit class with a map peaking at 5e-6
    from terms of 4e-3, in one of the inputs tried) holds float32 rounding of those terms, in numpy
    as in the graph (5e-6 and 2e-5 of that peak from float64), so its own peak is no yardstick.
    """
    assert got.shape == ref.shape and got.dtype == np.float32
    return float(np.abs(got.astype(np.float64) - ref).max() / max(float(ref.max()), 1e-30))


def run(model: onnx.ModelProto | Path, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    data = model.read_bytes() if isinstance(model, Path) else model.SerializeToString()
    sess = open_session(data)
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feed), strict=True))


def check_all_heads(out: dict[str, np.ndarray], manifest: Manifest, size: tuple[int, int]) -> dict[str, float]:
    """Every head in `out` against numpy; returns the largest deviation per output."""
    errors = {}
    last = manifest.layers[-1]
    for method in HEADS:
        for la in manifest.layers:
            ref = numpy_map(method, out[la.activation], out[la.gradient])
            errors[map_name(method, la.name)] = map_error(out[map_name(method, la.name)], ref)
        ref = normalize(upsample(numpy_map(method, out[last.activation], out[last.gradient]), size))
        errors[saliency_name(method)] = float(np.abs(out[saliency_name(method)] - ref).max())
    maps = [METHODS["layercam"].map(out[la.activation], out[la.gradient]) for la in manifest.layers]
    errors[saliency_name(FUSION)] = float(np.abs(out[saliency_name(FUSION)] - fuse(maps, size)).max())
    for name in [saliency_name(m) for m in HEAD_METHODS]:
        s = out[name]
        assert s.shape == (len(s), *size) and np.isfinite(s).all() and s.min() >= 0 and s.max() <= 1, name
    bad = {k: v for k, v in errors.items() if not v <= TOL}
    assert not bad, f"heads off from numpy: {bad}"
    return errors


# --- a real export ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model() -> TinyNet:
    return make(TinyNet, seed=3)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, model) -> tuple[Path, Manifest]:
    """TinyNet exported once with `maps=["gradcam"]`."""
    path = tmp_path_factory.mktemp("heads") / "tiny.cam.onnx"
    manifest = camrt.export(model, layers=LAYERS, path=path, input_shape=(1, 3, *SIZE), maps=["gradcam"])
    return path, manifest


@pytest.fixture(scope="module")
def full(exported) -> Path:
    """The export with every other head added by `add_maps` (the library behind `camrt add-maps`)."""
    path = exported[0].with_name("all.cam.onnx")
    add_maps(exported[0], [m for m in HEAD_METHODS if m != "gradcam"], path)
    return path


@pytest.fixture(scope="module")
def x(model) -> np.ndarray:
    """Fresh inputs (another seed than the export's check) whose top-1 classes differ."""
    batch = diverse_inputs(model, (6, 3, *SIZE), seed=11).astype(np.float32)
    assert len(set(model(torch.from_numpy(batch)).argmax(1).tolist())) > 2
    return batch


def test_export_with_maps_records_and_outputs_them(exported) -> None:
    path, manifest = exported
    assert manifest.maps == ("gradcam",)
    proto = onnx.load(path)
    names = [o.name for o in proto.graph.output]
    assert names[-3:] == ["map.gradcam.layer1", "map.gradcam.layer2", "saliency.gradcam"]
    stored = Manifest.from_json({p.key: p.value for p in proto.metadata_props}[METADATA_KEY])
    assert stored == manifest
    onnx.checker.check_model(proto, full_check=True)


def test_add_maps_records_every_head_in_order(full) -> None:
    proto = onnx.load(full)
    manifest = Manifest.from_json({p.key: p.value for p in proto.metadata_props}[METADATA_KEY])
    assert manifest.maps == ("gradcam", *[m for m in HEAD_METHODS if m != "gradcam"])
    names = {o.name for o in proto.graph.output}
    for method in HEADS:
        assert {map_name(method, la) for la in LAYERS} | {saliency_name(method)} <= names
    assert saliency_name(FUSION) in names and not any(n.startswith(f"map.{FUSION}.") for n in names)
    shapes = {o.name: [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim] for o in proto.graph.output}
    assert shapes["map.hirescam.layer1"] == ["batch", 16, 16] and shapes["saliency.abscam"] == ["batch", *SIZE]
    onnx.checker.check_model(proto, full_check=True)


@pytest.mark.parametrize("cls", [None, [0, 1, 2, 3, 4, 0]], ids=["top1", "explicit"])
def test_heads_equal_the_numpy_methods(full, x, cls) -> None:
    feed = {"input": x} if cls is None else {"input": x, "class_idx": np.array(cls, np.int64)}
    out = run(full, feed)
    assert len(set(out["class_idx_used"].tolist())) > 2
    errors = check_all_heads(out, Manifest.from_json(open_session(full.read_bytes()).get_modelmeta()
                                                     .custom_metadata_map[METADATA_KEY]), SIZE)
    assert errors  # every head was compared


def test_cam_head_off_a_pooling_head_is_gradcam_times_hw(full, x) -> None:
    """layer1 is not followed by GAP → linear: the numpy CAM refuses it, the head (which cannot
    refuse) gives Grad-CAM's map times h·w and the same saliency, as documented."""
    out = run(full, {"input": x})
    a, g = out["activation.layer1"], out["gradient.layer1"]
    with pytest.raises(InputError, match="global-average-pool"):
        METHODS["cam"].map(a, g)
    assert map_error(out["map.cam.layer1"], METHODS["gradcam"].map(a, g) * 16 * 16) < TOL


def test_only_the_saliency_output_is_needed(full, x) -> None:
    """The README's use: one output by name from plain onnxruntime, no post-processing."""
    sess = open_session(full.read_bytes())
    (saliency,) = sess.run(["saliency.gradcam"], {"input": x})
    out = run(full, {"input": x})
    ref = normalize(upsample(METHODS["gradcam"].map(out["activation.layer2"], out["gradient.layer2"]), SIZE))
    assert np.abs(saliency - ref).max() < TOL


# --- the engine reads the heads ---------------------------------------------------------------------


def test_engine_reads_the_heads_instead_of_numpy(full, x, monkeypatch) -> None:
    engine = Engine(full, device="cpu")
    p = engine.forward(x)

    def fail(*args, **kwargs):
        raise AssertionError("the engine computed in numpy what the graph holds")

    import camrt.engine.engine as engine_module

    spec = METHODS["gradcam++"]
    monkeypatch.setattr(engine_module, "get_method", lambda name: dataclasses.replace(spec, map=fail))
    for name in ("upsample", "normalize", "fuse"):
        monkeypatch.setattr(engine_module, name, fail)
    r = engine.explain_pass(p, "gradcam++")
    np.testing.assert_array_equal(r.saliency, p.outputs["saliency.gradcam++"])
    np.testing.assert_array_equal(r.low_res, p.outputs["map.gradcam++.layer2"])
    assert r.layers == ("layer2",)


@pytest.mark.parametrize("method", list(HEADS))
def test_engine_with_heads_equals_numpy(full, x, method) -> None:
    engine = Engine(full, device="cpu")
    p = engine.forward(x)
    a = {la: p.outputs[f"activation.{la}"] for la in LAYERS}
    g = {la: p.outputs[f"gradient.{la}"] for la in LAYERS}
    for layer in ([] if method == "cam" else ["layer1"]) + ["layer2"]:
        r = engine.explain_pass(p, method, layer=layer)  # layer1: map from the graph, upsampled in numpy
        ref = METHODS[method].map(a[layer], g[layer])
        assert map_error(r.low_res, ref) < TOL
        assert np.abs(r.saliency - normalize(upsample(ref, SIZE))).max() < TOL
    if method != "cam":  # several layers: the numpy fusion, as before
        r = engine.explain_pass(p, method, layer=LAYERS)
        ref = fuse([METHODS[method].map(a[la], g[la]) for la in LAYERS], SIZE)
        assert np.abs(r.saliency - ref).max() < TOL


def test_engine_keeps_cams_check(full, x) -> None:
    engine = Engine(full, device="cpu")
    with pytest.raises(InputError, match="global-average-pool"):
        engine.explain(x, "cam", layer="layer1")
    assert engine.explain(x, "cam").saliency.shape == (len(x), *SIZE)


# --- a hand-written graph: activations and gradients fed in directly ------------------------------

# Two "layers" whose activation and gradient are the graph's inputs; an input 31×29.
FEED = """
<ir_version: 9, opset_import: ["" : {opset}]>
feed (float[N, 3, 31, 29] input, float[N, 2, 3, 5] a1, float[N, 2, 3, 5] g1, float[N, 3, 2, 2] a2,
      float[N, 3, 2, 2] g2) => (float[N, 2, 3, 5] act1, float[N, 2, 3, 5] grad1, float[N, 3, 2, 2] act2,
      float[N, 3, 2, 2] grad2) {{
    act1 = Identity(a1)
    grad1 = Identity(g1)
    act2 = Identity(a2)
    grad2 = Identity(g2)
}}
"""
HAND = Manifest(input_shape=(1, 3, 31, 29), num_classes=4, layers=(Layer("shallow", (2, 3, 5)),
                                                                    Layer("deep", (3, 2, 2))), source="hand-written")


def hand_model(opset: int = 18, manifest: Manifest | None = HAND) -> onnx.ModelProto:
    """FEED with its outputs renamed to activation.L and gradient.L (the text format has no dots)."""
    model = onnx.parser.parse_model(FEED.format(opset=opset))
    rename = {"act1": "activation.shallow", "grad1": "gradient.shallow", "act2": "activation.deep",
              "grad2": "gradient.deep"}
    for node in model.graph.node:
        node.output[0] = rename[node.output[0]]
    for o in model.graph.output:
        o.name = rename[o.name]
    if manifest is not None:
        model.metadata_props.add(key=METADATA_KEY, value=manifest.to_json())
    return model


def hand_feed() -> dict[str, np.ndarray]:
    """Six images: random; zero denominators; all zero; constant maps; negative maps; random again."""
    rng = np.random.default_rng(0)
    a1, g1 = rng.normal(size=(2, 6, 2, 3, 5)).astype(np.float32)
    a2, g2 = rng.normal(size=(2, 6, 3, 2, 2)).astype(np.float32)
    # image 1: a channel whose activations sum to 0 (XGrad-CAM's weight 0), a channel with zero
    # gradient (Grad-CAM++'s denominator 0), and Grad-CAM++'s denominator exactly 0 with G ≠ 0:
    # 2G² + (Σ A) G³ = 0 for Σ A = -2, G = 1.
    a1[1, 0] = np.array([[1, -1, 2, -2, 0], [0.5, -0.5, 0, 0, 0], [0, 0, 0, 0, 0]])
    g1[1, 1] = 0
    a2[1, 0] = 0
    a2[1, 0, 0, 0] = -2
    g2[1, 0] = 1
    # image 2: everything zero
    a1[2] = g1[2] = a2[2] = g2[2] = 0
    # image 3: constant activations and gradients: constant maps
    a1[3], g1[3], a2[3], g2[3] = 0.7, 0.3, 1.5, 0.2
    # image 4: positive activations, negative gradients: the ReLU'd maps are all zero
    a1[4], a2[4] = np.abs(a1[4]), np.abs(a2[4])
    g1[4], g2[4] = -np.abs(g1[4]), -np.abs(g2[4])
    x = np.zeros((6, 3, 31, 29), np.float32)
    return {"input": x, "a1": a1, "g1": g1, "a2": a2, "g2": g2}


@pytest.fixture(scope="module")
def hand_out() -> dict[str, np.ndarray]:
    model = run_passes(hand_model(), map_passes("all"))
    onnx.checker.check_model(model, full_check=True)
    return run(model, hand_feed())


def test_hand_written_graph_heads_equal_numpy(hand_out) -> None:
    check_all_heads(hand_out, HAND, (31, 29))


def test_hand_written_edge_cases(hand_out) -> None:
    f = hand_feed()
    # image 1: Grad-CAM++'s zero denominator (Σ A = -2, G = 1) makes α = 0, not NaN, in the deep layer
    assert np.isfinite(hand_out["map.gradcam++.deep"]).all()
    # image 2 (all zero), 3 (constant) and 4 (ReLU'd away, except for Abs-CAM's |G|): saliency all zeros
    for method in HEADS:
        s = hand_out[saliency_name(method)]
        assert not s[2:4].any() and (method == "abscam") == s[4].any(), method
        assert s[0].max() == pytest.approx(1.0) and s[0].min() == 0.0, method
    assert not hand_out[saliency_name(FUSION)][2].any()
    assert not hand_out["map.gradcam.deep"][4].any() and hand_out["map.gradcam.deep"][3].min() > 0
    assert f["a1"][1, 0].sum() == 0  # the XGrad-CAM case is what it claims


def test_saliency_matches_torch_interpolate_on_odd_sizes(hand_out) -> None:
    """The upsampling is torch's bilinear (align_corners=False), border clamping included (on the
    images whose maps are not constant: torch's own rounding makes a constant map uneven)."""
    import torch.nn.functional as F  # noqa: N812

    f = hand_feed()
    keep = [0, 1, 5]
    for layer, a, g in (("deep", f["a2"], f["g2"]), ("shallow", f["a1"], f["g1"])):
        low = METHODS["hirescam"].map(a[keep], g[keep])
        up = F.interpolate(torch.from_numpy(low)[:, None], size=(31, 29), mode="bilinear", align_corners=False)
        heads = add_map_heads("hirescam")(hand_model(manifest=dataclasses.replace(HAND, layers=(
            HAND.layer(layer),) if layer == "deep" else (HAND.layer("deep"), HAND.layer("shallow")))))
        got = run(heads, f)["saliency.hirescam"][keep]
        assert np.abs(got - normalize(up[:, 0].numpy())).max() < TOL, layer


def test_resize_would_break_constant_maps() -> None:
    """Why the heads do not use ONNX Resize: on a constant map its (1 − t)·a + t·b is uneven by an
    ulp, which min-max normalisation turns into noise in [0, 1]; the heads' upsampling stays exact."""
    resize = onnx.parser.parse_model("""
    <ir_version: 9, opset_import: ["" : 18]>
    r (float[N, 1, 2, 2] m) => (float[N, 1, 31, 29] up) {
        sizes = Constant <value = int64[4] {1, 1, 31, 29}> ()
        up = Resize <mode = "linear", coordinate_transformation_mode = "half_pixel"> (m, , , sizes)
    }
    """)
    m = np.full((1, 1, 2, 2), 0.9, np.float32)
    up = run(resize, {"m": m})["up"]
    assert up.max() > up.min()  # if ONNX Runtime ever computes it exactly, Resize becomes an option
    f = hand_feed()
    f["a2"][:], f["g2"][:] = 1.5, 0.2  # layercam map 3 · 0.3 = 0.9 everywhere
    out = run(add_map_heads("layercam")(hand_model()), f)
    assert not out["saliency.layercam"].any()


def test_pass_leaves_its_argument_untouched_and_manifest_grows() -> None:
    model = hand_model()
    before = model.SerializeToString()
    out = add_map_heads(["layercam", "gradcam"])(model)
    assert model.SerializeToString() == before
    out = add_map_heads("xgradcam")(out)
    manifest = Manifest.from_json({p.key: p.value for p in out.metadata_props}[METADATA_KEY])
    assert manifest.maps == ("layercam", "gradcam", "xgradcam")
    assert dataclasses.replace(manifest, maps=()) == HAND


# --- refusals ---------------------------------------------------------------------------------------


def test_refuses_to_insert_twice() -> None:
    once = add_map_heads("gradcam")(hand_model())
    with pytest.raises(InputError, match=r"already has the output 'map\.gradcam\.shallow'.*heads for gradcam"):
        add_map_heads(["layercam", "gradcam"])(once)
    with pytest.raises(InputError, match="already has the output 'saliency.layercam-fusion'"):
        add_map_heads(FUSION)(add_map_heads(FUSION)(hand_model()))


@pytest.mark.parametrize(("methods", "fragment"), [
    (["eigencam"], "singular value decomposition, which ONNX has no operator for"),
    (["gradcam", "eigengradcam"], "singular value decomposition"),
    (["scorecam"], "no map head for method 'scorecam'; methods with heads: cam, gradcam, gradcam++"),
    (["GradCAM"], "layercam-fusion"),
    (["gradcam", "layercam", "gradcam"], "gradcam given twice"),
    ([], "no methods given"),
    ([""], "no map head for method ''"),
])
def test_bad_method_lists(methods, fragment) -> None:
    with pytest.raises(InputError, match=fragment.replace("+", r"\+").replace("'", "'")):
        check_maps(methods)
    with pytest.raises(InputError):
        add_map_heads(methods)


def test_all_means_every_head() -> None:
    assert check_maps("all") == check_maps(["all"]) == HEAD_METHODS
    assert set(HEADS) == {n for n, m in METHODS.items() if m.family == "gradient" and not n.startswith("eigen")}


def test_refuses_a_model_without_manifest_or_before_opset_18() -> None:
    with pytest.raises(InputError, match="no camrt manifest; export the model with `camrt export`"):
        add_map_heads("gradcam")(hand_model(manifest=None))
    with pytest.raises(InputError, match="opset 18 or later.*imports opset 17"):
        add_map_heads("gradcam")(hand_model(opset=17))


def test_export_passes_end_with_the_map_heads() -> None:
    passes = export_passes(4, HAND.to_json(), ["gradcam"])
    assert len(passes) == len(export_passes(4, HAND.to_json())) + 1


def test_manifest_names_and_older_manifests() -> None:
    assert map_name("gradcam++", "layer4") == "map.gradcam++.layer4"
    assert saliency_name("layercam-fusion") == "saliency.layercam-fusion"
    d = json.loads(HAND.to_json())
    del d["maps"]
    assert Manifest.from_json(json.dumps(d)).maps == ()
    with_maps = dataclasses.replace(HAND, maps=("gradcam", FUSION))
    assert Manifest.from_json(with_maps.to_json()) == with_maps


# --- the command line -------------------------------------------------------------------------------


def test_add_maps_command_without_torch(exported, tmp_path) -> None:
    """`camrt add-maps` in a fresh interpreter: it writes the heads and never imports torch."""
    out = tmp_path / "with_maps.onnx"
    proc = run_without_torch("add-maps", exported[0], "--maps", "layercam, hirescam", "-o", out)
    assert proc.stdout.strip() == f"wrote {out}: map heads gradcam, layercam, hirescam"
    assert Engine(out, device="cpu").manifest.maps == ("gradcam", "layercam", "hirescam")


def test_add_maps_in_place(exported, tmp_path) -> None:
    path = tmp_path / "m.onnx"
    path.write_bytes(exported[0].read_bytes())
    result = CliRunner().invoke(main, ["add-maps", str(path), "--maps", FUSION, "-o", str(path)])
    assert result.exit_code == 0, result.output
    assert saliency_name(FUSION) in {o.name for o in onnx.load(path).graph.output}
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


@pytest.mark.parametrize(("maps", "fragments"), [
    ("gradcam,foo", ["no map head for method 'foo'", "methods with heads: cam, gradcam", "layercam-fusion"]),
    ("eigencam", ["'eigencam' cannot be a map head", "singular value decomposition"]),
    ("gradcam", ["already has the output 'map.gradcam.layer1'"]),
])
def test_add_maps_errors_are_one_line_and_leave_nothing(exported, tmp_path, maps, fragments) -> None:
    out = tmp_path / "out.onnx"
    assert_one_line_error(CliRunner().invoke(main, ["add-maps", str(exported[0]), "--maps", maps, "-o", str(out)]),
                   *fragments)
    assert list(tmp_path.iterdir()) == []


def test_add_maps_file_errors(tmp_path) -> None:
    plain = tmp_path / "plain.onnx"
    plain.write_bytes(hand_model(manifest=None).SerializeToString())
    runner = CliRunner()
    o = str(tmp_path / "o.onnx")
    assert_one_line_error(runner.invoke(main, ["add-maps", str(plain), "--maps", "gradcam", "-o", o]),
                          f"'{plain}' has no camrt manifest")
    assert_one_line_error(runner.invoke(main, ["add-maps", str(tmp_path / "missing.onnx"), "--maps", "gradcam", "-o",
                                        str(tmp_path / "o.onnx")]), "does not exist")
    text = tmp_path / "notes.onnx"
    text.write_text("not a model")
    assert_one_line_error(runner.invoke(main, ["add-maps", str(text), "--maps", "gradcam", "-o", o]),
                          "is not an ONNX model")
    good = tmp_path / "hand.onnx"
    good.write_bytes(hand_model().SerializeToString())
    assert_one_line_error(runner.invoke(main, ["add-maps", str(good), "--maps", "gradcam", "-o",
                                        str(tmp_path / "nowhere" / "o.onnx")]), "cannot write", "No such file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hand.onnx", "notes.onnx", "plain.onnx"]


def test_export_command_with_maps(tmp_path, model) -> None:
    weights = tmp_path / "tiny.pth"
    torch.save(model.state_dict(), weights)
    arch = ["--arch", "tests.tiny:TinyNet", "--input-shape", "1,3,32,32", "--layer", "layer2"]
    out = tmp_path / "m.onnx"
    bad = CliRunner().invoke(main, ["export", str(weights), *arch, "--maps", "gradcam,rise", "-o", str(out)])
    assert_one_line_error(bad, "no map head for method 'rise'", "methods with heads")
    assert not out.exists()
    result = CliRunner().invoke(main, ["export", str(weights), *arch, "--maps", "gradcam,layercam", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "map heads gradcam, layercam" in result.stdout
    engine = Engine(out, device="cpu")
    assert engine.manifest.maps == ("gradcam", "layercam")
    p = engine.forward(diverse_inputs(model, (4, 3, *SIZE), seed=5).astype(np.float32))
    check = {k: p.outputs[k] for k in ("map.layercam.layer2", "saliency.gradcam")}
    ref = METHODS["layercam"].map(p.outputs["activation.layer2"], p.outputs["gradient.layer2"])
    assert map_error(check["map.layercam.layer2"], ref) < TOL


# --- Grad-CAM's weights from the pooled gradient; files with only the maps ------------------------

def test_gradcam_head_at_a_pooled_layer_reads_the_gradient_before_its_broadcast(exported) -> None:
    """At layer2 (global average pooling → linear) the gradient is one value per channel broadcast
    over the map: Grad-CAM's weights are that value, not a ReduceMean over the broadcast gradient;
    at layer1 (gradient varying over the map) they are the ReduceMean."""
    model = onnx.load(exported[0])
    reads = {la: [n.op_type for n in model.graph.node if n.name.startswith("map_heads/")
                  and f"gradient.{la}" in n.input] for la in LAYERS}
    assert reads["layer1"] == ["ReduceMean"]
    assert reads["layer2"] == []


def test_maps_only_file_has_the_heads_and_no_broadcast_gradient(exported, full, x, tmp_path) -> None:
    path = tmp_path / "only.onnx"
    manifest = add_maps(exported[0], ["gradcam++"], path, maps_only=True)
    assert manifest.maps_only and not manifest.gradients and manifest.maps == ("gradcam", "gradcam++")
    model = onnx.load(path)
    names = [o.name for o in model.graph.output]
    assert names == ["logits", "class_idx_used", *[map_name(m, la) for m in ("gradcam",) for la in LAYERS],
                     saliency_name("gradcam"), *[map_name("gradcam++", la) for la in LAYERS],
                     saliency_name("gradcam++")]
    every, alone = run(full, {"input": x}), run(path, {"input": x})  # `full`: the same heads and all the others
    for name in names:
        np.testing.assert_allclose(alone[name], every[name], rtol=0, atol=1e-6, err_msg=name)
    # exported at layer2 alone, the gradient (one value per channel) is never broadcast to 8×8
    pooled = tmp_path / "layer2.cam.onnx"
    camrt.export(make(TinyNet, seed=3), layers=["layer2"], path=pooled, input_shape=(1, 3, *SIZE), maps=["gradcam"])
    add_maps(pooled, [], tmp_path / "layer2.only.onnx", maps_only=True)
    before, after = onnx.load(pooled), onnx.load(tmp_path / "layer2.only.onnx")
    weights = next(n for n in after.graph.node if n.name.startswith("map_heads/")).input[0]  # v of v / k
    assert any(n.op_type == "Expand" and weights in n.input for n in before.graph.node)
    assert not any(n.op_type == "Expand" and weights in n.input for n in after.graph.node)
    assert len(after.graph.node) < len(before.graph.node)
    np.testing.assert_array_equal(Engine(tmp_path / "layer2.only.onnx", device="cpu").explain(x, "gradcam").low_res,
                                  Engine(pooled, device="cpu").explain(x, "gradcam").low_res)


def test_engine_on_a_maps_only_file_answers_its_heads_and_refuses_the_rest(exported, x, tmp_path) -> None:
    path = tmp_path / "only.onnx"
    add_maps(exported[0], [], path, maps_only=True)
    engine, ref = Engine(path, device="cpu"), Engine(exported[0], device="cpu")
    for layer in ("layer1", "layer2"):
        got, want = engine.explain(x, "gradcam", layer=layer), ref.explain(x, "gradcam", layer=layer)
        np.testing.assert_array_equal(got.low_res, want.low_res)
        np.testing.assert_array_equal(got.class_idx, want.class_idx)
    np.testing.assert_array_equal(engine.explain(x, "gradcam").saliency, ref.explain(x, "gradcam").saliency)
    p = engine.forward(x, class_idx=2)  # what `camrt explain`, `batch`, `serve` and `video` call
    np.testing.assert_array_equal(engine.explain_pass(p, "gradcam").low_res,
                                  ref.explain(x, "gradcam", class_idx=2).low_res)
    for method in ("layercam", "scorecam", "eigencam"):
        with pytest.raises(InputError, match="holds only the maps of its heads"):
            engine.explain(x, method)
    with pytest.raises(InputError, match="holds only the maps of its heads"):
        engine.explain_pass(p, "layercam")
    with pytest.raises(InputError, match="holds only the maps of its heads"):
        engine.explain(x, "gradcam", layer=["layer1", "layer2"])  # fused layers: no head computes that


def test_add_maps_only_command(exported, tmp_path) -> None:
    out = tmp_path / "only.onnx"
    result = CliRunner().invoke(main, ["add-maps", str(exported[0]), "--maps-only", "-o", str(out)])
    assert result.exit_code == 0 and result.output.strip() == f"wrote {out}: map heads gradcam; maps only"
    plain = tmp_path / "plain.onnx"
    camrt.export(make(TinyNet, seed=3), layers=["layer2"], path=plain, input_shape=(1, 3, *SIZE))
    assert_one_line_error(CliRunner().invoke(main, ["add-maps", str(plain), "--maps-only", "-o", str(out)]),
                          "has no map heads")


def test_without_saliency_the_engine_computes_it_when_read(exported, x, tmp_path) -> None:
    path = tmp_path / "nosal.onnx"
    add_maps(exported[0], [], path, maps_only=True, saliency=False)
    assert [o.name for o in onnx.load(path).graph.output] == ["logits", "class_idx_used", "map.gradcam.layer1",
                                                              "map.gradcam.layer2"]
    got, ref = Engine(path, device="cpu").explain(x, "gradcam"), Engine(exported[0], device="cpu").explain(x, "gradcam")
    np.testing.assert_array_equal(got.low_res, ref.low_res)
    assert got._saliency is None  # not computed until read
    np.testing.assert_allclose(got.saliency, ref.saliency, rtol=0, atol=1e-6)
    assert got.saliency is got.saliency and got.saliency.dtype == np.float32
    np.testing.assert_array_equal(got.saliency, normalize(upsample(got.low_res, SIZE)))


def test_add_maps_no_saliency_command(exported, tmp_path) -> None:
    out = tmp_path / "nosal.onnx"
    result = CliRunner().invoke(main, ["add-maps", str(exported[0]), "--no-saliency", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert not any(o.name.startswith("saliency.") for o in onnx.load(out).graph.output)
    assert_one_line_error(CliRunner().invoke(main, ["add-maps", str(out), "--no-saliency", "-o", str(out)]),
                          "no map head saliency to drop")
