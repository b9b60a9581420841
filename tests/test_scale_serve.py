"""camrt/scale/serve.py: `camrt serve` on a local Ray Serve (started once for the module) answering
real HTTP requests: predictions and maps equal to `Engine.explain` image by image (PNG, numbers,
overlay), batches of concurrent requests in one graph run, health routes, every bad request a 4xx
that leaves the service running; `Explainer` (the service without Ray) on its own; the CLI's errors
before Ray and its run until SIGINT."""

from __future__ import annotations

import base64
import concurrent.futures as cf
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from urllib.parse import quote

import numpy as np
import pytest
from click.testing import CliRunner

import camrt
from camrt.cli import main
from camrt.engine import Engine
from camrt.errors import InputError
from camrt.visual.overlay import decode_image, encode_image, gray, overlay
from tests.cli_checks import ROOT, assert_one_line_error
from tests.tiny import TinyNet, make

pytest.importorskip("ray.serve")
pytest.importorskip("fastapi")

from camrt.scale.serve import Explainer, HTTPError, serve  # noqa: E402

MAX_BYTES = 60_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("serve") / "tiny.cam.onnx"
    camrt.export(make(TinyNet), layers=["layer1", "layer2"], path=path, input_shape=(1, 3, 32, 32),
                 labels=[f"class{k}" for k in range(5)])
    return path


@pytest.fixture(scope="module")
def service(model):
    s = serve(model, port=_free_port(), batch_wait_ms=200, max_batch_size=8, max_bytes=MAX_BYTES, max_images=4)
    yield s
    s.stop()


