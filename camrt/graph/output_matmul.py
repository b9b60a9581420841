"""`unflatten_output_matmuls`: a graph output written by a Reshape after a flattened MatMul is
written by the MatMul itself.

PyTorch's ``x @ W`` on an N-D ``x`` traces as ``view(x, [-1, K])``, ``mm``, ``view(·, shape)``,
which the ONNX exporter writes as ``Reshape(MatMul(Reshape(A, [-1, K]), W), S)``. Inside a graph
ONNX Runtime's Reshape reuses its input's buffer, but a graph output gets a buffer of its own, so a
Reshape that writes one copies the whole tensor: camrt's separable resize of a segmenter's logits
(`camrt.exporter.interpolate`) ends that way, and the copy of the 4×21×256×256 output took 2.3 ms
of a 30 ms LR-ASPP run. MatMul multiplies an N-D first input by a 2-D second one row by row
(numpy's matmul rules), so

    Reshape(MatMul(Reshape(A, [P, K]), W), S)  =  MatMul(Reshape(A, S[:-1] ++ [K]), W)

when S[-1] = M (W is K×M): both group the same rows of A's elements in the same order. The inner
Reshape is of an intermediate tensor and costs nothing; the old inner one goes when nothing else
reads it, and so do shape initializers left unread.

Rewritten when: the outer Reshape writes a graph output and its shape S is a constant whose last
entry is M and which has no 0 unless `allowzero` is set (0 would copy a size from the new
Reshape's input, not the old one's); its input is a MatMul read by nothing else, whose second
input is a 2-D constant W (K×M) and whose first is a Reshape to a constant 2-D shape ending in K.
A graph without such a pattern is returned as a copy.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from camrt.graph._util import constant_shape, constant_value, copy, drop_unread_initializers, forget_shapes


def _allowzero(node: onnx.NodeProto) -> int:
    return next((a.i for a in node.attribute if a.name == "allowzero"), 0)


def unflatten_output_matmuls(model: onnx.ModelProto) -> onnx.ModelProto:
    """Reshape(MatMul(Reshape(A, [P, K]), W), S) → MatMul(Reshape(A, S[:-1] ++ [K]), W) for graph
    outputs (module docstring)."""
    out = copy(model)
    g = out.graph
    prod = {o: n for n in g.node for o in n.output}
    readers: dict[str, int] = {}
    for node in g.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    graph_outputs = {o.name for o in g.output}
    taken = {*prod, *(t.name for t in g.initializer), *(i.name for i in g.input)}
    for name in [o.name for o in g.output]:
        outer = prod.get(name)
        if outer is None or outer.op_type != "Reshape":
            continue
        shape = constant_value(g, outer.input[1])
        matmul = prod.get(outer.input[0])
        if (shape is None or shape.ndim != 1 or matmul is None or matmul.op_type != "MatMul"
                or readers.get(matmul.output[0]) != 1 or matmul.output[0] in graph_outputs
                or (0 in shape.tolist() and not _allowzero(outer))):
            continue
        w = constant_shape(g, matmul.input[1])
        inner = prod.get(matmul.input[0])
        if w is None or len(w) != 2 or int(shape[-1]) != w[1] or inner is None or inner.op_type != "Reshape":
            continue
        flat = constant_value(g, inner.input[1])
        if flat is None or flat.shape != (2,) or int(flat[-1]) != w[0]:
            continue
        new_shape, reshaped = f"{name}/unflattened_shape", f"{name}/unflattened"
        if new_shape in taken or reshaped in taken:
            continue
        g.initializer.append(numpy_helper.from_array(np.array([*shape[:-1].tolist(), w[0]], np.int64), new_shape))
        reshape = helper.make_node("Reshape", [inner.input[0], new_shape], [reshaped], name=f"{name}/unflatten",
                                   allowzero=_allowzero(outer))
        forget_shapes(g, {matmul.output[0], inner.output[0]})
        matmul.input[0] = reshaped
        matmul.output[0] = name
        g.node.remove(outer)
        dropped = [outer.input[1]]
        if readers.get(inner.output[0]) == 1 and inner.output[0] not in graph_outputs:
            g.node.remove(inner)  # it only fed the MatMul
            dropped.append(inner.input[1])
        drop_unread_initializers(g, dropped)
        g.node.insert(list(g.node).index(matmul), reshape)
    return out
