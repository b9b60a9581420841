"""The `camrt` command: thin click commands, one library call each. Errors become one line on
stderr and a non-zero exit; `--traceback` shows the full trace for bug reports.

Length: over camrt's ~350-line aim because it holds one thin command per user task (layers,
export, convert, add-maps, methods, explain, eval, video) with their option declarations; each command
body is a library call, and splitting click groups over modules would scatter the `--help` text.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from camrt.errors import CamrtError
from camrt.manifest import DEFAULT_OPSET, OPSETS
from camrt.scale.serve import DEFAULT_MAX_BYTES as DEFAULT_SERVE_BYTES
from camrt.scale.serve import DEFAULT_MAX_IMAGES as DEFAULT_SERVE_IMAGES

if TYPE_CHECKING:  # camrt.video imports cv2, which only `camrt video` may load
    from camrt.video import VideoSummary

EXIT_USER_ERROR = 2
EXIT_INTERNAL = 1
SERVE_STOP_TIMEOUT = 30.0  # seconds `camrt serve` waits for Ray to stop after Ctrl-C


def _int_list(text: str, name: str, count: int | None = None) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise click.BadParameter(f"'{text}' is not a comma-separated list of integers", param_hint=name) from None
    if count is not None and len(values) != count:
        raise click.BadParameter(f"'{text}' needs {count} values", param_hint=name)
    return values


def _float_list(text: str | None, name: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise click.BadParameter(f"'{text}' is not a comma-separated list of numbers", param_hint=name) from None


def _read_labels(path: str | None) -> list[str] | None:
    """Class names from a UTF-8 text file, one per line, line i naming class i-1.

    A byte-order mark is dropped and each name stripped of surrounding spaces; blank lines at the
    end are ignored. A blank line before the last name is an error naming it: it would shift every
    name after it onto the wrong class.
    """
    if path is None:
        return None
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise click.BadParameter(f"cannot read '{path}': {e.strerror}", param_hint="--labels") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise click.BadParameter(f"'{path}' is not UTF-8 text (byte 0x{data[e.start]:02x} on line {line}); "
                                 "save it as UTF-8", param_hint="--labels") from None
    names = [line.strip() for line in text.splitlines()]
    while names and not names[-1]:
        names.pop()
    if "" in names:
        raise click.BadParameter(f"'{path}' line {names.index('') + 1} is blank; give one class name per line, in "
                                 "class order (a blank line would shift the names after it)", param_hint="--labels")
    if not names:
        raise click.BadParameter(f"'{path}' holds no class names", param_hint="--labels")
    return names


def parse_options(items: tuple[str, ...]) -> dict[str, object]:
    """NAME=VALUE strings as method options: integers, floats, true/false, else the text."""
    options: dict[str, object] = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or not name.strip():
            raise click.BadParameter(f"'{item}' is not NAME=VALUE", param_hint="--option")
        value: object = text.strip()
        if value.lower() in ("true", "false"):
            value = value.lower() == "true"
        else:
            for kind in (int, float):
                try:
                    value = kind(text)
                    break
                except ValueError:
                    pass
        options[name.strip()] = value
    return options


DEVICES = ("auto", "cpu", "cuda", "openvino")  # camrt.engine.session.DEVICES (not imported: no onnxruntime at start-up)
PRECISIONS = ("f32", "bf16", "f16")


def runtime_options(f):
    """--device and --precision, as `Engine` takes them (f32 is its precision=None)."""
    f = click.option("--precision", type=click.Choice(PRECISIONS), default="f32", show_default=True,
                     help="bf16 (CPUs with native bfloat16) or f16 (Intel GPUs): with --device openvino only.")(f)
    return click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True,
                        help="openvino: ONNX Runtime's OpenVINO provider (camrt[openvino]).")(f)


def _precision(name: str) -> str | None:
    return None if name == "f32" else name


def friendly(f):
    """Turn camrt errors into one line on stderr; unexpected ones too unless --traceback."""

    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        ctx = click.get_current_context()
        try:
            return f(*args, **kwargs)
        except CamrtError as e:
            if ctx.obj and ctx.obj.get("traceback"):
                raise
            click.echo(f"camrt: error: {e}", err=True)
            sys.exit(EXIT_USER_ERROR)
        except click.ClickException as e:  # a bad option value found in the body (_int_list, ...)
            if ctx.obj and ctx.obj.get("traceback"):
                raise
            click.echo(f"camrt: error: {e.format_message()}", err=True)
            sys.exit(EXIT_USER_ERROR)
        except KeyboardInterrupt:
            click.echo("camrt: interrupted", err=True)
            sys.exit(130)
        except Exception as e:  # noqa: BLE001 - the CLI never shows a traceback unless asked
            if ctx.obj and ctx.obj.get("traceback"):
                raise
            first = (str(e).strip().splitlines() or [""])[0][:300]
            click.echo(f"camrt: internal error ({type(e).__name__}): {first} (rerun with --traceback to report it)",
                       err=True)
            sys.exit(EXIT_INTERNAL)

    return wrapper


class OneLineErrors(click.Group):
    """The `camrt` group: errors that click finds itself while parsing (an option value it cannot
    convert, an unknown option, a missing argument) are one line on stderr, like every other camrt
    error, instead of click's usage block; the exit code stays click's (2)."""

    def main(self, *args, standalone_mode: bool = True, **kwargs):  # type: ignore[override]
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            rv = super().main(*args, standalone_mode=False, **kwargs)
        except click.exceptions.NoArgsIsHelpError as e:  # `camrt` alone: the help, as click shows it
            click.echo(e.ctx.get_help() if e.ctx else e.format_message(), err=True)
            sys.exit(e.exit_code)
        except click.ClickException as e:
            hint = f" (see '{e.ctx.command_path} --help')" if isinstance(e, click.UsageError) and e.ctx else ""
            click.echo(f"camrt: error: {' '.join(e.format_message().split())}{hint}", err=True)
            sys.exit(e.exit_code)
        except click.Abort:  # Ctrl-C or end of input while click itself waited (a prompt)
            click.echo("camrt: interrupted", err=True)
            sys.exit(130)
        sys.exit(rv if isinstance(rv, int) else 0)  # a command returns None; --help and --version give 0


@click.group(cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--traceback", is_flag=True, help="Show full tracebacks (for bug reports).")
@click.version_option(package_name="camrt")
@click.pass_context
def main(ctx: click.Context, traceback: bool) -> None:
    """camrt: class activation maps inside ONNX models."""
    ctx.obj = {"traceback": traceback}


_model_options = [
    click.option("--arch", help="MODULE:CALLABLE that builds the model, for a state-dict file."),
    click.option("--trust-pickle", is_flag=True,
                 help="Allow a pickled nn.Module (unpickling runs code from the file)."),
    click.option("--input-shape", default="1,3,224,224", show_default=True, help="Example input N,C,H,W."),
]


def model_options(f):
    for opt in reversed(_model_options):
        f = opt(f)
    return f


@main.command()
@click.argument("model", type=click.Path())
@model_options
@friendly
def layers(model: str, arch: str | None, trust_pickle: bool, input_shape: str) -> None:
    """List MODEL's modules with output shapes, to pick a target layer."""
    from camrt import list_layers

    records = list_layers(model, _int_list(input_shape, "--input-shape", 4), arch=arch, trust_pickle=trust_pickle)
    width = max((len(r.name) for r in records), default=4)
    click.echo(f"{'name':<{width}}  {'type':<24} {'output shape':<20} note")
    for r in records:
        shape = "×".join(map(str, r.shape)) if r.shape else "-"
        click.echo(f"{r.name:<{width}}  {r.type:<24} {shape:<20} {r.note}")