def _image(seed: int, shape=(40, 48, 3)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _post(url: str, body: bytes, query: str = "", content_type: str = "image/png") -> tuple[int, str, bytes]:
    req = urllib.request.Request(f"{url}/explain{query}", data=body, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read()


def _get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def _check(answer: dict, image: np.ndarray, ref, j: int) -> None:
    """One JSON answer against image j of the engine's result."""
    c = int(ref.class_idx[j])
    assert answer["class"] == c and answer["label"] == f"class{c}"
    assert answer["score"] == pytest.approx(float(ref.scores[j]), rel=1e-5)
    assert answer["top"][0]["class"] == int(ref.logits[j].argmax()) and len(answer["top"]) == 5
    h, w = image.shape[:2]
    m = answer["map"]
    if m["format"] == "png":
        got, _ = decode_image(base64.b64decode(m["data"]))
        assert (m["height"], m["width"]) == (h, w) and got.shape[:2] == (h, w)
        assert np.array_equal(got[..., 0], gray(ref.saliency[j], (w, h)))
    else:
        low = np.array(m["values"], np.float32)
        assert low.shape == (m["height"], m["width"]) == ref.low_res[j].shape
        assert np.allclose(low, ref.low_res[j], atol=1e-5 * max(1.0, float(np.abs(ref.low_res[j]).max())))


# Without a service first (the CLI test starts its own Ray), then against the module's service.

def test_explainer_groups_methods_and_layers_of_one_batch(model):
    ex = Explainer(model, max_bytes=MAX_BYTES)
    images = [_image(20 + i) for i in range(4)]
    queries = [{"method": "gradcam"}, {"method": "eigencam", "layer": "layer1", "map": "numbers"},
               {"class": "3"}, {"method": "eigencam", "layer": "layer1", "class": "0", "map": "numbers"}]
    items = [ex.parse(encode_image(im), "image/png", q)[0][0] for im, q in zip(images, queries, strict=True)]
    answers = ex.explain(items)
    engine = Engine(model)
    for im, q, a in zip(images, queries, answers, strict=True):
        assert a["timings"]["batch"] == 4
        ref = engine.explain([im], q.get("method", "gradcam"), class_idx=int(q.get("class", -1)),
                             layer=q.get("layer"))
        _check(a, im, ref, 0)


def test_explainer_isolates_an_image_whose_graph_run_fails(model, monkeypatch):
    ex = Explainer(model)
    forward = ex.engine.forward

    def failing(images, class_idx=None, **kw):  # as an overflow inside the model would, for black images
        if any(not im.any() for im in images):
            raise InputError("the model's outputs hold NaN or infinite values")
        return forward(images, class_idx, **kw)

    monkeypatch.setattr(ex.engine, "forward", failing)
    good, black = _image(3), np.zeros((32, 32, 3), np.uint8)
    items = [ex.parse(encode_image(im), "image/png", {})[0][0] for im in (good, black, good)]
    answers = ex.explain(items)
    assert isinstance(answers[1], HTTPError) and answers[1].status == 422 and "NaN" in answers[1].message
    ref = Engine(model).explain([good])
    _check(answers[0], good, ref, 0)
    _check(answers[2], good, ref, 0)


def test_explainer_and_serve_refuse_bad_settings_before_ray(model, tmp_path):
    with pytest.raises(InputError, match="unknown method"):
        Explainer(model, method="nope")
    with pytest.raises(InputError, match="--max-bytes"):
        Explainer(model, max_bytes=0)
    for kwargs, fragment in (({"port": 0}, "--port"), ({"replicas": 0}, "--replicas"),
                             ({"gpus_per_replica": -1}, "--gpus-per-replica"),
                             ({"batch_wait_ms": float("nan")}, "--batch-wait-ms")):
        with pytest.raises(InputError, match=fragment):
            serve(model, **kwargs)
    with pytest.raises(InputError, match="does not exist"):
        serve(tmp_path / "missing.onnx")


def test_serve_without_ray_says_what_to_install(model, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if camrt[scale] were not installed
    with pytest.raises(InputError, match=r"needs Ray Serve \(ray is missing\): pip install 'camrt\[scale\]'"):
        serve(model)


def test_cli_errors_are_one_line_before_ray(model, tmp_path):
    runner = CliRunner()
    assert_one_line_error(runner.invoke(main, ["serve", str(tmp_path / "missing.onnx")]), "does not exist")
    assert_one_line_error(runner.invoke(main, ["serve", str(model), "--method", "nope"]), "unknown method")
    assert_one_line_error(runner.invoke(main, ["serve", str(model), "--port", "70000"]), "--port")


def test_stop_gives_up_waiting_after_its_timeout(monkeypatch):
    """`camrt serve` stops with a deadline: a Ray that does not go down is left to a daemon thread."""
    import ray

    from camrt.scale.serve import Service

    release = threading.Event()
    monkeypatch.setattr(ray, "shutdown", lambda: release.wait(30))
    t0 = time.perf_counter()
    assert Service("http://127.0.0.1:1", 1, _started_ray=True).stop(timeout=0.3) is False
    assert time.perf_counter() - t0 < 5
    release.set()
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    assert Service("http://127.0.0.1:1", 1, _started_ray=True).stop(timeout=5) is True


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.parametrize("inherited", ["default", "ignored"])
def test_cli_serves_until_interrupted(model, inherited):
    """Ctrl-C stops the command, also when it was started with SIGINT ignored (a script's
    background job, nohup: Python then installs no KeyboardInterrupt handler of its own)."""
    port = _free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONFAULTHANDLER": "1"}  # SIGABRT dumps its threads' stacks
    proc = subprocess.Popen([sys.executable, "-m", "camrt.cli", "serve", str(model), "--port", str(port)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=_ignore_sigint if inherited == "ignored" else None)
    try:
        line = proc.stdout.readline()
        assert line.startswith(f"serving tiny.cam.onnx at http://127.0.0.1:{port}/"), (line, proc.stderr.read())
        status, _, body = _post(f"http://127.0.0.1:{port}", encode_image(_image(0)))
        assert status == 200 and json.loads(body)["results"][0]["label"].startswith("class")
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)
            proc.wait(timeout=30)
            pytest.fail(f"the command was still running 60 s after Ctrl-C; its stacks:\n{proc.stderr.read()[-6000:]}")
    assert proc.returncode == 0, proc.stderr.read()
    assert proc.stdout.read() == "" and "INFO" not in proc.stderr.read()  # the command's one line, no Ray chatter
    deadline = time.time() + 30
    while time.time() < deadline:  # the port is free again: Ray Serve's proxy stopped with the command
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) != 0:
                break
        time.sleep(0.5)
    else:
        pytest.fail(f"port {port} still answers after the command stopped")


def test_one_image_png_and_numbers_equal_the_engine(service, model):
    image = _image(0)
    ref = Engine(model).explain([image], "gradcam")
    status, kind, body = _post(service.url, encode_image(image))
    assert status == 200 and kind == "application/json"
    doc = json.loads(body)
    assert doc["model"] == "tiny.cam.onnx" and len(doc["results"]) == 1
    _check(doc["results"][0], image, ref, 0)
    ref = Engine(model).explain([image], "layercam", class_idx=2, layer="layer1")
    status, _, body = _post(service.url, encode_image(image), "?method=layercam&class=2&layer=layer1&map=numbers")
    a = json.loads(body)["results"][0]
    assert status == 200 and a["method"] == "layercam" and a["layers"] == ["layer1"]
    _check(a, image, ref, 0)
    status, _, body = _post(service.url, encode_image(image), "?map=none")
    assert status == 200 and "map" not in json.loads(body)["results"][0]


def test_json_batch_and_perturbation_method_equal_the_engine(service, model):
    images = [_image(i, (30 + 4 * i, 36, 3)) for i in range(3)]
    body = json.dumps({"images": [base64.b64encode(encode_image(im)).decode() for im in images]}).encode()
    for method in ("gradcam++", "scorecam"):
        ref = Engine(model).explain(images, method, class_idx=1)
        status, _, out = _post(service.url, body, f"?method={quote(method)}&class=1", "application/json")
        assert status == 200, out
        results = json.loads(out)["results"]
        assert [r["class"] for r in results] == [1, 1, 1]
        for j, (a, im) in enumerate(zip(results, images, strict=True)):
            _check(a, im, ref, j)


def test_overlay_format_is_the_map_over_the_image(service, model):
    image = _image(5, (50, 64, 3))
    ref = Engine(model).explain([image], "gradcam")
    status, kind, body = _post(service.url, encode_image(image), "?format=overlay")
    assert status == 200 and kind == "image/png"
    got, _ = decode_image(body)
    assert np.array_equal(got, overlay(image, ref.saliency[0]))


def test_concurrent_requests_run_in_one_batch_each_with_its_own_answer(service, model):
    images = [_image(10 + i) for i in range(8)]
    methods = ["gradcam", "xgradcam"] * 4
    classes = [-1, 0, 1, 2, 3, 4, -1, 0]
    engine = Engine(model)

    def ask(i: int):
        return _post(service.url, encode_image(images[i]), f"?method={methods[i]}&class={classes[i]}&map=numbers")

    with cf.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, range(8)))
    sizes = []
    for i, (status, _, body) in enumerate(answers):
        assert status == 200, body
        a = json.loads(body)["results"][0]
        _check(a, images[i], engine.explain([images[i]], methods[i], class_idx=classes[i]), 0)
        sizes.append(a["timings"]["batch"])
    assert max(sizes) > 1, sizes  # @serve.batch put concurrent requests into one graph run


