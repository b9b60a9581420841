"""Perturbation chunks built in numpy against chunk graphs, side by side in one run (CPU provider).

    python tools/bench_chunks.py [--rounds 5]
        [--methods scorecam,ablationcam,reciprocam,reciprocam:gaussian,groupcam,rise]

A random-weight torchvision resnet18 exported at layer4, one 224×224 image, chunk 16 (the
engine's default). "numpy": the copies built by the method's own numpy code and fed to the
forward-only graph or the tail (`Graphs.chunk_graphs = False`); "graph": the copies built inside
ONNX Runtime by the chunk graph of `camrt.graph.chunks` (`Graphs.chunk_graphs = True`). Three
measures, each per path as wall time and as the process's CPU time (all threads; less disturbed
than wall time by other processes on a shared machine):

1. `Engine.explain_pass` on one forward-only pass made beforehand (the perturbation work alone):
   blocks of calls alternate between the paths, in turned order each round; the lowest block
   median over the rounds.
2. Score-CAM, Group-CAM and RISE only (the methods whose copies go through the whole network):
   one chunk of 16 copies end to end (build, run, class scores), the two paths alternating call by
   call, the median over the calls. Their engine calls take seconds, long enough for a slow spell
   of a shared machine to hit one path and not the other; a chunk takes 0.3 s. (Not for the other
   methods: their chunks take under a millisecond, and calls alternating between two sessions
   then measure cold caches and threads, not what the engine sees.) Group-CAM: its second chunk
   (16 groups), numpy's without the blur (once per image), the graph's with it (once per chunk).
3. Building one chunk of 16 copies alone: numpy's, against the chunk graph's front (its nodes up
   to the copies, whose output stays in ONNX Runtime as the network would read it); as (1).
   Group-CAM's numpy copies: masks and blend (the blur is per image); its graph front blurs too.
4. Group-CAM and RISE only: one image's work besides the network, the method's coroutine run to
   the end with zero scores sent back: numpy's (blur, masks, copies, map) against the chunk
   graph's (the rows, each chunk's graph front as in (3), and the map, whose masks the host
   builds again: the graph returns only the scores); as (1), blocks of 5 calls.

Group-CAM runs with its default 32 groups (33 runs per image); RISE with n=RISE_N masks (its
default 4000 would take minutes per call: its time grows linearly with n, per chunk of 16).

Also printed: the largest difference between the two paths' maps, relative to the map's largest value.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torchvision
from onnx import helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import camrt  # noqa: E402
from camrt.engine import Engine  # noqa: E402
from camrt.engine.perturbation import _groupcam_rows, _rise_rows  # noqa: E402
from camrt.graph import (  # noqa: E402
    ablationcam_chunks,
    forward_only,
    groupcam_chunks,
    reciprocam_chunks,
    rise_chunks,
    scorecam_chunks,
    tail,
)
from camrt.graph.chunks import ACTIVATION, CHANNELS, CLASS, GRIDS, MAPS, POSITIONS, SCORES  # noqa: E402
from camrt.methods import Context, softmax  # noqa: E402
from camrt.methods.feature import _KERNELS, ablation_inputs, reciprocam_inputs  # noqa: E402
from camrt.methods.masking import (  # noqa: E402
    GroupCAMOptions,
    RISEOptions,
    _channel_masks,
    gaussian_blur,
    groupcam_explore,
    rise_explore,
    scorecam_inputs,
)
from tools.bench_gradcam import machine  # noqa: E402

REPEAT = {"scorecam": 1, "groupcam": 1, "rise": 1}  # engine calls per block; these take seconds
CHUNK = 16
RISE_N = 128  # RISE's masks per image here (8 chunks)
WHOLE = ("scorecam", "groupcam", "rise")  # measure 2


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def best_blocks(fns: list[Callable[[], object]], repeat: int, rounds: int) -> list[tuple[float, float]]:
    """(wall, CPU) seconds per call of each function: the median of a block of `repeat` calls after
    one warm-up call, blocks alternating between the functions (in turned order each round), and
    of the rounds' block medians the lowest."""
    best = [(float("inf"), float("inf")) for _ in fns]
    for r in range(rounds):
        for i in (range(len(fns)) if r % 2 == 0 else reversed(range(len(fns)))):
            fns[i]()
            walls, cpus = zip(*(timed(fns[i]) for _ in range(repeat)), strict=True)
            best[i] = (min(best[i][0], statistics.median(walls)), min(best[i][1], statistics.median(cpus)))
    return best


def alternating(fns: list[Callable[[], object]], calls: int) -> list[tuple[float, float]]:
    """(wall, CPU) median seconds per call of each function, the functions called in turn (turned
    order every other call) `calls` times each, after one warm-up call each."""
    for fn in fns:
        fn()
    times: list[list[tuple[float, float]]] = [[] for _ in fns]
    for r in range(calls):
        for i in (range(len(fns)) if r % 2 == 0 else reversed(range(len(fns)))):
            times[i].append(timed(fns[i]))
    return [(statistics.median(w for w, _ in t), statistics.median(c for _, c in t)) for t in times]