_MAPS_HELP = ("Add map heads, the maps computed inside the graph (map.M.L, saliency.M): methods separated by "
              "commas, or 'all' (the gradient methods); Recipro-CAM's head: "
              "reciprocam[:kernel=onehot|gaussian][:layer=NAME][:all-classes].")


_FP16_HELP = ("Compute the forward pass in float16, for GPUs (the gradient branch and map heads stay float32, as "
              "do the inputs and outputs; see docs/fp16.md).")
_FP16_DONE = "float16 compute, float32 inputs and outputs, float16 ranges checked"


def _index_or_name(text: str | None) -> int | str | None:
    """--output-index: an integer index, or the name of a dict output."""
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        return text


def _names(text: str | None) -> tuple[str, ...]:
    return () if text is None else tuple(name.strip() for name in text.split(","))


@main.command("export")
@click.argument("model", type=click.Path())
@click.option("--layer", "layer_names", multiple=True, required=True, help="Target layer (repeat for several).")
@click.option("-o", "--output", type=click.Path(), help="Output file [default: MODEL stem + .cam.onnx].")
@model_options
@click.option("--opset", type=int, default=DEFAULT_OPSET, show_default=True,
              help=f"ONNX opset, {OPSETS.start} to {OPSETS.stop - 1}.")
@click.option("--output-index", help="Which model output holds the class scores (or, with --target, the output to "
                                    "explain): an index, or the name of a dict output such as 'out'.")
