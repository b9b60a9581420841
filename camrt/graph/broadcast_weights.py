"""`unexpand_matmul_weights`: drop the Expand that copies a weight matrix once per batch row
before a MatMul.

Tracing a linear layer on a transposed input (the attention projections of torchvision's and
timm's vision transformers) gives ``bmm(x, expand(Wᵀ, [B, K, N]))``, which the ONNX exporter
writes as ``MatMul(X, Expand(W, shape))``: ONNX Runtime then materialises B copies of the weight
per call (vit_b_16's qkv projection: 8·197 rows × 768 × 2304 floats, 1.4 GB, in each of its 12
blocks, forward and backward; the run is killed for memory on a 24 GB machine at batch 8).
MatMul broadcasts its second input itself (numpy's matmul rules), so ``MatMul(X, W)`` gives the
same numbers without the copies.

The backward pass reads the same expanded weight transposed (``grad_x = grad_y · Wᵀ``):
``MatMul(G, Transpose(Expand(W), perm=[..., -1, -2]))`` becomes ``MatMul(G, Transpose(W,
perm=[1, 0]))``.

Rewritten when: the Expand's data is an initializer W (or a Constant) of rank 2 whose two sizes
are both > 1 (so the Expand can only add leading dimensions: it cannot change K or N), every
reader of the Expand's output is a MatMul reading it as its second input or a Transpose that
swaps the last two axes and keeps the others whose readers all are, and each such MatMul's first
input has at least the Expand output's rank (so the output's shape does not change). The unused
Expand is removed. A graph without such a pattern is returned as a copy.
"""

from __future__ import annotations

import onnx

from camrt.graph._util import constant_shape, copy
from camrt.graph._util import ranks as util_ranks


def _reads_as_b(matmul: onnx.NodeProto, name: str, ranks: dict[str, int], rank: int) -> bool:
    """`matmul` reads `name` as its second input only, and its first input has rank ≥ `rank`."""
    return (len(matmul.input) == 2 and matmul.input[1] == name and matmul.input[0] != name
            and ranks.get(matmul.input[0], -1) >= rank)


def _swaps_last_two(node: onnx.NodeProto, rank: int) -> bool:
    perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
    return perm == [*range(rank - 2), rank - 1, rank - 2]


def unexpand_matmul_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """MatMul(X, Expand(W)) → MatMul(X, W) where that cannot change a number (module docstring)."""
    out = copy(model)
    g = out.graph
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in g.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    graph_outputs = {o.name for o in g.output}
    ranks: dict[str, int] | None = None
    drop = []
    for node in g.node:
        if node.op_type != "Expand":
            continue
        shape = constant_shape(g, node.input[0])
        users = readers.get(node.output[0], [])
        if shape is None or len(shape) != 2 or min(shape) <= 1 or not users or node.output[0] in graph_outputs:
            continue
        if ranks is None:
            ranks = util_ranks(model)
        rank = ranks.get(node.output[0])
        if rank is None:
            continue
        direct = [u for u in users if u.op_type == "MatMul"]
        swaps = [u for u in users if u.op_type == "Transpose"]
        if len(direct) + len(swaps) != len(users) or not all(_reads_as_b(u, node.output[0], ranks, rank)
                                                                 for u in direct):
            continue
        if not all(_swaps_last_two(t, rank) and t.output[0] not in graph_outputs and readers.get(t.output[0]) and all(
                u.op_type == "MatMul" and _reads_as_b(u, t.output[0], ranks, rank) for u in readers[t.output[0]])
                for t in swaps):
            continue
        for u in direct:
            u.input[1] = node.input[0]
        for t in swaps:
            t.input[0] = node.input[0]
            for a in t.attribute:
                if a.name == "perm":
                    del a.ints[:]
                    a.ints.extend([1, 0])
        drop.append(node)
    for node in drop:
        g.node.remove(node)
    return out
