"""ONNX Runtime sessions: provider choice in one place."""

from __future__ import annotations

import os

import onnxruntime as ort

from camrt.errors import InputError

DEVICES = ("auto", "cpu", "cuda")


def providers_for(device: str) -> list[str]:
    """Execution providers for `device`: "cpu", "cuda" (CUDA, then CPU), or "auto" (CUDA when available)."""
    if device not in DEVICES:
        raise InputError(f"device '{device}' is not one of {', '.join(DEVICES)}")
    available = ort.get_available_providers()
    if device in ("auto", "cuda") and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def open_session(model: str | os.PathLike | bytes, device: str = "cpu") -> ort.InferenceSession:
    """An inference session on `model` (a path or serialized bytes), errors only in ORT's log."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # the default-class_idx initializer warning is expected
    src = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(src, opts, providers=providers_for(device))