@click.option("--map-output", help="A model that computes its own attribution map (CALM, LFI-CAM): the index or name "
                                  "of that output (N×K×h×w or N×h×w), served as the method model-map.")
@click.option("--target", "targeted", is_flag=True,
              help="Target mode: explain an output of any shape (segmentation, embeddings) for a target given at "
                   "run time (camrt explain --target-class/--mask/--concept) instead of a class.")
@click.option("--mean", help="Per-channel mean on [0,1] pixels, e.g. 0.485,0.456,0.406 (ImageNet default).")
@click.option("--std", help="Per-channel std on [0,1] pixels, e.g. 0.229,0.224,0.225 (ImageNet default).")
@click.option("--labels", "labels_file", type=click.Path(), help="Text file with one class name per line.")
@click.option("--input-gradient", is_flag=True,
              help="Also output the gradient of the class score with respect to the input (for Opti-CAM).")
@click.option("--relevance", is_flag=True,
              help="Also output each target layer's layer-wise relevance (LRP, relevance.L), computed in the graph by "
                   "Relevance-CAM's rules (for the method relevancecam).")
@click.option("--maps", "maps_text", help=_MAPS_HELP)
@click.option("--fp16", is_flag=True, help=_FP16_HELP)
@click.option("--grid", "grid_text", metavar="HxW",
              help="Patch grid of token target layers (ViT), e.g. 14x14 [default: inferred from the token count].")
@click.option("--prefix-tokens", type=int,
              help="Tokens before the patch tokens (class, distillation) [default: the model's, or inferred].")
@click.option("--layout", type=click.Choice(["nchw", "nhwc", "tokens"]),
              help="How the target layers return their maps [default: told from each output].")
@friendly
def export_cmd(model: str, layer_names: tuple[str, ...], output: str | None, arch: str | None, trust_pickle: bool,
               input_shape: str, opset: int, output_index: str | None, map_output: str | None, targeted: bool,
               mean: str | None,
               std: str | None, labels_file: str | None, input_gradient: bool, relevance: bool,
               maps_text: str | None, fp16: bool, grid_text: str | None, prefix_tokens: int | None,
               layout: str | None) -> None:
    """Export MODEL to ONNX with logits, activations and class-score gradients."""
    from camrt import export
    from camrt.manifest import Preprocessing

    out = output or str(Path(model).with_suffix("").name) + ".cam.onnx"
    manifest = export(
        model, layers=layer_names, path=out, input_shape=_int_list(input_shape, "--input-shape", 4), arch=arch,
        trust_pickle=trust_pickle,
        output_index=_index_or_name(output_index), opset=opset, target=targeted,
        map_output=_index_or_name(map_output),
        mean=_float_list(mean, "--mean") or Preprocessing.mean, std=_float_list(std, "--std") or Preprocessing.std,
        labels=_read_labels(labels_file), input_gradient=input_gradient, maps=_names(maps_text), fp16=fp16,
        grid=_grid(grid_text), prefix_tokens=prefix_tokens, layout=layout, relevance=relevance,
    )
    shapes = ", ".join(f"{la.name} {'×'.join(map(str, la.shape))}"
                       + ("" if la.layout == "nchw" else f" ({la.layout}" + (
                           f", {la.prefix_tokens} prefix tokens)" if la.layout == "tokens" else ")"))
                       for la in manifest.layers)
    heads = f"; map heads {', '.join(manifest.maps)}" if manifest.maps else ""
    heads += "; layer-wise relevance" if manifest.relevance else ""
    half = f"; {_FP16_DONE}" if fp16 else ""
    what = (f"output {'×'.join(map(str, manifest.target_shape))} per image, explained for a target"
            if manifest.targeted else f"{manifest.num_classes} classes")
    click.echo(f"wrote {out}: {what}; layers {shapes}{heads}; verified against eager PyTorch{half}")


@main.command("add-maps")
@click.argument("model", type=click.Path())
@click.option("--maps", "maps_text", help=_MAPS_HELP)
@click.option("--no-gradients", is_flag=True,
              help="Write the file without the gradient branch (and the gradient methods' heads), so that one run "
                   "computes only the forward pass and Recipro-CAM's head; camrt's Engine then runs only the "
                   "methods that need no gradient.")
@click.option("--maps-only", is_flag=True,
              help="Write the file with only the logits, the classes and the map heads' outputs (no activations or "
                   "gradients): the file to deploy a method computed in the graph; camrt's Engine then answers only "
                   "the heads' methods.")
@click.option("--no-saliency", is_flag=True,
              help="Leave out the heads' saliency.M outputs (the maps upsampled to the input size and normalised): "
                   "for callers that resize the low-resolution map.M.L themselves; camrt's Engine computes the "
                   "saliency when it is read.")
