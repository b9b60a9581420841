"""The contract of a faithfulness or localisation metric: what it is given (`MetricContext`), what
it returns (`MetricResult`) and the record that declares it (`Metric`), plus the one loop that
streams perturbed images through the engine (`Scorer`).

A metric is a function of an engine, a batch of preprocessed images and their saliency maps; every
perturbed image it builds goes through `Engine.class_scores` (the forward-only graph) at most
``engine.chunk_size`` rows at a time, so memory grows with the chunk, not with the number of
perturbed images.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from camrt.checks import non_negative_int
from camrt.errors import InputError

if TYPE_CHECKING:  # the engine imports onnxruntime; the metrics' arithmetic does not need it
    from camrt.engine import Engine

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class MetricResult:
    """values: float64 (N,), one number per image, NaN where the metric does not apply (an image
    without annotation, a map with no energy). curves: float64 N×S, the class score at each of the
    S points of a perturbation curve, or None. fractions: float64 (S,), the fraction of pixels
    perturbed (or removed) at each point, or None."""

    values: np.ndarray
    curves: np.ndarray | None = None
    fractions: np.ndarray | None = None


@dataclass(frozen=True)
class MetricContext:
    """What a metric is given, checked on construction (InputError saying what is wrong).

    engine: the `camrt.engine.Engine` of the model explained.
    x: the preprocessed float32 N×C×H×W batch at the model's input size.
    saliency: N×H×W maps in [0, 1] at the input size (any float dtype; used as float32).
    class_idx: int64 (N,), the class each map explains (not -1: a metric scores the class explained,
        not whatever is top-1 on a perturbed image).
    method, method_options: the CAM method (a name of `camrt.methods.METHODS`) and options that made
        the maps; ADCC re-explains ``x ⊙ saliency`` with them. None for maps no method made (a
        baseline such as a centre prior): ADCC is then NaN. `method_options` may hold ``layer``.
    masks: None, or N entries, each a bool H×W object mask at the model's input size (boxes
        rasterised) or None for an image without annotation.
    seed: seeds the metrics' noise (ROAD's imputation).
    progress: None or progress(done, total), called after each chunk of runs; raising stops the run.
    base: the class scores (softmax) of `x` for `class_idx` when already known (`evaluate` computes
        them once for every method and metric), else None.
    """

    engine: Engine
    x: np.ndarray
    saliency: np.ndarray
    class_idx: np.ndarray
    method: str | None = None
    method_options: Mapping[str, object] | None = None
    masks: Sequence[np.ndarray | None] | None = None
    seed: int = 0
    progress: Progress | None = None
    base: np.ndarray | None = None

    def __post_init__(self) -> None:
        if not (isinstance(self.x, np.ndarray) and self.x.ndim == 4):
            raise InputError("metrics take a preprocessed float32 N×C×H×W batch (Engine.prepare(images) makes one), "
                             f"got {type(self.x).__name__} {getattr(self.x, 'shape', '')}")
        x = self.engine.prepare(self.x)
        n, size = len(x), x.shape[2:]
        s = np.asarray(self.saliency)
        if s.shape != (n, *size) or not np.issubdtype(s.dtype, np.floating):
            raise InputError(f"saliency must be float N×H×W = {n}×{size[0]}×{size[1]} (one map per image at the "
                             f"model's input size), got {s.dtype} {s.shape}")
        if not np.isfinite(s).all() or s.min() < 0 or s.max() > 1:
            raise InputError("saliency maps must hold finite values in [0, 1] (Result.saliency does); "
                             f"got values in [{np.nanmin(s):g}, {np.nanmax(s):g}]")
        cls = self.engine.check_class_idx(self.class_idx, n)
        if (cls == -1).any():
            raise InputError("class_idx must name the class each map explains (Result.class_idx), not -1")
        if self.method is not None:
            from camrt.methods import get_method

            get_method(self.method)
        if self.method_options is not None and not isinstance(self.method_options, Mapping):
            raise InputError(f"method_options must be a dict of the method's options, got {self.method_options!r}")
        object.__setattr__(self, "x", x)
        object.__setattr__(self, "saliency", s.astype(np.float32, copy=False))
        object.__setattr__(self, "class_idx", cls)
        object.__setattr__(self, "masks", check_masks(self.masks, n, size))
        non_negative_int(self.seed, "seed")
        if self.base is not None and np.shape(self.base) != (n,):
            raise InputError(f"base must hold one score per image ({n}), got shape {np.shape(self.base)}")


def check_masks(masks: Sequence[np.ndarray | None] | None, n: int,
                size: tuple[int, int]) -> list[np.ndarray | None] | None:
    """`masks` as a list of N bool H×W arrays or None, or an InputError saying which is wrong."""
    if masks is None:
        return None
    if isinstance(masks, np.ndarray) and masks.ndim == 3:
        masks = list(masks)
    if isinstance(masks, (str, bytes)) or not isinstance(masks, Sequence) or len(masks) != n:
        raise InputError(f"masks must be None or a list of {n} entries (one per image: a bool H×W mask or None)")
    out: list[np.ndarray | None] = []
    for i, m in enumerate(masks):
        if m is not None:
            m = np.asarray(m)
            if m.dtype != np.bool_ or m.shape != tuple(size):
                raise InputError(f"mask of image {i} must be bool {size[0]}×{size[1]} (the model's input size), "
                                 f"got {m.dtype} {m.shape}")
        out.append(m)
    return out


@dataclass(frozen=True)
class Metric:
    """One metric, declared next to its code.

    name: its name in `camrt.metrics.METRICS`; description: one line; paper: the paper's link.
    needs_annotations: whether it needs `MetricContext.masks` (the localisation metrics).
    higher_is_better: the direction of a better map.
    per_class: whether its summary over a dataset is the mean over classes of the per-class means
        (the pointing game's accuracy) rather than the mean over images
        (`camrt.evaluation.class_mean`).
    run(ctx): the per-image values (and curves).
    runs(ctx): the rows it sends through the network for `ctx` (images scored, and for ADCC images
        re-explained): the total its progress calls report.
    """

    name: str
    description: str
    paper: str
    needs_annotations: bool
    higher_is_better: bool
    run: Callable[[MetricContext], MetricResult]
    runs: Callable[[MetricContext], int] = lambda ctx: 0
    per_class: bool = False


def rows(ctx: MetricContext, perturbed: int, needs_base: bool = True) -> int:
    """The rows a metric runs: its `perturbed` images, plus the N unperturbed ones when it needs
    their scores and ``ctx.base`` does not hold them."""
    return perturbed + (len(ctx.x) if needs_base and ctx.base is None else 0)


class Scorer:
    """Streams a metric's perturbed images through `Engine.class_scores` and reports progress:
    `total` rows in all (`rows`)."""

    def __init__(self, ctx: MetricContext, perturbed: int, needs_base: bool = True) -> None:
        self.ctx = ctx
        self.done = 0
        self.total = rows(ctx, perturbed, needs_base)

    def advance(self, rows: int) -> None:
        self.done += rows
        if self.ctx.progress is not None:
            self.ctx.progress(self.done, self.total)

    def base(self) -> np.ndarray:
        """The softmax score of the class explained on each unperturbed image."""
        if self.ctx.base is not None:
            return np.asarray(self.ctx.base, np.float64)
        x = self.ctx.x
        return self.stream(len(x), self.ctx.class_idx, lambda a, b: x[a:b])

    def stream(self, rows: int, classes: np.ndarray, make: Callable[[int, int], np.ndarray]) -> np.ndarray:
        """The scores of `rows` perturbed images, row r scored for ``classes[r]``; ``make(start,
        stop)`` builds rows start..stop-1 (float32), one chunk at a time."""
        chunk = self.ctx.engine.chunk_size
        out = np.empty(rows)
        for s in range(0, rows, chunk):
            e = min(s + chunk, rows)
            out[s:e] = self.ctx.engine.class_scores(make(s, e), classes[s:e])
            self.advance(e - s)
        return out
