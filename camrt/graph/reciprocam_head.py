"""Recipro-CAM's head: the method run inside the graph, so one `session.run` gives the prediction
and the Recipro-CAM map of the explained class.

Recipro-CAM (https://arxiv.org/abs/2209.14074) reads, for each position (i, j) of the target
layer's h×w map, the class probability the layers after it give to the activation masked around
that position: ``L(i, j) = softmax(f_tail(A ⊙ m_ij))_c``, `m_ij` one-hot or the 3×3 Gaussian
(`camrt.methods.feature.reciprocam`). `add_reciprocam_head` appends that computation to an exported
camrt model, as OpenVINO XAI inserts its Recipro-CAM branch:

- the N·h·w masked copies of the activation `activation.L` (batch N dynamic), built from the
  activation inside the graph: ``A[n] ⊙ m_p`` in row n·h·w + p, the masks being the numpy method's
  own (`reciprocam_inputs` on an all-ones map), read from an h·w × h × w table;
- a copy of the layers after L (the nodes `camrt.graph.tail` cuts, duplicated with their tensors
  renamed under ``reciprocam/``; weights are shared), fed the copies, with each tensor computed
  before the cut that they read (a skip connection around L) repeated once per copy;
- Softmax over the classes, and the probability of the class explained (`class_idx_used`).

Outputs: `map.reciprocam.L` (N×h×w, the map: probabilities, no ReLU needed), `saliency.reciprocam`
(N×H×W, that map upsampled and min-max normalised as the gradient heads' saliencies,
`camrt.graph.map_heads`), and with ``all_classes=True`` `class_maps.reciprocam.L` (N×K×h×w, the
map of every class, as OpenVINO XAI returns them). The manifest's `maps` gains ``reciprocam`` and
its `map_options` the kernel, so that a caller asking for the other kernel is not answered from
the head.

Cost: every run of the graph runs the tail h·w times per image and holds h·w copies of the
activation; maps of more than `MAX_POSITIONS` positions are refused. When the tail starts with the
mean over h×w (GlobalAveragePool, or ReduceMean over axes 2 and 3: resnets, EfficientNets and
MobileNets at their last feature maps) and reads nothing else from before the cut, the copies are
not built: the mean of a masked copy is a weighted sum of the activation's positions,
``mean(A ⊙ m_q) = Σ_j m_q[j] / hw · A[:, j]``, so one MatMul of the h·w × h·w mask table with
the activation gives the pooled copies, and only the layers after the pooling run h·w times
(resnet18 at `layer4`: 49 rows of 512 through the classifier instead of 49 copies of 512×7×7).
ONNX Runtime computes every node whatever outputs are asked for, so the gradient branch runs too:
`without_gradients` (``camrt add-maps --no-gradients``) writes a file that computes only the
forward pass and the heads that need no gradient.

A model spec names the head in `camrt export --maps` and `camrt add-maps --maps`:
``reciprocam[:kernel=onehot|gaussian][:layer=NAME][:all-classes]`` (`parse_spec`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper

from camrt.errors import InputError
from camrt.graph._util import constant_value, copy
from camrt.graph.map_heads import FUSION, HEAD_METHODS, MIN_OPSET, _Builder, _output
from camrt.graph.metadata import read_manifest
from camrt.graph.subgraph import keep_outputs, tail
from camrt.manifest import (
    CLASS_IDX_USED,
    LOGITS,
    METADATA_KEY,
    Manifest,
    class_maps_name,
    is_gradient,
    map_name,
    saliency_name,
)
from camrt.methods.feature import _KERNELS, reciprocam_inputs

RECIPROCAM = "reciprocam"
ALL_CLASSES = "all-classes"
MAX_POSITIONS = 1024  # h·w: a 32×32 map already runs 1024 copies per image through the tail
_PREFIX = "reciprocam/"  # the copied tail's tensors and nodes


@dataclass(frozen=True)
class ReciproCAMHead:
    """What `add_reciprocam_head` adds: the kernel (``"onehot"`` or ``"gaussian"``), the target
    layer (None: the model's last), and whether all classes' maps are output too."""

    kernel: str = "onehot"
    layer: str | None = None
    all_classes: bool = False

    def __post_init__(self) -> None:
        if self.kernel not in _KERNELS:
            raise InputError(f"Recipro-CAM's kernel must be one of {', '.join(_KERNELS)}, got '{self.kernel}'")
        if self.layer is not None and (not isinstance(self.layer, str) or not self.layer):
            raise InputError(f"Recipro-CAM's layer must be a layer name, got {self.layer!r}")
        if not isinstance(self.all_classes, bool):
            raise InputError(f"all_classes must be True or False, got {self.all_classes!r}")


SPEC_HELP = f"{RECIPROCAM}[:kernel=onehot|gaussian][:layer=NAME][:{ALL_CLASSES}]"


def parse_spec(spec: str) -> ReciproCAMHead | None:
    """The head a `--maps` entry names: None for another method, else its options.

    Raises:
        InputError: a Recipro-CAM spec with an unknown or repeated part (the message shows the form).
    """
    name, *parts = spec.split(":")
    if name != RECIPROCAM:
        return None
    options: dict[str, object] = {}
    for part in parts:
        key, eq, value = part.partition("=")
        field = {"kernel": "kernel", "layer": "layer", ALL_CLASSES: "all_classes"}.get(key)
        if field is None or (key == ALL_CLASSES) == bool(eq) or field in options:
            raise InputError(f"cannot read the map head '{spec}' at '{part}': write {SPEC_HELP}")
        options[field] = True if key == ALL_CLASSES else value
    return ReciproCAMHead(**options)


def _opset(model: onnx.ModelProto) -> int:
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)


def _rename_inputs(graph: onnx.GraphProto, names: dict[str, str]) -> None:
    """Every node of `graph`, and of the graphs inside its nodes (If, Loop, Scan), reads
    ``names[t]`` where it read `t`."""
    for node in graph.node:
        for k, t in enumerate(node.input):
            if t in names:
                node.input[k] = names[t]
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                _rename_inputs(sub, names)


def _masks(kernel: str, h: int, w: int) -> np.ndarray:
    """1×P×1×h×w: the mask of position p in [0, p], as the numpy method multiplies it."""
    masks = next(reciprocam_inputs(np.ones((1, h, w), np.float32), h * w, kernel))  # P×1×h×w
    return masks[None]


def _global_pool(model: onnx.ModelProto, sub: onnx.ModelProto, activation: str) -> tuple[onnx.NodeProto, bool] | None:
    """The tail's only reader of the N×C×h×w `activation` when it is a mean over h×w
    (GlobalAveragePool, or ReduceMean over axes 2 and 3), with whether it keeps the dims; else None."""
    readers = [n for n in sub.graph.node if activation in n.input]
    if len(readers) != 1 or readers[0].input[0] != activation:
        return None
    node = readers[0]
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "GlobalAveragePool":
        return node, True
    if node.op_type != "ReduceMean" or len(node.input) != 2 or attrs.get("noop_with_empty_axes", 0):
        return None
    axes = constant_value(model.graph, node.input[1])
    if axes is None or sorted(int(a) % 4 for a in np.ravel(axes)) != [2, 3]:
        return None
    return node, bool(attrs.get("keepdims", 1))


def add_reciprocam_head(kernel: str = "onehot", layer: str | None = None, all_classes: bool = False
                        ) -> Callable[[onnx.ModelProto], onnx.ModelProto]:
    """A pass adding Recipro-CAM's head (see the module docstring) for `layer` (None: the last
    target layer) with masks `kernel`, and with `all_classes` the output `class_maps.reciprocam.L`.

    Raises (when the pass runs; bad options at once):
        InputError: a model without a camrt manifest, an opset below 18, a layer the model was not
            exported with, a map of more than `MAX_POSITIONS` positions, a tail that reads a tensor
            from before the cut that is not per image, or a head already there (added once).
    """
    head = ReciproCAMHead(kernel, layer, all_classes)

    def add(model: onnx.ModelProto) -> onnx.ModelProto:
        manifest = read_manifest(model)
        if _opset(model) < MIN_OPSET:
            raise InputError(f"map heads need opset {MIN_OPSET} or later; the model imports opset {_opset(model)}: "
                             f"re-export it with --opset {MIN_OPSET} or later")
        try:
            la = manifest.layer(head.layer)
        except KeyError as e:
            raise InputError(e.args[0]) from e
        if RECIPROCAM in manifest.maps:
            raise InputError(f"the model already has a Recipro-CAM head ({saliency_name(RECIPROCAM)}): map heads "
                             "are added once")
        c, h, w = la.shape
        if h * w > MAX_POSITIONS:
            raise InputError(f"Recipro-CAM's head at '{la.name}' ({h}×{w} = {h * w} positions) would run {h * w} "
                             f"copies of the activation per image through the tail in every run (at most "
                             f"{MAX_POSITIONS}); choose a deeper layer, or use Engine.explain, which runs them "
                             "in chunks")
        if _output(model.graph, la.activation).type.tensor_type.elem_type != TensorProto.FLOAT:
            raise InputError(f"Recipro-CAM's head needs a float32 activation; '{la.activation}' is not")
        sub, boundary = tail(model, la.name)
        model = copy(model)
        g = model.graph
        b = _Builder(g, np.dtype(np.float32))
        outputs = {o.name: o for o in g.output}
        batch = outputs[la.activation].type.tensor_type.shape.dim[0]
        p = h * w
        # The copies: A[n] ⊙ m_p in row n·P + p, from a 4-D broadcast (N×1×C×hw times 1×P×1×hw), then
        # N·P rows. OpenVINO's CPU plugin runs this Multiply 2-14× faster than the 5-D broadcast
        # N×1×C×h×w times 1×P×1×h×w (resnet18/50, bf16 and f32, per-node profile), and the head as
        # fast as with a Tile or Expand before an elementwise Multiply; ONNX Runtime's CPU provider
        # runs them all alike (docs/benchmarks.md, Peers).
        masks = _masks(head.kernel, h, w).reshape(p, p)  # row q: the mask of position q
        tail_nodes = list(sub.graph.node)  # the layers after the cut, to copy
        pool = _global_pool(model, sub, la.activation) if not boundary else None
        if pool is not None:
            # The tail starts with the mean over h×w, and the mean of a masked copy is a weighted
            # sum of positions: mean(A[n] ⊙ m_q)[c] = Σ_j m_q[j] / hw · A[n, c, j]. One MatMul of
            # the P×hw weights with A[n]ᵀ gives the pooled copies, N·P×C, without building the
            # N·P copies of C×h×w (resnet18 at layer4: 49 × 25,088 values per image) or pooling them.
            node, keepdims = pool
            flat = b.op("Transpose", b.op("Reshape", la.activation, b.const([-1, c, p], np.int64)), perm=[0, 2, 1])
            pooled = b.op("MatMul", b.const(masks / np.float32(p)), flat)  # N×P×C
            wires = {node.output[0]: b.op("Reshape", pooled, b.const([-1, c, 1, 1] if keepdims else [-1, c],
                                                                      np.int64))}
            tail_nodes.remove(node)  # its output is wired to the pooled copies
        else:
            flat = b.op("Reshape", la.activation, b.const([-1, 1, c, p], np.int64))
            masked = b.op("Mul", flat, b.const(masks.reshape(1, p, 1, p)))
            wires = {la.activation: b.op("Reshape", masked, b.const([-1, c, h, w], np.int64))}
        # Each tensor from before the cut, once per copy: b[n] in rows n·P .. n·P + P − 1.
        infos = {v.name: v for v in sub.graph.input}
        for t in boundary:
            dims = infos[t].type.tensor_type.shape.dim
            if not dims or dims[0].HasField("dim_value"):  # a shape, say: not one row per image
                raise InputError(f"the layers after '{la.name}' read '{t}', computed before it, which does not have "
                                 "one row per image; Recipro-CAM's head cannot repeat it per copy")
            expand = b.op("Expand", b.op("Unsqueeze", t, b.axes(1)), b.const([1, p, *[1] * (len(dims) - 1)], np.int64))
            rest = b.op("Shape", t, start=1)
            wires[t] = b.op("Reshape", expand, b.op("Concat", b.const([-1], np.int64), rest, axis=0))
        # The tail, copied: its own tensors renamed, its inputs wired to the copies.
        produced = {o for node in tail_nodes for o in node.output if o}
        names = {t: f"{_PREFIX}{t}" for t in produced}
        clash = sorted(n for n in names.values() if n in b.used)
        if clash:
            raise InputError(f"the model already has tensors named {clash[:3]}; the head names its own '{_PREFIX}...'")
        copied = onnx.GraphProto()
        copied.node.extend(tail_nodes)
        for node in copied.node:
            node.name = f"{_PREFIX}{node.name}" if node.name else ""
            node.output[:] = [names.get(t, t) for t in node.output]
        _rename_inputs(copied, {**names, **wires})
        g.node.extend(copied.node)
        # Softmax over the classes, N×P×K; the explained class's column as the map.
        probs = b.op("Reshape", b.op("Softmax", names[LOGITS], axis=-1), b.const([-1, p, manifest.num_classes],
                                                                                  np.int64))
        chosen = b.op("Expand", b.op("Reshape", CLASS_IDX_USED, b.const([-1, 1, 1], np.int64)),
                      b.const([1, p, 1], np.int64))
        low = b.op("Reshape", b.op("GatherElements", probs, chosen, axis=2), b.const([-1, h, w], np.int64))
        size = (int(manifest.input_shape[2]), int(manifest.input_shape[3]))

        def output(name: str, value: str, shape: tuple[int, ...]) -> None:
            g.node.append(helper.make_node("Identity", [value], [name], name=name))
            info = helper.make_tensor_value_info(name, TensorProto.FLOAT, [None, *shape])
            info.type.tensor_type.shape.dim[0].CopyFrom(batch)
            g.output.append(info)

        output(map_name(RECIPROCAM, la.name), low, (h, w))
        output(saliency_name(RECIPROCAM), b.normalize(b.upsample(low, (h, w), size)), size)
        if head.all_classes:
            every = b.op("Reshape", b.op("Transpose", probs, perm=[0, 2, 1]),
                         b.const([-1, manifest.num_classes, h, w], np.int64))
            output(class_maps_name(RECIPROCAM, la.name), every, (manifest.num_classes, h, w))
        updated = dataclasses.replace(manifest, maps=(*manifest.maps, RECIPROCAM),
                                      map_options={**manifest.map_options, RECIPROCAM: {"kernel": head.kernel}})
        _write_manifest(model, updated)
        return model

    return add


def _write_manifest(model: onnx.ModelProto, manifest: Manifest) -> None:
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            prop.value = manifest.to_json()


def without_gradients(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model without its gradient branch: only the outputs that need no gradient (`logits`,
    `class_idx_used`, each `activation.L`, Recipro-CAM's head; not the relevance) and the nodes they need, so that a
    plain ONNX Runtime run computes the forward pass and those heads alone. The gradient heads
    (`map.M.L`, `saliency.M` of `camrt.graph.map_heads`) go with the gradients; the manifest's
    `gradients` says false and its `maps` lists the heads kept.

    Raises:
        InputError: a model without a camrt manifest.
    """
    manifest = read_manifest(model)
    gone = {m for m in manifest.maps if m in HEAD_METHODS}
    dropped = {saliency_name(m) for m in gone} | {map_name(m, la.name) for m in gone for la in manifest.layers}
    # the layer-wise relevance (`camrt export --relevance`) is a backward pass too
    dropped |= {la.relevance for la in manifest.layers}
    kept = [o.name for o in model.graph.output if not is_gradient(o.name) and o.name not in dropped]
    model = keep_outputs(model, kept)
    updated = dataclasses.replace(manifest, gradients=False, input_gradient=False, relevance=False,
                                  maps=tuple(m for m in manifest.maps if m not in gone),
                                  map_options={m: o for m, o in manifest.map_options.items() if m not in gone})
    _write_manifest(model, updated)
    return model


