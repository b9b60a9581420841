"""ONNX Runtime sessions: provider choice in one place.

Devices: "cpu" (ONNX Runtime's CPU provider), "cuda" (its CUDA provider, from onnxruntime-gpu),
"auto" (CUDA when usable, else CPU) and "openvino" (ONNX Runtime's OpenVINO execution provider,
from the onnxruntime-openvino wheel: `pip install camrt[openvino]`). The three wheels provide the
same `onnxruntime` module; one is installed per environment.

Precision (`precision`): None computes in the model's own precision (float32, or the float16
parts of a `--fp16` file); "bf16" and "f16" ask OpenVINO to compute in bfloat16 (a CPU with native
bfloat16 instructions) or float16 (an Intel GPU), and exist only with device "openvino". The CPU
and CUDA providers have no such switch: precision is refused with them rather than ignored.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
from collections.abc import Sequence

import onnx
import onnxruntime as ort

from camrt.errors import InputError

DEVICES = ("auto", "cpu", "cuda", "openvino")
PRECISIONS = ("bf16", "f16")  # and None: the provider's float32
OPENVINO = "OpenVINOExecutionProvider"
CPU = "CPUExecutionProvider"

# The OpenVINO device and inference-precision hint for each precision. OpenVINO's CPU plugin runs
# float32 unless told otherwise (through this provider; OpenVINO itself defaults to bf16 on such
# CPUs); float16 is what its GPU plugin is for. The hint goes in `load_config` (JSON, per device):
# the provider's own `precision` option takes only FP32 or ACCURACY on a CPU (1.24), and is
# deprecated since ONNX Runtime 1.23.
OPENVINO_TARGETS: dict[str | None, tuple[str, str | None]] = {None: ("CPU", None), "bf16": ("CPU", "bf16"),
                                                              "f16": ("GPU", "f16")}

# /proc/cpuinfo flags of native bfloat16 arithmetic (AVX512-BF16, AMX-BF16, AVX-NE-CONVERT).
# OpenVINO also accepts bf16 on any AVX-512 CPU, emulated and slower than float32, and falls back
# to float32 without a word on CPUs without AVX-512: neither is what "bf16" is asked for.
BF16_FLAGS = ("avx512_bf16", "amx_bf16", "avx_ne_convert")

Providers = list[str | tuple[str, dict[str, str]]]


def _cuda_driver_present() -> bool:
    """Whether the NVIDIA driver library loads: onnxruntime-gpu lists its CUDA provider even on
    machines without a GPU, and then fails loudly when asked for it."""
    names = ["nvcuda.dll"] if sys.platform == "win32" else ["libcuda.so.1", "libcuda.so"]
    for name in names:
        try:
            ctypes.CDLL(name)
            return True
        except OSError:
            continue
    return False


def cpu_flags() -> set[str] | None:
    """The CPU's feature flags from /proc/cpuinfo, or None where there is none (not Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.partition(":")[2].split())
    except OSError:
        return None
    return set()


def openvino_devices() -> list[str]:
    """The devices OpenVINO finds ("CPU", "GPU", "GPU.0", ...), as the provider reports them."""
    listing = getattr(ort.capi._pybind_state, "get_available_openvino_device_ids", None)
    return list(listing()) if listing is not None else []


def _check_precision(device: str, precision: str | None) -> None:
    if precision is not None and precision not in PRECISIONS:
        raise InputError(f"precision must be None (float32), 'bf16' or 'f16', got {precision!r}")
    if precision is not None and device != "openvino":
        raise InputError(f"precision={precision!r} needs device='openvino' (ONNX Runtime's OpenVINO execution "
                         f"provider, pip install camrt[openvino]); the CPU and CUDA providers compute in the "
                         "model's own precision (for float16 on a GPU, export with --fp16)")


def _openvino_options(precision: str | None) -> dict[str, str]:
    """The OpenVINO provider's options for `precision`, checked against the machine."""
    available = ort.get_available_providers()
    if OPENVINO not in available:
        raise InputError(f"device 'openvino' needs ONNX Runtime's OpenVINO execution provider, which this "
                         f"onnxruntime {ort.__version__} lacks (it has {', '.join(available)}): pip install "
                         "camrt[openvino] after uninstalling onnxruntime and onnxruntime-gpu (all three provide "
                         "the same module)")
    target, hint = OPENVINO_TARGETS[precision]
    if precision == "bf16":
        flags = cpu_flags()
        if flags is not None and not flags.intersection(BF16_FLAGS):
            raise InputError("precision 'bf16' needs a CPU with native bfloat16 instructions (AVX512-BF16 or "
                             "AMX-BF16), which this one lacks; use precision=None (float32)")
    if target != "CPU":
        found = openvino_devices()
        if not any(d == target or d.startswith(target + ".") for d in found):
            raise InputError(f"precision {precision!r} runs on an Intel GPU through OpenVINO, and OpenVINO finds "
                             f"none (devices: {', '.join(found) or 'none'}); on a CPU use precision='bf16' "
                             "(native bfloat16 instructions) or None")
    options = {"device_type": target}
    if hint is not None:
        options["load_config"] = json.dumps({target: {"INFERENCE_PRECISION_HINT": hint}})
    return options


