"""The run-time side of camrt: the only package that imports onnxruntime."""

from camrt.engine.engine import Engine, Pass, Result
from camrt.engine.session import open_session

__all__ = ["Engine", "Pass", "Result", "open_session"]
