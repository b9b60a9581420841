"""`camrt explain` and `camrt methods` through click's CliRunner, on a tiny model exported once with labels.

The files written are checked against the library: each .npy is `Engine.explain` on the same image,
each overlay is `overlay(image, saliency)`.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

import camrt
from camrt.cli import main
from camrt.engine import Engine
from camrt.engine import engine as engine_module
from camrt.explain import output_names, resolve_methods, served_methods
from camrt.methods import METHODS
from camrt.visual.overlay import grid, overlay, read_image
from tests.tiny import TinyNet, make

LABELS = ["cat", "dog", "bird", "fish", "frog"]
SIZE = (32, 32)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "tiny.cam.onnx"
    camrt.export(make(TinyNet, seed=11), layers=["layer1", "layer2"], path=path, input_shape=(1, 3, *SIZE),
                 labels=LABELS)
    return path


@pytest.fixture(scope="module")
def engine(model_path) -> Engine:
    return Engine(model_path, device="cpu")


@pytest.fixture
def images(tmp_path) -> dict[str, Path]:
    """a.png (RGB, 40×50), dir/b.png (grayscale, 24×24), dir/c.bmp (RGB, 64×32), and in dir/ a text file
    that the directory listing skips (not an image suffix)."""
    rng = np.random.default_rng(0)
    (tmp_path / "dir").mkdir()
    paths = {"a": tmp_path / "a.png", "b": tmp_path / "dir" / "b.png", "c": tmp_path / "dir" / "c.bmp"}
    assert cv2.imwrite(str(paths["a"]), rng.integers(0, 256, (40, 50, 3), dtype=np.uint8))
    assert cv2.imwrite(str(paths["b"]), rng.integers(0, 256, (24, 24), dtype=np.uint8))
    assert cv2.imwrite(str(paths["c"]), rng.integers(0, 256, (64, 32, 3), dtype=np.uint8))
    (tmp_path / "dir" / "notes.txt").write_text("not an image")
    return paths


def invoke(*args) -> object:
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_error_lines(result, count: int) -> list[str]:
    lines = result.stderr.splitlines()
    assert len(lines) == count and all(line.startswith("camrt: error: ") for line in lines), result.stderr
    assert "Traceback" not in result.output and "Traceback" not in result.stderr
    return lines


def test_explain_writes_overlays_npy_and_grid(model_path, engine, images, tmp_path) -> None:
    out = tmp_path / "out"
    result = invoke("explain", model_path, images["a"], tmp_path / "dir", "--method", "gradcam,gradcam++",
                    "-o", out, "--save-npy", "--device", "cpu")
    assert result.exit_code == 0, (result.output, result.stderr)
    assert result.stderr == ""
    for stem in "abc":
        for name in ("gradcam", "gradcam++"):
            image, _ = read_image(images[stem])
            expected = engine.explain([image], name).saliency[0]
            saved = np.load(out / f"{stem}.{name}.npy")
            assert saved.shape == SIZE and saved.dtype == np.float32  # the model's input size
            assert saved.min() == 0.0 and saved.max() == 1.0
            np.testing.assert_array_equal(saved, expected)
            tile, _ = read_image(out / f"{stem}.{name}.png")
            np.testing.assert_array_equal(tile, overlay(image, expected))  # at the image's own size
        assert (out / f"{stem}.grid.png").is_file()
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{s}.{kind}" for s in "abc" for kind in ("gradcam.png", "gradcam.npy", "gradcam++.png", "gradcam++.npy",
                                                   "grid.png"))
    # The grid: the input and the two overlays side by side.
    image, _ = read_image(images["a"])
    tiles = [image, *(read_image(out / f"a.{n}.png")[0] for n in ("gradcam", "gradcam++"))]
    np.testing.assert_array_equal(read_image(out / "a.grid.png")[0], grid(tiles, ["input", "gradcam", "gradcam++"]))


def test_explain_prints_top_k_with_labels_and_the_provider(model_path, engine, images, tmp_path) -> None:
    result = invoke("explain", model_path, images["a"], images["b"], "-o", tmp_path / "out", "--topk", "3",
                    "--device", "cpu")
    assert result.exit_code == 0, (result.output, result.stderr)
    lines = result.stdout.splitlines()
    assert lines[0] == f"{model_path.name}: provider CPUExecutionProvider"
    for stem, note in (("a", ""), ("b", " [grayscale replicated to RGB]")):
        image, _ = read_image(images[stem])
        logits = engine.forward([image]).outputs["logits"][0].astype(np.float64)
        probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        top = np.argsort(probs)[::-1][:3]
        expected = f"{images[stem]}{note}: " + ", ".join(f"{LABELS[k]} {probs[k]:.1%}" for k in top)
        assert expected in lines, (expected, lines)
    assert sum("1 files in" in line for line in lines) == 2  # one overlay each, no grid for one method


def test_class_idx_and_fused_layers(model_path, engine, images, tmp_path) -> None:
    out = tmp_path / "out"
    result = invoke("explain", model_path, images["a"], "-m", "layercam", "--class-idx", "2", "--layer", "layer1",
                    "--layer", "layer2", "-o", out, "--save-npy", "--device", "cpu")
    assert result.exit_code == 0, (result.output, result.stderr)
    image, _ = read_image(images["a"])
    expected = engine.explain([image], "layercam", class_idx=2, layer=["layer1", "layer2"]).saliency[0]
    np.testing.assert_array_equal(np.load(out / "a.layercam.npy"), expected)
    other = engine.explain([image], "layercam", class_idx=3, layer=["layer1", "layer2"]).saliency[0]
    assert np.abs(other - expected).max() > 1e-2


def test_a_bad_image_does_not_stop_the_others(model_path, images, tmp_path) -> None:
    bad = tmp_path / "dir" / "bad.png"
    bad.write_text("this is not a png")
    out = tmp_path / "out"
    result = invoke("explain", model_path, images["a"], tmp_path / "dir", "-o", out, "--device", "cpu")
    assert result.exit_code == 2, (result.output, result.stderr)
    (line,) = assert_error_lines(result, 1)
    assert "bad.png" in line and "not a readable image" in line
    assert sorted(p.name for p in out.iterdir()) == ["a.gradcam.png", "b.gradcam.png", "c.gradcam.png"]


def test_unknown_method(model_path, images, tmp_path) -> None:
    result = invoke("explain", model_path, images["a"], "--method", "gradcam,bogus", "-o", tmp_path / "out")
    assert result.exit_code == 2
    (line,) = assert_error_lines(result, 1)
    assert "bogus" in line and "gradcam++" in line  # names the bad one and lists the choices
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


@pytest.mark.parametrize(("args", "fragment"), [
    (["--alpha", "2"], "--alpha must be in [0, 1]"),
    (["--colormap", "rainbow"], "unknown colormap 'rainbow'"),
    (["--layer", "conv1"], "layer 'conv1' was not exported; this model has: layer1, layer2"),
    (["--layer", "layer1", "--layer", "fc"], "layer 'fc' was not exported"),
])
def test_bad_options_are_one_line_errors(model_path, images, tmp_path, args, fragment) -> None:
    # Wrong for every image: one error before any work (not one per image and method, with exit 0).
    result = invoke("explain", model_path, images["a"], images["b"], "-o", tmp_path / "out", *args)
    assert result.exit_code == 2, (result.output, result.stderr)
    (line,) = assert_error_lines(result, 1)
    assert fragment in line, line
    assert not (tmp_path / "out").exists()


def test_class_idx_out_of_range(model_path, images, tmp_path) -> None:
    result = invoke("explain", model_path, images["a"], "--class-idx", "5", "-o", tmp_path / "out")
    assert result.exit_code == 2
    (line,) = assert_error_lines(result, 1)
    assert "class_idx 5 is out of range" in line


def test_missing_or_invalid_model(tmp_path, images) -> None:
    result = invoke("explain", tmp_path / "missing.onnx", images["a"])
    assert result.exit_code == 2
    (line,) = assert_error_lines(result, 1)
    assert "does not exist" in line
    (tmp_path / "text.onnx").write_text("hello")
    result = invoke("explain", tmp_path / "text.onnx", images["a"])
    assert result.exit_code == 2
    assert "not a loadable ONNX model" in assert_error_lines(result, 1)[0]


def test_all_methods_on_a_layer_without_a_pooled_head(model_path, engine, images, tmp_path) -> None:
    # layer1 is followed by ReLU → conv → ReLU → pool → fc: not global-average-pool → linear, so CAM does not
    # apply there; every other method does, and the run goes on.
    out = tmp_path / "out"
    result = invoke("explain", model_path, images["a"], "--method", "all", "--layer", "layer1", "-o", out,
                    "--save-npy", "--device", "cpu")
    assert result.exit_code == 0, (result.output, result.stderr)
    (line,) = assert_error_lines(result, 1)
    assert line.startswith(f"camrt: error: {images['a']}: cam: ") and "global-average-pool" in line
    others = [m for m in served_methods() if m != "cam"]
    # 'all' is every method served from one graph run; perturbation methods are asked for by name.
    assert set(others) == {n for n, m in METHODS.items() if m.family in ("gradient", "sampled")} - {"cam"}
    written = {p.name for p in out.iterdir()}
    assert written == {f"a.{m}.{ext}" for m in others for ext in ("png", "npy")} | {"a.grid.png"}
    image, _ = read_image(images["a"])
    for m in ("eigencam", "smoothgradcam++", "integratedgradcam"):
        np.testing.assert_array_equal(np.load(out / f"a.{m}.npy"),
                                      engine.explain([image], m, layer="layer1").saliency[0])


def test_methods_lists_every_method_and_its_options() -> None:
    result = invoke("methods")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    rows = [line.split() for line in lines if not line.startswith(" ")]
    assert [r[0] for r in rows] == list(METHODS)
    for r, (name, m) in zip(rows, METHODS.items(), strict=True):
        assert r[1] == m.family
        assert " ".join(r[2:]) == " ".join(m.description.split()), name
    # a method with options is followed by one indented line that lists them with their defaults
    options = {}
    for line, following in zip(lines, [*lines[1:], ""], strict=True):
        if not line.startswith(" "):
            options[line.split()[0]] = following.strip() if following.startswith(" ") else None
    for name, m in METHODS.items():
        defaults = m.options.defaults()
        expected = f"options: {', '.join(f'{k}={v}' for k, v in defaults.items())}" if defaults else None
        assert options[name] == expected, name
    assert options["sscam"] == "options: n=35, sigma=2.0, noise=mask"
    assert options["rise"] == "options: n=4000, cells=7, p=0.5"


def test_explain_with_method_options_and_chunk_size(model_path, images, tmp_path) -> None:
    out = tmp_path / "out"
    result = invoke("explain", model_path, images["a"], "-m", "sscam", "-O", "n=2", "-O", "sigma=0.5",
                    "--chunk-size", "4", "--seed", "3", "-o", out, "--save-npy", "--device", "cpu")
    assert result.exit_code == 0, (result.output, result.stderr)
    assert result.stderr == ""
    assert sorted(p.name for p in out.iterdir()) == ["a.sscam.npy", "a.sscam.png"]
    image, _ = read_image(images["a"])
    expected = Engine(model_path, device="cpu", chunk_size=4).explain([image], "sscam", seed=3, n=2, sigma=0.5)
    np.testing.assert_allclose(np.load(out / "a.sscam.npy"), expected.saliency[0], rtol=1e-5, atol=1e-6)
    other = Engine(model_path, device="cpu").explain([image], "sscam", seed=3)  # the defaults: n=35, σ=2
    assert not np.allclose(np.load(out / "a.sscam.npy"), other.saliency[0])


def test_an_option_goes_to_every_chosen_method_that_takes_it(model_path, images, tmp_path) -> None:
    out = tmp_path / "out"
    result = invoke("explain", model_path, images["a"], "-m", "gradcam,sscam,iscam", "-O", "n=2", "-O",
                    "cumulative=true", "-o", out, "--save-npy", "--device", "cpu")
    assert result.exit_code == 0, (result.output, result.stderr)
    image, _ = read_image(images["a"])
    engine = Engine(model_path, device="cpu")
    for name, options in (("sscam", {"n": 2}), ("iscam", {"n": 2, "cumulative": True})):
        np.testing.assert_allclose(np.load(out / f"a.{name}.npy"), engine.explain([image], name, **options).saliency[0],
                                   rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("args", "fragment"), [
    (["-m", "sscam", "-O", "bogus=1"], "no chosen method takes option(s) bogus"),
    (["-m", "gradcam", "-O", "n=2"], "no chosen method takes option(s) n"),
    (["-m", "sscam", "-O", "n"], "'n' is not NAME=VALUE"),
    (["-m", "sscam", "--chunk-size", "0"], "chunk_size must be a positive integer, got 0"),
])
def test_bad_method_options_are_one_line_errors(model_path, images, tmp_path, args, fragment) -> None:
    result = invoke("explain", model_path, images["a"], images["b"], "-o", tmp_path / "out", "--device", "cpu", *args)
    assert result.exit_code == 2, (result.output, result.stderr)
    (line,) = assert_error_lines(result, 1)
    assert fragment in line, line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("args", "fragment"), [
    (["-m", "sscam", "-O", "n=abc"], "option n must be a positive integer, got 'abc'"),
    (["-m", "rise", "-O", "p=2"], "option p must be a number in [0, 1], got 2"),
    (["-m", "iscam", "-O", "cumulative=maybe"], "option cumulative must be true or false, got 'maybe'"),
])
def test_bad_option_values_are_one_line_errors_before_any_run(model_path, images, tmp_path, args, fragment) -> None:
    """The value is wrong for every image: one error before any work, as for the other options (the
    commit that added -O says "option values checked before any run")."""
    result = invoke("explain", model_path, images["a"], images["b"], "-o", tmp_path / "out", "--device", "cpu", *args)
    assert result.exit_code == 2, (result.output, result.stderr)
    (line,) = assert_error_lines(result, 1)
    assert fragment in line, line
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_rise_option_p_from_the_command_line(model_path, images, tmp_path) -> None:
    """Regression: `-O p=...` reached `Engine.explain_pass(self, p, ...)` as its pass argument (TypeError)."""
    out = tmp_path / "out"
    result = invoke("explain", model_path, images["a"], "-m", "rise", "-O", "n=20", "-O", "p=0.25", "-o", out,
                    "--save-npy", "--device", "cpu")
    assert result.exit_code == 0, (result.output, result.stderr)
    assert (out / "a.rise.npy").exists()


def test_ctrl_c_during_a_perturbation_method_exits_130_with_one_line(model_path, images, tmp_path,
                                                                     monkeypatch) -> None:
    """Ctrl-C arrives while the network re-runs: the first image's files stay, no traceback, exit 130."""
    runs = {"n": 0}
    original = engine_module.perturbation_map

    def interrupted(*args, **kwargs):
        runs["n"] += 1
        if runs["n"] == 2:  # the second image
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(engine_module, "perturbation_map", interrupted)
    out = tmp_path / "out"
    result = invoke("explain", model_path, images["a"], images["c"], "-m", "ablationcam", "-o", out)
    assert result.exit_code == 130, (result.output, result.exception)
    assert result.stderr.splitlines() == ["camrt: interrupted"] and "Traceback" not in result.output
    assert (out / "a.ablationcam.png").is_file() and not (out / "c.ablationcam.png").exists()


