"""camrt on a real GPU in one call (issue 10, section 7): correctness on the device against ONNX
Runtime's CPU provider, timings, the issue's targets as ratios, and the depthwise backward forms.

    python tools/gpu_check.py [--device cuda|cpu] [--quick] [--out table.md] [--workdir DIR]
                              [--budget 470] [--models resnet18,resnet50] [--chunk 64] [--cuda-graphs]

Installs nothing and needs no network: torchvision's resnet18 and resnet50 with random weights
(their classifier redrawn and centred on a few calibration images, `centre_classifier`, so that
the top class depends on the input), and EfficientNet-Lite0's architecture, random weights too,
when `efficientnet_lite_pytorch` is importable (else a small depthwise network). Each model is
exported with camrt at layer4 with the gradcam and layercam map heads (`camrt export --maps`), in
float16 with `camrt convert --fp16`'s conversion, and without camrt (torch.onnx.export of the model:
"plain inference"), then the script prints one markdown table (and writes it to --out) in four parts:

- correctness: the same files and the same fresh inputs (not the export's example; at least two
  top-1 classes) on the device against the float32 file on the CPU provider: logits (top-1),
  activation and gradient, every gradient-family method of `camrt.methods` (its saliency map, from
  the map head where the file has one), the map heads' outputs themselves and against the numpy
  method on the device's tensors, Score-CAM and Recipro-CAM. Precisions: fp32 (CUDA with TF32 off:
  tight tolerances), tf32 (ONNX Runtime's CUDA default) and fp16 (top-1 unchanged, map correlation
  ≥ 0.99 per method). Tolerances: `gpu_blocks.TOLERANCES`. On CUDA, also whether every node of
  each file lands on the CUDA provider (what CUDA graphs need).
- timing, on the device, fp32 (ORT's default, TF32) and fp16, batch 1 and 32: plain inference,
  Grad-CAM from the map head, Recipro-CAM, Ablation-CAM and Score-CAM with camrt's Engine (Score-CAM
  at batch 1 only: a batch of N costs N·C forward passes, 65,536 for resnet50 at batch 32), Score-CAM's
  C forward passes alone (the forward-only graph on C copies of the image, `chunk` per run, uploaded
  once), and pytorch-grad-cam's GradCAM and ScoreCAM on the same device (fp32) when importable.
- target: Grad-CAM ≤ 1.10× plain inference at batch 32; Score-CAM ≤ 1.25× its C forward passes
  alone and ≥ 10× faster than pytorch-grad-cam's ScoreCAM; Recipro-CAM ≤ 1.5× plain inference.
- depthwise: the gradient graph of a depthwise network exported with both backward forms of a
  depthwise convolution (`camrt.exporter.rules`: "auto", a flipped depthwise Conv, and
  "transpose", a grouped ConvTranspose), timed side by side on the device, and their gradients compared.

A global deadline (--budget seconds from the start; 440 by default on CUDA, leaving the imports
and a step that overruns within 8 minutes) skips the
steps that would start after it, with a row saying so; each step's elapsed time goes to stderr.
`--device cpu --quick` is the same code on the CPU provider with resnet18 only, batches 1 and 8,
fewer calls and the small depthwise network; CPU-against-CPU parity there only proves the plumbing.
`--workdir DIR` keeps the exported files and reuses them (a second run skips the exports).
Exit status: 0 when every checked row passes, 1 when one fails or errs (on the CPU, the targets,
which are the GPU's, do not count), 2 when CUDA is asked for and ONNX Runtime's CUDA provider does
not start.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import inspect
import io
import os
import platform
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from camrt.engine import Engine  # noqa: E402
from camrt.engine.session import providers_for  # noqa: E402
from camrt.manifest import map_name, saliency_name  # noqa: E402
from camrt.methods import METHODS, normalize, upsample  # noqa: E402
from tools.bench_gradcam import cpu_name  # noqa: E402
from tools.gpu_blocks import (  # noqa: E402
    CUDA,
    HEAD_TOLERANCE,
    TOLERANCES,
    Clock,
    DepthwiseNet,
    Files,
    Table,
    all_on_cuda,
    bound_runs,
    centre_classifier,
    conv_transposes,
    describe,
    diff,
    export_files,
    export_form,
    fresh_inputs,
    measure,
    ms,
    session,
    side_by_side,
    strict_fp32,
    verdict,
)

GRADIENT_METHODS = [m.name for m in METHODS.values() if m.family == "gradient"]
PERTURBATION_CHECKED = ("scorecam", "reciprocam")
RESERVE = 15.0  # seconds kept for printing and writing the table
HEAVY_SECONDS = 60.0  # time left needed to start Ablation-CAM at the larger batch


@dataclass
class Settings:
    device: str
    quick: bool
    chunk: int
    batches: tuple[int, ...]
    seconds: float  # timing budget per row
    max_calls: int
    cuda_graphs: bool = False
    perturbation_images: int = 2  # images (of different classes) for Score-CAM's and Recipro-CAM's parity
    fp16_scorecam: bool = True  # time Score-CAM in float16 too
    times: dict[tuple, float] = field(default_factory=dict)  # (model, precision, what, batch) -> seconds


def torchvision_model(name: str) -> torch.nn.Module:
    """torchvision's `name`, random weights (seed 0), classifier centred (`centre_classifier`)."""
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)().eval()
    g = torch.Generator().manual_seed(1)
    calibration = torch.randn(8, 3, 224, 224, generator=g) + 2 * torch.randn(8, 3, 1, 1, generator=g)
    return centre_classifier(model, model.fc, calibration)


