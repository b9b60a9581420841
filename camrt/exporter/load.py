"""Turn a model file into an `nn.Module`, accepting only formats that are safe or explicitly trusted."""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import os
import pickle
import sys
import zipfile
from pathlib import Path

import torch
from torch import nn

from camrt.errors import ModelLoadError, first_line

FORMATS = (
    "a torch.export program (.pt2, from torch.export.save), "
    "a state dict with --arch MODULE:CALLABLE, "
    "or a pickled nn.Module (torch.save(model)) with --trust-pickle"
)


def _import_arch_module(mod_name: str):
    """Import `mod_name`: a .py file path, or a dotted module name looked up on sys.path and then
    in the working directory (as `python -m` would; sys.path is restored afterwards)."""
    if mod_name.endswith(".py"):
        file = Path(mod_name)
        if not file.is_file():
            raise ModelLoadError(f"--arch: file '{mod_name}' does not exist")
        spec = importlib.util.spec_from_file_location(f"camrt_arch_{file.stem}", file)
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except Exception as e:  # noqa: BLE001 - user code
            raise ModelLoadError(f"--arch: running '{mod_name}' failed: {e}") from e
        return module
    added = os.getcwd() not in sys.path
    if added:
        sys.path.append(os.getcwd())
    try:
        return importlib.import_module(mod_name)
    except ImportError as e:
        raise ModelLoadError(f"--arch: cannot import module '{mod_name}': {e}") from e
    finally:
        if added:
            sys.path.remove(os.getcwd())

# Phrases of torch's weights-only unpickler when a file refers to code (a class or a function).
_UNSAFE_PICKLE_MARKERS = ("GLOBAL", "allowlisted", "reduce for unrecognized function")


def build_timm(name: str) -> nn.Module:
    """`timm.create_model(name, pretrained=False)`: timm's architecture by name, random weights
    (nothing is downloaded; the weights come from the model file)."""
    try:
        import timm
    except ImportError:
        raise ModelLoadError("--arch timm:NAME needs timm: pip install timm") from None
    known = timm.list_models()
    if name not in known:
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else "; timm.list_models('*vit*') lists them"
        raise ModelLoadError(f"--arch: timm has no model '{name}'{hint}")
    try:
        return timm.create_model(name, pretrained=False)
    except Exception as e:  # noqa: BLE001 - timm's and the model's own errors
        raise ModelLoadError(f"--arch: timm.create_model('{name}') failed: {first_line(e)}") from e


def build_arch(spec: str) -> nn.Module:
    """Call `MODULE:CALLABLE` with no arguments (it must return an nn.Module), or, for
    `timm:NAME`, build timm's model NAME (`build_timm`)."""
    if spec.startswith("timm:"):
        return build_timm(spec[len("timm:"):])
    mod_name, sep, attr = spec.partition(":")
    if not sep or not mod_name or not attr:
        raise ModelLoadError(f"--arch '{spec}' is not MODULE:CALLABLE (for example torchvision.models:resnet50)")
    module = _import_arch_module(mod_name)
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ModelLoadError(f"--arch: module '{mod_name}' has no attribute '{attr}'")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ModelLoadError(f"--arch: '{spec}' is not callable")
    try:
        model = obj()
    except Exception as e:  # noqa: BLE001 - user code
        raise ModelLoadError(f"--arch: calling '{spec}()' failed: {e}") from e
    if not isinstance(model, nn.Module):
        raise ModelLoadError(f"--arch: '{spec}()' returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def _training_ops(program: torch.export.ExportedProgram) -> list[str]:
    """Where the program computes as in training mode: every op with a `training`/`train` flag set
    (batch norm on batch statistics, active dropout), named by the module that ran it."""
    found: list[str] = []
    for node in program.graph.nodes:
        schema = getattr(node.target, "_schema", None) if node.op == "call_function" else None
        if schema is None:
            continue
        for i, arg in enumerate(schema.arguments):
            if arg.name not in ("training", "train"):
                continue
            value = node.args[i] if i < len(node.args) else node.kwargs.get(arg.name)
            if value is True:
                stack = node.meta.get("nn_module_stack") or {}
                module = next(reversed(stack.values()))[0] if stack else ""
                op = schema.name.split("::")[-1]
                where = f"'{module}' ({op})" if module else op
                if where not in found:
                    found.append(where)
    return found


def _is_torchscript(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("constants.pkl") or "/code/" in n for n in z.namelist())
    except zipfile.BadZipFile:
        return False


def _state_dict(obj: object) -> dict[str, torch.Tensor] | None:
    """The state dict inside a loaded checkpoint, if it is one (also under 'state_dict' or 'model')."""
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict) and len(obj) <= 4:
                obj = obj[key]
                break
        if obj and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
            return obj
    return None


