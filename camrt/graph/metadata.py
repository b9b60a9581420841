"""The camrt manifest in a model's `metadata_props`: write it, read it, and load a camrt file."""

from __future__ import annotations

import os
from pathlib import Path

import onnx

from camrt.errors import InputError, first_line
from camrt.graph._util import copy
from camrt.manifest import METADATA_KEY, Manifest


def attach_manifest(manifest_json: str):
    """Store `manifest_json` under the `camrt` key, refusing to write it twice."""

    def attach(model: onnx.ModelProto) -> onnx.ModelProto:
        if any(p.key == METADATA_KEY for p in model.metadata_props):
            raise ValueError("the model already carries a camrt manifest")
        model = copy(model)
        model.metadata_props.add(key=METADATA_KEY, value=manifest_json)
        model.producer_name = "camrt"
        return model

    return attach


def find_manifest(model: onnx.ModelProto) -> Manifest | None:
    """The camrt manifest stored in `model`, or None when it has none (ValueError, KeyError or
    TypeError when it cannot be read)."""
    for p in model.metadata_props:
        if p.key == METADATA_KEY:
            return Manifest.from_json(p.value)
    return None


def read_manifest(model: onnx.ModelProto, source: str = "the model") -> Manifest:
    """The camrt manifest stored in `model`.

    Raises:
        InputError: there is none, or it cannot be read.
    """
    try:
        manifest = find_manifest(model)
    except (ValueError, KeyError, TypeError) as e:
        raise InputError(f"{source} has an unreadable camrt manifest: {e}") from e
    if manifest is None:
        raise InputError(f"{source} has no camrt manifest; export the model with `camrt export` first")
    return manifest


def load_camrt_file(path: str | os.PathLike) -> tuple[onnx.ModelProto, Manifest]:
    """A file written by `camrt export`, and its manifest, for the torch-free commands that rewrite
    one (`camrt add-maps`, `camrt convert`).

    Raises:
        InputError: the file is missing, not an ONNX model, or has no readable camrt manifest.
    """
    src = Path(path)
    if not src.is_file():
        raise InputError(f"model file '{src}' does not exist")
    try:
        proto = onnx.load(src)
    except Exception as e:  # noqa: BLE001 - protobuf and onnx raise several types for a bad file
        first = first_line(e, 200)
        raise InputError(f"'{src}' is not an ONNX model: {first}") from e
    return proto, read_manifest(proto, f"'{src}'")