def engine(path: Path, s: Settings, **extra: object) -> Engine:
    """camrt's Engine on the device, with the options this camrt's Engine has among `extra`
    (io_binding and cuda_graphs arrived with issue 10, section 3)."""
    known = inspect.signature(Engine).parameters
    e = Engine(path, device=s.device, chunk_size=s.chunk, **{k: v for k, v in extra.items() if k in known})
    if s.device == "cuda" and e.provider != CUDA:
        raise RuntimeError(f"the engine runs on {e.provider}, not CUDA")
    return e


def engine_options(e: Engine) -> str:
    binder = getattr(e.graphs, "binder", None)
    return (f"chunk {e.chunk_size}, IO binding {'on' if binder is not None else 'off'}, "
            f"chunk graphs {e.graphs.chunk_graphs}")


# Part 1: correctness.

def precisions(files: Files, device: str) -> list[tuple[str, Path | None, bool]]:
    """(precision, file, strict float32) triples to check on `device`."""
    out = [("fp32", files.cam, True)]
    if device == "cuda":
        out.append(("tf32", files.cam, False))
    out.append(("fp16", files.cam16, False))
    return out


def correctness(files: Files, x: np.ndarray, cls: np.ndarray, s: Settings, table: Table,
                perturbation: bool = True) -> None:
    """Part 1 for one model: the float32 file on the CPU provider is the reference."""
    part, name = "correctness", files.name
    ref = Engine(files.cam, device="cpu", chunk_size=s.chunk)
    layer = files.layer
    la = ref.manifest.layer(layer)
    ref_pass = ref.forward(x, cls)
    ref_maps = {m: ref.explain_pass(ref_pass, m).saliency for m in GRADIENT_METHODS}
    # One image per class for the perturbation methods (C forward passes each on the CPU).
    firsts = [int(np.flatnonzero(cls == c)[0]) for c in dict.fromkeys(cls.tolist())][:s.perturbation_images]
    xp, cp = x[firsts], cls[firsts]
    ref_pert = ({m: ref.explain(xp, m, class_idx=cp).saliency for m in PERTURBATION_CHECKED}
                if perturbation else {})
    heads = [m for m in ref.manifest.maps]
    for precision, path, strict in precisions(files, s.device):
        tol = TOLERANCES[precision]
        if path is None:
            table.add(part, name, precision, "", "all", f"skipped: no float16 file ({files.fp16_error})", result="")
            continue
        with table.guard(part, name, precision, len(x), "engine"), (strict_fp32(s.device) if strict
                                                                     else contextlib.nullcontext()):
            dev = engine(path, s)
            p = dev.forward(x, cls)
            out, ref_out = p.outputs, ref_pass.outputs
            n = len(x)
            same = bool((out["logits"].argmax(1) == ref_out["logits"].argmax(1)).all())
            d = diff(out["logits"], ref_out["logits"])
            table.add(part, name, precision, n, f"logits (top-1 {'same' if same else 'DIFFERENT'})",
                      describe("logits", d), tol.text("logits"), verdict(tol.ok("logits", d, same)))
            for what, key in (("activation", la.activation), ("gradient", la.gradient)):
                d = diff(out[key], ref_out[key])
                table.add(part, name, precision, n, f"{what} {layer}", describe("tensor", d), tol.text("tensor"),
                          verdict(tol.ok("tensor", d)))
            for m in heads:
                for key in (map_name(m, layer), saliency_name(m)):
                    d = diff(out[key], ref_out[key])
                    table.add(part, name, precision, n, f"head {key}", describe("map", d), tol.text("map"),
                              verdict(tol.ok("map", d)))
                spec = METHODS.get(m)
                if spec is None:  # layercam-fusion: a fusion of several layers' maps, no one method
                    continue
                numpy_map = spec.map(out[la.activation], out[la.gradient])
                d = diff(out[map_name(m, layer)], numpy_map)
                table.add(part, name, precision, n, f"head {map_name(m, layer)} = numpy {m} (same device)",
                          f"max|Δ| {d.rel_max:.2g} of the map's max", f"≤ {HEAD_TOLERANCE:g}",
                          verdict(d.rel_max <= HEAD_TOLERANCE))
                sal = normalize(upsample(numpy_map, dev.input_size))
                d = diff(out[saliency_name(m)], sal)
                table.add(part, name, precision, n, f"head {saliency_name(m)} = numpy {m} (same device)",
                          f"max|Δ| {d.max_abs:.2g}", f"≤ {HEAD_TOLERANCE:g}", verdict(d.max_abs <= HEAD_TOLERANCE))
            for m in GRADIENT_METHODS:
                with table.guard(part, name, precision, n, m):
                    d = diff(dev.explain_pass(p, m).saliency, ref_maps[m])
                    src = " (map head)" if m in heads else ""
                    table.add(part, name, precision, n, f"{m} map{src}", describe("map", d), tol.text("map"),
                              verdict(tol.ok("map", d)))
            for m, ref_map in ref_pert.items():
                with table.guard(part, name, precision, len(xp), m):
                    d = diff(dev.explain(xp, m, class_idx=cp).saliency, ref_map)
                    table.add(part, name, precision, len(xp), f"{m} map", describe("map", d), tol.text("map"),
                              verdict(tol.ok("map", d)))
    if s.device == "cuda":
        for precision, path in (("fp32", files.cam), ("fp16", files.cam16), ("fp32", files.plain)):
            if path is not None:
                table.add(part, name, precision, "", f"every node of {path.name} on CUDA", all_on_cuda(path))


