"""`export`: a PyTorch model in, a verified camrt ONNX model out."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import io
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from camrt import __version__, atomic
from camrt.errors import ExportError, InputError, LayerError, UnsupportedOpError, VerificationError, first_line
from camrt.exporter import relevance as lrp
from camrt.exporter import verify
from camrt.exporter.load import load_model
from camrt.exporter.tokens import describe, layer_for
from camrt.exporter.trace import (
    LayerRecord,
    check_layers,
    frozen_eval,
    second_input,
    select_output,
    survey,
    trace,
    traceable_example,
)
from camrt.graph import PatternNotFound, check_maps, export_passes, fp16_passes, run_passes
from camrt.graph.fp16 import Fp16RangeError
from camrt.graph.fp16 import check as check_fp16
from camrt.graph.metadata import read_manifest
from camrt.manifest import (
    CLASS_IDX,
    CLASS_IDX_USED,
    DEFAULT_OPSET,
    INPUT,
    INPUT_GRADIENT,
    LOGITS,
    MODEL_MAP,
    OPSETS,
    OUTPUT,
    SCORE,
    TARGET,
    Manifest,
    Preprocessing,
    activation_name,
    gradient_name,
    relevance_name,
)

# Why `OPSETS` is 18 to 26, the opsets this export route really writes: torch's dynamo exporter
# translates ATen ops at opset 18 (its torchlib's) or above; asked for less, it exports at 18 and
# runs the ONNX version converter, which fails on operators camrt's graphs hold (Pad, Reduce*
# with an axes input), prints its traceback and keeps opset 18. ONNX Runtime 1.31 loads opsets up
# to 26 (27 and 28 are written but refused at load); past the newest opset of the installed onnx
# package, the converter fails the same way and the file stays at 18.
MIN_OPSET, MAX_OPSET = OPSETS.start, OPSETS.stop - 1
# A failed write whose errno says the path is the problem, not the data or the disk.
_PATH_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT, errno.ENOTDIR, errno.EISDIR})


def supported_opsets() -> range:
    """The ONNX opsets `export` accepts: `OPSETS`, capped by the installed onnx package's newest."""
    return range(MIN_OPSET, min(MAX_OPSET, onnx.defs.onnx_opset_version()) + 1)


def _check_opset(opset: object) -> int:
    ok = supported_opsets()
    if isinstance(opset, bool) or not isinstance(opset, (int, np.integer)) or int(opset) not in ok:
        raise InputError(
            f"opset {opset!r} is not supported: camrt writes opsets {ok.start} to {ok.stop - 1} (default "
            f"{DEFAULT_OPSET}); torch's ONNX exporter translates from opset {MIN_OPSET} up and cannot convert "
            f"camrt's graphs to older ones, and ONNX Runtime loads up to {MAX_OPSET}"
        )
    return int(opset)


