"""Write the camrt manifest into the model's `metadata_props`."""

from __future__ import annotations

import onnx

from camrt.graph._util import copy
from camrt.manifest import METADATA_KEY


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