@click.option("-o", "--output", type=click.Path(), required=True, help="File to write (may be MODEL itself).")
@friendly
def add_maps_cmd(model: str, maps_text: str | None, no_gradients: bool, maps_only: bool, no_saliency: bool,
                 output: str) -> None:
    """Add map heads to MODEL, a file written by `camrt export` (no PyTorch needed)."""
    from camrt.graph.map_heads import add_maps

    if maps_text is None and not no_gradients and not maps_only and not no_saliency:
        raise click.UsageError("add-maps needs --maps (the methods to add heads for), --no-gradients, --maps-only, "
                               "--no-saliency, or several of them")
    manifest = add_maps(model, _names(maps_text), output, gradients=not no_gradients, maps_only=maps_only,
                        saliency=not no_saliency)
    kept = "; maps only" if manifest.maps_only else "" if manifest.gradients else "; without gradients"
    click.echo(f"wrote {output}: map heads {', '.join(manifest.maps) or 'none'}{kept}")


@main.command("convert")
@click.argument("model", type=click.Path())
@click.option("--fp16", is_flag=True, help=_FP16_HELP)
@click.option("-o", "--output", type=click.Path(), required=True, help="File to write (may be MODEL itself).")
@friendly
def convert_cmd(model: str, fp16: bool, output: str) -> None:
    """Convert MODEL, a file written by `camrt export`, to another precision (no PyTorch needed)."""
    if not fp16:
        raise click.UsageError("say what to convert MODEL to: --fp16 (the only conversion so far)")
    from camrt.graph.fp16 import convert_file

    convert_file(model, output)
    click.echo(f"wrote {output}: {_FP16_DONE}")


@main.command()
def methods() -> None:
    """List the CAM methods with a one-line description each."""
    from camrt.methods import METHODS

    width = max(len(n) for n in METHODS)
    for name, m in METHODS.items():
        click.echo(f"{name:<{width}}  {m.family:<12} {m.description}")
        if m.options.names():
            defaults = ", ".join(f"{k}={v}" for k, v in m.options.defaults().items())
            click.echo(f"{'':<{width}}  {'':<12} options: {defaults}")


@main.command()
@click.argument("model", type=click.Path())
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("-m", "--method", default="gradcam", show_default=True,
              help="Methods, separated by commas; 'all' is every method served from one graph run "
                   "(see `camrt methods`).")
@click.option("-o", "--out", "out_dir", default="out", show_default=True, type=click.Path(), help="Output directory.")
@click.option("--class-idx", type=int, help="Class to explain (default: the top-1 class of each image).")
@click.option("--target-class", type=int,
              help="Target mode: the class to explain (its predicted region on a segmentation output).")
@click.option("--mask", "mask_file", type=click.Path(),
              help="Target mode: explain --target-class inside this region (image or .npy of the output's size).")
@click.option("--box", metavar="X0,Y0,X1,Y1",
              help="Target mode: explain the detection of --target-class at this box (image pixels) of a raw "
                   "detection head (N×A×(4+K): boxes then class scores per anchor).")
@click.option("--concept", "concept_file", type=click.Path(),
              help="Target mode: explain the embedding's cosine similarity to this vector (.npy or text).")
@click.option("--layer", "layer_names", multiple=True, help="Target layer; repeat to fuse several (default: last).")
@click.option("--colormap", default="jet", show_default=True)
@click.option("--alpha", type=float, default=0.5, show_default=True, help="Heat-map weight in the overlay.")
@click.option("--save-npy", is_flag=True, help="Also save each saliency map as .npy.")
@click.option("--topk", type=int, default=5, show_default=True,
              help="Predictions to print per image (all classes if the model has fewer).")
@runtime_options
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of randomised methods.")
@click.option("-O", "--option", "option_items", multiple=True, metavar="NAME=VALUE",
              help="A method option, e.g. -O n=8 (repeat; `camrt methods` lists them).")
@click.option("--chunk-size", type=int, default=16, show_default=True,
              help="Copies per network run for perturbation methods (memory grows with it).")
