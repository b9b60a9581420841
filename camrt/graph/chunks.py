"""Perturbation chunks as graphs: the copies a perturbation method makes, built inside ONNX Runtime
and run through the network in the same graph, so that they never exist on the host.

Each builder takes an exported camrt model and a target layer and returns one graph. Its inputs
are what the engine already holds for one image: `ACTIVATION`, the target layer's activation
1×C×h×w; for Score-CAM the preprocessed image ``input`` 1×C_in×H×W; for the tail's methods the
tensors crossing the tail's cut, 1×… each, under their own names (returned with the graph);
`CLASS`, the class explained (an int64 scalar); and the chunk's rows, `CHANNELS` or `POSITIONS`
(int64, length k, the only dynamic dimension), Group-CAM's group maps `MAPS` (k×h×w) or RISE's
grids and shifts `GRIDS` (int64 k×(cells² + 2)). Its one output `SCORES` (length k) holds each
copy's class score: the logit, or with ``probability=True`` the softmax probability.

- `scorecam_chunks`: copy i is ``x ⊙ norm(up(A_{c_i}))`` (`camrt.methods.masking.scorecam_inputs`),
  run through the forward-only graph. Upsampling uses `camrt.methods.upsample`'s taps and its
  arithmetic ``a + (b − a) · t`` (Gather, Sub, Mul, Add), not ONNX ``Resize``, whose
  ``(1 − t) · a + t · b`` is off by an ulp here and there: a constant channel would then
  normalise to noise instead of the all-zero mask.
- `ablationcam_chunks`: copy i is A with channel ``c_i`` set to +0 (Expand, then ScatterND without
  reduction), run through the tail (`camrt.methods.feature.ablation_inputs`).
- `reciprocam_chunks`: copy i is A times `kernel` centred on position ``p_i`` (row-major), cut at
  the borders, zeros elsewhere (`camrt.methods.feature.reciprocam_inputs`: one-hot or the 3×3
  Gaussian), run through the tail. The masks are the kernel's own values, read from a table.
- `groupcam_chunks`: copy g is ``b + norm(up(map_g)) ⊙ (x − b)`` with ``b`` the image blurred in the
  graph (`camrt.methods.masking.groupcam_explore`; the blur is two MatMuls, a few ulps from
  numpy's), run through the forward-only graph.
- `rise_chunks`: copy i is ``x ⊙ M_i``, `M_i` a seeded grid upsampled and cropped at its shift
  (`camrt.methods.masking.rise_explore`), run through the forward-only graph.

The copies equal the numpy path's bit for bit (the same float32 operations in the same order),
but for Group-CAM's blurred image; the class scores then differ only where ONNX Runtime's
softmax rounds otherwise than numpy's (tests/test_graph_chunks.py measures both). Standard
operators at the model's opset, 18 or later (ReduceMin and ReduceMax take their axes as an
input); no ScatterElements; `check_tensorrt` finds nothing to refuse. On the CPU each node
costs microseconds per run, so the fronts are written with few nodes, reading tables where
indices would otherwise be computed. Internal tensors are named under ``chunk/``; a model that
already uses that prefix or these input names is refused.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from camrt.graph._util import rename_uses
from camrt.graph.subgraph import forward_only, tail
from camrt.manifest import INPUT, LOGITS, activation_name
from camrt.methods._core import _interpolation_taps  # the one definition of the bilinear taps
from camrt.methods.feature import block_input  # the one rule for ViT-ReciproCAM's block input

MIN_OPSET = 18
ACTIVATION = "chunk.activation"
CHANNELS = "chunk.channels"
POSITIONS = "chunk.positions"
MAPS = "chunk.maps"
GRIDS = "chunk.grids"
CLASS = "chunk.class"
SCORES = "chunk.scores"
_PREFIX = "chunk/"
MASK_TABLE_LIMIT = 1 << 20  # the most values of Recipro-CAM's table of masks (`reciprocam_chunks`)


def opset(model: onnx.ModelProto) -> int:
    """The default-domain opset `model` imports."""
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


class _Front:
    """The nodes and constants in front of the network: they turn the feeds into the copies."""

    def __init__(self, dtype: np.dtype) -> None:
        self.dtype = dtype
        self.nodes: list[onnx.NodeProto] = []
        self.constants: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []  # the chunk graph's inputs
        self.wires: dict[str, str] = {}  # an input of the network -> the front's tensor it reads instead

    def _name(self, hint: str) -> str:
        return f"{_PREFIX}{hint}_{len(self.nodes) + len(self.constants)}"

    def op(self, op_type: str, *inputs: str, **attrs: object) -> str:
        out = self._name(op_type)
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=out, **attrs))
        return out

    def const(self, value: object, dtype: np.dtype | None = None) -> str:
        name = self._name("const")
        array = np.asarray(value, dtype=self.dtype if dtype is None else dtype)
        self.constants.append(numpy_helper.from_array(array, name))
        return name

    def ints(self, *values: int) -> str:
        return self.const(list(values), np.int64)

    def upsample(self, maps: str, shape: tuple[int, int], size: tuple[int, int]) -> str:
        """k×h×w → k×H×W as `camrt.methods.upsample`: its taps, and ``a + (b − a) · t`` along the
        rows, then along the columns.

        Computed on the maps transposed to k×w×h and transposed back: Gather along the last axis
        copies one value per index, which on 16 maps of 224×224 took 5.5 ms per Gather, while
        along the middle axis it copies whole rows."""
        maps = self.op("Transpose", maps, perm=[0, 2, 1])
        for axis, n_in, n_out in ((2, shape[0], size[0]), (1, shape[1], size[1])):
            lo, hi, frac = _interpolation_taps(n_in, n_out)
            a = self.op("Gather", maps, self.const(lo, np.int64), axis=axis)
            b = self.op("Gather", maps, self.const(hi, np.int64), axis=axis)
            t = self.const(frac.reshape(-1, 1) if axis == 1 else frac)
            maps = self.op("Add", a, self.op("Mul", self.op("Sub", b, a), t))
        return self.op("Transpose", maps, perm=[0, 2, 1])

    def normalize(self, maps: str) -> str:
        """Per-map min-max scaling of k×H×W maps as `camrt.methods.normalize`: ``(M − min) · (1 / span)``,
        a constant map → 0 (never a division by zero)."""
        low = self.op("ReduceMin", maps, self.ints(1, 2), keepdims=1)
        span = self.op("Sub", self.op("ReduceMax", maps, self.ints(1, 2), keepdims=1), low)
        positive = self.op("Greater", span, self.const(0.0))
        inverse = self.op("Div", self.const(1.0), self.op("Where", positive, span, self.const(1.0)))
        return self.op("Mul", self.op("Sub", maps, low), self.op("Where", positive, inverse, self.const(0.0)))


    def blur(self, image: str, size: tuple[int, int], kernel: int, sigma: float) -> str:
        """…×H×W images blurred as `camrt.methods.masking.gaussian_blur`: ``B_H · X · B_Wᵀ``, one
        MatMul per axis with the Gaussian taps and the reflect padding folded into an n×n matrix.

        On the CPU two MatMuls of 224×224 matrices take 0.7 ms for a 3×224×224 image, where numpy's
        51 shifted products per axis take 6 ms and a depthwise Conv 3 ms; the sums run in another
        order than numpy's, so the blurred image differs from numpy's by a few ulps."""
        rows = self.op("MatMul", self.const(_blur_matrix(size[0], kernel, sigma)), image)
        return self.op("MatMul", rows, self.const(_blur_matrix(size[1], kernel, sigma).T))

    def shifted_upsample(self, grids: str, shifts: tuple[str, str], cells: int, size: tuple[int, int]) -> str:
        """k×cells×cells grids → k×H×W as RISE's masks (`camrt.methods.masking.rise_explore`): each
        upsampled as `camrt.methods.upsample` to ``(cells + 1) · ⌈H / cells⌉`` × ``(cells + 1) · ⌈W /
        cells⌉`` and cropped at its own shift (`shifts`: two int64 vectors of length k, rows and
        columns), computed on the cropped pixels only.

        Each copy reads its taps from a table of every shift (``table[d, y]`` = the tap of full-size
        row ``d + y``) and its rows with GatherND (``batch_dims=1``); as `upsample`, rows first on
        the small grids, then columns on the maps transposed to k×W×H, so that GatherND copies
        whole rows."""
        maps = grids
        for n, shift in zip(size, shifts, strict=True):
            step = -(-n // cells)
            lo, hi, frac = _interpolation_taps(cells, (cells + 1) * step)
            window = np.arange(step)[:, None] + np.arange(n)[None]  # shift d, pixel y -> full-size pixel d + y

            def table(values: np.ndarray, dtype: np.dtype, shift: str = shift, window: np.ndarray = window) -> str:
                return self.op("Gather", self.const(values[window][..., None], dtype), shift, axis=0)

            a = self.op("GatherND", maps, table(lo, np.int64), batch_dims=1)
            b = self.op("GatherND", maps, table(hi, np.int64), batch_dims=1)
            maps = self.op("Add", a, self.op("Mul", self.op("Sub", b, a), table(frac, self.dtype)))
            maps = self.op("Transpose", maps, perm=[0, 2, 1])  # rows: k×H×cells -> k×cells×H; columns: back to k×H×W
        return maps


def _blur_matrix(n: int, kernel: int, sigma: float) -> np.ndarray:
    """The n×n matrix of `camrt.methods.masking.gaussian_blur` along one axis: its float32 taps
    (the same expression), at the columns of the reflect-padded input (``numpy.pad`` itself), the
    taps landing on one column summed in float64."""
    t = np.linspace(-(kernel - 1) / 2, (kernel - 1) / 2, kernel)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    k = (k / k.sum()).astype(np.float32)
    source = np.pad(np.arange(n), kernel // 2, mode="reflect")[np.arange(n)[:, None] + np.arange(kernel)]
    matrix = np.zeros((n, n))
    np.add.at(matrix, (np.repeat(np.arange(n), kernel), source.reshape(-1)), np.tile(k.astype(np.float64), n))
    return matrix


def _tensor(name: str, elem_type: int, shape: Sequence[int | str]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem_type, list(shape))


def _info(model: onnx.ModelProto, name: str) -> tuple[int, list[int]]:
    """Element type and per-image shape (without the batch) of the model's input or output `name`."""
    for v in [*model.graph.input, *model.graph.output]:
        if v.name == name:
            dims = v.type.tensor_type.shape.dim[1:]
            if not all(d.HasField("dim_value") for d in dims):
                raise ValueError(f"'{name}' has dynamic dimensions besides the batch; chunk graphs need static sizes")
            return v.type.tensor_type.elem_type, [d.dim_value for d in dims]
    raise ValueError(f"the model has no input or output named '{name}'")


