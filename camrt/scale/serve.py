"""`camrt serve`: an HTTP service on Ray Serve that explains the images posted to it.

    camrt serve model.cam.onnx [--port 8000] [--replicas 2] [--gpus-per-replica 1] [--max-batch-size 8]

Routes (`ROUTES`):

- ``POST /explain`` the body is one encoded image (PNG, JPEG, ...; any ``Content-Type`` but JSON),
  or JSON ``{"images": ["<base64>", ...]}`` for several. Query parameters, all optional:
  ``method`` (the service's default method if absent), ``class`` (the class to explain, -1 or absent:
  each image's top-1), ``layer`` (a target layer; absent: the last exported), ``map`` (``png``:
  the map as an 8-bit gray PNG at the posted image's size, base64; ``numbers``: the low-resolution
  map before upsampling and normalisation, as rows of floats; ``none``), ``format`` (``json``, or
  ``overlay``: the response is the map blended over the image, a PNG; one image only).
  JSON answer: ``{"model", "results": [{"class", "label", "score", "top", "method", "layers",
  "map", "timings"}]}``; ``top`` holds the five best classes with their softmax scores,
  ``timings`` the seconds of the graph run and of the method and the number of images that ran
  in the same graph run (requests are batched).
- ``GET /healthz`` liveness: the service answers; ``GET /readyz`` readiness: a replica holds the
  model and answers for it; ``GET /`` what the service offers (model, layers, methods, limits).

Bad requests get a 4xx with ``{"error": "<what is wrong and how to fix it>"}`` and never stop the
service: 400 (not an image, an unknown method, layer or query parameter, a class out of range, a
JSON body other than ``{"images": [base64, ...]}``), 413 (a body over `max_bytes`, or more than
`max_images` images), 415 (a form upload: post the image's bytes as the body). A method that fails
on a valid image (its float32 arithmetic overflowed) answers 422 with its message; anything camrt
did not foresee, 500, and the replica goes on.

Requests are batched with Ray Serve's ``@serve.batch``: the images of concurrent requests, up to
`max_batch_size` within `batch_wait_ms`, go through one run of the full graph, then each image's
method is computed from that run (`Engine.forward`, `Engine.explain_pass`). `Explainer` is that
logic without Ray (it parses, checks and explains), so it is tested without a cluster.
"""

# (no `from __future__ import annotations`: FastAPI reads the route functions' annotations, and `Request`
# is a name local to `_deployment`)

import asyncio
import base64
import binascii
import json
import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from camrt.errors import CamrtError, InputError

DEFAULT_MAX_BYTES = 20 * 2**20  # a request body: several large photos
DEFAULT_MAX_IMAGES = 32  # images in one request
MAP_FORMATS = ("png", "numbers", "none")
RESPONSE_FORMATS = ("json", "overlay")
QUERY_KEYS = ("method", "class", "layer", "map", "format")
ROUTES = {
    "POST /explain": "explain the posted image(s)",
    "GET /healthz": "liveness",
    "GET /readyz": "readiness: a replica holds the model",
    "GET /": "what the service offers",
}
TOP = 5
APP = "camrt"  # the Ray Serve application's name