@friendly
def explain(model: str, images: tuple[str, ...], method: str, out_dir: str, class_idx: int | None,
            target_class: int | None, mask_file: str | None, box: str | None, concept_file: str | None,
            layer_names: tuple[str, ...], colormap: str, alpha: float, save_npy: bool, topk: int, device: str,
            precision: str, seed: int, option_items: tuple[str, ...], chunk_size: int) -> None:
    """Explain IMAGES (files or directories) with MODEL and write overlays to --out."""
    from camrt.engine import Engine
    from camrt.explain import explain_files, read_target

    options = parse_options(option_items)
    engine = Engine(model, device=device, chunk_size=chunk_size, precision=_precision(precision))
    layer = None if not layer_names else layer_names[0] if len(layer_names) == 1 else list(layer_names)
    target = read_target(engine, target_class, mask_file, concept_file, box)
    click.echo(f"{Path(model).name}: provider {engine.provider}")
    failed = 0

    def progress(path: Path, name: str, done: int, total: int) -> None:
        click.echo(f"\r  {path.name} {name}: {done}/{total} network runs", nl=done == total, err=True)

    # A progress line only on a terminal; in logs it would be one line per chunk. Whatever fails for
    # one image (unreadable, a method that does not apply, a file not written) is reported and the
    # others go on; the exit code then says so.
    for r in explain_files(engine, images, out_dir, method, class_idx, layer, colormap, alpha, save_npy, topk, seed,
                           progress if sys.stderr.isatty() else None, options, target):
        failed += r.failed
        if r.error:
            click.echo(f"camrt: error: {r.error}", err=True)
            continue
        top = f"score {r.score:.6g}" if r.score is not None else ", ".join(f"{label} {p:.1%}" for _, label, p in r.top)
        note = f" [{r.note}]" if r.note else ""
        times = " ".join(f"{k} {v * 1000:.0f} ms" for k, v in r.seconds.items())
        click.echo(f"{r.path}{note}: {top}")
        click.echo(f"  {len(r.written)} files in {out_dir}; {times}")
        for name, err in r.method_errors.items():
            click.echo(f"camrt: error: {r.path}: {name}: {err}", err=True)
        for err in r.write_errors:
            click.echo(f"camrt: error: {err}", err=True)
    if failed:
        sys.exit(EXIT_USER_ERROR)


@main.command("triton")
@click.argument("model", type=click.Path())
@click.option("--repository", required=True, type=click.Path(), help="The model repository folder to write into.")
@click.option("--name", help="The model's name in the repository [default: MODEL's name before its first dot].")
@click.option("--output", "outputs", multiple=True,
              help="Keep only this output (repeat): Triton computes every output on every request.")
@click.option("--max-batch-size", type=int, default=32, show_default=True)
@click.option("--instances", type=int, default=1, show_default=True, help="Model instances per device.")
@click.option("--kind", type=click.Choice(["gpu", "cpu"]), default="gpu", show_default=True)
@click.option("--tensorrt", type=click.Choice(["fp16", "fp32"]),
              help="Run through ONNX Runtime's TensorRT execution accelerator at this precision.")
@friendly
def triton_cmd(model: str, repository: str, name: str | None, outputs: tuple[str, ...], max_batch_size: int,
               instances: int, kind: str, tensorrt: str | None) -> None:
    """Write a Triton Inference Server model repository entry for MODEL (ONNX Runtime backend)."""
    from camrt.triton import write_repository

    folder = write_repository(model, repository, name, list(outputs) or None, max_batch_size, instances, kind,
                              tensorrt)
    click.echo(f"wrote {folder}/config.pbtxt and {folder}/1/model.onnx")


@main.command("batch")
@click.argument("model", type=click.Path())
@click.argument("source")
@click.option("-o", "--output", required=True, type=click.Path(),
              help="Results folder (Parquet shards); a rerun with the same folder skips what is done.")
@click.option("-m", "--method", "methods", default="gradcam", show_default=True,
              help="Methods separated by commas ('all' as in `camrt explain`).")
@click.option("--layer", help="Target layer [default: the last exported].")
@click.option("--class-idx", type=int, help="Class to explain for every image [default: each image's top-1].")
@click.option("--workers", type=int, help="Actors, each holding one engine [default: one per CPU of the cluster, "
                                          "one ONNX Runtime thread each; with --gpus-per-worker, as many as the GPUs "
                                          "hold].")
@click.option("--address", help="Join this Ray cluster ('auto', 'ray://HOST:10001') [default: a local Ray started "
                                "in this process].")
@click.option("--gpus-per-worker", type=float, default=0, show_default=True, help="GPUs per actor (CUDA engines).")
@click.option("--overlays", is_flag=True, help="Also write each map over its image to OUTPUT/overlays/.")
@click.option("--batch-size", type=int, default=16, show_default=True, help="Images per actor call (one graph run).")
@click.option("--image-column", default="image", show_default=True, help="Image column of a Parquet SOURCE.")
@click.option("--key-column", help="Column naming each row of a Parquet SOURCE [default: 'path', or the image "
                                   "column when it holds paths].")
