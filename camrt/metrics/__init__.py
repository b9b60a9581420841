"""Faithfulness and localisation metrics of saliency maps, run through the engine.

`METRICS` is the one table from a metric's name to its `Metric` record, each declared next to its
code in its family's module (paper and formula in the module docstring):

* `camrt.metrics.causal`: ``deletion``, ``insertion`` (RISE, Petsiuk et al. 2018).
* `camrt.metrics.confidence`: ``average-drop``, ``increase-in-confidence`` (Grad-CAM++,
  Chattopadhay et al. 2018), ``adcc`` (Poppi et al. 2021).
* `camrt.metrics.road`: ``road-morf``, ``road-lerf`` (Rong et al. 2022; needs scipy).
* `camrt.metrics.localisation`: ``pointing-game`` (Zhang et al. 2018), ``energy-pointing-game``
  (Score-CAM, Wang et al. 2020); these need object masks.

Every perturbed image goes through `Engine.class_scores` (the forward-only graph) in chunks of the
engine's `chunk_size` rows, so memory grows with the chunk, not with the number of images
perturbed. `evaluate` runs several metrics on the maps of several methods, sharing the scores of
the unperturbed images. The arithmetic is numpy (and scipy for ROAD); no torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from camrt.errors import InputError
from camrt.metrics import causal, confidence, localisation, road
from camrt.metrics.contract import Metric, MetricContext, MetricResult, Progress

if TYPE_CHECKING:
    from camrt.engine import Engine


def _table(*families: tuple[Metric, ...]) -> dict[str, Metric]:
    table: dict[str, Metric] = {}
    for declared in families:
        for m in declared:
            if m.name in table:
                raise ValueError(f"metric '{m.name}' is declared twice")
            table[m.name] = m
    return table


METRICS: dict[str, Metric] = _table(causal.METRICS, confidence.METRICS, road.METRICS, localisation.METRICS)


def get_metric(name: str) -> Metric:
    """`METRICS[name]`, or an InputError that lists the metrics."""
    spec = METRICS.get(name) if isinstance(name, str) else None
    if spec is None:
        raise InputError(f"unknown metric '{name}'; the metrics are: {', '.join(METRICS)}")
    return spec


def evaluate(engine: Engine, x: np.ndarray, saliencies: Mapping[str, np.ndarray], class_idx: np.ndarray,
             metrics: Sequence[str], method_options: Mapping[str, Mapping[str, object]] | None = None,
             masks: Sequence[np.ndarray | None] | None = None, seed: int = 0,
             progress: Progress | None = None, base: np.ndarray | None = None) -> dict[tuple[str, str], MetricResult]:
    """Every metric of `metrics` on the maps of every method of `saliencies`, keyed (method, metric).

    Args:
        engine: the engine of the model explained.
        x: the preprocessed float32 N×C×H×W batch.
        saliencies: method name → its N×H×W maps in [0, 1] at the input size. A name that is not a
            method of `camrt.methods.METHODS` (a baseline such as a centre prior) is a map alone:
            ADCC, which re-explains with the method, is NaN for it.
        class_idx: int64 (N,), the classes the maps explain (the same for every method).
        metrics: names of `METRICS`, all checked before any run.
        method_options: method name → the options (and ``layer``) it ran with, for ADCC.
        masks: None, or per image a bool H×W object mask or None (the localisation metrics).
        seed: seeds ROAD's noise.
        progress: called as progress(done, total) over all the runs of all pairs.
        base: the softmax scores of `class_idx` on `x` when already known (`Result.scores` of the
            `Engine.explain` call that made the maps), else None.

    The unperturbed images' scores are computed once, for all methods and metrics, or not at all
    when `base` gives them.
    """
    from camrt.methods import METHODS

    specs = [get_metric(m) for m in metrics]
    if not specs:
        raise InputError(f"no metrics given; the metrics are: {', '.join(METRICS)}")
    if not isinstance(saliencies, Mapping) or not saliencies:
        raise InputError("saliencies must be a dict of method name → N×H×W maps, with at least one method")
    options = dict(method_options or {})
    unknown = [k for k in options if k not in saliencies]
    if unknown:
        raise InputError(f"method_options names methods without maps: {', '.join(map(str, unknown))}")
    if masks is None:
        needing = [s.name for s in specs if s.needs_annotations]
        if needing:
            raise InputError(f"metrics {', '.join(needing)} need annotations (masks); pass masks or leave them out")
    x = engine.prepare(x)
    cls = engine.check_class_idx(class_idx, len(x))
    contexts = {name: MetricContext(engine, x, s, cls, name if name in METHODS else None, options.get(name), masks,
                                    seed) for name, s in saliencies.items()}  # every map checked before any run
    first = next(iter(contexts.values()))
    if base is None:
        base, done = engine.class_scores(first.x, first.class_idx), len(x)
    elif np.shape(base) != (len(x),):
        raise InputError(f"base must hold one score per image ({len(x)}), got shape {np.shape(base)}")
    else:
        base, done = np.asarray(base, np.float64), 0
    total = done + sum(spec.runs(_with(ctx, base=base)) for ctx in contexts.values() for spec in specs)
    if progress is not None:
        progress(done, total)
    results: dict[tuple[str, str], MetricResult] = {}
    for name, ctx in contexts.items():
        for spec in specs:
            offset = done
            report = None if progress is None else (lambda d, t, offset=offset: progress(offset + d, total))
            run_ctx = _with(ctx, base=base, progress=report)
            results[name, spec.name] = spec.run(run_ctx)
            done = offset + spec.runs(run_ctx)
            if progress is not None:
                progress(done, total)
    return results


def _with(ctx: MetricContext, **changes: object) -> MetricContext:
    """`ctx` with some fields replaced, without checking the arrays again."""
    new = object.__new__(MetricContext)
    for field in ctx.__dataclass_fields__:
        object.__setattr__(new, field, changes.get(field, getattr(ctx, field)))
    return new


__all__ = ["METRICS", "Metric", "MetricContext", "MetricResult", "evaluate", "get_metric"]