def maps_only(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with only the outputs a caller of its map heads reads: `logits`,
    `class_idx_used` and each head's map, saliency and class maps, and the nodes they need. The
    activations, gradients and relevance are neither output nor, where no head reads them,
    computed; with a Grad-CAM head on a layer followed by global average pooling no per-position
    gradient is left at all (`_Builder.spatial_mean`). The manifest says `maps_only` (and no
    gradients): the engine then answers the heads' methods, with the heads' options, and refuses
    the others.

    Raises:
        InputError: a model without a camrt manifest, or without map heads.
    """
    manifest = read_manifest(model)
    if not manifest.maps:
        raise InputError("the model has no map heads, so --maps-only would leave it only its logits; add heads "
                         "(--maps gradcam, ...) in the same command")
    heads = [o.name for o in model.graph.output if o.name.startswith(("map.", "saliency.", "class_maps."))]
    model = keep_outputs(model, [LOGITS, CLASS_IDX_USED, *heads])
    updated = dataclasses.replace(manifest, gradients=False, input_gradient=False, relevance=False, model_map=False,
                                  maps_only=True)
    _write_manifest(model, updated)
    return model


def without_saliency(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model without its heads' `saliency.M` outputs (the maps upsampled to the input size and
    normalised) and the nodes only they need: for a caller that draws the low-resolution map
    `map.M.L` with its own resize; camrt's `Engine` computes the saliency when it is read.
    `saliency.layercam-fusion`, which has no low-resolution map, is kept.

    Raises:
        InputError: a model without a camrt manifest, or without a saliency output to drop.
    """
    manifest = read_manifest(model)
    gone = [o.name for o in model.graph.output if o.name.startswith("saliency.") and o.name != saliency_name(FUSION)]
    if not gone:
        raise InputError("the model has no map head saliency to drop (--no-saliency); add heads with --maps")
    model = keep_outputs(model, [o.name for o in model.graph.output if o.name not in gone])
    _write_manifest(model, manifest)
    return model


__all__ = ["RECIPROCAM", "ALL_CLASSES", "MAX_POSITIONS", "SPEC_HELP", "ReciproCAMHead", "parse_spec",
           "add_reciprocam_head", "without_gradients",
           "maps_only", "without_saliency"]
