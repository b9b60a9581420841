"""Passes for the `class_idx` input: a default of -1 (top-1) and a run-time range check."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from camrt.graph._util import copy, find_input, rename_uses

CLASS_IDX = "class_idx"
CHECK_NODE = "class_idx_check: each class_idx must be -1 or in [0, {k}) and have length 1 or N"
BROADCAST_NODE = "class_idx_broadcast: class_idx must have length 1 or N (the batch size)"


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
        first_input = g.input[0].name
        checked = "class_idx_checked"
        rename_uses(g, CLASS_IDX, checked)
        k = np.array(num_classes, dtype=np.int64)
        nodes = [
            helper.make_node("Shape", [first_input], ["class_idx_n"], start=0, end=1),
            helper.make_node("Expand", [CLASS_IDX, "class_idx_n"], ["class_idx_b"], name=BROADCAST_NODE),
            helper.make_node("Constant", [], ["class_idx_lo"], value=numpy_helper.from_array(np.array(-1, np.int64))),
            helper.make_node("Constant", [], ["class_idx_k"], value=numpy_helper.from_array(k)),
            helper.make_node("GreaterOrEqual", ["class_idx_b", "class_idx_lo"], ["class_idx_ge"]),
            helper.make_node("Less", ["class_idx_b", "class_idx_k"], ["class_idx_lt"]),
            helper.make_node("And", ["class_idx_ge", "class_idx_lt"], ["class_idx_ok"]),
            helper.make_node("Cast", ["class_idx_ok"], ["class_idx_ok64"], to=TensorProto.INT64),
            helper.make_node("ReduceSum", ["class_idx_ok64"], ["class_idx_count"], keepdims=1),
            # allowzero=1: a count of 0 (every entry invalid) must fail, not mean "keep this dimension".
            helper.make_node("Reshape", ["class_idx_b", "class_idx_count"], [checked], allowzero=1,
                             name=CHECK_NODE.format(k=num_classes)),
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