# --- nothing reported as done that is not: writes, names, inputs at the edge ------------------------------

ROOT = Path(__file__).resolve().parents[1]
posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX resource limits and umask")


def run_limited(args: list[object], limit: int) -> subprocess.CompletedProcess:
    """`camrt` in a child process whose files may not grow past `limit` bytes: the kernel refuses
    the write with EFBIG, as a full disk does with ENOSPC (SIGXFSZ ignored, so the write fails
    instead of killing the process)."""

    def limit_file_size() -> None:
        import resource
        import signal

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return subprocess.run([sys.executable, "-m", "camrt.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, timeout=300, preexec_fn=limit_file_size,
                          env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})


@posix_only
def test_a_full_disk_fails_each_file_with_its_cause_and_leaves_no_partial_file(model_path, engine, images,
                                                                               tmp_path) -> None:
    """The limit (5000 bytes) lets each .npy map (4224 bytes) through and stops every PNG part-way: each
    failed file is one line with the real cause, the other images are still processed, the maps that fit
    are complete, no truncated or temporary file remains, and the exit code is 2."""
    out = tmp_path / "out"
    proc = run_limited(["explain", model_path, images["a"], images["c"], "-m", "gradcam,gradcam++", "--save-npy",
                        "-o", out, "--device", "cpu"], limit=5000)
    assert proc.returncode == 2, proc.stderr
    pngs = [f"{s}.{kind}.png" for s in "ac" for kind in ("gradcam", "gradcam++", "grid")]
    assert sorted(proc.stderr.splitlines()) == sorted(f"camrt: error: cannot write '{out / n}': File too large"
                                                      for n in pngs)
    assert f"{images['c']}: " in proc.stdout  # the second image was explained after the first one's failures
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{s}.{m}.npy" for s in "ac" for m in ("gradcam",
                                                                                                 "gradcam++"))
    for s in "ac":
        image, _ = read_image(images[s])
        for m in ("gradcam", "gradcam++"):
            np.testing.assert_array_equal(np.load(out / f"{s}.{m}.npy"), engine.explain([image], m).saliency[0])


