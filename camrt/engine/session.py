"""ONNX Runtime sessions: provider choice in one place."""

from __future__ import annotations

import ctypes
import os
import sys

import onnxruntime as ort

from camrt.errors import InputError

DEVICES = ("auto", "cpu", "cuda")


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


def providers_for(device: str) -> list[str]:
    """Execution providers for `device`: "cpu", "cuda" (CUDA, then CPU), or "auto" (CUDA when a
    GPU and onnxruntime-gpu are present, else CPU)."""
    if device not in DEVICES:
        raise InputError(f"device '{device}' is not one of {', '.join(DEVICES)}")
    if device == "cpu" or "CUDAExecutionProvider" not in ort.get_available_providers():
        return ["CPUExecutionProvider"]
    if not _cuda_driver_present():
        return ["CPUExecutionProvider"]
    if hasattr(ort, "preload_dlls"):  # CUDA/cuDNN from the nvidia-* wheels (e.g. torch's), if installed
        try:
            ort.preload_dlls()
        except Exception:  # noqa: BLE001 - the provider reports what is missing below
            pass
    return ["CUDAExecutionProvider", "CPUExecutionProvider"]


def open_session(model: str | os.PathLike | bytes, device: str = "cpu", spinning: bool = True) -> ort.InferenceSession:
    """An inference session on `model` (a path or serialized bytes), errors only in ORT's log.

    `spinning=False` stops the session's worker threads from spinning after a run: sessions that
    take turns (the perturbation methods' sub-graphs) would otherwise fight over the cores
    (the figures are in docs/benchmarks.md, Recipro-CAM)."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # the default-class_idx initializer warning is expected
    if not spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    src = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(src, opts, providers=providers_for(device))
