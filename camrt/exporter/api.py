"""`export`: a PyTorch model in, a verified camrt ONNX model out."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from camrt import __version__
from camrt.errors import ExportError, InputError, LayerError, UnsupportedOpError, VerificationError
from camrt.exporter import verify
from camrt.exporter.load import load_model
from camrt.exporter.trace import LayerRecord, check_layers, frozen_eval, select_output, survey, trace, traceable_example
from camrt.graph import export_passes, run_passes
from camrt.manifest import (
    CLASS_IDX,
    CLASS_IDX_USED,
    INPUT,
    INPUT_GRADIENT,
    LOGITS,
    Layer,
    Manifest,
    Preprocessing,
    activation_name,
    gradient_name,
)

DEFAULT_OPSET = 20


def _weights_hash(model: nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        t = t.detach().cpu()
        h.update((t.float() if t.dtype == torch.bfloat16 else t).contiguous().numpy().tobytes())
    return h.hexdigest()


def list_layers(model: nn.Module | str | os.PathLike, input_shape: Sequence[int] = (1, 3, 224, 224),
                arch: str | None = None, trust_pickle: bool = False) -> list[LayerRecord]:
    """Every named module with its call count and output shape, in definition order."""
    if not isinstance(model, nn.Module):
        model = load_model(model, arch=arch, trust_pickle=trust_pickle)
    return list(survey(model, _example(input_shape, seed=0)).values())


def _example(shape: Sequence[int], seed: int) -> torch.Tensor:
    shape = tuple(int(s) for s in shape)
    if len(shape) != 4 or min(shape) < 1:
        raise InputError(f"input shape {shape} is not N,C,H,W with positive sizes")
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _to_onnx(gm: torch.fx.GraphModule, example: torch.Tensor, layers: Sequence[str], opset: int,
             input_gradient: bool = False) -> onnx.ModelProto:
    batch = torch.export.Dim("batch", min=1, max=4096)
    example = traceable_example(example)
    cls = torch.full((example.shape[0],), -1, dtype=torch.int64)
    names = [LOGITS, CLASS_IDX_USED, *map(activation_name, layers), *map(gradient_name, layers)]
    if input_gradient:
        names.append(INPUT_GRADIENT)
    # The exporter reports progress on stdout and raises many warnings; a library stays quiet.
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                gm, (example, cls), dynamo=True, dynamic_shapes=({0: batch}, {0: batch}),
                input_names=[INPUT, CLASS_IDX], output_names=names, opset_version=opset,
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


def _check_with_ort(path: Path, model: nn.Module, manifest: Manifest, output_index: int | None) -> None:
    """Run the written file on a fresh input (another batch size and seed than the export
    example, one explicit class and the rest top-1) and compare with eager autograd."""
    from camrt.engine.session import open_session  # the engine owns onnxruntime

    n = 2 if manifest.input_shape[0] != 2 else 3
    x = _example((n, *manifest.input_shape[1:]), seed=1234)
    cls = np.full(n, -1, dtype=np.int64)
    cls[-1] = (n * 7919) % manifest.num_classes
    sess = open_session(path, device="cpu")
    names = [o.name for o in sess.get_outputs()]
    got = dict(zip(names, sess.run(None, {INPUT: x.numpy(), CLASS_IDX: cls}), strict=True))
    layers = [la.name for la in manifest.layers]
    ref, yardstick = verify.eager_outputs(model, x, torch.from_numpy(cls), layers, output_index,
                                          manifest.input_gradient)
    problems = [m for k in ref
                if (m := verify.compare(k, got[k], ref[k], yardstick[k] if yardstick else None)) is not None]
    if problems:
        raise VerificationError("the exported graph disagrees with eager PyTorch on a fresh input: "
                                + "; ".join(map(str, problems)))


def export(
    model: nn.Module | str | os.PathLike,
    example_input: torch.Tensor | None = None,
    layers: Sequence[str] = (),
    path: str | os.PathLike | None = None,
    *,
    input_shape: Sequence[int] | None = None,
    arch: str | None = None,
    trust_pickle: bool = False,
    output_index: int | None = None,
    opset: int = DEFAULT_OPSET,
    mean: Sequence[float] = Preprocessing.mean,
    std: Sequence[float] = Preprocessing.std,
    labels: Sequence[str] | None = None,
    input_gradient: bool = False,
) -> Manifest:
    """Export `model` to an ONNX file whose outputs are the logits, the used class and, for each
    target layer L, `activation.L` and `gradient.L` = ∂ logits[n, class_idx[n]] / ∂ activation.L[n];
    with `input_gradient`, also `gradient.input` = ∂ logits[n, class_idx[n]] / ∂ input[n].

    The file is verified against eager PyTorch on a fresh input before it appears at `path`;
    on any failure nothing is written. The caller's model is left as it was (mode, gradients).

    Args:
        model: an nn.Module, or a model file (see `camrt.exporter.load.FORMATS`).
        example_input: an N×C×H×W tensor to trace with (or None: a random one of `input_shape`);
            N is dynamic in the exported graph, C×H×W fixed.
        layers: target module names (`camrt layers` lists them); each must run once per forward
            and return an N×C×H×W map.
        path: where to write the .onnx file.
        input_shape: the example's shape when no `example_input` is given (default 1,3,224,224).
        arch, trust_pickle: how to load a model file (state dict + architecture; pickles).
        output_index: which output holds the class scores when the model returns several.
        opset: ONNX opset (the dynamo exporter's default is 18; camrt uses 20).
        mean, std: preprocessing stored in the manifest (per channel, on [0, 1] pixels).
        labels: class names stored in the manifest, one per class.
        input_gradient: add the output `gradient.input` (N×C×H×W, for the same class as the layer
            gradients), verified like them; the manifest records it. Off by default, as it makes
            the backward pass run through the layers before the first target too.

    Returns:
        The manifest written into the model.

    Raises:
        CamrtError subclasses (ModelLoadError, LayerError, InputError, ExportError,
        UnsupportedOpError, VerificationError) with a message that says what to do.
    """
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
    channels = example.shape[1]
    if len(mean) != channels or len(std) != channels or any(s == 0 for s in std):
        raise InputError(f"--mean and --std need {channels} values each (one per input channel), std non-zero")

    records = survey(model, example)
    check_layers(records, layers)
    with frozen_eval(model), torch.no_grad():
        logits = select_output(model(example), output_index)
    if logits.dim() != 2:
        raise InputError(f"the model's class scores have shape {tuple(logits.shape)}; expected N×K "
                         "(use --output-index if it returns several outputs)")
    num_classes = int(logits.shape[1])
    if labels is not None and len(labels) != num_classes:
        raise InputError(f"{len(labels)} labels given for {num_classes} classes")

    manifest = Manifest(
        input_shape=tuple(example.shape),
        num_classes=num_classes,
        layers=tuple(Layer(n, tuple(records[n].shape[1:])) for n in layers),
        preprocessing=Preprocessing(tuple(float(m) for m in mean), tuple(float(s) for s in std)),
        labels=tuple(labels) if labels is not None else None,
        camrt_version=__version__,
        weights_sha256=_weights_hash(model),
        source=source,
        opset=opset,
        input_gradient=bool(input_gradient),
    )
    gm = trace(model, example, layers, output_index, manifest.input_gradient)
    proto = run_passes(_to_onnx(gm, example, layers, opset, manifest.input_gradient),
                       export_passes(num_classes, manifest.to_json()))

    try:  # os.access above is only a hint (root, read-only mounts, quotas)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=out_dir)
    except OSError as e:
        raise InputError(f"cannot write '{path}': {e.strerror or e}") from e
    os.close(fd)
    try:
        try:
            onnx.save(proto, tmp)
        except ValueError as e:  # protobuf refuses models over 2 GB
            raise ExportError(f"writing the ONNX file failed: {e}") from e
        _check_with_ort(Path(tmp), model, manifest, output_index)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return manifest
