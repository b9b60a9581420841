"""`camrt eval` through click's CliRunner, on a tiny model exported once and tiny images written
here: the report's files exist and parse, the table's means are the per-image rows' means, bad
input is one line before any work, skipped images are listed."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

import camrt
from camrt.cli import main
from tests.cli_checks import assert_one_line_error, run_without_torch
from tests.tiny import TinyNet, make

METRICS = "deletion,average-drop,pointing-game"


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("eval_cli") / "tiny.cam.onnx"
    camrt.export(make(TinyNet, seed=11), layers=["layer2"], path=path, input_shape=(1, 3, 32, 32),
                 labels=["cat", "dog", "bird", "fish", "frog"])
    return path


@pytest.fixture
def folder(tmp_path) -> Path:
    """Four RGB images, three of them annotated in annotations.json."""
    rng = np.random.default_rng(7)
    d = tmp_path / "images"
    d.mkdir()
    for i in range(4):
        assert cv2.imwrite(str(d / f"im{i}.png"), rng.integers(0, 256, (36, 44, 3), dtype=np.uint8))
    (d / "annotations.json").write_text(json.dumps({f"im{i}.png": {"boxes": [[4, 4, 30, 24]]} for i in range(3)}))
    return d


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_eval_writes_the_report(model_path, folder, tmp_path) -> None:
    out = tmp_path / "report"
    result = invoke("eval", model_path, folder, "--methods", "gradcam,scorecam", "--metrics", METRICS, "-o", out,
                    "--device", "cpu", "--batch", "3")
    assert result.exit_code == 0, (result.output, result.stderr)
    assert result.stderr == ""
    assert "4 images, 4 image-class rows in" in result.output and "wrote 6 files" in result.output
    assert "note: pointing-game: only the 3 of 4 rows with objects count" in result.output
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["per_image.csv", "table.csv", "curves.csv", "report.md", "table.png", "curves-deletion.png"])
    per_image, table = rows(out / "per_image.csv"), rows(out / "table.csv")
    assert len(per_image) == 8 and len(table) == 6
    for cell in table:
        column = [float(r[cell["metric"]]) for r in per_image if r["method"] == cell["method"] and r[cell["metric"]]]
        assert int(cell["n"]) == len(column) == (3 if cell["metric"] == "pointing-game" else 4)
        if cell["metric"] == "pointing-game":  # its paper's accuracy: the mean of the classes' hit rates
            by: dict[str, list[float]] = {}
            for r in per_image:
                if r["method"] == cell["method"] and r["pointing-game"]:
                    by.setdefault(r["class_idx"], []).append(float(r["pointing-game"]))
            expected = np.mean([np.mean(v) for v in by.values()])
        else:
            expected = np.mean(column)
        assert float(cell["mean"]) == pytest.approx(expected, rel=1e-12, abs=1e-15)
        assert float(cell["ci95_low"]) <= float(cell["mean"]) <= float(cell["ci95_high"])
    assert {r["label"] for r in per_image} <= {"cat", "dog", "bird", "fish", "frog"}
    curves = rows(out / "curves.csv")
    assert {(c["metric"], c["method"]) for c in curves} == {("deletion", "gradcam"), ("deletion", "scorecam")}
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "| method | deletion ↓ | average-drop ↓ | pointing-game ↑ |" in md and "| scorecam |" in md
    for png in ("table.png", "curves-deletion.png"):
        assert cv2.imread(str(out / png)) is not None


def test_unreadable_image_is_skipped_listed_and_fails_the_exit_code(model_path, folder, tmp_path) -> None:
    (folder / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "report"
    result = invoke("eval", model_path, folder, "--metrics", "average-drop", "-o", out, "--device", "cpu",
                    "--no-plots")
    assert_one_line_error(result, "skipped '", "broken.png", "not a readable image")
    assert "4 images, 4 image-class rows in" in result.output
    assert "broken.png" in (out / "report.md").read_text(encoding="utf-8")
    assert not (out / "table.png").exists()


@pytest.mark.parametrize(("args", "fragments"), [
    (["--methods", "gradcam,nosuch"], ["unknown method(s) nosuch; choose from"]),
    (["--metrics", "deletion,nosuch"], ["unknown metric(s) nosuch; choose from deletion, insertion", "or 'all'"]),
    (["--metrics", "pointing-game", "--annotations", "{empty}"],
     ["metric(s) pointing-game need boxes or masks", "empty.json' annotates none of the 4 images"]),
    (["--annotations", "{bad}"], ["annotations '", "bad.json' are not JSON"]),
    (["--batch", "0"], ["batch must be a positive integer"]),
    (["--classes", "5"], ["class_idx 5 is out of range: the model has 5 classes"]),
])
def test_bad_input_is_one_line_before_any_work(model_path, folder, tmp_path, args, fragments) -> None:
    (tmp_path / "empty.json").write_text("{}")
    (tmp_path / "bad.json").write_text("{")
    args = [a.format(empty=tmp_path / "empty.json", bad=tmp_path / "bad.json") for a in args]
    out = tmp_path / "report"
    assert_one_line_error(invoke("eval", model_path, folder, *args, "-o", out, "--device", "cpu"), *fragments)
    assert not out.exists()


def test_missing_inputs_are_one_line(model_path, tmp_path) -> None:
    assert_one_line_error(invoke("eval", model_path, tmp_path / "nothing", "--device", "cpu"),
                          "input '", "nothing' does not exist")
    assert_one_line_error(invoke("eval", tmp_path / "none.onnx", tmp_path, "--device", "cpu"), "does not exist")


def test_eval_runs_without_torch(model_path, folder, tmp_path) -> None:
    out = tmp_path / "report"
    run_without_torch("eval", model_path, folder, "--metrics", "average-drop", "-o", out, "--device", "cpu",
                      "--no-plots")
    assert len(rows(out / "per_image.csv")) == 4


def test_eval_explains_the_annotated_classes(model_path, folder, tmp_path) -> None:
    """--classes auto (the default) explains the class each annotation names, by index or label;
    --classes annotated leaves out the images whose annotations name none."""
    (folder / "annotations.json").write_text(json.dumps({
        "im0.png": [{"boxes": [[4, 4, 30, 24]], "class": "bird"}, {"boxes": [[0, 0, 10, 10]], "class": 4}],
        "im1.png": {"boxes": [[4, 4, 30, 24]], "class": 0}, "im2.png": {"boxes": [[4, 4, 30, 24]]}}))
    for classes, want, code in [("auto", ["im0.png/2", "im0.png/4", "im1.png/0", "im2.png", "im3.png"], 0),
                                ("annotated", ["im0.png/2", "im0.png/4", "im1.png/0"], 2)]:
        out = tmp_path / classes
        result = invoke("eval", model_path, folder, "--metrics", "pointing-game", "-o", out, "--device", "cpu",
                        "--classes", classes, "--no-plots")
        assert result.exit_code == code, (result.output, result.stderr)
        got = [f"{Path(r['image']).name}/{r['class_idx']}" for r in rows(out / "per_image.csv")]
        assert [g for g, w in zip(got, want, strict=True) if "/" in w] == [w for w in want if "/" in w]
        assert len(got) == len(want)
        if classes == "annotated":  # the two images without a class are listed as skipped
            assert sorted(line.split("'")[1].split("/")[-1] for line in result.stderr.splitlines()) == [
                "im2.png", "im3.png"]