@posix_only
def test_a_failed_write_keeps_the_previous_file(model_path, images, tmp_path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.gradcam.png").write_bytes(b"the previous run's file")
    proc = run_limited(["explain", model_path, images["a"], "-o", out, "--device", "cpu"], limit=1000)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [f"camrt: error: cannot write '{out / 'a.gradcam.png'}': File too large"]
    assert [p.name for p in out.iterdir()] == ["a.gradcam.png"]
    assert (out / "a.gradcam.png").read_bytes() == b"the previous run's file"


@posix_only
def test_written_files_get_the_users_umask(model_path, images, tmp_path) -> None:
    out = tmp_path / "out"
    old = os.umask(0o027)
    try:
        result = invoke("explain", model_path, images["a"], "-m", "gradcam,eigencam", "--save-npy", "-o", out,
                        "--device", "cpu")
    finally:
        os.umask(old)
    assert result.exit_code == 0, (result.output, result.stderr)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()}
    assert modes == {f"a.{kind}": 0o640 for kind in ("gradcam.png", "gradcam.npy", "eigencam.png", "eigencam.npy",
                                                     "grid.png")}


@pytest.fixture
def same_stems(tmp_path) -> dict[str, Path]:
    """The issue's layout: a/x.jpg, a/x.png and b/x.png (one stem, three images), and b/y.png (its own stem)."""
    rng = np.random.default_rng(1)
    for d in "ab":
        (tmp_path / d).mkdir()
    paths = {"a/x.jpg": tmp_path / "a" / "x.jpg", "a/x.png": tmp_path / "a" / "x.png",
             "b/x.png": tmp_path / "b" / "x.png", "b/y.png": tmp_path / "b" / "y.png"}
    for i, path in enumerate(paths.values()):
        assert cv2.imwrite(str(path), rng.integers(0, 256, (30 + i, 40, 3), dtype=np.uint8))
    return paths