def providers_for(device: str, precision: str | None = None) -> Providers:
    """Execution providers for `device`: "cpu", "cuda" (CUDA, then CPU), "auto" (CUDA when a GPU
    and onnxruntime-gpu are present, else CPU; never OpenVINO, which is asked for by name) or
    "openvino" (OpenVINO with its options, then CPU for any node OpenVINO does not take).

    `precision` (None, "bf16" or "f16") only with "openvino": see the module docstring. Raises
    InputError for an unknown device or precision, "openvino" without the OpenVINO provider (it
    does not fall back to the CPU provider as "cuda" does: the provider comes with the installed
    wheel, not with the machine, so its absence is an install to fix, and a silent fallback would
    change both speed and precision), or a precision this machine cannot run."""
    if device not in DEVICES:
        raise InputError(f"device '{device}' is not one of {', '.join(DEVICES)}")
    _check_precision(device, precision)
    if device == "openvino":
        return [(OPENVINO, _openvino_options(precision)), CPU]
    if device == "cpu" or "CUDAExecutionProvider" not in ort.get_available_providers():
        return [CPU]
    if not _cuda_driver_present():
        return [CPU]
    if hasattr(ort, "preload_dlls"):  # CUDA/cuDNN from the nvidia-* wheels (e.g. torch's), if installed
        try:
            ort.preload_dlls()
        except Exception:  # noqa: BLE001 - the provider reports what is missing below
            pass
    return ["CUDAExecutionProvider", CPU]


def _provider_name(entry: str | tuple[str, dict[str, str]]) -> str:
    return entry if isinstance(entry, str) else entry[0]


def check_started(session: ort.InferenceSession, providers: Sequence[str | tuple[str, dict[str, str]]]) -> None:
    """Raise InputError when ONNX Runtime left out the OpenVINO provider it was given: it then logs
    an error and runs on the CPU provider instead (an option it refuses, a device that fails)."""
    asked = _provider_name(providers[0])
    if asked == OPENVINO and session.get_providers()[0] != OPENVINO:
        options = providers[0][1] if isinstance(providers[0], tuple) else {}
        raise InputError(f"ONNX Runtime could not start its OpenVINO execution provider with {options} (its log "
                         "says why) and would have run on its CPU provider instead")


def required_inputs(model: str | os.PathLike | bytes) -> bytes:
    """`model` serialized with every input that has a default (an initializer of the same name,
    such as `class_idx`) made a plain, required input.

    ONNX Runtime's OpenVINO provider (1.24.1) compiles such an initializer as a constant: a value
    fed for the input is ignored without a word (`class_idx=[5, 7]` explains the top-1 classes).
    Without the default, a run that omits the input fails instead; the engine always feeds it."""
    proto = onnx.load_from_string(model) if isinstance(model, bytes) else onnx.load(str(model))
    inputs = {i.name for i in proto.graph.input}
    if not any(t.name in inputs for t in proto.graph.initializer):
        return model if isinstance(model, bytes) else proto.SerializeToString()
    kept = [t for t in proto.graph.initializer if t.name not in inputs]
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(kept)
    return proto.SerializeToString()


def open_session(model: str | os.PathLike | bytes, device: str = "cpu", spinning: bool = True,
                 precision: str | None = None, cuda_graph: bool = False, threads: int | None = None
                 ) -> ort.InferenceSession:
    """An inference session on `model` (a path or serialized bytes), errors only in ORT's log.

    `spinning=False` stops the session's worker threads from spinning after a run: sessions that
    take turns (the perturbation methods' sub-graphs) would otherwise fight over the cores
    (the figures are in docs/benchmarks.md, Recipro-CAM).
    `precision`: None, or "bf16"/"f16" with device "openvino" (`providers_for`). On OpenVINO,
    inputs with a default (`class_idx`) must be fed: see `required_inputs`.
    `cuda_graph=True`: the CUDA provider captures the first runs in a CUDA graph and replays it
    (its `enable_cuda_graph`; runs must then go through IO binding at fixed addresses:
    `camrt.engine.binding.FixedBatch`). No effect when the session does not run on CUDA.
    `threads`: the CPU threads of one operator (ONNX Runtime's intra-op threads; None: its default,
    one per physical core), for several engines sharing a machine (`camrt batch` workers)."""
    providers = providers_for(device, precision)
    if cuda_graph and providers[0] == "CUDAExecutionProvider":
        providers = [("CUDAExecutionProvider", {"enable_cuda_graph": "1"}), *providers[1:]]
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # the default-class_idx initializer warning is expected
    if not spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads is not None:
        opts.intra_op_num_threads = threads
    src = model if isinstance(model, bytes) else str(model)
    if device == "openvino":
        src = required_inputs(src)
    session = ort.InferenceSession(src, opts, providers=providers)
    check_started(session, providers)
    return session
