"""camrt: class activation maps as a deployable part of an ONNX model.

`import camrt` stays light: torch is imported only by the exporter (`camrt.export`),
onnxruntime only by the engine (`camrt.Engine`) and cv2 only by `camrt.visual`; each is
loaded on first use.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "Engine": ("camrt.engine", "Engine"),
    "Result": ("camrt.engine", "Result"),
    "overlay": ("camrt.visual.overlay", "overlay"),
    "explain_frames": ("camrt.visual.frames", "explain_frames"),
    "explain_video": ("camrt.video", "explain_video"),
    "METHODS": ("camrt.methods", "METHODS"),
}


def export(model, example_input=None, layers=(), path=None, **options):  # type: ignore[no-untyped-def]
    """Export a PyTorch model with its CAM outputs:
    `camrt.export(model, example_input, layers=[...], path=...)`; see `camrt.exporter.api.export`."""
    from camrt.exporter.api import export as _export

    return _export(model, example_input, layers, path, **options)


def list_layers(model, input_shape=(1, 3, 224, 224), **options):  # type: ignore[no-untyped-def]
    """Named modules with call counts and output shapes; see `camrt.exporter.api.list_layers`."""
    from camrt.exporter.api import list_layers as _list_layers

    return _list_layers(model, input_shape, **options)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'camrt' has no attribute '{name}'")


__all__ = ["__version__", "export", "list_layers", *_LAZY]