# Part 2: timings.

def batch_of(x: np.ndarray, n: int) -> np.ndarray:
    return np.ascontiguousarray(np.resize(x, (n, *x.shape[1:])))


def time_model(files: Files, model: torch.nn.Module, x: np.ndarray, s: Settings, table: Table, clock: Clock,
               heavy: bool) -> None:
    """Part 2 for one model: the light rows (`heavy=False`: plain, Grad-CAM, Recipro-CAM, Score-CAM
    and its forward passes alone, pytorch-grad-cam), or the heavy ones (Ablation-CAM)."""
    name, part = files.name, "timing"
    for precision, cam, plain in (("fp32", files.cam, files.plain), ("fp16", files.cam16, files.plain16)):
        if cam is None or plain is None:
            table.add(part, name, precision, "", "all", f"skipped: no float16 file ({files.fp16_error})")
            continue
        extra = {"cuda_graphs": True} if s.cuda_graphs else {}
        with table.guard(part, name, precision, "", "engine"):
            e = engine(cam, s, **extra)
            if not heavy:
                table.add(part, name, precision, "", "engine options", engine_options(e))
            plain_s = session(plain, s.device)
            for batch in s.batches:
                xb = batch_of(x, batch)
                # Ablation-CAM at batch 32 runs 32·C copies (65,536 for resnet50): it needs time left.
                if clock.left() < RESERVE + (HEAVY_SECONDS if heavy and batch > 1 else 0):
                    table.add(part, name, precision, batch, "rest", f"skipped: deadline ({clock.left():.0f} s left)")
                    return
                if heavy:  # the tail's sessions and chunk shapes are warm after batch 1
                    timed_row(table, s, name, precision, batch, "ablationcam",
                              lambda e=e, xb=xb: e.explain(xb, "ablationcam"), max_calls=3, warmup=int(batch == 1))
                    continue
                with table.guard(part, name, precision, batch, "plain / gradcam / reciprocam"):
                    fns = {"plain inference": lambda ps=plain_s, xb=xb: ps.run(None, {"input": xb}),
                           "gradcam (map head)": lambda e=e, xb=xb: e.explain(xb, "gradcam"),
                           "reciprocam": lambda e=e, xb=xb: e.explain(xb, "reciprocam")}
                    measured = side_by_side(list(fns.values()), 3 * s.seconds, 3 * s.max_calls)
                    for what, (t, calls) in zip(fns, measured, strict=True):
                        table.add(part, name, precision, batch, what, ms(t, calls))
                        s.times[(name, precision, what, batch)] = t
            if heavy:
                continue
            if precision == "fp16" and not s.fp16_scorecam:
                table.add(part, name, precision, 1, "scorecam", "not timed in float16 with --quick")
                continue
            x1 = x[:1]
            channels = int(e.forward(x1, gradient=False).outputs[e.manifest.layer(files.layer).activation].shape[1])
            alone = f"scorecam's {channels} forward passes alone"
            with table.guard(part, name, precision, 1, f"scorecam / {alone}"):
                fwd = e.graphs.forward_only()
                measured = side_by_side([lambda e=e, x1=x1: e.explain(x1, "scorecam"),
                                         bound_runs(fwd, x1[0], channels, s.chunk, s.device)],
                                        2 * s.seconds, 6, rounds=1 if s.quick else 3)
                for what, key, (t, calls) in zip(("scorecam", alone), ("scorecam", "scorecam forwards"), measured,
                                                 strict=True):
                    table.add(part, name, precision, 1, what, ms(t, calls))
                    s.times[(name, precision, key, 1)] = t
    if not heavy:
        pytorch_grad_cam(files, model, x, s, table)


