"""Pass: the class-selection product `onehot @ W` in the gradient branch becomes a row gather.

The traced backward of the classifier computes `dscore/dfeatures = (g ⊙ onehot(c)) @ W`, a dense
N×K by K×D product that reads all of W (5 MB for a 1000-class head) to use one row per image.
Row i of `g ⊙ onehot(c)` has one non-zero, `g[i, c_i]`, so the product equals
`W[c_i, :] · Σ_k (g ⊙ onehot)[i, k]`, exactly: a Gather and a ReduceSum.

When the logits are a linear layer (`logits = x @ Wᵀ [+ b]`: a Gemm or MatMul with a constant
weight, possibly followed by an Add), the backward of that layer is such a product, so the pass
must find one: otherwise it raises `PatternNotFound` rather than leave the dense product in the
file. A graph whose logits come from anything else may have nothing to rewrite.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from camrt.graph._util import PatternNotFound, constant_value, copy
from camrt.manifest import LOGITS


def _onehot_index(model: onnx.ModelProto, prod: dict, name: str) -> str | None:
    """If `name` is Cast(Equal(arange(K), Unsqueeze(c, 1))), return c; else None."""
    cast = prod.get(name)
    if cast is None or cast.op_type != "Cast":
        return None
    eq = prod.get(cast.input[0])
    if eq is None or eq.op_type != "Equal":
        return None
    for a, b in (eq.input, reversed(eq.input)):
        values, unsq = constant_value(model.graph, a), prod.get(b)
        if values is None or unsq is None or unsq.op_type != "Unsqueeze" or len(unsq.input) < 2:
            continue
        axes = constant_value(model.graph, unsq.input[1])
        if (values.ndim == 1 and np.array_equal(values, np.arange(values.size))
                and axes is not None and axes.reshape(-1).tolist() in ([1], [-1])):
            return unsq.input[0]
    return None


def _is_constant(model: onnx.ModelProto, prod: dict, name: str) -> bool:
    """An initializer or Constant, possibly through Transpose, Identity or Cast nodes."""
    while (node := prod.get(name)) is not None and node.op_type in ("Transpose", "Identity", "Cast"):
        name = node.input[0]
    return constant_value(model.graph, name) is not None


def linear_logits(model: onnx.ModelProto) -> bool:
    """Whether `logits` is a linear layer of constant weights: Gemm or MatMul(x, W), then maybe Add(·, b)."""
    prod = {o: n for n in model.graph.node for o in n.output}
    node = prod.get(LOGITS)
    if node is not None and node.op_type == "Add":
        node = next((p for i in node.input if (p := prod.get(i)) is not None and p.op_type in ("Gemm", "MatMul")),
                    None)
    return (node is not None and node.op_type in ("Gemm", "MatMul") and len(node.input) >= 2
            and _is_constant(model, prod, node.input[1]))


def gather_selected_rows(model: onnx.ModelProto) -> onnx.ModelProto:
    """Rewrite `MatMul(Mul(g, onehot(c)), W)` as `Mul(Gather(W, c), ReduceSum(Mul(g, onehot(c)), 1))`.

    Raises:
        PatternNotFound: the logits are a linear layer but no selection product was found.
    """
    model = copy(model)
    g = model.graph
    prod = {o: n for n in g.node for o in n.output}
    new_nodes: list[onnx.NodeProto] = []
    rewritten = 0
    for node in g.node:
        mul = prod.get(node.input[0]) if node.op_type == "MatMul" else None
        index = None
        if mul is not None and mul.op_type == "Mul":
            index = _onehot_index(model, prod, mul.input[0]) or _onehot_index(model, prod, mul.input[1])
        if index is None:
            new_nodes.append(node)
            continue
        rewritten += 1
        out = node.output[0]
        rows, scale, axes = f"{out}_rows", f"{out}_scale", f"{out}_axes"
        new_nodes += [
            helper.make_node("Gather", [node.input[1], index], [rows], axis=0),
            helper.make_node("Constant", [], [axes], value=numpy_helper.from_array(np.array([1], np.int64))),
            helper.make_node("ReduceSum", [node.input[0], axes], [scale], keepdims=1),
            helper.make_node("Mul", [rows, scale], [out]),
        ]
    if not rewritten and linear_logits(model):
        raise PatternNotFound(
            "gather_selected_rows",
            f"'{LOGITS}' is a linear layer, but its backward holds no product MatMul(g ⊙ onehot(class), W) "
            "to turn into a row gather; the graph would read the whole classifier weight for every image",
        )
    del g.node[:]
    g.node.extend(new_nodes)
    return model
