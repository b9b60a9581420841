"""`layer_norm_statistics`: LayerNormalization nodes that give only Y, their mean and inverse
standard deviation computed beside them by plain reductions.

The backward of a layer norm (`native_layer_norm_backward`) reads the forward's mean and 1/σ, so
the traced graph asks ONNX's LayerNormalization for its optional outputs ``Mean`` and
``InvStdDev``. TensorRT's ONNX parser accepts LayerNormalization with the output Y only
(camrt.graph.tensorrt), so a vision transformer's graph with the gradient inside would not build
there. This pass keeps each such node for Y (ONNX Runtime's fused kernel) and writes the two
statistics as the operator's definition gives them, over the axes ``axis .. rank − 1``, kept:

    Mean = ReduceMean(X)        InvStdDev = 1 / sqrt(ReduceMean((X − Mean)²) + epsilon)

in X's element type (camrt's graphs are float32 here: the operator's default ``stash_type``).
The cost is two reductions over tensors the layer norm reads anyway, only for the layer norms
after the target (the others' statistics have no reader). A node whose X has an unknown rank
while its axis is positive cannot be rewritten: `PatternNotFound`, since the file would not be
the one camrt documents. A graph without such nodes is returned as a copy.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from camrt.graph._util import PatternNotFound, copy, tensor_types

NAME = "layer_norm_statistics"


def _attr(node: onnx.NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def layer_norm_statistics(model: onnx.ModelProto) -> onnx.ModelProto:
    """Every LayerNormalization with a Mean or InvStdDev output read by a node: that output
    computed by reductions instead, the node reduced to Y (module docstring)."""
    out = copy(model)
    g = out.graph
    targets = [n for n in g.node if n.op_type == "LayerNormalization" and n.domain in ("", "ai.onnx")
               and any(o for o in n.output[1:])]
    if not targets:
        return out
    types = tensor_types(model)
    axes_as_input = _opset(model) >= 18
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    for node in g.node:
        nodes.append(node)
        if node not in targets:
            continue
        x = node.input[0]
        axis = int(_attr(node, "axis", -1))
        x_type = types.get(x)
        if axis < 0:
            axes = list(range(axis, 0))
        elif x_type is not None and x_type.HasField("shape"):
            axes = list(range(axis, len(x_type.shape.dim)))
        else:
            raise PatternNotFound(NAME, f"LayerNormalization '{node.name}' normalises from axis {axis} of an input "
                                        "of unknown rank; its statistics cannot be written as reductions")
        elem = x_type.elem_type if x_type is not None and x_type.elem_type else onnx.TensorProto.FLOAT
        dtype = helper.tensor_dtype_to_np_dtype(elem)
        base = f"{node.name or node.output[0]}/{NAME}"

        def reduce_mean(src: str, dst: str, base: str = base, axes: list[int] = axes) -> onnx.NodeProto:
            if axes_as_input:
                inits.append(numpy_helper.from_array(np.asarray(axes, np.int64), f"{base}/axes"))
                return helper.make_node("ReduceMean", [src, f"{base}/axes"], [dst], name=dst, keepdims=1)
            return helper.make_node("ReduceMean", [src], [dst], name=dst, keepdims=1, axes=axes)

        mean = node.output[1] if len(node.output) > 1 and node.output[1] else f"{base}/mean"
        added = [reduce_mean(x, mean)]
        if len(node.output) > 2 and node.output[2]:
            centred, square, var = f"{base}/centred", f"{base}/square", f"{base}/var"
            eps, var_eps, std = f"{base}/epsilon", f"{base}/var_eps", f"{base}/std"
            inits.append(numpy_helper.from_array(np.asarray(float(_attr(node, "epsilon", 1e-5)), dtype), eps))
            added += [helper.make_node("Sub", [x, mean], [centred], name=centred),
                      helper.make_node("Mul", [centred, centred], [square], name=square),
                      reduce_mean(square, var),
                      helper.make_node("Add", [var, eps], [var_eps], name=var_eps),
                      helper.make_node("Sqrt", [var_eps], [std], name=std),
                      helper.make_node("Reciprocal", [std], [node.output[2]], name=node.output[2])]
        nodes += added
        del node.output[1:]
    del g.node[:]
    g.node.extend(nodes)
    g.initializer.extend(inits)
    return out