def timed_row(table: Table, s: Settings, name: str, precision: str, batch: int, what: str, fn: Callable[[], object],
              key: str | None = None, max_calls: int | None = None, warmup: int = 1) -> None:
    with table.guard("timing", name, precision, batch, what):
        t, calls = measure(fn, s.seconds, max_calls or s.max_calls, warmup=warmup)
        table.add("timing", name, precision, batch, what, ms(t, calls))
        s.times[(name, precision, key or what, batch)] = t


def pytorch_grad_cam(files: Files, model: torch.nn.Module, x: np.ndarray, s: Settings, table: Table) -> None:
    """pytorch-grad-cam's GradCAM (every batch) and ScoreCAM (batch 1, its batch_size = the
    engine's chunk) on the same device, float32, top-1 class."""
    name = files.name
    try:
        from pytorch_grad_cam import GradCAM, ScoreCAM
    except ImportError as e:
        table.add("timing", name, "fp32", "", "pytorch-grad-cam", f"not installed ({e})")
        return
    if s.device == "cuda" and not torch.cuda.is_available():
        table.add("timing", name, "fp32", "", "pytorch-grad-cam", "not run: this torch has no CUDA")
        return
    dev = torch.device("cuda" if s.device == "cuda" else "cpu")
    m = copy.deepcopy(model).to(dev).eval()
    target = [dict(m.named_modules())[files.layer]]

    def call(cam, xt):
        with contextlib.redirect_stderr(io.StringIO()):  # ScoreCAM's tqdm progress bars
            return cam(input_tensor=xt, targets=None)

    with GradCAM(model=m, target_layers=target) as cam:
        for batch in s.batches:
            xt = torch.from_numpy(batch_of(x, batch)).to(dev)
            timed_row(table, s, name, "fp32", batch, "pytorch-grad-cam GradCAM", lambda c=cam, xt=xt: call(c, xt))
    with ScoreCAM(model=m, target_layers=target) as cam:
        cam.batch_size = s.chunk
        xt = torch.from_numpy(x[:1]).to(dev)
        timed_row(table, s, name, "fp32", 1, "pytorch-grad-cam ScoreCAM", lambda c=cam, xt=xt: call(c, xt),
                  max_calls=2)
    del m
    if dev.type == "cuda":
        torch.cuda.empty_cache()


