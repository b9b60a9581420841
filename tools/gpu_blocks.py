"""Building blocks of `tools/gpu_check.py`, small enough to test on a tiny model
(tests/test_tools_gpu_check.py): the deadline clock, the one table, the comparison statistics and
tolerances, timing loops, the exports (camrt's file, its float16 conversion, and the model exported
without camrt), ONNX Runtime sessions on a device, and the depthwise backward forms.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import camrt  # noqa: E402
from camrt.engine import session as camrt_session  # noqa: E402
from camrt.errors import CamrtError, first_line  # noqa: E402
from camrt.graph import to_fp16  # noqa: E402
from camrt.graph.fp16 import convert_file  # noqa: E402
from camrt.manifest import INPUT, LOGITS  # noqa: E402

CUDA = "CUDAExecutionProvider"


class Clock:
    """The global deadline (`budget` seconds from construction) and each step's elapsed time on stderr."""

    def __init__(self, budget: float, stream=sys.stderr) -> None:
        self.start = time.perf_counter()
        self.budget = budget
        self.stream = stream

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.budget - self.elapsed()

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        t = time.perf_counter()
        print(f"[{self.elapsed():6.1f} s] {name} ...", file=self.stream, flush=True)
        try:
            yield
        finally:
            print(f"[{self.elapsed():6.1f} s] {name}: {time.perf_counter() - t:.1f} s", file=self.stream, flush=True)


@dataclass
class Row:
    part: str
    model: str
    precision: str
    batch: str
    check: str
    measured: str
    target: str = ""
    result: str = ""


@dataclass
class Table:
    """The one table the script prints: rows of four parts (correctness, timing, target, depthwise)."""

    rows: list[Row] = field(default_factory=list)

    COLUMNS = ("part", "model", "precision", "batch", "check", "measured", "target", "result")

    def add(self, part: str, model: str, precision: str, batch: object, check: str, measured: str,
            target: str = "", result: str = "") -> Row:
        row = Row(part, model, precision, str(batch), check, measured, target, result)
        self.rows.append(row)
        return row

    def markdown(self) -> str:
        def cell(v: str) -> str:
            return v.replace("|", "\\|").replace("\n", " ")

        lines = ["| " + " | ".join(self.COLUMNS) + " |", "|" + "---|" * len(self.COLUMNS)]
        lines += ["| " + " | ".join(cell(getattr(r, c)) for c in self.COLUMNS) + " |" for r in self.rows]
        return "\n".join(lines)

    def count(self, result: str) -> int:
        return sum(r.result == result for r in self.rows)

    @contextlib.contextmanager
    def guard(self, part: str, model: str, precision: str, batch: object, check: str) -> Iterator[None]:
        """Run a step; an exception becomes an "error" row with its first line, and the script goes on."""
        try:
            yield
        except Exception as e:  # noqa: BLE001 - one failed step must not lose the rest of the table
            self.add(part, model, precision, batch, check, f"{type(e).__name__}: {first_line(e)[:160]}",
                     result="error")


# Comparison against the CPU provider.

@dataclass(frozen=True)
class Diff:
    """How far `got` is from `ref`: largest absolute difference, that over ref's largest magnitude,
    relative L2 error, and per image (first axis) the lowest cosine and Pearson correlation."""

    max_abs: float
    rel_max: float
    rel_l2: float
    cos: float
    corr: float


def diff(got: np.ndarray, ref: np.ndarray) -> Diff:
    g = np.asarray(got, np.float64).reshape(len(ref), -1)
    r = np.asarray(ref, np.float64).reshape(len(ref), -1)
    d = g - r
    scale = float(np.abs(r).max()) or 1.0
    cos, corr = [], []
    for gi, ri in zip(g, r, strict=True):
        cos.append(_similarity(gi, ri))
        corr.append(_similarity(gi - gi.mean(), ri - ri.mean()))
    return Diff(float(np.abs(d).max()), float(np.abs(d).max()) / scale,
                float(np.linalg.norm(d) / (np.linalg.norm(r) or 1.0)), min(cos), min(corr))