def load_model(path: str | os.PathLike, arch: str | None = None, trust_pickle: bool = False) -> nn.Module:
    """Load a model for export. See `FORMATS` for what is accepted."""
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"model file '{path}' does not exist")
    if path.is_dir():
        raise ModelLoadError(f"'{path}' is a directory; give the model file ({FORMATS})")
    if not os.access(path, os.R_OK):
        raise ModelLoadError(f"model file '{path}' is not readable (check its permissions)")
    if path.suffix == ".pt2":
        if arch:
            raise ModelLoadError("a .pt2 program carries its own architecture; drop --arch")
        try:
            program = torch.export.load(str(path))
        except Exception as e:  # noqa: BLE001
            raise ModelLoadError(f"'{path}' is not a readable torch.export program: {e}") from e
        # A program exported without dynamic_shapes (torch.export's default) refuses any other batch
        # size, but the exported graph has a dynamic batch and is traced and verified at other sizes.
        user_inputs = set(program.graph_signature.user_inputs)
        for node in program.graph.nodes:
            val = node.meta.get("val") if node.op == "placeholder" and node.name in user_inputs else None
            if isinstance(val, torch.Tensor) and val.dim() > 0 and isinstance(val.shape[0], int):
                raise ModelLoadError(
                    f"'{path}' was exported with a fixed batch size of {val.shape[0]}; camrt needs a dynamic "
                    "batch. Re-export with an example batch of 2 or more and "
                    "dynamic_shapes=({0: torch.export.Dim('batch')},)"
                )
        training = _training_ops(program)
        if training:
            more = f" and {len(training) - 3} more" if len(training) > 3 else ""
            raise ModelLoadError(
                f"'{path}' was exported from a model in training mode: {', '.join(training[:3])}{more} compute as in "
                "training (BatchNorm on the batch's statistics, Dropout at random), and a program keeps that. Call "
                "model.eval() before torch.export.export and save the program again"
            )
        # unflatten restores the module hierarchy, so target layers can be named as in the source.
        return torch.export.unflatten(program)
    if _is_torchscript(path):
        raise ModelLoadError(
            f"'{path}' is a TorchScript archive, which camrt cannot export (its modules cannot be "
            f"hooked to take the gradient). Export the original model instead: {FORMATS}"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # Only a pickle that names classes or functions needs trust; torch's weights-only loader
        # reports any other failure (an ONNX or NumPy file, random bytes) as an UnpicklingError too.
        if "weights_only" not in str(e) or not any(m in str(e) for m in _UNSAFE_PICKLE_MARKERS):
            raise ModelLoadError(f"'{path}' is not a PyTorch model file; expected {FORMATS}") from e
        if not trust_pickle:
            raise ModelLoadError(
                f"'{path}' is a pickled object, and unpickling runs code stored in the file. If you trust "
                "its source, pass --trust-pickle (trust_pickle=True); otherwise save a state dict "
                "(torch.save(model.state_dict())) and pass --arch MODULE:CALLABLE"
            ) from None
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e2:  # noqa: BLE001 - unpickling user code can raise anything
            raise ModelLoadError(f"unpickling '{path}' failed: {e2}") from e2
    except Exception as e:  # noqa: BLE001 - torch raises several types for foreign files
        kind = e.__class__.__name__
        raise ModelLoadError(f"'{path}' is not a PyTorch model file ({kind}); expected {FORMATS}") from e
    if isinstance(obj, nn.Module):
        if arch:
            raise ModelLoadError("the file holds a whole nn.Module; drop --arch")
        return obj
    state = _state_dict(obj)
    if state is None:
        raise ModelLoadError(f"'{path}' holds a {type(obj).__name__}, not a model or a state dict; expected {FORMATS}")
    if not arch:
        raise ModelLoadError(f"'{path}' is a state dict (weights only); pass --arch MODULE:CALLABLE that builds "
                             "the model, for example --arch torchvision.models:resnet50")
    model = build_arch(arch)
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[-1].strip()
        raise ModelLoadError(f"the weights in '{path}' do not fit --arch {arch}: {first}") from e
    if result.missing_keys or result.unexpected_keys:
        raise ModelLoadError(
            f"the weights in '{path}' do not fit --arch {arch}: {len(result.missing_keys)} missing keys "
            f"(e.g. {result.missing_keys[:2]}), {len(result.unexpected_keys)} unexpected "
            f"(e.g. {result.unexpected_keys[:2]})"
        )
    return model