# Part 3: targets.

def targets(names: list[str], s: Settings, table: Table) -> None:
    t = s.times
    big = max(s.batches)
    rules = []
    for name in names:
        for p in ("fp32", "fp16"):
            rules.append((name, p, big, "gradcam / plain inference", (name, p, "gradcam (map head)", big),
                          (name, p, "plain inference", big), "≤ 1.10×", lambda r: r <= 1.10))
            rules.append((name, p, 1, "scorecam / its forward passes alone", (name, p, "scorecam", 1),
                          (name, p, "scorecam forwards", 1), "≤ 1.25×", lambda r: r <= 1.25))
            rules.append((name, p, 1, "pytorch-grad-cam ScoreCAM (fp32) / scorecam",
                          (name, "fp32", "pytorch-grad-cam ScoreCAM", 1), (name, p, "scorecam", 1), "≥ 10×",
                          lambda r: r >= 10))
            for b in s.batches:
                rules.append((name, p, b, "reciprocam / plain inference", (name, p, "reciprocam", b),
                              (name, p, "plain inference", b), "≤ 1.5×", lambda r: r <= 1.5))
            rules.append((name, p, big, "pytorch-grad-cam GradCAM (fp32) / gradcam",
                          (name, "fp32", "pytorch-grad-cam GradCAM", big), (name, p, "gradcam (map head)", big),
                          "", None))
    for name, p, batch, what, num, den, target, ok in rules:
        if num in t and den in t:
            r = t[num] / t[den]
            table.add("target", name, p, batch, what, f"{r:.2f}×", target, verdict(ok(r)) if ok else "")
        elif target:
            table.add("target", name, p, batch, what, "not measured (see its timing rows)", target)


# Part 4: depthwise backward forms.

def depthwise_model(quick: bool) -> tuple[torch.nn.Module, str, str, tuple[int, ...], str]:
    """(model, layer, name, input shape, why): EfficientNet-Lite0's architecture (random weights) at
    `_blocks.2`, whose gradient runs back through 13 blocks' depthwise convolutions, 3 of them
    strided; or, with --quick or without its package, `DepthwiseNet` at its first block."""
    torch.manual_seed(0)
    try:
        if quick:
            raise ImportError("--quick")
        from models.efficientnet_lite0 import build

        return build().eval(), "_blocks.2", "efficientnet-lite0", (1, 3, 224, 224), "random weights"
    except ImportError as e:
        return DepthwiseNet(32).eval(), "blocks.0", "DepthwiseNet(32)", (1, 3, 224, 224), f"small depthwise net ({e})"


