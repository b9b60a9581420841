"""Explain image files and write overlays: the library behind `camrt explain`."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from camrt import checks
from camrt.atomic import atomic_write
from camrt.engine import Engine
from camrt.engine.targets import BoxTarget, RegionTarget, Target, box_region, target_for
from camrt.errors import CamrtError, InputError
from camrt.manifest import LOGITS, SCORE, TARGET
from camrt.methods import METHODS, softmax
from camrt.visual.overlay import IMAGE_SUFFIXES, grid, outline, overlay, read_image, write_image


def served_methods() -> list[str]:
    """What '--method all' means: the methods served from one graph run (gradient and sampled
    families). Perturbation methods re-run the network many times and are asked for by name."""
    return [name for name, m in METHODS.items() if m.family in ("gradient", "sampled")]


def _method_names(methods: str | Sequence[str]) -> list[str]:
    names = methods.split(",") if isinstance(methods, str) else list(methods)
    return [n.strip() for n in names if n.strip()]


def resolve_methods(methods: str | Sequence[str]) -> list[str]:
    """A comma-separated string or a list of names, checked against `METHODS`; 'all' stands for
    `served_methods()` at its place (so 'all,scorecam' is those, then Score-CAM). Each method
    runs once, at its first place."""
    names = _method_names(methods)
    unknown = [n for n in names if n not in METHODS and n != "all"]
    if unknown or not names:
        raise InputError(f"unknown method(s) {', '.join(unknown) or '(none given)'}; choose from "
                         f"{', '.join(METHODS)} or 'all' (`camrt methods` describes them)")
    expanded = [m for n in names for m in (served_methods() if n == "all" else [n])]
    return list(dict.fromkeys(expanded))


def expand_inputs(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """Files as given; folders replaced by the image files directly inside them (suffix in
    `IMAGE_SUFFIXES`, any case; sorted). A file met twice (given twice, or given and inside a folder
    given) is kept once, where it first appears.

    Raises:
        InputError: an input that does not exist or is neither a file nor a folder, a folder that
            cannot be listed or holds no image file, or no input at all.
    """
    paths: list[Path] = []
    seen: set[Path] = set()
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            try:
                found = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and not f.is_dir())
            except OSError as e:
                raise InputError(f"cannot list folder '{p}': {e.strerror or e}") from e
            if not found:
                raise InputError(f"folder '{p}' holds no image files (looked for {', '.join(sorted(IMAGE_SUFFIXES))};"
                                 " subfolders are not searched)")
        elif p.is_file():
            found = [p]
        elif p.exists():
            raise InputError(f"input '{p}' is not a file or a folder")
        else:
            raise InputError(f"input '{p}' does not exist")
        for f in found:
            key = f.resolve()
            if key not in seen:
                seen.add(key)
                paths.append(f)
    if not paths:
        raise InputError("no input images given")
    return paths


def _shared(names: Sequence[str]) -> set[str]:
    """The names (case-folded) that more than one entry has."""
    counts = Counter(n.casefold() for n in names)
    return {n for n, c in counts.items() if c > 1}


def output_names(paths: Sequence[str | os.PathLike]) -> list[str]:
    """The name each input's outputs start with (`<name>.<method>.png`), all different, even
    ignoring case (as macOS and Windows file systems compare names).

    An input's stem, when no other input has it; otherwise its path relative to the inputs' common
    folder, suffix kept, each separator written `__` (`a/x.jpg` → `a__x.jpg`). A stem equal to
    another input's path name (`a__x.jpg.png` beside `a/x.jpg`) takes its path name too. Path names
    that still coincide (`x.png` and `x.PNG` in one folder) are told apart by `~2`, `~3`, ... in
    input order. Since no method name has a dot or is 'grid', different names give different files."""
    if not paths:
        return []
    absolute = [Path(os.path.abspath(p)) for p in paths]
    parents = [p.parent.parts for p in absolute]
    common = 0
    while all(len(q) > common and q[common] == parents[0][common] for q in parents):
        common += 1
    flat = ["__".join(part.strip("/\\:") or "_" for part in p.parts[common:]) for p in absolute]
    names = [p.stem for p in absolute]
    while True:  # each round moves at least one input to its path name, so it ends
        shared = _shared(names)
        moved = [flat[i] if n.casefold() in shared else n for i, n in enumerate(names)]
        if moved == names:
            break
        names = moved
    taken = {n.casefold() for n in names}
    seen: set[str] = set()
    for i, name in enumerate(names):
        if name.casefold() in seen:
            k = 2
            while f"{name}~{k}".casefold() in taken:
                k += 1
            names[i] = f"{name}~{k}"
            taken.add(names[i].casefold())
        seen.add(names[i].casefold())
    return names


@dataclass
class ImageReport:
    """What happened to one input: its prediction, the files written, and any errors.

    `failed` is True when the input could not be read, a file could not be written, or a method
    asked for by name does not apply; a method that came only with 'all' and does not apply is
    reported in `method_errors` without failing the input."""

    path: Path
    name: str = ""  # what its files are named after (`output_names`)
    error: str | None = None
    note: str | None = None
    top: list[tuple[int, str, float]] = field(default_factory=list)  # (class, label, probability)
    score: float | None = None  # target mode: the explained score (no classes to rank)
    written: list[Path] = field(default_factory=list)
    method_errors: dict[str, str] = field(default_factory=dict)
    write_errors: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    failed: bool = False


def _save_npy(path: Path, saliency: np.ndarray) -> None:
    """Save a map as .npy, completely or not at all (`camrt.atomic`), or an InputError with the cause."""
    try:
        with atomic_write(path) as f:
            np.save(f, saliency)
    except OSError as e:
        raise InputError(f"cannot write '{path}': {e.strerror or e}") from e


def _output_folder(out: Path, paths: Sequence[Path], names: Sequence[str], methods: Sequence[str],
                   save_npy: bool) -> None:
    """Refuse an output folder that is a file, or whose outputs would replace an input; create it."""
    if out.exists() and not out.is_dir():
        raise InputError(f"output folder '{out}' is a file; give a folder with -o")
    kinds = [f"{m}.png" for m in methods] + [f"{m}.npy" for m in methods if save_npy]
    kinds += ["grid.png"] if len(methods) > 1 else []
    inputs = {p.resolve(): p for p in paths}
    folder = out.resolve()
    for name in names:
        for kind in kinds:
            if (folder / f"{name}.{kind}") in inputs:
                raise InputError(f"'{inputs[folder / f'{name}.{kind}']}' is an input and would be overwritten by "
                                 f"an output; write to another folder (-o)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot create output folder '{out}': {e.strerror or e}") from e


def read_target(engine: Engine, target_class: int | None = None, mask_file: str | os.PathLike | None = None,
                concept_file: str | os.PathLike | None = None, box: str | None = None) -> Target | None:
    """The target the command line's --target-class, --mask and --concept give for `engine`'s model
    (None when none is given: `explain_files` then says what a target-mode model needs). A mask is
    an image whose non-zero pixels are the region, or a .npy array, of the model output's size; a
    concept is a .npy vector or a text file of numbers; a box is "x0,y0,x1,y1" in each image's own
    pixels (`explain_files` scales it to the model's input per image)."""
    if target_class is None and mask_file is None and concept_file is None and box is None:
        return None
    corners = None
    if box is not None:
        try:
            corners = tuple(float(v) for v in box.split(","))
        except ValueError:
            corners = ()
        if len(corners) != 4:
            raise InputError(f"--box takes x0,y0,x1,y1 (four numbers in the image's pixels), got '{box}'")
    mask = concept = None
    if mask_file is not None:
        path = Path(mask_file)
        if path.suffix.lower() == ".npy":
            mask = _load_npy(path, "--mask")
        else:
            image, _ = read_image(path)
            mask = image.reshape(*image.shape[:2], -1).any(axis=2)
    if concept_file is not None:
        path = Path(concept_file)
        if path.suffix.lower() == ".npy":
            concept = _load_npy(path, "--concept")
        else:
            try:
                concept = np.array(path.read_text().split(), dtype=np.float64)
            except (OSError, ValueError) as e:
                raise InputError(f"cannot read --concept '{path}' as numbers: {e}") from e
    _require_target_mode(engine)
    return target_for(tuple(engine.manifest.target_shape), target_class, mask, concept, corners)


def _require_target_mode(engine: Engine) -> None:
    if not engine.manifest.targeted:
        raise InputError(f"'{engine.path.name}' was exported for classes; --target-class, --mask and --concept are "
                         "for models exported with `camrt export --target` (use --class-idx)")


def _load_npy(path: Path, option: str) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise InputError(f"cannot read {option} '{path}': {e}") from e


def explain_files(
    engine: Engine,
    inputs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    methods: str | Sequence[str] = "gradcam",
    class_idx: int | None = None,
    layer: str | Sequence[str] | None = None,
    colormap: str = "jet",
    alpha: float = 0.5,
    save_npy: bool = False,
    topk: int = 5,
    seed: int = 0,
    progress: Callable[[Path, str, int, int], None] | None = None,
    options: Mapping[str, object] | None = None,
    target: Target | None = None,
) -> Iterator[ImageReport]:
    """For each image: one run of the graph, then every method from it; writes
    `out_dir/<name>.<method>.png` (and `.npy` with `save_npy`), plus `<name>.grid.png` when several
    methods run, `<name>` from `output_names`. Every file is written completely or not at all.

    Everything that is wrong for every input (methods, options, layer, colormap, alpha, topk, seed,
    class, the inputs themselves, the output folder) raises InputError before any image is read.
    A bad image, a method that does not apply or a failed write is reported in the image's
    `ImageReport`, and the run goes on. `topk` past the number of classes gives them all.
    `progress(path, method, done, total)` follows the methods that re-run the network many times.
    `options` go to every method that takes them; one that no chosen method takes is an error.
    A model exported in target mode explains `target` (`camrt.engine.targets`, `target_for`) for
    every image, and its report holds the score instead of a ranking."""
    names = resolve_methods(methods)
    named = set(_method_names(methods))  # a method named, not only brought by 'all', must apply
    options = dict(options or {})
    unused = set(options) - {o for name in names for o in METHODS[name].options.names()}
    if unused:
        raise InputError(f"no chosen method takes option(s) {', '.join(sorted(unused))}; `camrt methods` lists "
                         "each method's options")
    # Bad values fail here, once, before any image is read; each method gets the options it takes.
    configured = {name: engine.configure(METHODS[name], {k: v for k, v in options.items()
                                                         if k in METHODS[name].options.names()}) for name in names}
    engine.resolve_layers(layer)  # a layer the model lacks fails every image: one error, before any work
    checks.colormap(colormap)
    checks.alpha(alpha, "--alpha")
    topk = checks.positive_int(topk, "--topk")
    checks.non_negative_int(seed, "--seed")
    if engine.manifest.targeted or target is not None:
        _require_target_mode(engine)
        if class_idx is not None:
            raise InputError(f"'{engine.path.name}' was exported in target mode: use --target-class (with --mask) or "
                             "--concept, not --class-idx")
        if target is None:
            target_for(engine.manifest.target_shape)  # raises: says which options to give
        target.check(tuple(engine.manifest.target_shape))
    elif class_idx is not None:
        engine.check_class_idx(class_idx, 1)  # the engine's own check, once rather than once per image
    paths = expand_inputs(inputs)
    stems = output_names(paths)
    out = Path(out_dir)
    _output_folder(out, paths, stems, names, save_npy)
    labels = engine.manifest.labels

    def write(report: ImageReport, target: Path, save: Callable[[Path, np.ndarray], None], data: np.ndarray) -> None:
        try:
            save(target, data)
        except CamrtError as e:
            report.write_errors.append(str(e))
            report.failed = True
        else:
            report.written.append(target)

    for path, stem in zip(paths, stems, strict=True):
        report = ImageReport(path, stem)
        try:
            image, report.note = read_image(path)
            # a box is given in the image's pixels: in the model input's for the run
            own = target.scaled(image.shape[:2], engine.input_size) if isinstance(target, BoxTarget) else target
            p = engine.forward([image], class_idx, target=own)
        except CamrtError as e:
            report.error = str(e)
            report.failed = True
            yield report
            continue
        if engine.manifest.targeted:
            report.score = float(p.outputs[SCORE][0])
        else:
            probs = softmax(p.outputs[LOGITS][0])
            report.top = [(int(k), labels[k] if labels else str(int(k)), float(probs[k]))
                          for k in np.argsort(probs)[::-1][:topk]]
        report.seconds["inference"] = p.seconds
        tiles, titles = [image], ["input"]
        for name in names:
            try:
                report_progress = None if progress is None else (
                    lambda done, total, path=path, name=name: progress(path, name, done, total))
                r = engine.explain_pass(p, name, layer, seed, report_progress, options=configured[name])
            except CamrtError as e:
                report.method_errors[name] = str(e)
                report.failed |= name in named
                continue
            report.seconds[name] = r.timings["method"] + r.timings["inference"] - p.seconds
            tile = overlay(image, r.saliency[0], colormap=colormap, alpha=alpha)
            if isinstance(p.target, RegionTarget):  # segmentation: the region explained, outlined
                tile = outline(tile, p.outputs[TARGET][0][p.target.k])
            elif isinstance(p.target, BoxTarget):  # detection: the box explained, drawn
                tile = outline(tile, box_region(p.target.box, engine.input_size))
            write(report, out / f"{stem}.{name}.png", write_image, tile)
            if save_npy:
                write(report, out / f"{stem}.{name}.npy", _save_npy, r.saliency[0])
            tiles.append(tile)
            titles.append(name)
        if len(names) > 1 and len(tiles) > 1:
            write(report, out / f"{stem}.grid.png", write_image, grid(tiles, titles))
        yield report
