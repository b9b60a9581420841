"""Explain image files and write overlays: the library behind `camrt explain`."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from camrt import checks
from camrt.engine import Engine
from camrt.errors import CamrtError, InputError
from camrt.methods import METHODS
from camrt.visual.overlay import IMAGE_SUFFIXES, grid, overlay, read_image, write_image


def served_methods() -> list[str]:
    """What '--method all' means: the methods served from one graph run (gradient and sampled
    families). Perturbation methods re-run the network many times and are asked for by name."""
    return [name for name, m in METHODS.items() if m.family in ("gradient", "sampled")]


def resolve_methods(methods: str | Sequence[str]) -> list[str]:
    """'all', a comma-separated string or a list of names, checked against `METHODS`."""
    names = methods.split(",") if isinstance(methods, str) else list(methods)
    names = [n.strip() for n in names if n.strip()]
    if names == ["all"]:
        return served_methods()
    unknown = [n for n in names if n not in METHODS]
    if unknown or not names:
        raise InputError(f"unknown method(s) {', '.join(unknown) or '(none given)'}; choose from "
                         f"{', '.join(served_methods())} or 'all' (`camrt methods` describes them)")
    return names


def expand_inputs(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """Files as given; directories replaced by the image files inside them (sorted)."""
    paths: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            paths += sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        else:
            paths.append(p)
    return paths


@dataclass
class ImageReport:
    """What happened to one input: its prediction, the files written, and any errors."""

    path: Path
    error: str | None = None
    note: str | None = None
    top: list[tuple[int, str, float]] = field(default_factory=list)  # (class, label, probability)
    written: list[Path] = field(default_factory=list)
    method_errors: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


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
) -> Iterator[ImageReport]:
    """For each image: one run of the graph, then every method from it; writes
    `out_dir/<stem>.<method>.png` (and `.npy` with `save_npy`), plus `<stem>.grid.png` when several
    methods run. A bad image or a method that does not apply is reported, and the run goes on.
    `progress(path, method, done, total)` follows the methods that re-run the network many times.
    `options` go to every method that takes them; one that no chosen method takes is an error."""
    names = resolve_methods(methods)
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
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot create output directory '{out}': {e.strerror}") from e
    labels = engine.manifest.labels
    for path in expand_inputs(inputs):
        report = ImageReport(path)
        try:
            image, report.note = read_image(path)
            p = engine.forward([image], class_idx)
        except CamrtError as e:
            report.error = str(e)
            yield report
            continue
        probs = np.exp(p.outputs["logits"][0] - p.outputs["logits"][0].max())
        probs /= probs.sum()
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
                continue
            report.seconds[name] = r.timings["method"] + r.timings["inference"] - p.seconds
            tile = overlay(image, r.saliency[0], colormap=colormap, alpha=alpha)
            target = out / f"{path.stem}.{name}.png"
            write_image(target, tile)
            report.written.append(target)
            if save_npy:
                np.save(out / f"{path.stem}.{name}.npy", r.saliency[0])
                report.written.append(out / f"{path.stem}.{name}.npy")
            tiles.append(tile)
            titles.append(name)
        if len(names) > 1 and len(tiles) > 1:
            target = out / f"{path.stem}.grid.png"
            write_image(target, grid(tiles, titles))
            report.written.append(target)
        yield report