def _check(model: onnx.ModelProto) -> None:
    if opset(model) < MIN_OPSET:
        raise ValueError(f"chunk graphs need opset {MIN_OPSET} or later; the model imports opset {opset(model)}")


def _assemble(sub: onnx.ModelProto, front: _Front, probability: bool, name: str) -> onnx.ModelProto:
    """`front`'s nodes, then those of the network `sub` with each of its inputs n reading the
    front's tensor ``front.wires[n]`` instead, then the class score of each row of `sub`'s
    logits: one model, inputs ``front.inputs``, output `SCORES`."""
    g = sub.graph
    names = {t for node in g.node for t in [*node.input, *node.output]} | {t.name for t in g.initializer}
    ours = (ACTIVATION, CHANNELS, POSITIONS, MAPS, GRIDS, CLASS, SCORES)
    clash = sorted(t for t in names | {v.name for v in g.input} if t.startswith(_PREFIX) or t in ours)
    produced = {t for node in g.node for t in node.output}
    clash += [v.name for v in front.inputs if v.name in produced]
    if clash:
        raise ValueError(f"the model already has tensors named {clash[:3]}; chunk graphs name theirs '{_PREFIX}...'")
    body = onnx.GraphProto()
    body.CopyFrom(g)
    for old, new in front.wires.items():
        rename_uses(body, old, new)
    logits_type = next(o.type.tensor_type.elem_type for o in g.output if o.name == LOGITS)
    scores = []
    logits = LOGITS
    if probability:
        logits = f"{_PREFIX}probabilities"
        scores.append(helper.make_node("Softmax", [LOGITS], [logits], name=logits, axis=-1))
    scores.append(helper.make_node("Gather", [logits, CLASS], [SCORES], name=SCORES, axis=1))
    graph = helper.make_graph([*front.nodes, *body.node, *scores], name, front.inputs,
                              [_tensor(SCORES, logits_type, ["chunk"])],
                              initializer=[*front.constants, *body.initializer])
    model = helper.make_model(graph, opset_imports=list(sub.opset_import), ir_version=sub.ir_version,
                              producer_name=sub.producer_name)
    model.functions.extend(sub.functions)
    return model