def test_inputs_sharing_a_stem_are_named_after_their_paths(model_path, engine, same_stems, tmp_path) -> None:
    out = tmp_path / "out"
    result = invoke("explain", model_path, tmp_path / "a", tmp_path / "b", "-m", "gradcam,gradcam++", "--save-npy",
                    "-o", out, "--device", "cpu")
    assert result.exit_code == 0, (result.output, result.stderr)
    names = {"a/x.jpg": "a__x.jpg", "a/x.png": "a__x.png", "b/x.png": "b__x.png", "b/y.png": "y"}
    kinds = ("gradcam.png", "gradcam.npy", "gradcam++.png", "gradcam++.npy", "grid.png")
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{n}.{k}" for n in names.values() for k in kinds)
    for key, name in names.items():  # each file holds its own input's maps
        image, _ = read_image(same_stems[key])
        for m in ("gradcam", "gradcam++"):
            expected = engine.explain([image], m).saliency[0]
            np.testing.assert_array_equal(np.load(out / f"{name}.{m}.npy"), expected)
            np.testing.assert_array_equal(read_image(out / f"{name}.{m}.png")[0], overlay(image, expected))
        tiles = [image, *(read_image(out / f"{name}.{m}.png")[0] for m in ("gradcam", "gradcam++"))]
        np.testing.assert_array_equal(read_image(out / f"{name}.grid.png")[0],
                                      grid(tiles, ["input", "gradcam", "gradcam++"]))