@friendly
def batch_cmd(model: str, source: str, output: str, methods: str, layer: str | None, class_idx: int | None,
              workers: int | None, address: str | None, gpus_per_worker: float, overlays: bool, batch_size: int,
              image_column: str, key_column: str | None) -> None:
    """Explain every image of SOURCE (a folder, glob, list of paths or URIs, or Parquet table) on Ray Data."""
    import logging
    import os

    os.environ.setdefault("RAY_DATA_LOG_LEVEL", "ERROR")  # the command's output is its own summary
    logging.getLogger("ray").setLevel(logging.ERROR)
    from camrt.scale import batch

    bar = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if not sys.stderr.isatty():
            return
        if bar is None:
            bar = click.progressbar(length=total, label="images", file=sys.stderr)
            bar.__enter__()
        bar.update(done - bar.pos)

    try:
        s = batch(model, source, output, methods, layer, class_idx, workers, address, gpus_per_worker, overlays,
                  batch_size, image_column, key_column, progress)
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)
    click.echo(f"{s.out}: {s.explained} images explained, {s.failed} failed, {s.skipped} done before (of {s.images}); "
               f"{len(s.shards)} shards in {s.seconds:.1f} s, {s.workers} worker{'s' if s.workers != 1 else ''}")
    if s.failed:
        raise SystemExit(2)


@main.command("serve")
@click.argument("model", type=click.Path())
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on (0.0.0.0: all).")
@click.option("--port", type=int, default=8000, show_default=True)
@click.option("-m", "--method", default="gradcam", show_default=True, help="Method of requests that name none.")
@click.option("--replicas", type=int, default=1, show_default=True, help="Copies of the service, each with one engine.")
@click.option("--gpus-per-replica", type=float, default=0, show_default=True, help="GPUs per replica (CUDA engines).")
@click.option("--max-batch-size", type=int, default=8, show_default=True,
              help="Images of concurrent requests run in one graph run, at most this many.")
@click.option("--batch-wait-ms", type=float, default=10, show_default=True,
              help="How long a batch waits to fill.")
@click.option("--max-bytes", type=int, default=DEFAULT_SERVE_BYTES, show_default=True,
              help="Largest request body (413 above).")
@click.option("--max-images", type=int, default=DEFAULT_SERVE_IMAGES, show_default=True,
              help="Most images in one request (413 above).")
@click.option("--address", help="Join this Ray cluster [default: a local Ray started in this process].")
@friendly
def serve_cmd(model: str, host: str, port: int, method: str, replicas: int, gpus_per_replica: float,
              max_batch_size: int, batch_wait_ms: float, max_bytes: int, max_images: int, address: str | None) -> None:
    """Serve MODEL over HTTP on Ray Serve: POST /explain an image, get its prediction and map (Ctrl-C stops)."""
    from camrt.scale.serve import quiet_ray_logs, serve

    quiet_ray_logs()  # the command's output is its own lines

    s = serve(model, host, port, method, replicas, gpus_per_replica, max_batch_size, batch_wait_ms, max_bytes,
              max_images, address)
    click.echo(f"serving {Path(model).name} at {s.url}/ ({s.replicas} replica{'s' if s.replicas > 1 else ''}): "
               f"POST {s.url}/explain, GET {s.url}/healthz, {s.url}/readyz; Ctrl-C stops")
    sys.stdout.flush()
    import signal

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)  # `docker stop`, `kill`: stop as Ctrl-C does, Ray included
    # Ctrl-C (SIGINT) too, explicitly: a process started with SIGINT ignored (a background job of a
    # script, nohup) inherits that, and Python then installs no KeyboardInterrupt handler of its own.
    signal.signal(signal.SIGINT, interrupt)
    stopped = s.wait(stop_timeout=SERVE_STOP_TIMEOUT)
    if not stopped:
        click.echo(f"camrt: Ray had not stopped {SERVE_STOP_TIMEOUT:.0f} s after the interrupt; exiting without "
                   "waiting for it", err=True)
    sys.stdout.flush()
    sys.stderr.flush()
    # Ray is down (or given up on): leave without the interpreter's exit, whose atexit hooks and any
    # thread Ray Serve left behind could keep the command alive after Ctrl-C.
    os._exit(0 if stopped else EXIT_INTERNAL)


@main.command("eval")
@click.argument("model", type=click.Path())
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("--methods", default="gradcam", show_default=True,
              help="Methods to compare, separated by commas ('all' as in `camrt explain`).")
@click.option("--metrics", default="all", show_default=True,
              help="Metrics, separated by commas, or 'all' (those needing annotations only where there are some).")