def _tail_front(model: onnx.ModelProto, layer: str, rows: str) -> tuple[onnx.ModelProto, list[str], _Front,
                                                                        list[int]]:
    """The tail of `layer`, its boundary, a front whose inputs are the activation, the rows, the
    class and the boundary tensors of one image (expanded to one per row), and the activation's
    shape C, h, w."""
    _check(model)
    elem, shape = _info(model, activation_name(layer))
    sub, boundary = tail(model, layer)
    front = _Front(helper.tensor_dtype_to_np_dtype(elem))
    front.inputs += [_tensor(ACTIVATION, elem, [1, *shape]), _tensor(rows, TensorProto.INT64, ["chunk"]),
                     _tensor(CLASS, TensorProto.INT64, [])]
    infos = {v.name: v for v in sub.graph.input}
    for b in boundary:
        b_type = infos[b].type.tensor_type
        b_dims = [d.dim_value for d in b_type.shape.dim[1:]]
        front.inputs.append(_tensor(b, b_type.elem_type, [1, *b_dims]))
        ones = front.ints(*([1] * len(b_dims)))
        front.wires[b] = front.op("Expand", b, front.op("Concat", front.op("Shape", rows), ones, axis=0))
    return sub, boundary, front, shape


def scorecam_chunks(model: onnx.ModelProto, layer: str, probability: bool = False) -> onnx.ModelProto:
    """Score-CAM's chunk graph: inputs ``input`` (1×C_in×H×W), `ACTIVATION` (1×C×h×w), `CHANNELS`
    (k) and `CLASS`; output `SCORES` (k), the class score of ``x ⊙ norm(up(A_c))`` for each
    channel c of `CHANNELS`, through the forward-only graph."""
    _check(model)
    act = activation_name(layer)
    elem, (c, h, w) = _info(model, act)
    x_elem, x_shape = _info(model, INPUT)
    front = _Front(helper.tensor_dtype_to_np_dtype(elem))
    maps = front.op("Gather", front.op("Reshape", ACTIVATION, front.ints(c, h, w)), CHANNELS, axis=0)
    masks = front.normalize(front.upsample(maps, (h, w), tuple(x_shape[1:])))
    copies = front.op("Mul", INPUT, front.op("Reshape", masks, front.ints(-1, 1, *x_shape[1:])))
    front.inputs += [_tensor(INPUT, x_elem, [1, *x_shape]), _tensor(ACTIVATION, elem, [1, c, h, w]),
                     _tensor(CHANNELS, TensorProto.INT64, ["chunk"]), _tensor(CLASS, TensorProto.INT64, [])]
    front.wires[INPUT] = copies
    return _assemble(forward_only(model), front, probability, f"{model.graph.name}_scorecam_chunks_{layer}")


