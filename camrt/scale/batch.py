"""`camrt batch`: explain many images on Ray Data, resumably, with results as Parquet shards.

    camrt batch model.cam.onnx SOURCE -o OUT --method gradcam,layercam [--workers 2] [--address ADDR]

SOURCE is a folder (its image files), a glob, a text file of paths or URIs (one per line;
`file://` and whatever pyarrow's file systems open, such as `s3://` with credentials), or a
Parquet table with an image column (encoded image bytes, or paths) and a key column naming each
row. The pipeline (Ray Data, a local Ray started in-process unless `address` joins a cluster):

1. the rows not done yet (`done_keys` of OUT) become a dataset;
2. parallel tasks read and decode each image and preprocess it to the model input
   (`camrt.engine.preprocess`, the manifest's preprocessing); an unreadable image becomes a row
   with its error, never the end of the job;
3. `workers` actors each hold one `Engine` (with `gpus_per_worker` GPUs each, or a share of the
   CPUs: its ONNX Runtime threads are limited to that share) and explain their batches: one graph
   run, then every method from it. By default one actor per CPU of the cluster (one ONNX Runtime
   thread each: on 2 cores two single-threaded engines explained 1.3× the images per second of one
   two-threaded engine, docs/benchmarks.md), or per `gpus_per_worker` GPUs. CPU actors read and
   decode their own rows (step 2 inside the actor: the cores are shared anyway, and the decoded
   inputs then never cross the object store); GPU actors are fed by decode tasks on the CPUs;
4. the driver writes the results as Parquet shards `OUT/part-<run>-<n>.parquet`, each written
   completely or not at all (`camrt.atomic`), so a job stopped at any point leaves only whole
   shards, and a rerun with the same OUT skips every key already in one.

One row per image and method (`RESULT_SCHEMA`): the key and path, the method, the class explained,
its label and softmax score, the low-resolution map (flattened, with its height and width), the
seconds of the graph run and of the method, the overlay written (with `overlays`) and the error
("" when none; an image that failed has one row, method "").
"""

from __future__ import annotations

import glob as globlib
import hashlib
import io
import logging
import os
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np

from camrt import atomic
from camrt.errors import CamrtError, InputError
from camrt.visual.overlay import IMAGE_SUFFIXES

SHARD_GLOB = "part-*.parquet"
SHARD_ROWS = 512  # result rows per shard written by the driver
DECODE_CPUS = 0.25  # logical CPUs of one decode task


def _pyarrow():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as e:
        raise InputError("camrt batch needs Ray Data and pyarrow: pip install 'camrt[scale]'") from e
    return pa, pq


def result_schema():
    """The columns of every result shard (module docstring)."""
    pa, _ = _pyarrow()
    return pa.schema([
        ("key", pa.string()), ("path", pa.string()), ("method", pa.string()), ("class", pa.int64()),
        ("label", pa.string()), ("score", pa.float64()), ("map", pa.list_(pa.float32())),
        ("map_height", pa.int32()), ("map_width", pa.int32()), ("inference_s", pa.float64()),
        ("method_s", pa.float64()), ("overlay", pa.string()), ("error", pa.string()),
    ])


@dataclass
class Source:
    """What `list_source` found: rows of paths (`paths`, keyed by the path as given), or a Parquet
    table read by Ray Data with its image and key columns."""

    paths: list[str] = field(default_factory=list)
    table: str | None = None
    image_column: str = "image"
    key_column: str | None = None
    rows: int = 0