def test_the_same_input_given_twice_is_explained_once(model_path, same_stems, tmp_path) -> None:
    out = tmp_path / "out"
    result = invoke("explain", model_path, same_stems["a/x.png"], tmp_path / "a", same_stems["a/x.png"],
                    tmp_path / "a" / ".." / "a" / "x.png", "-o", out, "--device", "cpu")
    assert result.exit_code == 0, (result.output, result.stderr)
    explained = [line.split(": ")[0] for line in result.stdout.splitlines()[1:] if not line.startswith(" ")]
    assert explained == [str(same_stems["a/x.png"]), str(same_stems["a/x.jpg"])]
    # Once, so its stem is shared with a/x.jpg only: both are named after their paths from a/.
    assert sorted(p.name for p in out.iterdir()) == ["x.jpg.gradcam.png", "x.png.gradcam.png"]


@pytest.mark.parametrize(("files", "expected"), [
    (["x.png"], ["x"]),
    (["a/x.jpg", "a/x.png", "b/x.png", "b/y.png"], ["a__x.jpg", "a__x.png", "b__x.png", "y"]),
    (["a/x.jpg", "a/x.png"], ["x.jpg", "x.png"]),  # relative to their common folder, a/
    (["X.png", "x.jpg"], ["X.png", "x.jpg"]),  # stems compared ignoring case, as on macOS and Windows
    # a stem equal to another input's path name: it takes its path name too
    (["a/x.jpg", "b/x.jpg", "a__x.jpg.png"], ["a__x.jpg", "b__x.jpg", "a__x.jpg.png"]),
    # path names that still coincide (in case, or two paths that flatten alike): numbered in input order
    (["x.png", "x.PNG"], ["x.png", "x.PNG~2"]),
    (["x.png", "x.PNG", "x.PNG~2.png"], ["x.png", "x.PNG~3", "x.PNG~2"]),
    (["a__b/x.png", "c/x.png", "a/b__x.png", "d/b__x.png"], ["a__b__x.png", "c__x.png", "a__b__x.png~2",
                                                              "d__b__x.png"]),
])
def test_output_names_never_collide(tmp_path, files, expected) -> None:
    paths = [tmp_path / f for f in files]
    assert output_names(paths) == expected
    assert len({n.casefold() for n in output_names(paths)}) == len(paths)
    # `<name>.<method>.png` is unique because no method name has a dot or is 'grid'
    assert not [m for m in METHODS if "." in m or m == "grid"]