def ablationcam_chunks(model: onnx.ModelProto, layer: str, probability: bool = False
                       ) -> tuple[onnx.ModelProto, list[str]]:
    """Ablation-CAM's chunk graph and the names of the tail's boundary tensors it takes: inputs
    `ACTIVATION` (1×C×h×w), `CHANNELS` (k), `CLASS` and the boundary tensors of the image (1×…);
    output `SCORES` (k), the class score of A with channel c zeroed for each c of `CHANNELS`,
    through the tail."""
    sub, boundary, front, (c, h, w) = _tail_front(model, layer, CHANNELS)
    # ScatterND of zeros into copies of A: numpy's `batch[i, c_i] = 0`. Each copy's index and its
    # zeros are cut from constants of C rows (a chunk never holds more copies than channels), which
    # costs fewer nodes than computing them: on the CPU each node costs microseconds per run.
    k = front.op("Shape", CHANNELS)
    copies = front.op("Expand", ACTIVATION, front.op("Concat", k, front.ints(c, h, w), axis=0))
    first = front.ints(0)
    copy = front.op("Slice", front.const(np.arange(c).reshape(c, 1), np.int64), first, k, first)
    index = front.op("Concat", copy, front.op("Reshape", CHANNELS, front.ints(-1, 1)), axis=1)
    zeros = front.op("Slice", front.const(np.zeros((c, h, w))), first, k, first)
    front.wires[activation_name(layer)] = front.op("ScatterND", copies, index, zeros)
    return _assemble(sub, front, probability, f"{model.graph.name}_ablationcam_chunks_{layer}"), boundary