def depthwise(s: Settings, workdir: Path, table: Table,
              spec: tuple[torch.nn.Module, str, str, tuple[int, ...], str]) -> None:
    """Both backward forms of a depthwise network's gradient graph (`depthwise_model`), timed side
    by side on the device."""
    part = "depthwise"
    model, layer, name, shape, why = spec
    table.add(part, name, "fp32", "", "model", f"{why}; gradient at {layer}")
    paths = {}
    for form in ("auto", "transpose"):
        with table.guard(part, name, "fp32", "", f"export form {form}"):
            paths[form] = export_form(model, layer, shape, workdir / f"depthwise.{form}.onnx", form)
            n, grouped = conv_transposes(paths[form])
            table.add(part, name, "fp32", "", f"form {form}: ConvTranspose nodes (grouped)", f"{n} ({grouped})")
    if len(paths) < 2:
        return
    sessions = {f: session(p, s.device) for f, p in paths.items()}
    rng = np.random.default_rng(5)
    for batch in s.batches:
        xb = rng.standard_normal((batch, *shape[1:])).astype(np.float32)
        with table.guard(part, name, "fp32", batch, "forms"):
            outs = {f: ss.run(None, {"input": xb}) for f, ss in sessions.items()}
            names = [o.name for o in sessions["auto"].get_outputs()]
            g = names.index(f"gradient.{layer}")
            d = diff(outs["auto"][g], outs["transpose"][g])
            table.add(part, name, "fp32", batch, f"gradient.{layer}: auto vs transpose",
                      describe("tensor", d), "rel L2 ≤ 1e-4", verdict(d.rel_l2 <= 1e-4))
            (ta, na), (tt, nt) = side_by_side([lambda ss=sessions["auto"], xb=xb: ss.run(None, {"input": xb}),
                                               lambda ss=sessions["transpose"], xb=xb: ss.run(None, {"input": xb})],
                                              2 * s.seconds, 2 * s.max_calls)
            table.add(part, name, "fp32", batch, "gradient graph, form auto (flipped depthwise Conv)", ms(ta, na))
            table.add(part, name, "fp32", batch, "gradient graph, form transpose (grouped ConvTranspose)", ms(tt, nt))
            faster = "auto" if ta <= tt else "transpose"
            table.add(part, name, "fp32", batch, "transpose / auto", f"{tt / ta:.2f}× ({faster} faster)")


# The run.