def file_opset(proto: onnx.ModelProto) -> int:
    """The default-domain opset a model imports, i.e. the opset the file really has."""
    versions = [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")]
    return max(versions) if versions else 0


def _weights_hash(model: nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        t = t.detach().cpu()
        h.update((t.float() if t.dtype == torch.bfloat16 else t).contiguous().numpy().tobytes())
    return h.hexdigest()


def list_layers(model: nn.Module | str | os.PathLike, input_shape: Sequence[int] = (1, 3, 224, 224),
                arch: str | None = None, trust_pickle: bool = False) -> list[LayerRecord]:
    """Every named module with its call count and output shape, in definition order; `note` says
    what a target there would export: "feature map", the grid of a token or channels-last layer
    (`camrt.exporter.tokens.describe`), or why it cannot be one."""
    if not isinstance(model, nn.Module):
        model = load_model(model, arch=arch, trust_pickle=trust_pickle)
    example = _example(input_shape, seed=0)
    records = survey(model, example)
    modules = dict(model.named_modules())
    out = []
    for r in records.values():
        if r.calls != 1:
            note = "never runs" if r.calls == 0 else f"runs {r.calls}× (not a target)"
        elif r.shape is None or len(r.shape) not in (3, 4):
            note = ""
        else:
            try:
                note = describe(layer_for(r, model, modules[r.name], tuple(example.shape[2:])))
            except LayerError:
                note = "tokens, no grid found (give --grid HxW and --prefix-tokens P)"
        out.append(dataclasses.replace(r, note=note))
    return out


def _example(shape: Sequence[int], seed: int) -> torch.Tensor:
    shape = tuple(int(s) for s in shape)
    if len(shape) != 4 or min(shape) < 1:
        raise InputError(f"input shape {shape} is not N,C,H,W with positive sizes")
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _to_onnx(gm: torch.fx.GraphModule, example: torch.Tensor, layers: Sequence[str], opset: int,
             input_gradient: bool = False, target_shape: Sequence[int] = (), model_map: bool = False,
             relevance: bool = False) -> onnx.ModelProto:
    batch = torch.export.Dim("batch", min=1, max=4096)
    example = traceable_example(example)
    cls = second_input(example, target_shape)
    first = [OUTPUT, SCORE] if target_shape else [LOGITS, CLASS_IDX_USED]
    names = [*first, *map(activation_name, layers), *map(gradient_name, layers)]
    if input_gradient:
        names.append(INPUT_GRADIENT)
    if relevance:
        names.extend(map(relevance_name, layers))
    if model_map:
        names.append(MODEL_MAP)
    # The exporter reports progress on stdout and raises many warnings; a library stays quiet.
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                gm, (example, cls), dynamo=True, dynamic_shapes=({0: batch}, {0: batch}),
                input_names=[INPUT, TARGET if target_shape else CLASS_IDX], output_names=names, opset_version=opset,
                optimize=True, verify=False, report=False,
            )
    except Exception as e:  # noqa: BLE001 - the exporter raises many types
        text = str(e)
        missing = [line.strip() for line in text.splitlines() if "No decompositions registered" in line
                   or "Unsupported FX nodes" in line or "not supported" in line.lower()]
        if missing:
            raise UnsupportedOpError(f"ONNX export failed on an unsupported operator: {missing[0][:300]}") from e
        first = text.strip().splitlines()[0][:300] if text.strip() else type(e).__name__
        raise ExportError(f"ONNX export failed: {first}") from e
    return program.model_proto


def _check_with_ort(data: bytes, model: nn.Module, manifest: Manifest, output_index: int | str | None,
                    map_output: int | str | None = None, relevance: tuple[list[str], dict[str, str]] | None = None
                    ) -> dict[str, np.ndarray]:
    """Run the serialized model, the very bytes that will be written, on a fresh input (another
    batch size and seed than the export example, one explicit class and the rest top-1) and
    compare with eager autograd. Returns that input, the feeds of the float16 self-check."""
    from camrt.engine.session import open_session  # the engine owns onnxruntime

    n = 2 if manifest.input_shape[0] != 2 else 3
    x = _example((n, *manifest.input_shape[1:]), seed=1234)
    if manifest.targeted:  # a fresh target too: another seed than the trace's
        cls = np.random.default_rng(4321).normal(size=(n, *manifest.target_shape)).astype(np.float32)
    else:
        cls = np.full(n, -1, dtype=np.int64)
        cls[-1] = (n * 7919) % manifest.num_classes
    second = TARGET if manifest.targeted else CLASS_IDX
    try:
        sess = open_session(data, device="cpu")
        names = [o.name for o in sess.get_outputs()]
        got = dict(zip(names, sess.run(None, {INPUT: x.numpy(), second: cls}), strict=True))
    except Exception as e:  # noqa: BLE001 - onnxruntime's own exception types
        first = first_line(e)
        raise ExportError(f"ONNX Runtime cannot run the exported graph for its self-check (opset {manifest.opset}): "
                          f"{first}") from e
    ref, yardstick = verify.eager_outputs(model, x, torch.from_numpy(cls), manifest.layers, output_index,
                                          manifest.input_gradient, map_output, relevance)
    problems = [m for k in ref
                if (m := verify.compare(k, got[k], ref[k], yardstick[k] if yardstick else None)) is not None]
    if problems:
        raise VerificationError("the exported graph disagrees with eager PyTorch on a fresh input: "
                                + "; ".join(map(str, problems)))
    return {INPUT: x.numpy(), second: cls}


def _half(proto: onnx.ModelProto, feeds: dict[str, np.ndarray], path: Path) -> tuple[bytes, onnx.ModelProto]:
    """The verified float32 graph converted to float16 compute (`camrt.graph.fp16`), serialized, and
    checked on the float32 self-check's input: every tensor that becomes float16 within float16's
    range when the float32 graph runs, and the float16 file in ONNX Runtime close to the float32
    graph (loosely: ONNX Runtime's CPU provider computes most float16 operators in float32)."""
    try:
        half = run_passes(proto, fp16_passes())
        data = _serialize(half, path)
        check_fp16(proto, data, feeds)
    except Fp16RangeError as e:
        raise VerificationError(f"{e}; nothing was written") from e
    except ValueError as e:
        raise VerificationError(f"the float16 self-check failed: {e}; nothing was written") from e
    except RuntimeError as e:
        raise ExportError(f"{e}; nothing was written") from e
    return data, half


def export(
    model: nn.Module | str | os.PathLike,
    example_input: torch.Tensor | None = None,
    layers: Sequence[str] = (),
    path: str | os.PathLike | None = None,
    *,
    input_shape: Sequence[int] | None = None,
    arch: str | None = None,
    trust_pickle: bool = False,
    output_index: int | str | None = None,
    opset: int = DEFAULT_OPSET,
    mean: Sequence[float] = Preprocessing.mean,
    std: Sequence[float] = Preprocessing.std,
    labels: Sequence[str] | None = None,
    input_gradient: bool = False,
    maps: Sequence[str] = (),
    fp16: bool = False,
    layout: str | None = None,
    grid: Sequence[int] | None = None,
    prefix_tokens: int | None = None,
    target: bool = False,
    map_output: int | str | None = None,
    relevance: bool = False,
) -> Manifest:
    """Export `model` to an ONNX file whose outputs are the logits, the used class and, for each
    target layer L, `activation.L` and `gradient.L` = ∂ logits[n, class_idx[n]] / ∂ activation.L[n];
    with `input_gradient`, also `gradient.input` = ∂ logits[n, class_idx[n]] / ∂ input[n].

    The file is verified against eager PyTorch on a fresh input before it appears at `path`,
    then written atomically (`camrt.atomic`): on any failure, a full disk included, nothing is
    written and a file already at `path` is left as it was. The caller's model is left as it was
    (mode, gradients).

    Args:
        model: an nn.Module, or a model file (see `camrt.exporter.load.FORMATS`).
        example_input: an N×C×H×W tensor to trace with (or None: a random one of `input_shape`);
            N is dynamic in the exported graph, C×H×W fixed.
        layers: target module names (`camrt layers` lists them); each must run once per forward
            and return an N×C×h×w map, an N×h×w×C one (Swin) or N×T×C tokens (ViT), exported as
            N×C×h×w (`camrt.exporter.tokens`).
        path: where to write the .onnx file.
        input_shape: the example's shape when no `example_input` is given (default 1,3,224,224).
        arch, trust_pickle: how to load a model file (state dict + architecture; pickles).
        output_index: which output holds the class scores (or, with `target`, the output to
            explain) when the model returns several: an index, or a key of a dict output
            (torchvision's segmentation models return {"out": ..., "aux": ...}).
        opset: ONNX opset, one of `supported_opsets()` (18 to 26; default 20). The manifest
            records the opset the file really has.
        mean, std: preprocessing stored in the manifest (per channel, on [0, 1] pixels).
        labels: class names stored in the manifest, one per class.
        input_gradient: add the output `gradient.input` (N×C×H×W, for the same class as the layer
            gradients), verified like them; the manifest records it. Off by default, as it makes
            the backward pass run through the layers before the first target too.
        maps: methods to add map heads for (`camrt.graph.map_heads`: `map.M.L` and `saliency.M`
            computed inside the graph), or "all"; none by default.
        fp16: write a model whose forward pass computes in float16 (`camrt.graph.fp16`; the
            gradient branch and map heads stay float32, inputs and outputs keep their types).
            The float32 graph is verified against PyTorch as always, then converted; the export
            fails, writing nothing, if a tensor that becomes float16 leaves float16's range on the
            self-check input or the float16 graph disagrees with the float32 one. The manifest's
            `precision` says "fp16".
        layout: how the target layers return their maps ("nchw", "nhwc", "tokens"), or None to
            tell from each output (`camrt.exporter.tokens.layer_for`).
        grid: (h, w) of token layers' patch grid, or None to infer it from the token count and
            the input's aspect ratio.
        prefix_tokens: tokens before the patch tokens (class, distillation, registers), or None
            for the model's `num_prefix_tokens` or the smallest count that leaves a grid.
        target: target mode (issue 12): any output of fixed shape per image (N×K, N×K×H×W, N×D,
            ...) is explained for a vector the caller gives, the graph input `target` of that
            output's shape: `score[n]` = Σ target[n] ⊙ output[n] and `gradient.L` its gradient
            (`camrt.targets` builds targets: a class, a class inside a mask, an embedding's cosine
            similarity to a concept). The outputs are `output` and `score` instead of `logits` and
            `class_idx_used`; map heads and fp16 are not offered in this mode.
        map_output: for a model that computes its own attribution map (CALM, LFI-CAM): the index
            or name of that output (N×K×h×w, one map per class, or N×h×w), written as the graph
            output `model_map` and served by the method `model-map` (one forward pass).

    Returns:
        The manifest written into the model.

    Raises:
        CamrtError subclasses (ModelLoadError, LayerError, InputError, ExportError,
        UnsupportedOpError, VerificationError) with a message that says what to do.
    """
    opset = _check_opset(opset)  # before any work: torch would silently write another opset
    if not isinstance(target, bool):
        raise InputError(f"target must be True or False, got {target!r}")
    if target and (maps or fp16):
        raise InputError("map heads and fp16 are not offered in target mode (--target) yet; export without them")
    if not isinstance(relevance, bool):
        raise InputError(f"relevance must be True or False, got {relevance!r}")
    if relevance and (target or fp16):
        raise InputError("--relevance is not offered with --target or --fp16 yet: Relevance-CAM's rules start from a "
                         "class score and run in float32; export without one of them")
    maps = check_maps(maps) if maps else ()
    layers = list(layers)
    if input_gradient and INPUT_GRADIENT in map(gradient_name, layers):
        raise LayerError(f"a target layer named '{INPUT}' would give its gradient the name '{INPUT_GRADIENT}', "
                         "which input_gradient=True reserves for the input's gradient; target another module")
    if path is None:
        raise InputError("export needs path=, the .onnx file to write")
    if example_input is not None:
        if not isinstance(example_input, torch.Tensor) or example_input.dim() != 4:
            raise InputError("example_input must be an N×C×H×W torch.Tensor")
        if input_shape is not None and tuple(input_shape) != tuple(example_input.shape):
            raise InputError(f"input_shape {tuple(input_shape)} disagrees with example_input's shape "
                             f"{tuple(example_input.shape)}; give one of them")
    path = Path(path)
    out_dir = path.parent if str(path.parent) else Path(".")
    if not out_dir.is_dir():
        raise InputError(f"cannot write '{path}': directory '{out_dir}' does not exist")
    if not os.access(out_dir, os.W_OK):
        raise InputError(f"cannot write '{path}': directory '{out_dir}' is not writable")
    if path.is_dir():
        raise InputError(f"cannot write '{path}': it is a directory; give a file name such as model.cam.onnx")
    source = str(model) if not isinstance(model, nn.Module) else type(model).__name__
    if not isinstance(model, nn.Module):
        model = load_model(model, arch=arch, trust_pickle=trust_pickle)
    if example_input is not None:
        example = example_input.detach().to(torch.float32)
    else:
        example = _example(input_shape if input_shape is not None else (1, 3, 224, 224), seed=0)
    records = survey(model, example)  # also checks that the model takes this input shape
    check_layers(records, layers)
    grid = _check_grid(grid)
    modules = dict(model.named_modules())
    targets = tuple(layer_for(records[n], model, modules[n], tuple(example.shape[2:]), layout, grid, prefix_tokens)
                    for n in layers)
    channels = example.shape[1]
    if len(mean) != channels or len(std) != channels or any(s == 0 for s in std):
        raise InputError(f"--mean and --std need {channels} values each (one per input channel), std non-zero")
    with frozen_eval(model), torch.no_grad():
        logits = select_output(model(example), output_index)
    target_shape: tuple[int, ...] = tuple(int(d) for d in logits.shape[1:]) if target else ()
    if target and logits.dim() < 2:
        raise InputError(f"the output explained has shape {tuple(logits.shape)}; target mode needs N×… with "
                         "something per image (N×K, N×K×H×W, N×D)")
    if not target and logits.dim() != 2:
        raise InputError(f"the model's class scores have shape {tuple(logits.shape)}; expected N×K "
                         "(use --output-index if it returns several outputs, or --target to explain an output "
                         "of another shape for a target you give)")
    num_classes = int(logits.shape[1])
    if labels is not None:
        if isinstance(labels, str) or not all(isinstance(la, str) for la in labels):
            raise InputError("labels must be a sequence of class names (strings), one per class")
        # In target mode the class axis depends on the output (K of N×K×H×W, the last of a detector's
        # N×A×(4+K)): the names are stored as given.
        if not target and len(labels) != num_classes:
            raise InputError(f"{len(labels)} labels given for {num_classes} classes (the model's output has "
                             f"{num_classes} scores); give one name per class, in class order")

    if map_output is not None:
        with frozen_eval(model), torch.no_grad():
            own = select_output(model(example), map_output)
        if own.dim() not in (3, 4) or (own.dim() == 4 and own.shape[1] != num_classes):
            raise InputError(f"the map output has shape {tuple(own.shape)}; --map-output needs N×K×h×w (one map per "
                             f"class, K = {num_classes}) or N×h×w")
    tail = None
    if relevance:
        with frozen_eval(model):
            tail = lrp.tail(model, example, layers)
    gm = trace(model, example, targets, output_index, input_gradient, target_shape, map_output, tail)
    graph = _to_onnx(gm, example, layers, opset, input_gradient, target_shape, map_output is not None, relevance)
    written = file_opset(graph)
    if written != opset:  # torch falls back to its own opset without failing
        raise ExportError(f"torch's ONNX exporter wrote opset {written} instead of the requested {opset}; "
                          f"nothing was written (camrt writes opsets {MIN_OPSET} to {MAX_OPSET})")
    manifest = Manifest(
        input_shape=tuple(example.shape),
        num_classes=num_classes,
        layers=targets,
        preprocessing=Preprocessing(tuple(float(m) for m in mean), tuple(float(s) for s in std)),
        labels=tuple(labels) if labels is not None else None,
        camrt_version=__version__,
        weights_sha256=_weights_hash(model),
        source=source,
        opset=written,  # the opset the file has, read from the graph
        input_gradient=bool(input_gradient),
        target_shape=target_shape,
        model_map=map_output is not None,
        relevance=relevance,
    )
    try:
        proto = run_passes(graph, export_passes(num_classes, manifest.to_json(), maps, targeted=target))
    except PatternNotFound as e:
        raise ExportError(f"{e}. torch {torch.__version__} traced the model in a form camrt's graph passes do not "
                          "recognise, so nothing was written; please report it with the output of "
                          "`camrt --traceback export ...`") from e
    if maps:
        manifest = read_manifest(proto)  # the map-heads pass recorded them

    data = _serialize(proto, path)
    feeds = _check_with_ort(data, model, manifest, output_index, map_output, tail)
    if fp16:
        data, proto = _half(proto, feeds, path)
        manifest = read_manifest(proto)  # the pass recorded the precision
    try:
        atomic.write_bytes(path, data)
    except OSError as e:  # os.access above is only a hint (root, read-only mounts); disks fill up
        kind = InputError if e.errno in _PATH_ERRNOS else ExportError
        raise kind(f"cannot write '{path}': {e.strerror or e}") from e
    return manifest


def _check_grid(grid: Sequence[int] | None) -> tuple[int, int] | None:
    if grid is None:
        return None
    if isinstance(grid, (str, bytes)) or len(grid) != 2 or not all(
            isinstance(g, int) and not isinstance(g, bool) and g > 0 for g in grid):
        raise InputError(f"grid must be two positive integers (h, w), got {grid!r}")
    return int(grid[0]), int(grid[1])


def _serialize(proto: onnx.ModelProto, path: Path) -> bytes:
    """The model as bytes; protobuf cannot hold a message over 2 GB (camrt writes one file)."""
    size = proto.ByteSize()
    if size > onnx.checker.MAXIMUM_PROTOBUF:
        raise ExportError(f"cannot write '{path}': the model is {size / 2**30:.2f} GB, over protobuf's 2 GB limit "
                          "for one ONNX file")
    try:
        return proto.SerializeToString()
    except ValueError as e:
        raise ExportError(f"cannot write '{path}': {e}") from e