def _similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine of a and b; 1 when both are zero (a constant map equal on both sides), 0 when one is."""
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        return 1.0 if na == nb else 0.0
    return float(a @ b / (na * nb))


@dataclass(frozen=True)
class Tolerance:
    """Pass/fail rules of one precision against the float32 CPU reference.

    rel: float32 only: logits' max |Δ| / max |ref| and tensors' relative L2 error at most this;
    cos: tensors' per-image cosine at least this (where `rel` is None);
    map_abs: largest |Δ| of a [0, 1] saliency map (None: not checked); corr: per-image Pearson
    correlation of maps at least this. Top-1 classes must be the same in every precision."""

    rel: float | None
    cos: float
    map_abs: float | None
    corr: float

    def text(self, kind: str) -> str:
        if kind == "logits":
            return "top-1 same" + (f", rel ≤ {self.rel:g}" if self.rel is not None else "")
        if kind == "tensor":
            return f"rel L2 ≤ {self.rel:g}" if self.rel is not None else f"cos ≥ {self.cos:g}"
        return f"corr ≥ {self.corr:g}" + (f", max|Δ| ≤ {self.map_abs:g}" if self.map_abs is not None else "")

    def ok(self, kind: str, d: Diff, top1_same: bool = True) -> bool:
        if kind == "logits":
            return top1_same and (self.rel is None or d.rel_max <= self.rel)
        if kind == "tensor":
            return d.rel_l2 <= self.rel if self.rel is not None else d.cos >= self.cos
        return d.corr >= self.corr and (self.map_abs is None or d.max_abs <= self.map_abs)


# fp32: the CUDA provider with TF32 off (`strict_fp32`), against the CPU: summation order and
# cuDNN's algorithms only. tf32: ONNX Runtime's default on Ampere and later (use_tf32=1 rounds the
# operands of float32 convolutions and products to 10 mantissa bits), and fp16: the criteria of
# issue 10 for half precision (top-1 unchanged, map correlation ≥ 0.99 per method).
TOLERANCES = {
    "fp32": Tolerance(rel=1e-3, cos=0.9999, map_abs=1e-3, corr=0.9999),
    "tf32": Tolerance(rel=None, cos=0.99, map_abs=None, corr=0.99),
    "fp16": Tolerance(rel=None, cos=0.99, map_abs=None, corr=0.99),
}
HEAD_TOLERANCE = 1e-4  # a map head against the numpy method on the same device's tensors, of the map's max


def verdict(ok: bool) -> str:
    return "pass" if ok else "FAIL"


def describe(kind: str, d: Diff) -> str:
    if kind == "logits":
        return f"max|Δ| {d.max_abs:.2g} (rel {d.rel_max:.2g})"
    if kind == "tensor":
        return f"max|Δ| {d.max_abs:.2g} (rel {d.rel_max:.2g}), rel L2 {d.rel_l2:.2g}, cos {d.cos:.6f}"
    return f"max|Δ| {d.max_abs:.2g}, corr {d.corr:.6f}"


# Timing.

def measure(fn: Callable[[], object], seconds: float, max_calls: int, warmup: int = 1) -> tuple[float, int]:
    """Median seconds per call of `fn` after `warmup` calls (cuDNN's algorithm search and ONNX
    Runtime's lazily built sessions happen there), calling it until `seconds` have passed or
    `max_calls` calls were made (at least one); and the number of timed calls."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    end = time.perf_counter() + seconds
    while not times or (len(times) < max_calls and time.perf_counter() < end):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), len(times)