def machine(device: str) -> str:
    cpu = cpu_name()
    gpu = "no GPU used"
    if device == "cuda":
        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "GPU name unknown (torch without CUDA)"
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            query = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]
            smi = subprocess.run(query, capture_output=True, text=True, timeout=20)
            if smi.returncode == 0 and smi.stdout.strip():
                gpu = smi.stdout.strip().splitlines()[0]
    return (f"{gpu}; {cpu}, {os.cpu_count()} cores; onnxruntime {ort.__version__} "
            f"({', '.join(ort.get_available_providers())}), torch {torch.__version__}, "
            f"Python {platform.python_version()}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--quick", action="store_true", help="resnet18 only, batches 1 and 8, fewer calls")
    parser.add_argument("--out", type=Path, help="also write the table (markdown) here")
    parser.add_argument("--workdir", type=Path, help="keep the exported files here and reuse them")
    parser.add_argument("--budget", type=float, default=None,
                        help="global deadline, seconds from the start (default 440 on CUDA, 900 on the CPU)")
    parser.add_argument("--models", help="torchvision models, comma-separated (default resnet18,resnet50; "
                        "--quick: resnet18)")
    parser.add_argument("--chunk", type=int, default=None, help="engine chunk size (default 64; --quick 16)")
    parser.add_argument("--cuda-graphs", action="store_true", help="time the engine with cuda_graphs=True")
    args = parser.parse_args(argv)
    clock = Clock(args.budget or (440.0 if args.device == "cuda" else 900.0))
    if args.quick:
        s = Settings(args.device, True, args.chunk or 16, (1, 8), 1.5, 5, args.cuda_graphs, perturbation_images=1,
                     fp16_scorecam=False)
    else:
        s = Settings(args.device, False, args.chunk or 64, (1, 32), 3.0, 20, args.cuda_graphs)
    names = (args.models or ("resnet18" if args.quick else "resnet18,resnet50")).split(",")
    if s.device == "cuda":
        if hasattr(ort, "preload_dlls"):  # CUDA and cuDNN from the nvidia-* wheels torch brought
            with contextlib.suppress(Exception):
                ort.preload_dlls()
        if CUDA not in ort.get_available_providers():
            print(f"gpu_check: onnxruntime {ort.__version__} has no CUDA provider (providers: "
                  f"{ort.get_available_providers()}); install onnxruntime-gpu (docs/benchmarks.md, GPU check)",
                  file=sys.stderr)
            return 2
        if providers_for("cuda")[0] != CUDA:  # camrt's own test: the NVIDIA driver library loads
            print("gpu_check: onnxruntime-gpu is installed but finds no NVIDIA driver (libcuda); run on a "
                  "machine with a GPU, or use --device cpu", file=sys.stderr)
            return 2
    table = Table()
    header = [f"# camrt GPU check (tools/gpu_check.py), {datetime.date.today()}", "",
              f"Command: `python {' '.join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])])}`",
              f"Machine: {machine(s.device)}", ""]
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        files, models, inputs = {}, {}, {}
        for name in names:
            with clock.step(f"export {name}"), table.guard("export", name, "", "", "export"):
                models[name] = torchvision_model(name)
                files[name] = export_files(models[name], name, "layer4", (1, 3, 224, 224), workdir)
                cpu = session(files[name].cam, "cpu")
                inputs[name] = fresh_inputs(cpu, (1, 3, 224, 224), 4)
                try:
                    with strict_fp32(s.device):
                        engine(files[name].cam, s)
                except RuntimeError as e:
                    print(f"gpu_check: {e}", file=sys.stderr)
                    return 2
        steps: list[tuple[str, float, Callable[[], None]]] = []
        for i, name in enumerate(files):
            x, cls = inputs[name]
            steps.append((f"correctness {name}", 30, lambda f=files[name], x=x, c=cls, i=i:
                          correctness(f, x, c, s, table, perturbation=i == 0)))
        for name in files:
            steps.append((f"timing {name}", 30, lambda f=files[name], n=name:
                          time_model(f, models[n], inputs[n][0], s, table, clock, heavy=False)))
        steps.append(("depthwise forms", 60, lambda: depthwise(s, workdir, table, depthwise_model(s.quick))))
        for name in files:
            steps.append((f"timing {name}, Ablation-CAM", 30, lambda f=files[name], n=name:
                          time_model(f, models[n], inputs[n][0], s, table, clock, heavy=True)))
        for title, needs, run in steps:
            if clock.left() < needs + RESERVE:
                table.add(title.split()[0], "", "", "", title, f"skipped: deadline ({clock.left():.0f} s left)")
                continue
            with clock.step(title), table.guard(title.split()[0], "", "", "", title):
                run()
        targets(list(files), s, table)
    failed, errors = table.count("FAIL"), table.count("error")
    footer = ["", f"{len(table.rows)} rows: {table.count('pass')} pass, {failed} FAIL, {errors} error; "
                  f"{clock.elapsed():.0f} s in all."]
    if s.device == "cpu":  # the speed targets are the GPU's; on the CPU only parity and errors decide
        failed = sum(r.result == "FAIL" and r.part != "target" for r in table.rows)
        footer.append("CPU provider: the targets are set for the GPU; their verdicts here are for information.")
    text = "\n".join([*header, table.markdown(), *footer]) + "\n"
    print(text)
    if args.out is not None:
        args.out.write_text(text)
    return 1 if failed or errors else 0


if __name__ == "__main__":
    sys.exit(main())