@pytest.mark.parametrize(("args", "fragment"), [
    (["{tmp}/empty"], "folder '{tmp}/empty' holds no image files (looked for .bmp, .jpeg, .jpg, .pgm, .png, .ppm, "
                      ".tif, .tiff, .webp"),
    (["{tmp}/notes"], "folder '{tmp}/notes' holds no image files (looked for .bmp"),
    (["{tmp}/a.png", "{tmp}/missing"], "input '{tmp}/missing' does not exist"),
    (["{tmp}/a.png", "/dev/null"], "input '/dev/null' is not a file or a folder"),
    (["{tmp}/a.png", "--topk", "0"], "--topk must be a positive integer, got 0"),
    (["{tmp}/a.png", "--topk", "-3"], "--topk must be a positive integer, got -3"),
    (["{tmp}/a.png", "{tmp}/dir", "--class-idx", "99999"], "class_idx 99999 is out of range"),
    (["{tmp}/a.png", "{tmp}/dir", "-m", "rise", "--seed", "-1"], "--seed must be a non-negative integer, got -1"),
    (["{tmp}/a.png", "-o", "{tmp}/a.png"], "output folder '{tmp}/a.png' is a file"),
    (["{tmp}/a.png", "-m", ",", "-o", "{tmp}/out"], "unknown method(s) (none given)"),
])
def test_bad_inputs_are_one_line_errors_before_any_work(model_path, images, tmp_path, args, fragment) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("not an image")
    (tmp_path / "notes" / "sub.png").mkdir()  # a folder, whatever its name
    args = [a.format(tmp=tmp_path) for a in args]
    result = invoke("explain", model_path, *(args if "-o" in args else [*args, "-o", tmp_path / "out"]),
                    "--device", "cpu")
    assert result.exit_code == 2, (result.output, result.stderr)
    (line,) = assert_error_lines(result, 1)
    assert fragment.format(tmp=tmp_path) in line, line
    assert not (tmp_path / "out").exists()
    assert result.stdout.splitlines()[1:] == []  # no image was explained


