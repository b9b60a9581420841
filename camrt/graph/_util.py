from __future__ import annotations

import numpy as np
import onnx


def copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def ranks(model: onnx.ModelProto) -> dict[str, int]:
    """The rank of every tensor whose shape ONNX shape inference knows; empty when it fails."""
    return {name: len(t.shape.dim) for name, t in tensor_types(model).items() if t.HasField("shape")}


def tensor_types(model: onnx.ModelProto) -> dict[str, onnx.TypeProto.Tensor]:
    """The inferred tensor type (element type, shape) of every tensor shape inference reaches;
    empty when it fails."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - shape inference can fail on unusual graphs: callers then rewrite nothing
        return {}
    g = inferred.graph
    return {v.name: v.type.tensor_type for v in [*g.input, *g.output, *g.value_info] if v.type.HasField("tensor_type")}


def _constant_tensor(graph: onnx.GraphProto, name: str) -> onnx.TensorProto | None:
    """The initializer named `name`, or the tensor of the Constant node that outputs it, else None."""
    for t in graph.initializer:
        if t.name == name:
            return t
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] == name and node.attribute:
            return node.attribute[0].t
    return None


def constant_value(graph: onnx.GraphProto, name: str) -> np.ndarray | None:
    """The value of `name` when it is an initializer or a Constant node's output, else None."""
    t = _constant_tensor(graph, name)
    return None if t is None else onnx.numpy_helper.to_array(t)


def constant_shape(graph: onnx.GraphProto, name: str) -> tuple[int, ...] | None:
    """The shape of `name` when it is an initializer or a Constant node's output (read without
    converting its values), else None."""
    t = _constant_tensor(graph, name)
    return None if t is None else tuple(t.dims)


def drop_unread_initializers(graph: onnx.GraphProto, names: list[str]) -> None:
    """Remove the initializers among `names` that no node reads (after a rewrite dropped their readers)."""
    unread = set(names) - {i for node in graph.node for i in node.input} - {o.name for o in graph.output}
    for t in [t for t in graph.initializer if t.name in unread]:
        graph.initializer.remove(t)


def forget_shapes(graph: onnx.GraphProto, names: set[str]) -> None:
    """Drop the recorded shapes (value_info) of `names`, tensors a rewrite reshaped or removed."""
    for v in [v for v in graph.value_info if v.name in names]:
        graph.value_info.remove(v)


def find_input(graph: onnx.GraphProto, name: str) -> onnx.ValueInfoProto:
    for i in graph.input:
        if i.name == name:
            return i
    raise ValueError(f"the graph has no input named '{name}'")


def rename_uses(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Make every node that reads `old` read `new` instead."""
    for node in graph.node:
        for k, name in enumerate(node.input):
            if name == old:
                node.input[k] = new


class PatternNotFound(ValueError):
    """A pass found nothing to rewrite in a graph that shows it should be there.

    A rewrite pass that silently changes nothing would leave the slow or unsupported form in the
    file (after a torch upgrade traces the pattern differently, for example). Such a pass checks
    whether the graph calls for its rewrite and raises this when it does and no match is found;
    on a graph that does not call for it, finding nothing is normal and the pass returns a copy.
    """

    def __init__(self, pass_name: str, detail: str) -> None:
        super().__init__(f"graph pass {pass_name}: {detail}")
        self.pass_name = pass_name
        self.detail = detail
