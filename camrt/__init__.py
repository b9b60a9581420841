"""camrt: class activation maps as a deployable part of an ONNX model.

`import camrt` stays light: torch is imported only by `camrt.export` (the exporter) and
onnxruntime only by the engine.
"""

from __future__ import annotations

__version__ = "0.1.0"


def export(model, path, layers, input_shape=(1, 3, 224, 224), **options):  # type: ignore[no-untyped-def]
    """Export a PyTorch model with its CAM outputs; see `camrt.exporter.api.export`."""
    from camrt.exporter.api import export as _export

    return _export(model, path, layers, input_shape, **options)


def list_layers(model, input_shape=(1, 3, 224, 224), **options):  # type: ignore[no-untyped-def]
    """Named modules with call counts and output shapes; see `camrt.exporter.api.list_layers`."""
    from camrt.exporter.api import list_layers as _list_layers

    return _list_layers(model, input_shape, **options)


__all__ = ["__version__", "export", "list_layers"]