def test_health_readiness_and_what_the_service_offers(service):
    assert _get(f"{service.url}/healthz") == (200, {"status": "ok"})
    status, ready = _get(f"{service.url}/readyz")
    assert status == 200 and ready["ready"] and ready["model"] == "tiny.cam.onnx"
    status, info = _get(f"{service.url}/")
    assert status == 200 and info["layers"] == ["layer1", "layer2"] and info["classes"] == 5
    assert "gradcam" in info["methods"] and "relevancecam" not in info["methods"]  # no relevance exported
    assert info["max_bytes"] == MAX_BYTES and info["max_images"] == 4


@pytest.mark.parametrize("query, body, kind, status, fragment", [
    ("", b"not an image", "image/png", 400, "not a readable image"),
    ("", b"", "image/png", 400, "no body"),
    ("?method=nope", None, "image/png", 400, "unknown method 'nope'"),
    ("?method=relevancecam", None, "image/png", 400, "unknown method 'relevancecam'"),
    ("?class=5", None, "image/png", 400, "class 5 is out of range"),
    ("?class=two", None, "image/png", 400, "class must be an integer"),
    ("?layer=fc", None, "image/png", 400, "unknown layer 'fc'"),
    ("?map=jpeg", None, "image/png", 400, "map must be one of"),
    ("?format=xml", None, "image/png", 400, "format must be one of"),
    ("?colour=red", None, "image/png", 400, "unknown query parameter 'colour'"),
    ("", b"{\"images\": [", "application/json", 400, "not valid JSON"),
    ("", b"{\"imgs\": []}", "application/json", 400, "must be {\"images\""),
    ("", b"{\"images\": []}", "application/json", 400, "is empty"),
    ("", b"{\"images\": [\"%%%\"]}", "application/json", 400, "image 0 is not valid base64"),
    ("", b"{\"images\": [\"aGVsbG8=\"]}", "application/json", 400, "'image 0' is not a readable image"),
    ("", b"{\"images\": [\"\", \"\", \"\", \"\", \"\"]}", "application/json", 413, "over the service's limit of 4"),
    ("", b"x" * (MAX_BYTES + 1), "image/png", 413, f"limit of {MAX_BYTES} bytes"),
    ("", None, "multipart/form-data; boundary=x", 415, "form uploads"),
])
def test_bad_requests_get_a_4xx_with_a_message_and_the_service_goes_on(service, model, query, body, kind, status,
                                                                        fragment):
    image = _image(1)
    got, content, answer = _post(service.url, encode_image(image) if body is None else body, query, kind)
    assert got == status and content == "application/json", answer
    assert fragment in json.loads(answer)["error"]
    status, _, answer = _post(service.url, encode_image(image))
    assert status == 200
    _check(json.loads(answer)["results"][0], image, Engine(model).explain([image]), 0)


def test_overlay_of_several_images_and_unknown_routes_are_refused(service):
    body = json.dumps({"images": [base64.b64encode(encode_image(_image(i))).decode() for i in range(2)]}).encode()
    status, _, answer = _post(service.url, body, "?format=overlay", "application/json")
    assert status == 400 and "format=overlay answers one image" in json.loads(answer)["error"]
    assert _get(f"{service.url}/nowhere")[0] == 404
