"""Cheap sub-graphs of an exported camrt model.

ONNX Runtime runs every node of a graph whatever outputs are requested, so perturbation
methods must not run the full graph (which holds the gradient branch):
- `forward_only`: the nodes needed for `logits` (`output` in target mode; and any extra tensors
  asked for), nothing else;
- `keep_outputs`: the nodes needed for some of the model's outputs (`logits` and
  `gradient.input` for an optimisation over the input), with the inputs they read;
- `tail`: the nodes from a target activation to `logits`. Tensors computed before the cut that
  are read after it (a skip connection around the target, for example) become inputs of the tail,
  to be fed from a forward-only run of the original image.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import onnx
from onnx import helper

from camrt.manifest import CLASS_IDX, LOGITS, OUTPUT, activation_name


def head_output(model: onnx.ModelProto) -> str:
    """The network's own output in a camrt graph: `logits`, or `output` in target mode."""
    return OUTPUT if any(o.name == OUTPUT for o in model.graph.output) else LOGITS


def _producers(graph: onnx.GraphProto) -> dict[str, int]:
    return {out: i for i, node in enumerate(graph.node) for out in node.output if out}


def _ancestors(graph: onnx.GraphProto, targets: Iterable[str], stop: set[str] = frozenset()) -> set[int]:
    """Indices of the nodes needed to compute `targets`, not looking past tensors in `stop`."""
    prod = _producers(graph)
    seen: set[int] = set()
    todo = [t for t in targets if t not in stop]
    while todo:
        i = prod.get(todo.pop())
        if i is None or i in seen:
            continue
        seen.add(i)
        todo += [t for t in graph.node[i].input if t and t not in stop]
    return seen


def _value_infos(model: onnx.ModelProto) -> dict[str, onnx.ValueInfoProto]:
    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    return {v.name: v for v in [*g.input, *g.output, *g.value_info]}


def _build(model: onnx.ModelProto, node_ids: Iterable[int], inputs: Sequence[onnx.ValueInfoProto],
           outputs: Sequence[onnx.ValueInfoProto], name: str) -> onnx.ModelProto:
    g = model.graph
    nodes = [g.node[i] for i in sorted(node_ids)]  # the exporter writes nodes in topological order
    used = {t for n in nodes for t in n.input}
    input_names = {v.name for v in inputs}
    inits = [t for t in g.initializer if t.name in used and t.name not in input_names]
    graph = helper.make_graph(nodes, name, list(inputs), list(outputs), initializer=inits)
    out = helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version,
                            producer_name=model.producer_name)
    out.functions.extend(model.functions)
    for p in model.metadata_props:
        out.metadata_props.add(key=p.key, value=p.value)
    return out


def forward_only(model: onnx.ModelProto, extra_outputs: Sequence[str] = ()) -> onnx.ModelProto:
    """The nodes needed for `logits` and `extra_outputs`; the gradient branch is dropped."""
    g = model.graph
    wanted = [head_output(model), *extra_outputs]
    infos = _value_infos(model)
    missing = [t for t in wanted if t not in infos]
    if missing:
        raise ValueError(f"the model has no tensors named {missing}")
    ids = _ancestors(g, wanted)
    used = {t for i in ids for t in g.node[i].input}
    init_names = {t.name for t in g.initializer}
    inputs = [v for v in g.input if v.name in used and not (v.name == CLASS_IDX and v.name in init_names)]
    return _build(model, ids, inputs, [infos[t] for t in wanted], f"{g.name}_forward")


def keep_outputs(model: onnx.ModelProto, names: Sequence[str]) -> onnx.ModelProto:
    """The model with only the outputs `names` (in that order) and the nodes they need.

    Inputs the kept nodes read stay inputs, defaults included: `class_idx` keeps its initializer
    [-1], so it may still be fed or omitted.
    """
    g = model.graph
    outputs = {o.name: o for o in g.output}
    missing = [t for t in names if t not in outputs]
    if missing or not names or len(set(names)) != len(names):
        raise ValueError(f"keep_outputs needs distinct output names of the model ({', '.join(outputs)}); "
                         f"got {list(names)}")
    ids = _ancestors(g, names)
    used = {t for i in ids for t in g.node[i].input} | set(names)
    inputs = [v for v in g.input if v.name in used]
    out = _build(model, ids, inputs, [outputs[t] for t in names], g.name)
    defaults = {v.name for v in inputs}
    out.graph.initializer.extend(t for t in g.initializer if t.name in defaults)
    return out


def tail(model: onnx.ModelProto, layer: str) -> tuple[onnx.ModelProto, list[str]]:
    """The sub-graph from `activation.<layer>` to `logits`.

    Returns the model and the names of its extra inputs besides the activation: tensors from
    before the cut that the tail reads, in graph order. Feed them from `forward_only(model,
    extra_outputs=those names)` run on the original input.
    """
    g = model.graph
    act = activation_name(layer)
    prod = _producers(g)
    if act not in prod:
        raise ValueError(f"the model has no activation output for layer '{layer}'")
    # Nodes downstream of the activation...
    consumers: dict[str, list[int]] = {}
    for i, node in enumerate(g.node):
        for t in node.input:
            consumers.setdefault(t, []).append(i)
    down: set[int] = set()
    todo = [act]
    while todo:
        for i in consumers.get(todo.pop(), []):
            if i not in down:
                down.add(i)
                todo += list(g.node[i].output)
    # ...that the logits need, plus the constants they read: Constant nodes, and any node whose
    # value does not depend on the graph's inputs (a weight transposed or clamped once, which the
    # optimiser leaves as a node when several branches share it, as the relevance rules do).
    head = head_output(model)
    ids = down & _ancestors(g, [head], stop={act})
    produced = {t for i in ids for t in g.node[i].output}
    init_names = {t.name for t in g.initializer}
    varying = {i.name for i in g.input}
    for node in g.node:
        if any(t in varying for t in node.input):
            varying.update(node.output)
    todo_nodes = list(ids)
    while todo_nodes:
        for t in g.node[todo_nodes.pop()].input:
            j = prod.get(t)
            if j is not None and t not in produced and t not in varying:
                ids.add(j)
                produced.update(g.node[j].output)
                todo_nodes.append(j)
    boundary: list[str] = []
    for i in sorted(ids):
        for t in g.node[i].input:
            if t and t != act and t not in produced and t not in init_names and t not in boundary:
                boundary.append(t)
    infos = _value_infos(model)
    inputs = [infos[act], *(infos[t] for t in boundary)]
    return _build(model, ids, inputs, [infos[head]], f"{g.name}_tail_{layer}"), boundary
