"""A Triton Inference Server model repository for a camrt model (`camrt triton`, issue 15).

Triton's ONNX Runtime backend serves a folder ``REPOSITORY/NAME/config.pbtxt`` beside
``REPOSITORY/NAME/1/model.onnx``. Two things of a camrt file do not suit it as exported:

- `class_idx` has a default (an initializer of the same name, so that plain onnxruntime callers
  may omit it); Triton's backend refuses such an input on a model that batches. The repository's
  model.onnx is the file with `class_idx` an ordinary input (`camrt.graph.required_class_idx`):
  each request gives one class per image, -1 for its top-1. camrt's own export keeps the default:
  a plain ``session.run(None, {"input": x})`` explaining the top-1 class is the common use, at the
  cost of ONNX Runtime's warning about the initializer when a session opens.
- Triton computes every output of the model on every request, whatever the request asks for, so
  ``outputs=`` writes a variant with only the outputs a deployment needs (`camrt.graph.
  keep_outputs`: for example the logits and a map head) and the nodes they need.

The configuration lists every input and output with its type and per-image dims (the batch is
Triton's, ``max_batch_size``; a per-image scalar such as `class_idx` is dims [1] reshaped to []),
dynamic batching, an instance group, and, with ``tensorrt=``, ONNX Runtime's TensorRT execution
accelerator ("fp16" or "fp32"). It is written in Triton's protobuf text format; the tests parse it
with Triton's own schema (tritonclient's ``model_config_pb2``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import onnx
from onnx import TensorProto

from camrt.atomic import write_bytes, write_text
from camrt.errors import InputError
from camrt.graph import keep_outputs, required_class_idx
from camrt.graph.metadata import read_manifest
from camrt.manifest import CLASS_IDX

TRITON_TYPES = {TensorProto.FLOAT: "TYPE_FP32", TensorProto.FLOAT16: "TYPE_FP16", TensorProto.INT64: "TYPE_INT64",
                TensorProto.INT32: "TYPE_INT32", TensorProto.BOOL: "TYPE_BOOL", TensorProto.UINT8: "TYPE_UINT8"}
KINDS = {"gpu": "KIND_GPU", "cpu": "KIND_CPU"}
PRECISIONS = ("fp16", "fp32")


def _tensor(v: onnx.ValueInfoProto) -> str:
    t = v.type.tensor_type
    dims = [d.dim_value for d in t.shape.dim[1:]]
    if any(d <= 0 for d in dims):
        raise InputError(f"'{v.name}' has a dynamic dimension besides the batch; Triton needs fixed per-image dims")
    kind = TRITON_TYPES.get(t.elem_type)
    if kind is None:
        raise InputError(f"'{v.name}' has an element type Triton's configuration has no name for here")
    shape = f"dims: [ {', '.join(map(str, dims))} ]" if dims else "dims: [ 1 ]\n    reshape: { shape: [ ] }"
    return f'  {{\n    name: "{v.name}"\n    data_type: {kind}\n    {shape}\n  }}'


def config_text(model: onnx.ModelProto, name: str, max_batch_size: int = 32, instances: int = 1,
                kind: str = "gpu", tensorrt: str | None = None) -> str:
    """config.pbtxt for `model` (already in the repository's form) under `name`."""
    inits = {t.name for t in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in inits]
    lines = [f'name: "{name}"', 'backend: "onnxruntime"', f"max_batch_size: {max_batch_size}",
             "input [\n" + ",\n".join(_tensor(v) for v in inputs) + "\n]",
             "output [\n" + ",\n".join(_tensor(v) for v in model.graph.output) + "\n]",
             "dynamic_batching { }",
             f"instance_group [\n  {{\n    count: {instances}\n    kind: {KINDS[kind]}\n  }}\n]"]
    if tensorrt is not None:
        precision = tensorrt.upper()
        lines.append("optimization {\n  execution_accelerators {\n    gpu_execution_accelerator: [\n      {\n"
                     '        name: "tensorrt"\n'
                     f'        parameters {{ key: "precision_mode" value: "{precision}" }}\n'
                     '        parameters { key: "max_workspace_size_bytes" value: "1073741824" }\n'
                     "      }\n    ]\n  }\n}")
    return "\n".join(lines) + "\n"


def write_repository(model: str | os.PathLike, repository: str | os.PathLike, name: str | None = None,
                     outputs: Sequence[str] | None = None, max_batch_size: int = 32, instances: int = 1,
                     kind: str = "gpu", tensorrt: str | None = None, version: int = 1) -> Path:
    """Write ``repository/name/config.pbtxt`` and ``repository/name/<version>/model.onnx`` for the
    camrt model file `model` (module docstring); returns the model's folder.

    Raises:
        InputError: not a camrt model, an output it lacks, a bad option value, or a folder that
            cannot be written.
    """
    path = Path(model)
    if not path.is_file():
        raise InputError(f"model file '{path}' does not exist")
    try:
        proto = onnx.load(str(path))
        read_manifest(proto)
    except Exception as e:  # noqa: BLE001 - onnx and the manifest reader raise several types
        raise InputError(f"'{path}' is not a camrt model: {str(e).splitlines()[0][:200]}") from e
    name = name or path.name.split(".")[0]
    if not name or "/" in name or name.startswith("."):
        raise InputError(f"model name '{name}' is not a folder name Triton can serve")
    for label, value, low in (("max_batch_size", max_batch_size, 1), ("instances", instances, 1),
                              ("version", version, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise InputError(f"{label} must be an integer ≥ {low}, got {value!r}")
    if kind not in KINDS:
        raise InputError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if tensorrt is not None and tensorrt not in PRECISIONS:
        raise InputError(f"the TensorRT precision must be one of {', '.join(PRECISIONS)}, got {tensorrt!r}")
    if outputs:
        known = [o.name for o in proto.graph.output]
        missing = [o for o in outputs if o not in known]
        if missing:
            raise InputError(f"'{path.name}' has no output(s) {', '.join(missing)}; it has: {', '.join(known)}")
        proto = keep_outputs(proto, list(outputs))
    if any(v.name == CLASS_IDX for v in proto.graph.input):
        proto = required_class_idx(proto)
    folder = Path(repository) / name
    try:
        (folder / str(version)).mkdir(parents=True, exist_ok=True)
        write_bytes(folder / str(version) / "model.onnx", proto.SerializeToString())
        write_text(folder / "config.pbtxt", config_text(proto, name, max_batch_size, instances, kind, tensorrt))
    except OSError as e:
        raise InputError(f"cannot write the repository '{folder}': {e.strerror or e}") from e
    return folder
