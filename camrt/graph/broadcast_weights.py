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

A constant matrix multiplied from the left (camrt's separable resize ``R_h · X`` of a segmenter's
logits, `camrt.exporter.interpolate`) traces as ``bmm(reshape(expand(R, [..., M, K]), [-1, M, K]),
X)``: ``MatMul(Reshape(Expand(R)), X)`` and, backward, ``MatMul(Transpose(Reshape(Expand(R)),
[0, 2, 1]), G)`` become ``MatMul(R, X)`` and ``MatMul(Transpose(R, [1, 0]), G)`` (0.58 and 0.30 ms
of copies per LR-ASPP run at 4×256×256) when the Reshape's shape is a constant (B, M, K) and the
other input of each MatMul has rank 3 at least.

Rewritten when: the Expand's data is an initializer W (or a Constant) of rank 2 whose two sizes
are both > 1 (so the Expand can only add leading dimensions: it cannot change K or N), every
reader of the Expand's output is a MatMul reading it as its second input or a Transpose that
swaps the last two axes and keeps the others whose readers all are, and each such MatMul's first
input has at least the Expand output's rank (so the output's shape does not change). The unused
Expand is removed (with the Reshape of the left-hand form, and shape initializers nothing reads
any more). A graph without such a pattern is returned as a copy.
"""

from __future__ import annotations

import onnx

from camrt.graph._util import constant_shape, constant_value, copy, drop_unread_initializers, forget_shapes
from camrt.graph._util import ranks as util_ranks


def _reads_as(matmul: onnx.NodeProto, name: str, side: int, ranks: dict[str, int], rank: int) -> bool:
    """`matmul` reads `name` as its input `side` (0: A, 1: B) only, and its other input has rank ≥ `rank`."""
    other = matmul.input[1 - side] if len(matmul.input) == 2 else name
    return matmul.input[side] == name and other != name and ranks.get(other, -1) >= rank


def _swaps_last_two(node: onnx.NodeProto, rank: int) -> bool:
    perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
    return perm == [*range(rank - 2), rank - 1, rank - 2]


def _matmul_readers(name: str, side: int, rank: int, readers: dict[str, list[onnx.NodeProto]],
                    ranks: dict[str, int], graph_outputs: set[str]
                    ) -> tuple[list[onnx.NodeProto], list[onnx.NodeProto]] | None:
    """The MatMuls reading `name` (rank `rank`) as input `side`, and the Transposes swapping its
    last two axes read only by such MatMuls, when those are all its readers; else None."""
    users = readers.get(name, [])
    direct = [u for u in users if u.op_type == "MatMul"]
    swaps = [u for u in users if u.op_type == "Transpose"]
    if not users or name in graph_outputs or len(direct) + len(swaps) != len(users):
        return None
    if not all(_reads_as(u, name, side, ranks, rank) for u in direct):
        return None
    if not all(_swaps_last_two(t, rank) and t.output[0] not in graph_outputs and readers.get(t.output[0]) and all(
            u.op_type == "MatMul" and _reads_as(u, t.output[0], side, ranks, rank) for u in readers[t.output[0]])
            for t in swaps):
        return None
    return direct, swaps


def unexpand_matmul_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """MatMul(X, Expand(W)) → MatMul(X, W), and MatMul(Reshape(Expand(W), [-1, M, K]), X) →
    MatMul(W, X), where that cannot change a number (module docstring)."""
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
        side, found, gone = 1, _matmul_readers(node.output[0], 1, rank, readers, ranks, graph_outputs), [node]
        reshape = users[0]
        if found is None and len(users) == 1 and reshape.op_type == "Reshape":
            to = constant_value(g, reshape.input[1])
            if to is not None and to.shape == (3,) and tuple(int(v) for v in to[1:]) == shape:
                side, gone = 0, [node, reshape]
                found = _matmul_readers(reshape.output[0], 0, 3, readers, ranks, graph_outputs)
        if found is None:
            continue
        direct, swaps = found
        for u in direct:
            u.input[side] = node.input[0]
        forget_shapes(g, {t.output[0] for t in swaps})  # now 2-D
        for t in swaps:
            t.input[0] = node.input[0]
            for a in t.attribute:
                if a.name == "perm":
                    del a.ints[:]
                    a.ints.extend([1, 0])
        drop += gone
    for node in drop:
        g.node.remove(node)
    drop_unread_initializers(g, [n.input[1] for n in drop])
    return out