def front_only(graph: onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    """The nodes of a chunk graph that build the copies (named ``chunk/...``), with the copies as
    output, and the copies' name."""
    g = graph.graph
    front = [n for n in g.node if n.name.startswith("chunk/") and n.name not in (SCORES, "chunk/probabilities")]
    copies = next(t for n in g.node if not n.name.startswith("chunk/") and n.name != SCORES
                  for t in n.input if t.startswith("chunk/"))
    read = {t for n in front for t in n.input}
    out = helper.make_graph(front, "front", [v for v in g.input if v.name in read],
                            [helper.make_tensor_value_info(copies, onnx.TensorProto.FLOAT, None)],
                            initializer=[t for t in g.initializer if t.name in read])
    return helper.make_model(out, opset_imports=list(graph.opset_import), ir_version=graph.ir_version), copies


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as the engine's sub-graphs
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def chunk_functions(path: str, x: np.ndarray, a: np.ndarray, g: np.ndarray, cls: int, spec: str
                    ) -> dict[str, Callable[[], object]]:
    """For the first chunk of 16 copies of `spec`: "numpy" and "graph" (build, run, class scores;
    checked equal) and "numpy copies" and "graph copies" (building them alone). `g`: the gradient
    at layer4 (Group-CAM's)."""
    model = onnx.load(path)
    method, _, kernel = spec.partition(":")
    rows = np.arange(CHUNK)
    ctx = Context(a[0], x[0], g[0], chunk=CHUNK)
    if method in ("groupcam", "rise"):
        network, name, probability = session(forward_only(model)), "input", True
        if method == "groupcam":
            graph, rows_of = groupcam_chunks(model, "layer4"), _groupcam_rows(ctx, GroupCAMOptions())
            maps = rows_of.send(np.zeros(len(next(rows_of))))  # the second chunk: 16 group maps
            feed, blurred = {"input": x, MAPS: maps}, gaussian_blur(x[0])

            def numpy_copies():  # groupcam_explore's second chunk: masks and blend (the blur is per image)
                masks = _channel_masks(maps, np.arange(len(maps)), x.shape[2:])
                return blurred[None] + masks[:, None] * (x[0] - blurred)[None]
        else:
            options = RISEOptions(n=CHUNK)
            graph, feed = rise_chunks(model, "layer4"), {"input": x, GRIDS: next(_rise_rows(ctx, options))}

            def numpy_copies():  # rise_explore's first chunk: its 16 grids drawn, their masks, the copies
                return next(rise_explore(ctx, options))
    elif method == "scorecam":
        graph, feed, probability = scorecam_chunks(model, "layer4"), {"input": x, CHANNELS: rows}, False
        network, name = session(forward_only(model)), "input"

        def numpy_copies():
            return next(scorecam_inputs(x[0], a[0], CHUNK))
    else:
        network, name = session(tail(model, "layer4")[0]), "activation.layer4"
        if method == "ablationcam":
            graph, feed, probability = ablationcam_chunks(model, "layer4")[0], {CHANNELS: rows}, False

            def numpy_copies():
                return next(ablation_inputs(a[0], CHUNK))
        else:
            kernel = kernel or "onehot"
            graph, feed = reciprocam_chunks(model, "layer4", _KERNELS[kernel])[0], {POSITIONS: rows}
            probability = True

            def numpy_copies():
                return next(reciprocam_inputs(a[0], CHUNK, kernel))
    feed = {ACTIVATION: a, CLASS: np.asarray(cls, np.int64), **feed}
    whole = session(graph)
    front, copies = front_only(graph)
    front_session = session(front)
    front_feed = {k: v for k, v in feed.items() if k in {i.name for i in front_session.get_inputs()}}

    def numpy_chunk():
        z = network.run(None, {name: numpy_copies()})[0]
        return (softmax(z) if probability else z)[:, cls]

    def graph_chunk():
        return whole.run([SCORES], feed)[0]

    def graph_copies(rows: np.ndarray | None = None):
        binding = front_session.io_binding()
        for k, v in front_feed.items():
            binding.bind_cpu_input(k, v if rows is None or k not in (MAPS, GRIDS) else rows)
        binding.bind_output(copies)
        front_session.run_with_iobinding(binding)

    if method in ("groupcam", "rise"):
        image_options = GroupCAMOptions() if method == "groupcam" else RISEOptions(n=RISE_N)
        numpy_explore = groupcam_explore if method == "groupcam" else rise_explore
        rows_explore = _groupcam_rows if method == "groupcam" else _rise_rows

        def drive(explore, run=None):
            """One image's coroutine to the end, sent zero scores; `run` on each batch."""
            try:
                batch = next(explore)
                while True:
                    if run is not None:
                        run(batch)
                    batch = explore.send(np.zeros(len(batch)))
            except StopIteration:
                pass

        def numpy_image():  # measure 4: numpy's copies (blur, masks, blends) and map for one image
            drive(numpy_explore(ctx, image_options))

        def graph_image():  # the rows, the graph's copies, the map's masks on the host again
            drive(rows_explore(ctx, image_options), graph_copies)

        return {"numpy": numpy_chunk, "graph": graph_chunk, "numpy copies": numpy_copies,
                "graph copies": graph_copies, "numpy image": numpy_image, "graph image": graph_image}

    np.testing.assert_allclose(graph_chunk(), numpy_chunk(), rtol=0, atol=1e-6)
    return {"numpy": numpy_chunk, "graph": graph_chunk, "numpy copies": numpy_copies, "graph copies": graph_copies}


def row(spec: str, numpy_t: tuple[float, float], graph_t: tuple[float, float], digits: int, extra: str = "") -> str:
    (wn, cn), (wg, cg) = numpy_t, graph_t
    return (f"{spec:<20} {1e3 * wn:>10.{digits}f} {1e3 * wg:>10.{digits}f} {wn / wg:>6.2f} {1e3 * cn:>10.{digits}f} "
            f"{1e3 * cg:>10.{digits}f} {cn / cg:>6.2f}{extra}")


HEADER = (f"{'method':<20} {'numpy ms':>10} {'graph ms':>10} {'ratio':>6} {'numpy CPU':>10} {'graph CPU':>10} "
          f"{'ratio':>6}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=30, help="calls per path of measure 2")
    parser.add_argument("--methods", default="scorecam,ablationcam,reciprocam,reciprocam:gaussian,groupcam,rise")
    args = parser.parse_args()
    specs = args.methods.split(",")
    print(f"{machine()}; nproc {os.cpu_count()}; load average at start {os.getloadavg()[0]:.2f}")
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    x = np.random.default_rng(0).normal(size=(1, 3, 224, 224)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/resnet18.cam.onnx"
        camrt.export(model, layers=["layer4"], path=path)
        engines = {}
        for graphs_on in (False, True):
            engines[graphs_on] = Engine(path, device="cpu", chunk_size=CHUNK)
            engines[graphs_on].graphs.chunk_graphs = graphs_on
        p = engines[False].forward(x, gradient=False)
        p_gradient = engines[False].forward(x)  # Group-CAM's pass
        cls, a = int(p.outputs["class_idx_used"][0]), p.outputs["activation.layer4"]
        print(f"resnet18 at layer4, 1×3×224×224, chunk {CHUNK}, class {cls}; ms per call; ratio = numpy / graph "
              "(above 1: the graph is faster)")
        print(f"\n1. Engine.explain_pass, lowest block median of {args.rounds} rounds\n{HEADER} {'max |Δ| / max':>14}")
        for spec in specs:
            method, _, kernel = spec.partition(":")
            options = {"kernel": kernel} if kernel else {"n": RISE_N} if method == "rise" else {}
            one_pass = p_gradient if method == "groupcam" else p

            def call(graphs_on: bool, method=method, options=options, one_pass=one_pass):
                return engines[graphs_on].explain_pass(one_pass, method, **options)

            maps = {on: call(on).low_res for on in (False, True)}  # also builds the sessions
            diff = float(np.abs(maps[True] - maps[False]).max() / np.abs(maps[False]).max())
            times = best_blocks([lambda: call(False), lambda: call(True)], REPEAT.get(method, 10), args.rounds)
            print(row(spec, *times, digits=1, extra=f" {diff:>14.2e}"), flush=True)
        g = p_gradient.outputs["gradient.layer4"]
        functions = {spec: chunk_functions(path, x, a, g, cls, spec) for spec in specs}
        whole = [spec for spec in specs if spec in WHOLE]
        if whole:
            print(f"\n2. One chunk end to end, median of {args.calls} calls alternating with the other path\n{HEADER}")
        for spec in whole:
            fns = functions[spec]
            print(row(spec, *alternating([fns["numpy"], fns["graph"]], args.calls), digits=1), flush=True)
        print(f"\n3. Building one chunk of copies alone, lowest block median (20 calls) of {args.rounds} rounds")
        print(HEADER)
        for spec, fns in functions.items():
            print(row(spec, *best_blocks([fns["numpy copies"], fns["graph copies"]], 20, args.rounds), digits=3),
                  flush=True)
        images = [spec for spec in specs if "numpy image" in functions[spec]]
        if images:
            print(f"\n4. One image's work besides the network (copies and map, scores sent as zeros), lowest block "
                  f"median (5 calls) of {args.rounds} rounds\n{HEADER}")
        for spec in images:
            times = best_blocks([functions[spec]["numpy image"], functions[spec]["graph image"]], 5, args.rounds)
            print(row(spec, *times, digits=2), flush=True)
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