@click.option("-o", "--output", default="report", show_default=True, type=click.Path(), help="Report folder.")
@click.option("--annotations", type=click.Path(),
              help="Boxes or masks: camrt's JSON or COCO-style [default: annotations.json in the images' folder].")
@click.option("--classes", "classes_text", default="auto", show_default=True, metavar="auto|annotated|top1|N",
              help="Class each map explains: auto = each class the annotations name (scored against its objects), "
                   "else the top-1; annotated = only those; top1 = each image's top-1; N = class N everywhere.")
@click.option("--batch", type=int, default=8, show_default=True,
              help="Image-and-class rows per run (memory grows with it).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of randomised methods, metrics, bootstrap.")
@runtime_options
@click.option("--chunk-size", type=int, default=16, show_default=True,
              help="Perturbed copies per network run (memory grows with it).")
@click.option("--no-plots", is_flag=True, help="Leave out the PNG plots (they need matplotlib, camrt[eval]).")
@friendly
def eval_cmd(model: str, images: tuple[str, ...], methods: str, metrics: str, output: str, annotations: str | None,
             classes_text: str, batch: int, seed: int, device: str, precision: str, chunk_size: int,
             no_plots: bool) -> None:
    """Score METHODS' maps of IMAGES (files or folders) with faithfulness and localisation metrics,
    and write a report (CSV, Markdown, plots) to --output."""
    from camrt.engine import Engine
    from camrt.evaluation import evaluate_folder, resolve_metrics
    from camrt.explain import resolve_methods

    resolve_methods(methods)  # unknown names: one line before the model is even loaded
    resolve_metrics(metrics)
    engine = Engine(model, device=device, chunk_size=chunk_size, precision=_precision(precision))
    bar: list = []

    def progress(done: int, total: int) -> None:  # a bar on a terminal only; none in logs
        if not bar:
            bar.append(click.progressbar(length=total, label="evaluating", file=sys.stderr))
            bar[0].__enter__()
        bar[0].update(done - bar[0].pos)

    try:
        r = evaluate_folder(engine, images, methods, metrics, output, annotations, batch=batch, seed=seed,
                            classes=_classes(classes_text), plots=not no_plots,
                            progress=progress if sys.stderr.isatty() else None)
    finally:
        if bar:
            bar[0].__exit__(None, None, None)
    click.echo(f"{Path(model).name}: provider {engine.provider}; {len(set(r.images))} images, {len(r.images)} "
               f"image-class rows in {r.seconds:.1f} s "
               f"(metrics {r.timings.get('metrics', 0.0):.1f} s); "
               f"wrote {len(r.written)} files to {r.output} (report.md)")
    width = max(len(c.method) for c in r.table) if r.table else 0
    for c in r.table:
        click.echo(f"  {c.method:<{width}}  {c.metric:<24} {c.mean:8.4f}  [{c.low:.4f}, {c.high:.4f}]  n={c.n}")
    for note in r.notes:
        click.echo(f"note: {note}")
    for path, why in r.skipped:
        click.echo(f"camrt: error: skipped '{path}': {why}", err=True)
    if r.skipped:
        sys.exit(EXIT_USER_ERROR)