def list_source(source: str | os.PathLike, image_column: str = "image", key_column: str | None = None) -> Source:
    """The images `source` names (module docstring), checked before any work.

    Raises:
        InputError: nothing there, an empty folder or list, a Parquet table without the columns.
    """
    text = str(source)
    p = Path(text)
    if p.is_dir():
        paths = sorted(str(f) for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        if not paths:
            raise InputError(f"folder '{p}' holds no image file ({', '.join(sorted(IMAGE_SUFFIXES))})")
        return Source(paths=paths, rows=len(paths))
    if p.is_file() and p.suffix.lower() == ".parquet":
        return _parquet_source(p, image_column, key_column)
    if p.is_file() and p.suffix.lower() in (".txt", ".lst", ".csv"):
        lines = [line.strip() for line in p.read_text(encoding="utf-8").splitlines()]
        paths = [line for line in lines if line and not line.startswith("#")]
        if not paths:
            raise InputError(f"list '{p}' names no image (one path or URI per line)")
        return Source(paths=paths, rows=len(paths))
    if p.is_file():
        return Source(paths=[text], rows=1)
    matches = sorted(globlib.glob(text, recursive=True))
    paths = [m for m in matches if Path(m).is_file()]
    if not paths:
        raise InputError(f"'{text}' is not a folder, a file, a list of paths, a Parquet table or a glob that matches "
                         "any file")
    return Source(paths=paths, rows=len(paths))


def _parquet_source(p: Path, image_column: str, key_column: str | None) -> Source:
    _, pq = _pyarrow()
    try:
        schema = pq.read_schema(p)
        rows = pq.ParquetFile(p).metadata.num_rows
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a bad file
        raise InputError(f"'{p}' is not a readable Parquet table: {str(e).splitlines()[0][:200]}") from e
    names = schema.names
    if image_column not in names:
        raise InputError(f"Parquet table '{p}' has no column '{image_column}' (its columns: {', '.join(names)}); "
                         "name the image column with --image-column")
    kind = str(schema.field(image_column).type)
    if kind not in ("binary", "large_binary", "string", "large_string"):
        raise InputError(f"column '{image_column}' of '{p}' holds {kind}; it must hold encoded images (bytes) or paths")
    if key_column is None:
        key_column = "path" if "path" in names and image_column != "path" else (
            image_column if "string" in kind else None)
    if key_column is None:
        raise InputError(f"Parquet table '{p}' holds image bytes: name the column that identifies each row with "
                         "--key-column (it names the results and lets a rerun skip what is done)")
    if key_column not in names:
        raise InputError(f"Parquet table '{p}' has no column '{key_column}' (its columns: {', '.join(names)})")
    return Source(table=str(p), image_column=image_column, key_column=key_column, rows=rows)


def shards(out: str | os.PathLike) -> list[Path]:
    return sorted(Path(out).glob(SHARD_GLOB))


def read_results(out: str | os.PathLike):
    """Every result row written to `out` so far, as one pyarrow Table (`result_schema`)."""
    pa, pq = _pyarrow()
    tables = [pq.read_table(s) for s in shards(out)]
    return pa.concat_tables(tables) if tables else result_schema().empty_table()


def done_keys(out: str | os.PathLike) -> set[str]:
    """The keys that have rows in `out`'s shards (explained, or failed with their error)."""
    _, pq = _pyarrow()
    keys: set[str] = set()
    for s in shards(out):
        try:
            keys.update(pq.read_table(s, columns=["key"]).column("key").to_pylist())
        except Exception as e:  # noqa: BLE001 - shards are written whole, so this one is not camrt's
            raise InputError(f"result shard '{s}' is not readable ({str(e).splitlines()[0][:200]}); move it out of "
                             f"'{out}' to redo its images") from e
    return keys


def _read_bytes(path: str) -> bytes:
    """The bytes of a local path, a file:// URI or any URI pyarrow's file systems open."""
    if "://" not in path:
        return Path(path).read_bytes()
    url = urlparse(path)
    if url.scheme == "file":
        return Path(unquote(url.path)).read_bytes()
    from pyarrow import fs

    filesystem, inner = fs.FileSystem.from_uri(path)
    with filesystem.open_input_stream(inner) as f:
        return f.read()


def _decode(rows: dict, size: tuple[int, int], mean: Sequence[float], std: Sequence[float], keep: bool) -> dict:
    """Ray Data task on a batch of rows: read, decode and preprocess each image; an error becomes
    the row's `error` (and its input zeros)."""
    from camrt.engine.preprocess import preprocess
    from camrt.manifest import Preprocessing
    from camrt.visual.overlay import decode_image

    prep = Preprocessing(tuple(mean), tuple(std))
    n = len(rows["key"])
    x = np.zeros((n, len(mean), *size), np.float32)
    errors, kept = [""] * n, [b""] * n
    for i in range(n):
        key, path, data = str(rows["key"][i]), str(rows["path"][i]), rows["data"][i]
        try:
            raw = data if data else _read_bytes(path)
            image, _ = decode_image(raw, path or key)
            x[i] = preprocess([image], size, prep)[0]
            kept[i] = bytes(raw) if keep else b""
        except (CamrtError, OSError, ValueError) as e:
            errors[i] = str(e) if isinstance(e, CamrtError) else f"cannot read '{path or key}': {e}"
    return {"key": rows["key"], "path": rows["path"], "data": np.array(kept, dtype=object),
            "error": np.array(errors, dtype=object), "x": x}


class _Explainer:
    """Ray Data actor: one `Engine`, explaining each batch with one graph run and every method."""

    def __init__(self, model: str, methods: Sequence[str], layer: str | Sequence[str] | None,
                 class_idx: int | None, device: str, threads: int | None, overlay_dir: str | None,
                 decode: dict | None = None) -> None:
        from camrt.engine import Engine

        self.decode = decode  # `_decode`'s arguments when this actor decodes its own rows

        # no spinning: the decode tasks share the cores, and spinning threads would starve them
        self.engine = Engine(model, device=device, threads=threads, spinning=False)
        self.methods, self.layer, self.class_idx = list(methods), layer, class_idx
        self.overlay_dir = overlay_dir

    def __call__(self, batch: dict):
        pa, _ = _pyarrow()
        rows: dict[str, list] = {name: [] for name in result_schema().names}

        def add(key, path, method="", cls=-1, label="", score=float("nan"), m=None, t_inf=0.0, t_m=0.0, ov="",
                error=""):
            for k, v in (("key", key), ("path", path), ("method", method), ("class", cls), ("label", label),
                         ("score", score), ("map", [] if m is None else m.ravel().tolist()),
                         ("map_height", 0 if m is None else m.shape[0]), ("map_width", 0 if m is None else m.shape[1]),
                         ("inference_s", t_inf), ("method_s", t_m), ("overlay", ov), ("error", error)):
                rows[k].append(v)

        if self.decode is not None:
            batch = _decode(batch, **self.decode)
        keys, paths, errors = batch["key"], batch["path"], batch["error"]
        good = np.flatnonzero(errors == "")
        for i in np.flatnonzero(errors != ""):
            add(str(keys[i]), str(paths[i]), error=str(errors[i]))
        if len(good):
            try:
                p = self.engine.forward(np.ascontiguousarray(batch["x"][good]), self.class_idx)
            except CamrtError as e:  # the whole batch failed (an overflow); each image says so
                for i in good:
                    add(str(keys[i]), str(paths[i]), error=str(e))
                return pa.Table.from_pydict(rows, schema=result_schema())
            labels = self.engine.manifest.labels
            share = p.seconds / len(good)
            for method in self.methods:
                try:
                    r = self.engine.explain_pass(p, method, self.layer)
                except CamrtError as e:
                    for i in good:
                        add(str(keys[i]), str(paths[i]), method, error=str(e))
                    continue
                t_m = r.timings["method"] / len(good)
                for j, i in enumerate(good):
                    c = int(r.class_idx[j])
                    ov = self._overlay(batch, i, method, r.saliency[j]) if self.overlay_dir else ""
                    add(str(keys[i]), str(paths[i]), method, c, labels[c] if labels else str(c),
                        float(r.scores[j]), r.low_res[j].astype(np.float32), share, t_m, ov)
        return pa.Table.from_pydict(rows, schema=result_schema())

    def _overlay(self, batch: dict, i: int, method: str, saliency: np.ndarray) -> str:
        from camrt.visual.overlay import decode_image, overlay, write_image

        key = str(batch["key"][i])
        image, _ = decode_image(batch["data"][i], key)
        stem = Path(key.split("://")[-1]).stem or "image"
        name = f"{stem}-{hashlib.sha1(key.encode()).hexdigest()[:8]}.{method}.png"
        target = Path(self.overlay_dir) / name
        write_image(target, overlay(image, saliency))
        return str(target)


@dataclass
class BatchSummary:
    """What one `batch` call did: images in the source, skipped as done before, explained now and
    failed now (unreadable, or every method failed), the shards it wrote and the wall time."""

    out: Path
    images: int
    skipped: int
    explained: int
    failed: int
    shards: list[Path]
    seconds: float
    workers: int


def batch(model: str | os.PathLike, source: str | os.PathLike, out: str | os.PathLike,
          methods: str | Sequence[str] = "gradcam", layer: str | Sequence[str] | None = None,
          class_idx: int | None = None, workers: int | None = None, address: str | None = None,
          gpus_per_worker: float = 0, overlays: bool = False, batch_size: int = 16, image_column: str = "image",
          key_column: str | None = None,
          progress: Callable[[int, int], None] | None = None, decode_tasks: bool | None = None) -> BatchSummary:
    """Explain every image of `source` not already in `out` with `methods`, on Ray Data (module
    docstring), and write the results to `out` as Parquet shards.

    Args:
        model: a camrt model file (`camrt export`).
        source: a folder, glob, list file or Parquet table (`list_source`).
        out: the results folder (created; a rerun with the same folder resumes).
        methods: gradient-family and other methods by name, as `camrt explain --method`.
        layer, class_idx: as `Engine.explain` (None: the last layer; each image's top-1 class).
        workers: explaining actors, each with one Engine; None: one per CPU of the cluster, or with
            `gpus_per_worker` as many as its GPUs hold.
        address: a Ray cluster to join ("auto", "ray://host:10001", ...); None starts a local Ray
            in this process (and stops it at the end).
        gpus_per_worker: GPUs per actor (its Engine then asks for CUDA); 0 runs on the CPU.
        overlays: also write each map over its image to `out/overlays/`.
        batch_size: images per actor call (one graph run).
        image_column, key_column: of a Parquet source (`list_source`).
        progress: called as progress(done, total) with images done after each shard is written.
        decode_tasks: read and decode the images in tasks of their own (True) or inside the
            explaining actors (False); None: tasks for GPU actors, inside the actors on CPUs.

    Raises:
        InputError: a bad argument, model, method, layer or source, before Ray starts.
    """
    from camrt.checks import positive_int
    from camrt.engine import Engine
    from camrt.explain import resolve_methods

    t0 = time.perf_counter()
    workers = None if workers is None else positive_int(workers, "--workers")
    batch_size = positive_int(batch_size, "--batch-size")
    if isinstance(gpus_per_worker, bool) or not isinstance(gpus_per_worker, (int, float)) or gpus_per_worker < 0:
        raise InputError(f"--gpus-per-worker must be a number >= 0, got {gpus_per_worker!r}")
    names = resolve_methods(methods)
    engine = Engine(model, device="cpu")  # checks the model, methods, layer and class here, once
    for name in names:
        from camrt.methods import METHODS

        engine.configure(METHODS[name])
    engine.resolve_layers(layer)
    if class_idx is not None:
        engine.check_class_idx(class_idx, 1)
    src = list_source(source, image_column, key_column)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"output '{out}' exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    overlay_dir = None
    if overlays:
        (out / "overlays").mkdir(exist_ok=True)
        overlay_dir = str((out / "overlays").resolve())
    done = done_keys(out)
    prep, size = engine.manifest.preprocessing, engine.input_size
    del engine

    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
                 ignore_reinit_error=True)
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.verbose_progress = False
        ds, todo = _dataset(ray, src, done)
        written: list[Path] = []
        explained = failed = 0
        if todo:
            # Logical CPUs: the actors share what is left after one whole CPU (Ray Data's own tasks,
            # such as listing a Parquet table's files, ask for one) and the decode tasks' quarter, so
            # that nothing waits forever for the actors' share; each actor's ONNX Runtime threads are
            # its share of the physical cores.
            total = float(ray.cluster_resources().get("CPU", 1))
            workers = _workers(workers, total, float(ray.cluster_resources().get("GPU", 0)), gpus_per_worker)
            share = max(0.25, (total - 1 - DECODE_CPUS) / workers)
            decode = {"size": size, "mean": prep.mean, "std": prep.std, "keep": overlays}
            tasks = bool(gpus_per_worker) if decode_tasks is None else bool(decode_tasks)
            if tasks:  # decode tasks on the CPUs feed the actors (GPU actors by default)
                ds = ds.map_batches(_decode, batch_size=batch_size, batch_format="numpy", num_cpus=DECODE_CPUS,
                                    fn_kwargs=decode)
            ds = ds.map_batches(
                _Explainer, batch_size=batch_size, batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=workers),
                num_gpus=gpus_per_worker or None, num_cpus=None if gpus_per_worker else share,
                fn_constructor_kwargs={"model": str(Path(model).resolve()), "methods": names, "layer": layer,
                                       "class_idx": class_idx, "device": "cuda" if gpus_per_worker else "cpu",
                                       "threads": None if gpus_per_worker else max(1, round(total / workers)),
                                       "overlay_dir": overlay_dir, "decode": None if tasks else decode})
            run = uuid.uuid4().hex[:8]
            seen: set[str] = set()
            pa, pq = _pyarrow()
            for table in ds.iter_batches(batch_size=SHARD_ROWS, batch_format="pyarrow"):
                table = table.select(result_schema().names).cast(result_schema())
                target = out / f"part-{run}-{len(written):05d}.parquet"
                buf = io.BytesIO()
                pq.write_table(table, buf)
                atomic.write_bytes(target, buf.getvalue())
                written.append(target)
                keys = table.column("key").to_pylist()
                ok = {k for k, e, m in zip(keys, table.column("error").to_pylist(),
                                           table.column("method").to_pylist(), strict=True) if not e and m}
                for k in dict.fromkeys(keys):
                    if k not in seen:
                        seen.add(k)
                        explained += k in ok
                        failed += k not in ok
                if progress is not None:
                    progress(len(done) + len(seen), len(done) + todo)
    finally:
        if started:
            ray.shutdown()
    return BatchSummary(out, len(done) + todo, len(done), explained, failed, written, time.perf_counter() - t0,
                        workers or 0)