class HTTPError(CamrtError):
    """A request the service refuses: `status` (4xx, or 500) and the message it answers with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Item:
    """One image of a checked request: the image (RGB uint8), the method, layer and class (-1:
    top-1) to explain it with, and how to return the map."""

    image: np.ndarray
    method: str
    layer: str | None
    class_idx: int
    map: str


class Explainer:
    """The service without Ray: parse and check a request (`parse`), explain checked images in one
    graph run (`explain`), answer (`answer`, `overlay`).

    Args:
        model: a camrt model file (`camrt export`), exported for classes (not `--target`).
        method: the method of requests that name none.
        device, threads: as `Engine`.
        max_bytes: the largest request body accepted (413 above).
        max_images: the most images in one request (413 above).
    """

    def __init__(self, model: str | os.PathLike, method: str = "gradcam", device: str = "auto",
                 threads: int | None = None, max_bytes: int = DEFAULT_MAX_BYTES,
                 max_images: int = DEFAULT_MAX_IMAGES) -> None:
        from camrt.checks import positive_int
        from camrt.engine import Engine
        from camrt.methods import METHODS, get_method

        self.max_bytes = positive_int(max_bytes, "--max-bytes")
        self.max_images = positive_int(max_images, "--max-images")
        self.engine = Engine(model, device=device, threads=threads, spinning=False)
        self.name = Path(model).name
        if self.engine.manifest.targeted:
            raise InputError(f"'{self.name}' was exported in target mode (--target); camrt serve explains classes: "
                             "export the model without --target")
        self.method = get_method(method).name
        self.engine.configure(get_method(self.method))
        self.methods = []  # those this model can compute with their default options
        for name, spec in METHODS.items():
            try:
                self.engine.configure(spec)
            except CamrtError:
                continue
            self.methods.append(name)
        self.layers = [la.name for la in self.engine.manifest.layers]
        self._lock = threading.RLock()  # one graph run at a time per replica

    def info(self) -> dict:
        """What `GET /` answers."""
        m = self.engine.manifest
        return {"model": self.name, "provider": self.engine.provider, "input_size": list(self.engine.input_size),
                "classes": m.num_classes, "layers": self.layers, "default_method": self.method,
                "methods": self.methods, "map_formats": list(MAP_FORMATS), "formats": list(RESPONSE_FORMATS),
                "max_bytes": self.max_bytes, "max_images": self.max_images, "routes": ROUTES}

    def parse(self, body: bytes, content_type: str, query: Mapping[str, str]) -> tuple[list[Item], str]:
        """The checked images of a request and its response format.

        Raises:
            HTTPError: 400, 413 or 415 with what is wrong (module docstring).
        """
        from camrt.visual.overlay import decode_image

        unknown = sorted(set(query) - set(QUERY_KEYS))
        if unknown:
            raise HTTPError(400, f"unknown query parameter '{unknown[0]}'; the parameters are: {', '.join(QUERY_KEYS)}")
        method = self._method(query.get("method"))
        layer = query.get("layer") or None
        if layer is not None and layer not in self.layers:
            raise HTTPError(400, f"unknown layer '{layer}'; this model has: {', '.join(self.layers)}")
        class_idx = self._class(query.get("class"))
        map_format = query.get("map", "png")
        if map_format not in MAP_FORMATS:
            raise HTTPError(400, f"map must be one of {', '.join(MAP_FORMATS)}, got '{map_format}'")
        fmt = query.get("format", "json")
        if fmt not in RESPONSE_FORMATS:
            raise HTTPError(400, f"format must be one of {', '.join(RESPONSE_FORMATS)}, got '{fmt}'")
        if len(body) > self.max_bytes:
            raise HTTPError(413, f"the request body is over the service's limit of {self.max_bytes} bytes; send "
                                 "smaller or fewer images")
        if not body:
            raise HTTPError(400, "the request has no body: post an image's bytes, or JSON {\"images\": [base64, ...]}")
        kind = content_type.split(";")[0].strip().lower()
        if kind.startswith("multipart/") or kind == "application/x-www-form-urlencoded":
            raise HTTPError(415, f"form uploads ({kind}) are not read: post the image's bytes as the body, or JSON "
                                 "{\"images\": [base64, ...]}")
        blobs = self._json_images(body) if kind == "application/json" else [body]
        if fmt == "overlay" and len(blobs) != 1:
            raise HTTPError(400, f"format=overlay answers one image, and the request holds {len(blobs)}; use "
                                 "format=json for several")
        items = []
        for i, blob in enumerate(blobs):
            name = "the body" if len(blobs) == 1 and kind != "application/json" else f"image {i}"
            try:
                image, _ = decode_image(blob, name)
            except InputError as e:
                raise HTTPError(400, str(e)) from None
            items.append(Item(image, method, layer, class_idx, map_format))
        return items, fmt

    def _method(self, name: str | None) -> str:
        if not name:
            return self.method
        if name not in self.methods:
            raise HTTPError(400, f"unknown method '{name}' for this model; it offers: {', '.join(self.methods)}")
        return name

    def _class(self, text: str | None) -> int:
        if text is None or text == "":
            return -1
        k = self.engine.manifest.num_classes
        try:
            c = int(text)
        except ValueError:
            raise HTTPError(400, f"class must be an integer, got '{text}'") from None
        if not -1 <= c < k:
            raise HTTPError(400, f"class {c} is out of range: the model has {k} classes (0..{k - 1}); -1 or no class "
                                 "means the top-1")
        return c

    def _json_images(self, body: bytes) -> list[bytes]:
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError) as e:
            raise HTTPError(400, f"the body is not valid JSON: {e}") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("images"), list) or set(doc) != {"images"}:
            raise HTTPError(400, "a JSON body must be {\"images\": [base64, ...]} (options go in the query string)")
        images = doc["images"]
        if not images:
            raise HTTPError(400, "\"images\" is empty: give at least one base64-encoded image")
        if len(images) > self.max_images:
            raise HTTPError(413, f"the request holds {len(images)} images, over the service's limit of "
                                 f"{self.max_images} per request; split it")
        blobs = []
        for i, text in enumerate(images):
            if not isinstance(text, str):
                raise HTTPError(400, f"image {i} is not a base64 string")
            try:
                blobs.append(base64.b64decode(text, validate=True))
            except (binascii.Error, ValueError):
                raise HTTPError(400, f"image {i} is not valid base64") from None
        return blobs

    def explain(self, items: Sequence[Item]) -> list[dict | HTTPError]:
        """Explain `items` with one run of the full graph (each with its own class), then each
        group of items sharing a method and layer with one `explain_pass`: an answer per item
        (`answer`'s dict), or the `HTTPError` of that item alone."""
        if not items:
            return []
        t0 = time.perf_counter()
        with self._lock:
            try:
                p = self.engine.forward([it.image for it in items], [it.class_idx for it in items])
            except CamrtError as e:
                if len(items) == 1:
                    return [HTTPError(422, str(e))]
                return [r for it in items for r in self.explain([it])]  # which image failed: each alone
            results: list[dict | HTTPError] = [HTTPError(500, "not explained")] * len(items)
            groups: dict[tuple[str, str | None], list[int]] = {}
            for i, it in enumerate(items):
                groups.setdefault((it.method, it.layer), []).append(i)
            for (method, layer), index in groups.items():
                part = p if len(index) == len(items) else p.rows(index)
                try:
                    r = self.engine.explain_pass(part, method, layer)
                except CamrtError as e:
                    for i in index:
                        results[i] = HTTPError(422, str(e))
                    continue
                for j, i in enumerate(index):
                    results[i] = self.answer(items[i], r, j, len(items), time.perf_counter() - t0)
        return results

    def answer(self, item: Item, r, j: int, batch: int, seconds: float) -> dict:
        """The JSON answer for image `j` of the engine's result `r`."""
        from camrt.visual.overlay import encode_image, gray

        labels = self.engine.manifest.labels
        logits = np.asarray(r.logits[j], np.float64)
        prob = np.exp(logits - logits.max())
        prob /= prob.sum()
        best = np.argsort(-prob, kind="stable")[:TOP]
        c = int(r.class_idx[j])
        out = {"class": c, "label": labels[c] if labels else str(c), "score": float(r.scores[j]),
               "top": [{"class": int(k), "label": labels[k] if labels else str(int(k)), "score": float(prob[k])}
                       for k in best],
               "method": r.method, "layers": list(r.layers)}
        if item.map == "png":
            h, w = item.image.shape[:2]
            out["map"] = {"format": "png", "height": h, "width": w,
                          "data": base64.b64encode(encode_image(gray(r.saliency[j], (w, h)))).decode("ascii")}
        elif item.map == "numbers":
            low = r.low_res[j]
            out["map"] = {"format": "numbers", "height": int(low.shape[0]), "width": int(low.shape[1]),
                          "values": np.asarray(low, np.float64).tolist()}
        out["timings"] = {"inference_s": r.timings["inference"], "method_s": r.timings["method"],
                          "request_s": seconds, "batch": batch}
        out["_saliency"] = r.saliency[j]  # for format=overlay; dropped from the JSON answer
        return out

    @staticmethod
    def overlay(item: Item, answer: dict) -> bytes:
        """The PNG of the answer's map blended over its image (format=overlay)."""
        from camrt.visual.overlay import encode_image, overlay

        return encode_image(overlay(item.image, answer["_saliency"]))

    def response(self, answers: Sequence[dict]) -> dict:
        """The JSON document of a request's answers."""
        return {"model": self.name, "results": [{k: v for k, v in a.items() if k != "_saliency"} for a in answers]}


def _deployment(max_batch_size: int, batch_wait_s: float):
    """The Ray Serve deployment class (FastAPI ingress), built here so that Ray and FastAPI are
    imported only by `serve`."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response
    from ray import serve

    api = FastAPI(title="camrt", docs_url=None, redoc_url=None, openapi_url=None)

    @serve.deployment(name="camrt", max_ongoing_requests=4 * max_batch_size)
    @serve.ingress(api)
    class CamService:
        def __init__(self, model: str, method: str, device: str, threads: int | None, max_bytes: int,
                     max_images: int) -> None:
            self.explainer = Explainer(model, method, device, threads, max_bytes, max_images)

        def check_health(self) -> None:  # Ray Serve's own health check of the replica
            if self.explainer.engine is None:
                raise RuntimeError("the replica holds no engine")

        @api.get("/healthz")
        def healthz(self) -> dict:
            return {"status": "ok"}

        @api.get("/readyz")
        def readyz(self) -> dict:
            return {"ready": True, "model": self.explainer.name, "provider": self.explainer.engine.provider}

        @api.get("/")
        def root(self) -> dict:
            return self.explainer.info()

        @serve.batch(max_batch_size=max_batch_size, batch_wait_timeout_s=batch_wait_s)
        async def _explain(self, items: list[Item]) -> list[dict | HTTPError]:
            loop = asyncio.get_running_loop()
            try:  # in a thread: the replica keeps answering health checks while the graph runs
                return await loop.run_in_executor(None, self.explainer.explain, items)
            except Exception as e:  # noqa: BLE001 - a bug of camrt's answers 500, and the replica goes on
                logging.getLogger(__name__).exception("camrt serve: explaining a batch failed")
                return [HTTPError(500, f"internal error: {type(e).__name__}: {e}")] * len(items)

        @api.post("/explain")
        async def explain(self, request: Request):
            ex = self.explainer
            try:
                size = int(request.headers.get("content-length") or 0)
            except ValueError:
                size = 0
            if size > ex.max_bytes:
                return JSONResponse({"error": f"the request body is {size} bytes, over the service's limit of "
                                              f"{ex.max_bytes} bytes; send smaller or fewer images"}, status_code=413)
            body = bytearray()
            async for chunk in request.stream():  # a body sent without its length is cut off at the limit too
                body += chunk
                if len(body) > ex.max_bytes:
                    break
            try:
                items, fmt = ex.parse(bytes(body), request.headers.get("content-type", ""),
                                      dict(request.query_params))
            except HTTPError as e:
                return JSONResponse({"error": e.message}, status_code=e.status)
            answers = await asyncio.gather(*(self._explain(it) for it in items))
            for i, a in enumerate(answers):
                if isinstance(a, HTTPError):
                    where = "" if len(answers) == 1 else f"image {i}: "
                    return JSONResponse({"error": where + a.message}, status_code=a.status)
            if fmt == "overlay":
                return Response(ex.overlay(items[0], answers[0]), media_type="image/png")
            return JSONResponse(ex.response(answers))

    return CamService


@dataclass
class Service:
    """A running `camrt serve`: its URL, and `stop` (Ray Serve, and the local Ray it started)."""

    url: str
    replicas: int
    _started_ray: bool

    def stop(self, timeout: float | None = None) -> bool:
        """Stop serving: the local Ray this service started goes down with everything on it (Ray
        Serve's controller and proxy included); on a cluster it joined, only its application is
        deleted, and whatever else the cluster serves goes on.

        With `timeout` (seconds), returns False if stopping had not finished by then (it goes on
        in a daemon thread, which does not keep the interpreter alive); True once stopped."""
        import ray
        from ray import serve

        def stop() -> None:
            if self._started_ray:
                # (not serve.shutdown() first: its graceful shutdown of the controller sometimes
                # waited past a minute; stopping Ray stops every actor and frees the port at once)
                ray.shutdown()
            else:
                serve.delete(APP)

        if timeout is None:
            stop()
            return True
        worker = threading.Thread(target=stop, name="camrt-serve-stop", daemon=True)
        worker.start()
        worker.join(timeout)
        return not worker.is_alive()

    def wait(self, stop_timeout: float | None = None) -> bool:
        """Block until interrupted (Ctrl-C), then stop (`stop(stop_timeout)`); returns whether
        stopping finished."""
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
        finally:
            stopped = self.stop(stop_timeout)
        return stopped


def quiet_ray_logs() -> None:
    """Lower Ray's and Ray Serve's Python loggers to ERROR: for `camrt serve`, whose output is its
    own lines (`serve` itself leaves logging as the caller set it). Ray Serve's import sets its
    logger to INFO, so it is imported first; without Ray, nothing to do."""
    try:
        import ray.serve  # noqa: F401
    except ImportError:
        return
    for name in ("ray", "ray.serve"):
        logging.getLogger(name).setLevel(logging.ERROR)


def serve(model: str | os.PathLike, host: str = "127.0.0.1", port: int = 8000, method: str = "gradcam",
          replicas: int = 1, gpus_per_replica: float = 0, max_batch_size: int = 8, batch_wait_ms: float = 10,
          max_bytes: int = DEFAULT_MAX_BYTES, max_images: int = DEFAULT_MAX_IMAGES,
          address: str | None = None) -> Service:
    """Start `camrt serve` (module docstring) and return once every replica is ready.

    Args:
        model: a camrt model file exported for classes.
        host, port: where the HTTP proxy listens (0.0.0.0: every interface).
        method: the method of requests that name none.
        replicas: copies of the deployment, each holding one Engine.
        gpus_per_replica: GPUs per replica (its Engine asks for CUDA); 0: CPU replicas, each with
            its share of the cores as ONNX Runtime threads.
        max_batch_size, batch_wait_ms: `@serve.batch`: images of concurrent requests run together,
            up to this many, waiting at most this long for a batch to fill.
        max_bytes, max_images: the largest request accepted (413 above).
        address: a Ray cluster to join; None starts a local Ray in this process (stopped by
            `Service.stop`).

    Raises:
        InputError: a bad argument, model or method, before Ray starts.
    """
    from camrt.checks import positive_int

    replicas = positive_int(replicas, "--replicas")
    max_batch_size = positive_int(max_batch_size, "--max-batch-size")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise InputError(f"--port must be a TCP port (1..65535), got {port!r}")
    for value, flag in ((gpus_per_replica, "--gpus-per-replica"), (batch_wait_ms, "--batch-wait-ms")):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
            raise InputError(f"{flag} must be a number >= 0, got {value!r}")
    Explainer(model, method, "cpu", 1, max_bytes, max_images)  # the model, method and limits checked here, once

    try:
        import fastapi  # noqa: F401
        import ray
        from ray import serve as ray_serve
    except ImportError as e:
        raise InputError(f"camrt serve needs Ray Serve ({e.name} is missing): pip install 'camrt[scale]'") from e

    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
                 ignore_reinit_error=True)
    try:
        total = float(ray.cluster_resources().get("CPU", 1))
        actor = {"num_gpus": gpus_per_replica} if gpus_per_replica else {"num_cpus": total / replicas}
        threads = None if gpus_per_replica else max(1, round(total / replicas))
        app = _deployment(max_batch_size, batch_wait_ms / 1000).options(
            num_replicas=replicas, ray_actor_options=actor).bind(
            str(Path(model).resolve()), method, "cuda" if gpus_per_replica else "cpu", threads, max_bytes, max_images)
        ray_serve.start(http_options={"host": host, "port": port}, logging_config={"log_level": "ERROR"})
        ray_serve.run(app, name=APP, route_prefix="/", logging_config={"log_level": "ERROR"})
    except BaseException:
        if started:
            ray.shutdown()
        raise
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    return Service(f"http://{shown}:{port}", replicas, started)