def _grid(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise click.BadParameter(f"'{text}' is not HxW, e.g. 14x14", param_hint="--grid")
    return int(parts[0]), int(parts[1])


def _classes(text: str) -> int | str:
    """--classes: a class index (digits, or -1 for the top-1) or a mode name, checked by the library."""
    t = text.strip()
    return int(t) if t.lstrip("-").isdigit() else t


def _size(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise click.BadParameter(f"'{text}' is not WIDTHxHEIGHT in pixels, e.g. 640x480", param_hint="--size")
    return int(parts[0]), int(parts[1])


@main.command()
@click.argument("model", type=click.Path())
@click.argument("source")
@click.option("-o", "--output", type=click.Path(), help="Video file to write (.mp4, .avi, .mkv, .mov).")
@click.option("-m", "--method", default="gradcam", show_default=True, help="A method (see `camrt methods`).")
@click.option("--show", is_flag=True, help="Show the frames in a window (q or Esc stops).")
@click.option("--every", type=click.IntRange(min=1), default=1, show_default=True,
              help="Explain and write one frame in N (the output frame rate is divided by N).")
@click.option("--size", "size_text", help="Output size WIDTHxHEIGHT [default: the input's].")
@click.option("--panel", is_flag=True, help="Add the colour-mapped map beside each frame (twice as wide).")
@click.option("--smooth", type=float, default=0.0, show_default=True,
              help="Temporal smoothing of the maps: EMA weight of the past, in [0, 1); 0 is off.")
@click.option("--batch", type=click.IntRange(min=1), default=4, show_default=True, help="Frames per graph run.")
@click.option("--layer", "layer_names", multiple=True, help="Target layer; repeat to fuse several (default: last).")
@click.option("--class-idx", type=int, help="Class to explain in every frame (default: each frame's top-1).")
@runtime_options
@click.option("--codec", help="FourCC of the output codec, e.g. mp4v, avc1, MJPG [default: from the suffix].")
@click.option("--colormap", default="jet", show_default=True)
@click.option("--alpha", type=float, default=0.5, show_default=True, help="Heat-map weight in the overlay.")
@click.option("--timeout", type=float, default=10.0, show_default=True,
              help="Seconds to wait for a frame (first or next) before giving up on the source.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of randomised methods.")
@click.option("-O", "--option", "option_items", multiple=True, metavar="NAME=VALUE",
              help="A method option, e.g. -O n=8 (repeat; `camrt methods` lists them).")
@friendly
def video(model: str, source: str, output: str | None, method: str, show: bool, every: int, size_text: str | None,
          panel: bool, smooth: float, batch: int, layer_names: tuple[str, ...], class_idx: int | None, device: str,
          precision: str,
          codec: str | None, colormap: str, alpha: float, timeout: float, seed: int,
          option_items: tuple[str, ...]) -> None:
    """Explain the frames of SOURCE (a video file, a camera index such as 0, or a stream URL) with
    MODEL, and write them with their overlays to --output and/or show them (--show)."""
    import os

    if output is None and not show:
        raise click.UsageError("give -o OUT to write a video, --show to watch it, or both")
    size = _size(size_text)
    options = parse_options(option_items)
    # FFmpeg's own log would print codec probing and connection failures that camrt reports itself,
    # and OpenCV's a warning per frame it fails to write (camrt reads the file back and says it once).
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
    from camrt.engine import Engine
    from camrt.video import VideoInterrupted, VideoWriteError, explain_video

    # Decode and encode threads share the cores with the model: its threads must not spin between runs.
    engine = Engine(model, device=device, spinning=False, precision=_precision(precision))
    layer = None if not layer_names else layer_names[0] if len(layer_names) == 1 else list(layer_names)
    click.echo(f"{Path(model).name}: provider {engine.provider}; {method}, batch {batch}")
    last = [0.0]

    # A live progress line on a terminal, at most 4 times a second; none in logs (the summary follows).
    def progress(done: int, total: int | None, elapsed: float) -> None:
        if elapsed - last[0] < 0.25 and done != total:
            return
        last[0] = elapsed
        of = f"/{total}" if total else ""
        click.echo(f"\r  {done}{of} frames, {done / max(elapsed, 1e-9):.1f} fps ", nl=False)

    tty = sys.stdout.isatty()
    try:
        s = explain_video(engine, source, output, method=method, every=every, size=size, panel=panel, show=show,
                          smoothing=smooth, batch=batch, layer=layer, class_idx=class_idx, codec=codec,
                          colormap=colormap, alpha=alpha, timeout=timeout, progress=progress if tty else None,
                          seed=seed, **options)
    except (VideoInterrupted, VideoWriteError) as e:  # the summary, then 130 or the error's one line and 2
        if tty:
            click.echo()
        _video_summary(e.summary)
        raise
    if tty:
        click.echo()
    _video_summary(s)


def _video_summary(s: VideoSummary) -> None:
    size = "×".join(map(str, s.input_size)) if s.input_size else "?"
    click.echo(f"{s.source}: {size} at {s.input_fps:.4g} fps; {s.frames_read} frames read, "
               f"{s.frames_explained} explained")
    if s.output and not s.frames_written:
        sent = f": none of the {s.frames_sent} frames sent could be played back" if s.frames_sent else ""
        click.echo(f"wrote nothing to {s.output} ({s.codec}){sent}")
    elif s.output:
        out = "×".join(map(str, s.output_size)) if s.output_size else "?"
        count = (f"{s.frames_written} frames" if s.frames_written == s.frames_sent else
                 f"{s.frames_written} of {s.frames_sent} frames playable")
        click.echo(f"wrote {s.output} ({s.codec}): {count}, {out} at {s.output_fps:.4g} fps")
    for note in s.notes:
        click.echo(f"note: {note}")
    fps = s.fps()
    stages = ", ".join(f"{k} {fps[k]:.1f}" for k in ("decode", "preprocess", "inference", "method", "overlay",
                                                       "encode") if k in fps)
    click.echo(f"fps: {stages}; end to end {fps.get('total', 0.0):.1f}")


if __name__ == "__main__":
    main()