def _workers(workers: int | None, cpus: float, gpus: float, gpus_per_worker: float) -> int:
    """The actors to start: `workers`, or by default one per CPU (or per `gpus_per_worker` GPUs);
    refused when the cluster has fewer GPUs than one actor asks for (it would wait forever)."""
    if gpus_per_worker and gpus < gpus_per_worker * (workers or 1):
        raise InputError(f"{workers or 1} worker(s) with --gpus-per-worker {gpus_per_worker:g} need "
                         f"{gpus_per_worker * (workers or 1):g} GPUs, and the Ray cluster has {gpus:g}; "
                         "give fewer workers or GPUs per worker, or leave --gpus-per-worker out for CPU workers")
    if workers is not None:
        return workers
    return max(1, int(gpus // gpus_per_worker)) if gpus_per_worker else max(1, int(cpus))


def _dataset(ray, src: Source, done: set[str]):
    """The Ray dataset of the rows not done (columns key, path, data) and how many rows that is."""
    if src.table is None:
        rows = [{"key": p, "path": p, "data": b""} for p in dict.fromkeys(src.paths) if p not in done]
        return (ray.data.from_items(rows) if rows else None), len(rows)
    _, pq = _pyarrow()
    keys = pq.read_table(src.table, columns=[src.key_column]).column(src.key_column).to_pylist()
    todo = sum(1 for k in keys if str(k) not in done)
    image, key = src.image_column, src.key_column
    paths = str(pq.read_schema(src.table).field(image).type).endswith("string")

    def to_row(r: dict) -> dict:
        value = r[image]
        return {"key": str(r[key]), "path": value if paths else "", "data": b"" if paths else (value or b"")}

    # every task at DECODE_CPUS: a read task asking for a whole CPU would wait for the actors' share forever
    light = {"num_cpus": DECODE_CPUS}
    ds = ray.data.read_parquet(src.table, columns=list(dict.fromkeys([image, key])), ray_remote_args=light)
    ds = ds.map(to_row, **light)
    return (ds.filter(lambda r: r["key"] not in done, **light) if done else ds), todo
