from __future__ import annotations

import onnx


def copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


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