def test_outputs_that_would_overwrite_an_input_are_refused(model_path, images, tmp_path) -> None:
    source = tmp_path / "dir" / "b.gradcam.png"
    source.write_bytes(images["b"].read_bytes())  # an earlier run's output, now among the inputs
    result = invoke("explain", model_path, tmp_path / "dir", "-o", tmp_path / "dir", "--device", "cpu")
    assert result.exit_code == 2, (result.output, result.stderr)
    (line,) = assert_error_lines(result, 1)
    assert f"'{source}' is an input" in line and "-o" in line, line
    assert source.read_bytes() == images["b"].read_bytes()


def test_topk_past_the_number_of_classes_shows_them_all(model_path, images, tmp_path) -> None:
    result = invoke("explain", model_path, images["a"], "--topk", "50", "-o", tmp_path / "out", "--device", "cpu")
    assert result.exit_code == 0, (result.output, result.stderr)
    (line,) = [line for line in result.stdout.splitlines() if line.startswith(str(images["a"]))]
    assert sorted(part.split()[0] for part in line.split(": ", 1)[1].split(", ")) == sorted(LABELS)


@pytest.mark.parametrize(("spec", "expected"), [
    ("all", served_methods()),
    ("all,scorecam", [*served_methods(), "scorecam"]),
    ("scorecam, all ,gradcam,scorecam", ["scorecam", *served_methods()]),
    ("gradcam,gradcam", ["gradcam"]),
])
def test_all_with_named_methods(spec, expected) -> None:
    assert resolve_methods(spec) == expected


def test_all_and_a_named_method_from_the_command_line(model_path, images, tmp_path) -> None:
    out = tmp_path / "out"
    result = invoke("explain", model_path, images["a"], "-m", "all,scorecam", "-o", out, "--device", "cpu")
    assert result.exit_code == 0, (result.output, result.stderr)
    assert {p.name for p in out.iterdir()} == {f"a.{m}.png" for m in [*served_methods(), "scorecam"]} | {"a.grid.png"}
    # a method that does not apply fails the run when it is named, not when it only comes with 'all'
    for spec, code in (("all", 0), ("all,cam", 2), ("cam,all", 2)):
        result = invoke("explain", model_path, images["a"], "-m", spec, "--layer", "layer1", "-o", out,
                        "--device", "cpu")
        assert result.exit_code == code, (spec, result.output, result.stderr)
        (line,) = assert_error_lines(result, 1)
        assert f"{images['a']}: cam: " in line


def test_unknown_method_lists_every_method(model_path, images, tmp_path) -> None:
    result = invoke("explain", model_path, images["a"], "--method", "all,bogus", "-o", tmp_path / "out")
    assert result.exit_code == 2
    (line,) = assert_error_lines(result, 1)
    assert "bogus" in line and all(m in line for m in METHODS) and "'all'" in line
