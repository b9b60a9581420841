"""The PyTorch side of camrt: the only package that imports torch."""

from camrt.exporter.api import export, list_layers
from camrt.exporter.load import load_model

__all__ = ["export", "list_layers", "load_model"]
