"""The run-time side of camrt: the only package that imports onnxruntime."""

from camrt.engine.session import open_session

__all__ = ["open_session"]