def reciprocam_chunks(model: onnx.ModelProto, layer: str, kernel: np.ndarray, probability: bool = True,
                      mask_block_input: bool = False) -> tuple[onnx.ModelProto, list[str]]:
    """Recipro-CAM's chunk graph and the names of the tail's boundary tensors it takes: inputs
    `ACTIVATION` (1×C×h×w), `POSITIONS` (k, row-major i·w + j), `CLASS` and the boundary tensors
    of the image (1×…); output `SCORES` (k), the class score of A times `kernel` (square, odd
    size) centred on each position and cut at the borders, zeros elsewhere, through the tail.

    With `mask_block_input` (ViT-ReciproCAM, `camrt.methods.feature.vitreciprocam_explore`), the
    boundary tensor that is the transformer block's input (`camrt.methods.feature.block_input`:
    1×(P + h·w)×C) is masked too, its patch tokens by the same mask, its P prefix tokens kept."""
    kernel = np.asarray(kernel)
    if kernel.ndim != 2 or kernel.shape[0] != kernel.shape[1] or kernel.shape[0] % 2 == 0:
        raise ValueError(f"the kernel must be square with an odd size, got shape {kernel.shape}")
    sub, boundary, front, (c, h, w) = _tail_front(model, layer, POSITIONS)
    r = kernel.shape[0] // 2
    side = 2 * r + 3  # the kernel with a ring of zeros: offsets beyond r are clamped onto the ring
    padded = np.zeros((side, side), front.dtype)
    padded[1:-1, 1:-1] = kernel
    # Where the mask of position p reads the padded kernel at pixel (y, x): row clamp(y − p // w)
    # + r + 1, column clamp(x − p % w) + r + 1. The masks of every position are one table of
    # (h·w)² values, one Gather per chunk, up to MASK_TABLE_LIMIT values (a 32×32 map: 4 MB);
    # past that, the offsets are tabled per position (h·w·(h + w) integers), three Gathers.
    centres = np.arange(h * w)
    offset_y = np.clip(np.arange(h)[None] - (centres // w)[:, None], -r - 1, r + 1) + r + 1
    offset_x = np.clip(np.arange(w)[None] - (centres % w)[:, None], -r - 1, r + 1) + r + 1
    if (h * w) ** 2 <= MASK_TABLE_LIMIT:
        table = padded.reshape(-1)[(offset_y * side)[:, :, None] + offset_x[:, None, :]]
        mask = front.op("Gather", front.const(table.reshape(h * w, 1, h, w)), POSITIONS, axis=0)
    else:
        at_y = front.op("Gather", front.const((offset_y * side).reshape(h * w, 1, h, 1), np.int64), POSITIONS, axis=0)
        at_x = front.op("Gather", front.const(offset_x.reshape(h * w, 1, 1, w), np.int64), POSITIONS, axis=0)
        mask = front.op("Gather", front.const(padded.reshape(-1)), front.op("Add", at_y, at_x), axis=0)
    front.wires[activation_name(layer)] = front.op("Mul", ACTIVATION, mask)
    if mask_block_input:
        infos = {v.name: v for v in sub.graph.input}
        shapes = {b: tuple(d.dim_value for d in infos[b].type.tensor_type.shape.dim) for b in boundary}
        name, prefix = block_input({b: (1, *s[1:]) for b, s in shapes.items()}, (c, h, w))
        k = front.op("Shape", POSITIONS)
        ones = front.op("Expand", front.const(np.ones((1, prefix, 1))), front.op("Concat", k, front.ints(prefix, 1),
                                                                                axis=0))
        tokens = front.op("Concat", ones, front.op("Reshape", mask, front.ints(-1, h * w, 1)), axis=1)
        front.wires[name] = front.op("Mul", name, tokens)
    return _assemble(sub, front, probability, f"{model.graph.name}_reciprocam_chunks_{layer}"), boundary


def groupcam_chunks(model: onnx.ModelProto, layer: str, blur_kernel: int = 51, blur_sigma: float = 50.0,
                    probability: bool = True) -> onnx.ModelProto:
    """Group-CAM's chunk graph: inputs ``input`` (1×C_in×H×W), `ACTIVATION` (1×C×h×w, the engine
    feeds it; not read), `MAPS` (k×h×w: the chunk's group maps ``ReLU(Σ_{c∈g} α_c A_c)``, computed on
    the host as `camrt.methods.masking.groupcam_explore` does) and `CLASS`; output `SCORES` (k),
    the class score of ``b + M_g ⊙ (x − b)`` for each map, ``M_g = norm(up(map_g))`` and ``b`` = x
    blurred (`_Front.blur`), through the forward-only graph. A zero map gives ``b`` itself: the
    baseline's row.

    The blurred image is computed in the graph, once per chunk, rather than once per image on the
    host: its two MatMuls cost less per chunk (0.7 ms at 224×224) than numpy's blur per image
    (6 ms) divided among Group-CAM's 3 chunks of 16, and the image never leaves ONNX Runtime. The
    group maps come from the host because their sums must be numpy's: after the ReLU a map can be
    zeros and a few values of an ulp, which normalisation stretches to [0, 1], so summing in
    another order could turn numpy's all-zero mask into another one."""
    _check(model)
    elem, (c, h, w) = _info(model, activation_name(layer))
    x_elem, x_shape = _info(model, INPUT)
    size = tuple(x_shape[1:])
    front = _Front(helper.tensor_dtype_to_np_dtype(x_elem))
    blurred = front.blur(INPUT, size, blur_kernel, blur_sigma)
    masks = front.op("Reshape", front.normalize(front.upsample(MAPS, (h, w), size)), front.ints(-1, 1, *size))
    copies = front.op("Add", blurred, front.op("Mul", masks, front.op("Sub", INPUT, blurred)))
    front.inputs += [_tensor(INPUT, x_elem, [1, *x_shape]), _tensor(ACTIVATION, elem, [1, c, h, w]),
                     _tensor(MAPS, x_elem, ["chunk", h, w]), _tensor(CLASS, TensorProto.INT64, [])]
    front.wires[INPUT] = copies
    return _assemble(forward_only(model), front, probability, f"{model.graph.name}_groupcam_chunks_{layer}")


def rise_chunks(model: onnx.ModelProto, layer: str, cells: int = 7, probability: bool = True) -> onnx.ModelProto:
    """RISE's chunk graph: inputs ``input`` (1×C_in×H×W), `ACTIVATION` (1×C×h×w of `layer`: the
    engine feeds it; RISE does not read it), `GRIDS` (int64 k×(cells² + 2): per copy its grid's
    cells, 0 or 1 in row-major order, then its shift in rows and in columns) and `CLASS`; output
    `SCORES` (k), the class score of ``x ⊙ M_i`` for each row, with `M_i` the grid upsampled and
    cropped at its shift as `camrt.methods.masking.rise_explore` does (`_Front.shifted_upsample`:
    the masks equal numpy's bit for bit), through the forward-only graph."""
    _check(model)
    elem, act_shape = _info(model, activation_name(layer))
    x_elem, x_shape = _info(model, INPUT)
    size = tuple(x_shape[1:])
    front = _Front(helper.tensor_dtype_to_np_dtype(x_elem))
    area = cells * cells
    one = front.ints(1)
    cells_of = front.op("Slice", GRIDS, front.ints(0), front.ints(area), one)
    grids = front.op("Reshape", front.op("Cast", cells_of, to=x_elem), front.ints(-1, cells, cells))
    shifts = tuple(front.op("Gather", GRIDS, front.const(area + i, np.int64), axis=1) for i in (0, 1))
    masks = front.shifted_upsample(grids, shifts, cells, size)
    front.wires[INPUT] = front.op("Mul", INPUT, front.op("Reshape", masks, front.ints(-1, 1, *size)))
    front.inputs += [_tensor(INPUT, x_elem, [1, *x_shape]), _tensor(ACTIVATION, elem, [1, *act_shape]),
                     _tensor(GRIDS, TensorProto.INT64, ["chunk", area + 2]), _tensor(CLASS, TensorProto.INT64, [])]
    return _assemble(forward_only(model), front, probability, f"{model.graph.name}_rise_chunks_{layer}")
