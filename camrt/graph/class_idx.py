"""Passes for the `class_idx` input: a default of -1 (top-1) and a run-time range check."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from camrt.graph._util import copy, find_input, rename_uses
from camrt.manifest import CLASS_IDX, INPUT

# Node names are what ONNX Runtime reports when a check fails, so each states its rule.
CHECK_NODE = f"{CLASS_IDX}_check: each {CLASS_IDX} must be -1 or in [0, {{k}}) and have length 1 or N"
BROADCAST_NODE = f"{CLASS_IDX}_broadcast: {CLASS_IDX} must have length 1 or N (the batch size)"


def _t(suffix: str) -> str:
    """The name of an internal tensor of the check, derived from the input's name."""
    return f"{CLASS_IDX}_{suffix}"


def guard_class_idx(num_classes: int):
    """Broadcast `class_idx` to the batch and fail the run when an entry is out of range.

    ONNX has no assertion op, so the check reshapes the indices to the count of valid entries:
    ONNX Runtime then raises an error naming the node, whose name states the rule. Without it,
    an out-of-range index would give a silent all-zero gradient.
    """

    def guard(model: onnx.ModelProto) -> onnx.ModelProto:
        model = copy(model)
        g = model.graph
        find_input(g, CLASS_IDX)
        find_input(g, INPUT)
        checked = _t("checked")
        rename_uses(g, CLASS_IDX, checked)
        k = np.array(num_classes, dtype=np.int64)
        n, b, lo, hi, ge, lt, ok, ok64, count = map(_t, ("n", "b", "lo", "k", "ge", "lt", "ok", "ok64", "count"))
        nodes = [
            helper.make_node("Shape", [INPUT], [n], start=0, end=1),
            helper.make_node("Expand", [CLASS_IDX, n], [b], name=BROADCAST_NODE),
            helper.make_node("Constant", [], [lo], value=numpy_helper.from_array(np.array(-1, np.int64))),
            helper.make_node("Constant", [], [hi], value=numpy_helper.from_array(k)),
            helper.make_node("GreaterOrEqual", [b, lo], [ge]),
            helper.make_node("Less", [b, hi], [lt]),
            helper.make_node("And", [ge, lt], [ok]),
            helper.make_node("Cast", [ok], [ok64], to=TensorProto.INT64),
            helper.make_node("ReduceSum", [ok64], [count], keepdims=1),
            # allowzero=1: a count of 0 (every entry invalid) must fail, not mean "keep this dimension".
            helper.make_node("Reshape", [b, count], [checked], allowzero=1, name=CHECK_NODE.format(k=num_classes)),
        ]
        for node in reversed(nodes):
            g.node.insert(0, node)
        # The indices may have length 1 (broadcast) or N.
        dim = find_input(g, CLASS_IDX).type.tensor_type.shape.dim[0]
        dim.Clear()
        dim.dim_param = "class_batch"
        return model

    return guard


def default_class_idx(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give `class_idx` the default [-1] (top-1 class of every image), so callers may omit it.

    ONNX Runtime lists such an input under `get_overridable_initializers()` rather than
    `get_inputs()`, and warns once per session that it is not a constant, which is the point.
    """
    model = copy(model)
    find_input(model.graph, CLASS_IDX)
    model.graph.initializer.append(numpy_helper.from_array(np.array([-1], dtype=np.int64), CLASS_IDX))
    return model


def required_class_idx(model: onnx.ModelProto) -> onnx.ModelProto:
    """Make `class_idx` an ordinary input again (no default): what Triton's ONNX Runtime backend
    needs of a model that batches (it refuses an input with an initializer of the same name). A
    caller then feeds one class per image, -1 for the top-1. A model without the default (or in
    target mode, without `class_idx`) is returned as a copy."""
    model = copy(model)
    kept = [t for t in model.graph.initializer if t.name != CLASS_IDX]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    return model
