"""Rewrites of the traced FX graph before ONNX export.

Channels-last pooling (ConvNeXt's head) restrides a tensor with `as_strided_` where only size-1
dimensions change stride, and its backward rebuilds the gradient through a zero buffer with
`as_strided` views and `copy_`; the ONNX exporter turns that into `as_strided_scatter`, which
has no ONNX translation. Both are no-ops on the values: the first is the identity, the second a
reshape of the gradient.
"""

from __future__ import annotations

import torch
from torch import fx

aten = torch.ops.aten


def _dense(size: list, stride: list) -> bool:
    """True when (size, stride) is the contiguous layout, ignoring strides of size-1 dims."""
    expected = 1
    for s, st in reversed(list(zip(size, stride, strict=True))):
        if s == 1:
            continue
        if not isinstance(s, int) and s is not size[0]:
            return False
        if st != expected:
            return False
        if not isinstance(s, int):  # the symbolic batch can only be the outermost dim
            break
        expected *= s
    return True


def _val(node: fx.Node):
    return node.meta.get("val")


def drop_size1_restrides(gm: fx.GraphModule) -> int:
    """Replace `as_strided(x, x.shape, strides)` that only restride size-1 dims of a dense `x` by `x`."""
    count = 0
    for node in list(gm.graph.nodes):
        if node.target not in (aten.as_strided_.default, aten.as_strided.default) or len(node.args) < 3:
            continue
        src, size, stride = node.args[:3]
        offset = node.args[3] if len(node.args) > 3 else 0
        sv = _val(src) if isinstance(src, fx.Node) else None
        if sv is None or offset or list(sv.shape) != [_val(s) if isinstance(s, fx.Node) else s for s in size]:
            continue
        if not (_dense(list(sv.shape), list(sv.stride())) and _dense(list(sv.shape), list(stride))):
            continue
        node.replace_all_uses_with(src)
        gm.graph.erase_node(node)
        count += 1
    return count


def fold_strided_scatter_buffers(gm: fx.GraphModule) -> int:
    """`z = new_zeros(numel); copy_(as_strided(z, A), g); y = as_strided(z, B)` with both views
    dense over the whole buffer is `y = reshape(g, B)`."""
    count = 0
    for z in list(gm.graph.nodes):
        if z.target is not aten.new_zeros.default:
            continue
        views = list(z.users)
        if len(views) != 2 or any(v.target is not aten.as_strided.default for v in views):
            continue
        writes = [v for v in views if any(u.target is aten.copy_.default and u.args[0] is v for u in v.users)]
        if len(writes) != 1:
            continue
        (v,) = writes
        (w,) = [x for x in views if x is not v]
        if len(v.users) != 1 or any(len(x.args) > 3 and x.args[3] for x in views):
            continue
        (copy,) = v.users
        g = copy.args[1]
        sizes_v, sizes_w = [list(_val(x).shape) for x in (v, w)]
        if not (_dense(sizes_v, list(v.args[2])) and _dense(sizes_w, list(w.args[2]))):
            continue
        if list(_val(g).shape) != sizes_v or _val(z).numel() != _val(w).numel():
            continue
        with gm.graph.inserting_before(w):
            y = gm.graph.call_function(aten.reshape.default, (g, list(w.args[1])))
            y.meta["val"] = _val(w)
        w.replace_all_uses_with(y)
        for dead in (w, copy, v, z):
            gm.graph.erase_node(dead)
        count += 1
    return count


FX_PASSES = (drop_size1_restrides, fold_strided_scatter_buffers)


def simplify(gm: fx.GraphModule) -> fx.GraphModule:
    """Run FX_PASSES in order and recompile."""
    for p in FX_PASSES:
        p(gm)
    gm.graph.lint()
    gm.recompile()
    return gm
