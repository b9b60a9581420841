"""camrt/scale/batch.py: `camrt batch` on a local Ray (started once for the module): results equal
to `Engine.explain` image by image, resuming, sources (folder, glob, list of paths and URIs,
Parquet with bytes), unreadable images as rows, overlays, workers, and the errors before Ray."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

import camrt
from camrt.cli import main
from camrt.engine import Engine
from camrt.errors import InputError
from camrt.visual.overlay import read_image, write_image
from tests.cli_checks import assert_one_line_error
from tests.tiny import TinyNet, make

ray = pytest.importorskip("ray")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from camrt.scale import batch, list_source, read_results  # noqa: E402

METHODS = "gradcam,layercam"


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("batch") / "tiny.cam.onnx"
    camrt.export(make(TinyNet), layers=["layer1", "layer2"], path=path, input_shape=(1, 3, 32, 32),
                 labels=[f"class{k}" for k in range(5)])
    return path


def _images(folder, n: int, seed: int = 0, prefix: str = "im") -> list:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        p = folder / f"{prefix}{i:03d}.png"
        write_image(p, rng.integers(0, 256, (40 + i % 3, 48, 3), dtype=np.uint8))
        paths.append(p)
    return paths


def _by_key(table) -> dict:
    rows = table.to_pylist()
    return {(r["key"], r["method"]): r for r in rows}


def test_folder_results_equal_the_engine_and_a_rerun_resumes(local_ray, model, tmp_path):
    paths = _images(tmp_path / "in", 12)
    (tmp_path / "in" / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "out"
    s = batch(model, tmp_path / "in", out, METHODS, batch_size=5)
    assert (s.images, s.skipped, s.explained, s.failed) == (13, 0, 12, 1)
    rows = _by_key(read_results(out))
    assert len(rows) == 12 * 2 + 1
    assert "not a readable image" in rows[(str(tmp_path / "in" / "broken.png"), "")]["error"]
    engine = Engine(model)
    for method in METHODS.split(","):
        ref = engine.explain([read_image(p)[0] for p in paths], method)
        for j, p in enumerate(paths):
            r = rows[(str(p), method)]
            assert r["error"] == "" and r["class"] == ref.class_idx[j] and r["label"] == f"class{ref.class_idx[j]}"
            assert r["score"] == pytest.approx(float(ref.scores[j]), rel=1e-5)
            got = np.array(r["map"], np.float32).reshape(r["map_height"], r["map_width"])
            assert np.allclose(got, ref.low_res[j], atol=1e-5 * max(1.0, float(np.abs(ref.low_res[j]).max())))
            assert r["inference_s"] > 0
    # a rerun skips everything; two new images are the only work of the next one
    again = batch(model, tmp_path / "in", out, METHODS)
    assert (again.skipped, again.explained, again.failed, again.shards) == (13, 0, 0, [])
    new = _images(tmp_path / "in", 2, seed=9, prefix="new")
    third = batch(model, tmp_path / "in", out, METHODS)
    assert (third.skipped, third.explained) == (13, 2)
    assert {k for k, _ in _by_key(read_results(out))} == {str(p) for p in [*paths, *new]} | {
        str(tmp_path / "in" / "broken.png")}
    assert len(read_results(out)) == 14 * 2 + 1  # nothing twice


def test_workers_and_decode_tasks_give_the_same_rows(local_ray, model, tmp_path):
    _images(tmp_path / "in", 10)
    s = batch(model, tmp_path / "in", tmp_path / "a", "gradcam", workers=1, batch_size=3)
    assert s.workers == 1
    one = _by_key(read_results(s.out))
    auto = batch(model, tmp_path / "in", tmp_path / "b", "gradcam", batch_size=3)
    assert auto.workers == 2  # by default one per CPU (the module's Ray has 2)
    tasks = batch(model, tmp_path / "in", tmp_path / "c", "gradcam", workers=1, batch_size=3, decode_tasks=True)
    for other in (_by_key(read_results(auto.out)), _by_key(read_results(tasks.out))):
        assert one.keys() == other.keys()
        for k in one:
            assert one[k]["class"] == other[k]["class"] and np.allclose(one[k]["map"], other[k]["map"], atol=1e-6)


def test_gpu_workers_on_a_cluster_without_gpus_are_refused(local_ray, model, tmp_path):
    _images(tmp_path / "in", 2)
    with pytest.raises(InputError, match="need 1 GPUs, and the Ray cluster has 0"):
        batch(model, tmp_path / "in", tmp_path / "out", "gradcam", gpus_per_worker=1)


def test_list_of_paths_and_uris_glob_and_overlays(local_ray, model, tmp_path):
    paths = _images(tmp_path / "in", 3)
    listing = tmp_path / "list.txt"
    listing.write_text(f"# images\n{paths[0]}\n{paths[1].as_uri()}\n{tmp_path / 'missing.png'}\n")
    s = batch(model, listing, tmp_path / "out", "gradcam", overlays=True)
    assert (s.explained, s.failed) == (2, 1)
    rows = read_results(tmp_path / "out").to_pylist()
    assert sorted(r["key"] for r in rows) == sorted([str(paths[0]), paths[1].as_uri(), str(tmp_path / "missing.png")])
    written = [r["overlay"] for r in rows if not r["error"]]
    assert len(written) == 2 and all((tmp_path / "out" / "overlays").joinpath(w.split("/")[-1]).is_file()
                                     for w in written)
    assert read_image(written[0])[0].shape[1] == 48  # over the image at its own size
    g = batch(model, str(tmp_path / "in" / "im00[12].png"), tmp_path / "glob", "gradcam")
    assert (g.images, g.explained) == (2, 2)


def test_parquet_table_of_image_bytes(local_ray, model, tmp_path):
    paths = _images(tmp_path / "in", 4)
    table = pa.table({"id": [f"row{i}" for i in range(5)],
                      "image": [p.read_bytes() for p in paths] + [b"garbage"]})
    pq.write_table(table, tmp_path / "t.parquet")
    with pytest.raises(InputError, match="--key-column"):
        list_source(tmp_path / "t.parquet")
    s = batch(model, tmp_path / "t.parquet", tmp_path / "out", "gradcam", key_column="id")
    assert (s.images, s.explained, s.failed) == (5, 4, 1)
    rows = {r["key"]: r for r in read_results(tmp_path / "out").to_pylist()}
    ref = Engine(model).explain([read_image(paths[2])[0]], "gradcam")
    assert rows["row2"]["class"] == ref.class_idx[0]
    assert np.allclose(rows["row2"]["map"], ref.low_res[0].ravel(), atol=1e-5)
    assert rows["row4"]["error"] and rows["row4"]["map"] == []
    assert batch(model, tmp_path / "t.parquet", tmp_path / "out", "gradcam", key_column="id").skipped == 5


def test_errors_before_any_work(model, tmp_path):
    _images(tmp_path / "in", 1)
    for kwargs, match in (({"methods": "nope"}, "unknown method"), ({"workers": 0}, "--workers"),
                          ({"layer": "fc"}, "was not exported"), ({"gpus_per_worker": -1}, "--gpus-per-worker")):
        with pytest.raises(InputError, match=match):
            batch(model, tmp_path / "in", tmp_path / "out", **kwargs)
    with pytest.raises(InputError, match="not a folder, a file"):
        batch(model, tmp_path / "nothing*", tmp_path / "out")


def test_cli(local_ray, model, tmp_path):
    _images(tmp_path / "in", 3)
    runner = CliRunner()
    res = runner.invoke(main, ["batch", str(model), str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-m",
                               "gradcam"])
    assert res.exit_code == 0, res.output
    assert "3 images explained, 0 failed, 0 done before (of 3)" in res.stdout
    res = runner.invoke(main, ["batch", str(model), str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-m", "x"])
    assert_one_line_error(res, "unknown method")


def test_import_camrt_scale_does_not_import_ray() -> None:
    code = "import sys, camrt, camrt.scale; assert 'ray' not in sys.modules and 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