def side_by_side(fns: Sequence[Callable[[], object]], seconds: float, max_calls: int,
                 rounds: int = 3) -> list[tuple[float, int]]:
    """Each function's seconds per call, measured in alternating blocks (`rounds` rounds, turned
    order every other round, each block `measure` with a share of `seconds`), the lowest block
    median: a slow spell of the machine then hits a block, not one function."""
    best = [(float("inf"), 0) for _ in fns]
    share = seconds / (rounds * len(fns))
    for r in range(rounds):
        for i in (range(len(fns)) if r % 2 == 0 else reversed(range(len(fns)))):
            t, n = measure(fns[i], share, max(1, max_calls // rounds), warmup=1 if r == 0 else 0)
            best[i] = (min(best[i][0], t), best[i][1] + n)
    return best


def ms(seconds: float, calls: int | None = None) -> str:
    text = f"{seconds * 1e3:.2f} ms" if seconds < 10 else f"{seconds:.2f} s"
    return text if calls is None else f"{text} (median, {calls} calls)"


# Sessions.

def providers(device: str, tf32: bool = True) -> list:
    """ONNX Runtime providers for `device` ("cuda": CUDA then CPU; `tf32=False` turns the CUDA
    provider's TF32 off)."""
    if device == "cpu":
        return ["CPUExecutionProvider"]
    return [(CUDA, {} if tf32 else {"use_tf32": "0"}), "CPUExecutionProvider"]


def session(path: str | Path | bytes, device: str, tf32: bool = True, **config: str) -> ort.InferenceSession:
    """A session on `path` for `device`, ONNX Runtime's log kept to errors, with session config
    entries `config`; refuses to fall back silently from CUDA to the CPU."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    for k, v in config.items():
        opts.add_session_config_entry(k, v)
    s = ort.InferenceSession(path if isinstance(path, bytes) else str(path), opts, providers=providers(device, tf32))
    if device == "cuda" and s.get_providers()[0] != CUDA:
        raise RuntimeError(f"the CUDA provider did not start (providers: {s.get_providers()})")
    return s


@contextlib.contextmanager
def strict_fp32(device: str) -> Iterator[None]:
    """camrt's sessions opened inside this block run without TF32 on CUDA. ONNX Runtime's CUDA
    provider rounds the operands of float32 convolutions and matrix products to TF32 by default
    (`use_tf32`, on since 1.x on Ampere and later GPUs), so float32 parity with the CPU is only
    tight with it off. camrt's Engine takes no provider options: this wraps `providers_for`."""
    if device != "cuda":
        yield
        return
    original = camrt_session.providers_for

    @functools.wraps(original)
    def without_tf32(*args, **kwargs):
        out = []
        for p in original(*args, **kwargs):
            name, opts = (p, {}) if isinstance(p, str) else p
            out.append((name, {**opts, "use_tf32": "0"}) if name == CUDA else p)
        return out

    camrt_session.providers_for = without_tf32
    try:
        yield
    finally:
        camrt_session.providers_for = original


def all_on_cuda(path: str | Path) -> str:
    """Whether ONNX Runtime places every node of `path` on the CUDA provider (a session with
    `session.disable_cpu_ep_fallback` starts), as CUDA graphs need: "yes", or "no: <why>"."""
    try:
        session(path, "cuda", **{"session.disable_cpu_ep_fallback": "1"})
        return "yes"
    except Exception as e:  # noqa: BLE001 - ONNX Runtime's own exception types
        return f"no: {first_line(e)[:140]}"


def bound_runs(s: ort.InferenceSession, image: np.ndarray, rows: int, chunk: int, device: str) -> Callable[[], None]:
    """A function that runs `s` (input → logits) on `rows` copies of `image`, `chunk` per run, the
    copies uploaded once beforehand (IO binding): the forward passes alone, without building any
    mask, and only the logits crossing to the host."""
    full = np.ascontiguousarray(np.repeat(image[None], min(chunk, rows), axis=0))
    values = {len(full): ort.OrtValue.ortvalue_from_numpy(full, device, 0)}
    sizes = [chunk] * (rows // chunk) + ([rows % chunk] if rows % chunk else [])
    for k in set(sizes) - set(values):
        values[k] = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(full[:k]), device, 0)

    def run() -> None:
        for k in sizes:
            b = s.io_binding()
            b.bind_ortvalue_input(INPUT, values[k])
            b.bind_output(LOGITS, "cpu")
            s.run_with_iobinding(b)
            b.copy_outputs_to_cpu()

    return run


# Exports.

@dataclass(frozen=True)
class Files:
    """One model's exported files: camrt's (`cam`, with map heads), its float16 conversion
    (`cam16`, None with the reason in `fp16_error` when the conversion refuses the model), and the
    model exported without camrt (`plain`, input → logits) with its float16 twin (`plain16`)."""

    name: str
    layer: str
    shape: tuple[int, ...]
    cam: Path
    plain: Path
    cam16: Path | None
    plain16: Path | None
    fp16_error: str = ""


def weights_hash(model: nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """torch.onnx's progress lines and warnings out of the table's way (errors still raise)."""
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def export_plain(model: nn.Module, shape: Sequence[int], path: Path) -> None:
    """`model` exported by torch.onnx alone (dynamic batch), input `input` and output `logits`:
    what serving the model without camrt runs."""
    x = torch.randn(2, *shape[1:])
    with quiet():
        torch.onnx.export(model, (x,), str(path), dynamo=True, input_names=[INPUT], output_names=[LOGITS],
                          dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},), opset_version=20)


def export_files(model: nn.Module, name: str, layer: str, shape: Sequence[int], workdir: Path,
                 maps: Sequence[str] = ("gradcam", "layercam")) -> Files:
    """Export `model` four ways into `workdir` (see `Files`); files written earlier for the same
    weights (a `.sha256` stamp beside them) are reused. float16: `camrt convert --fp16`'s
    conversion and self-check (`camrt.graph.fp16.convert_file`) for camrt's file, the same pass
    (`camrt.graph.to_fp16`) for the plain one."""
    stamp, digest = workdir / f"{name}.sha256", weights_hash(model)
    cam, plain = workdir / f"{name}.cam.onnx", workdir / f"{name}.plain.onnx"
    cam16, plain16 = workdir / f"{name}.cam.fp16.onnx", workdir / f"{name}.plain.fp16.onnx"
    fp16_error_file = workdir / f"{name}.fp16-error.txt"
    fresh = not (stamp.is_file() and stamp.read_text() == digest and cam.is_file() and plain.is_file())
    if fresh:
        for p in (stamp, cam, plain, cam16, plain16, fp16_error_file):
            p.unlink(missing_ok=True)
        with quiet():
            camrt.export(model, layers=[layer], path=cam, input_shape=tuple(shape), maps=list(maps))
        export_plain(model, shape, plain)
        try:
            convert_file(cam, cam16)
            onnx.save(to_fp16(onnx.load(str(plain))), str(plain16))
        except (CamrtError, ValueError, RuntimeError) as e:
            fp16_error_file.write_text(first_line(e))
        stamp.write_text(digest)
    error = fp16_error_file.read_text() if fp16_error_file.is_file() else ""
    return Files(name, layer, tuple(shape), cam, plain, cam16 if cam16.is_file() else None,
                 plain16 if plain16.is_file() else None, error)


@contextlib.contextmanager
def backward_form(form: str) -> Iterator[None]:
    """Exports inside this block write convolution and average-pool backward in `form`
    (`camrt.exporter.rules.CONV_BACKWARD_FORMS`: "auto", the default, a depthwise convolution's
    input gradient as a flipped depthwise Conv; "transpose", ConvTranspose everywhere), the switch
    docs/tensorrt.md describes."""
    from camrt.exporter import rules, trace

    original = trace.backward_decompositions
    trace.backward_decompositions = functools.partial(rules.backward_decompositions, form)
    try:
        yield
    finally:
        trace.backward_decompositions = original


def export_form(model: nn.Module, layer: str, shape: Sequence[int], path: Path, form: str) -> Path:
    """camrt's file for `model` at `layer` with its backward in `form` (reused when `path` exists
    beside a stamp of the same weights)."""
    stamp = path.with_suffix(".sha256")
    digest = weights_hash(model)
    if not (path.is_file() and stamp.is_file() and stamp.read_text() == digest):
        with backward_form(form), quiet():
            camrt.export(model, layers=[layer], path=path, input_shape=tuple(shape))
        stamp.write_text(digest)
    return path


def conv_transposes(path: Path) -> tuple[int, int]:
    """(ConvTranspose nodes, of which grouped) in the file at `path`."""
    nodes = [n for n in onnx.load(str(path), load_external_data=False).graph.node if n.op_type == "ConvTranspose"]
    grouped = sum(any(a.name == "group" and a.i > 1 for a in n.attribute) for n in nodes)
    return len(nodes), grouped


class DepthwiseNet(nn.Module):
    """A small depthwise-separable network (MobileNet-style blocks: 3×3 depthwise convolution with
    stride 1 or 2, ReLU6, 1×1 pointwise), for the backward-form timing when EfficientNet-Lite0's
    package is not importable, and for the tests."""

    def __init__(self, width: int = 16, depth: int = 5, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, stride=2, padding=1), nn.ReLU6())
        plan = [(width, width, 1), (width, 2 * width, 2), (2 * width, 2 * width, 1), (2 * width, 4 * width, 2),
                (4 * width, 4 * width, 1)][:depth]
        self.blocks = nn.Sequential(*(nn.Sequential(
            nn.Conv2d(cin, cin, 3, stride=s, padding=1, groups=cin), nn.BatchNorm2d(cin), nn.ReLU6(),
            nn.Conv2d(cin, cout, 1), nn.BatchNorm2d(cout), nn.ReLU6()) for cin, cout, s in plan))
        self.fc = nn.Linear(plan[-1][1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.blocks(self.stem(x)).mean((2, 3)))


def centre_classifier(model: nn.Module, fc: nn.Linear, calibration: torch.Tensor, seed: int = 0) -> nn.Module:
    """Redraw `fc` (normal weights scaled to the features' spread, bias minus the mean feature's
    product) so that the top class of a random-weight `model` depends on the input: torchvision's
    random initialisation gives every input nearly the same features, hence the same class, which
    would make "two different classes" impossible and every top-1 a near tie."""
    feats: list[torch.Tensor] = []
    handle = fc.register_forward_pre_hook(lambda m, args: feats.append(args[0].detach().flatten(1)))
    try:
        with torch.no_grad():
            model.eval()(calibration)
    finally:
        handle.remove()
    f = feats[0]
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        w = torch.randn(fc.weight.shape, generator=g) / (f.std(0).mean() * fc.in_features ** 0.5)
        fc.weight.copy_(w)
        fc.bias.copy_(-(w @ f.mean(0)))
    return model


def fresh_inputs(s: ort.InferenceSession, shape: Sequence[int], n: int, seed: int = 20261203,
                 candidates: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """`n` inputs unlike the export's example (another seed; noise plus a per-image, per-channel
    offset) chosen among `candidates` by the session's logits: the widest top-1 margins (a near
    tie would flip under any rounding and prove nothing about the device), with at least two
    different top-1 classes when the candidates have them. Returns the inputs and their classes."""
    rng = np.random.default_rng(seed)
    pool = (rng.standard_normal((candidates, *shape[1:]))
            + 2 * rng.standard_normal((candidates, shape[1], 1, 1))).astype(np.float32)
    z = np.concatenate([s.run([LOGITS], {INPUT: pool[i:i + 8]})[0] for i in range(0, candidates, 8)])
    top = z.argmax(1)
    top2 = np.sort(z, axis=1)[:, -2:]
    margin = (top2[:, 1] - top2[:, 0]) / np.abs(z).max(axis=1)
    order = list(np.argsort(-margin))
    picked = [order[0]]
    other = [i for i in order if top[i] != top[order[0]]]
    if other and n > 1:
        picked.append(other[0])
    picked += [i for i in order if i not in picked][: n - len(picked)]
    picked = picked[:n]
    return pool[picked], top[picked].astype(np.int64)
