"""ROAD: Remove And Debias (Rong et al., ICML 2022, https://arxiv.org/abs/2202.00449).

A fraction p of the pixels is removed, most relevant first (MoRF) or least relevant first (LeRF),
and filled in by noisy linear imputation: each removed pixel becomes the weighted mean of its 8
neighbours (weight 1/6 for the 4 direct ones, 1/12 for the diagonal ones, renormalised at the
border), which for all removed pixels together is one sparse linear system

    (Σ_{j∈N(i)} w_ij) v_i − Σ_{j∈N(i) removed} w_ij v_j = Σ_{j∈N(i) kept} w_ij x_j   for removed i,

solved per channel, plus Gaussian noise of standard deviation 0.01 on the imputed values (in the
preprocessed input, as the authors' code and pytorch-grad-cam's `NoisyLinearImputer`). The curve
is the softmax score of the explained class at each p; the metric is its mean over p (MoRF: lower
is better, LeRF: higher is better).

Choices: p = 10%, 20%, ..., 90% (the paper's range, and pytorch-grad-cam's `ROAD*Average`); exactly
``round(p·H·W)`` pixels removed, taken in saliency order (ties in row-major order), as the paper
says. pytorch-grad-cam removes the pixels at or above a percentile threshold instead (its
``ROADMostRelevantFirst(percentile=q)`` removes the top 100 − q %), which removes more pixels when
the map has ties and, through the percentile's interpolation, can differ by one pixel; the tests
compare both where the counts agree.

Speed: the system is symmetric positive definite; it is ordered by a geometric nested dissection
of the removed pixels (split along the longer side at the median, the separating row or column
last: with the 8-neighbour stencil one line separates) and factorised once by SuperLU in symmetric
mode for all channels. scipy is needed (the `camrt[metrics]` extra): numpy alone has no sparse
direct solver, and an iterative one needs hundreds of iterations on large holes
(docs/benchmarks.md, "Metrics").
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from camrt.checks import number
from camrt.errors import InputError
from camrt.metrics.contract import Metric, MetricContext, MetricResult, Scorer, rows

PERCENTAGES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
NOISE = 0.01
# (dy, dx) → weight: the paper's neighbour weights.
NEIGHBOURS = (((0, 1), 1 / 6), ((0, -1), 1 / 6), ((1, 0), 1 / 6), ((-1, 0), 1 / 6),
              ((1, 1), 1 / 12), ((1, -1), 1 / 12), ((-1, 1), 1 / 12), ((-1, -1), 1 / 12))
_LEAF = 64


def _scipy():  # noqa: ANN202 - the two functions of scipy ROAD uses
    try:
        from scipy.sparse import csc_matrix
        from scipy.sparse.linalg import splu
    except ImportError as e:
        raise InputError("ROAD's imputation needs scipy; install it with `pip install camrt[metrics]` "
                         "(or `pip install scipy`)") from e
    return csc_matrix, splu


def dissection(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """An ordering of the pixels (rows, cols) by geometric nested dissection: the two halves on
    either side of the median row or column (of the longer side), each ordered so recursively, then
    the separating line. Sparse elimination in this order fills in little."""
    parts: list[np.ndarray] = []
    stack = [np.arange(len(rows))]
    while stack:  # an explicit stack, so that parts come out as halves, halves, separator
        idx = stack.pop()
        if isinstance(idx, tuple):  # a separator, placed after both halves
            parts.append(idx[0])
            continue
        if len(idx) <= _LEAF:
            parts.append(idx)
            continue
        r, c = rows[idx], cols[idx]
        key = r if np.ptp(r) >= np.ptp(c) else c
        m = int(np.median(key))
        low, high, sep = idx[key < m], idx[key > m], idx[key == m]
        if len(low) == 0 and len(high) == 0:
            parts.append(idx)
            continue
        stack.extend([(sep,), high, low])  # popped in the order low, high, separator
    return np.concatenate(parts)


def system(image: np.ndarray, removed: np.ndarray) -> tuple[object, np.ndarray, np.ndarray, np.ndarray]:
    """The imputation's linear system for the pixels of `removed` (bool H×W, some but not all) of
    `image` (C×H×W): ``(a, rhs, idx, place)``, `a` the sparse m×m matrix (CSC) and `rhs` the m×C
    right-hand sides with the unknowns in nested-dissection order, `idx` the removed pixels' flat
    indices and `place` each one's unknown."""
    csc_matrix, _ = _scipy()
    c, h, w = image.shape
    flat = removed.reshape(-1)
    idx = np.flatnonzero(flat)
    m = len(idx)
    r0, c0 = np.divmod(idx, w)
    place = np.empty(m, np.int64)
    place[dissection(r0, c0)] = np.arange(m)
    variable = np.full(flat.size, -1, np.int64)
    variable[idx] = place
    diag = np.zeros(m)
    rhs = np.zeros((m, c))
    ri, ci, vals = [], [], []
    src = image.reshape(c, -1).astype(np.float64)
    for (dy, dx), weight in NEIGHBOURS:
        r, cc = r0 + dy, c0 + dx
        inside = (r >= 0) & (r < h) & (cc >= 0) & (cc < w)
        i = place[inside]
        j = (r * w + cc)[inside]
        diag[i] += weight
        gone = flat[j]
        ri.append(i[gone])
        ci.append(variable[j[gone]])
        vals.append(np.full(int(gone.sum()), -weight))
        rhs[i[~gone]] += weight * src[:, j[~gone]].T  # each i once per offset: no repeated index
    ri.append(np.arange(m))
    ci.append(np.arange(m))
    vals.append(diag)
    a = csc_matrix((np.concatenate(vals), (np.concatenate(ri), np.concatenate(ci))), shape=(m, m))
    return a, rhs, idx, place


def impute(image: np.ndarray, removed: np.ndarray, noise: float = NOISE,
           rng: np.random.Generator | None = None) -> np.ndarray:
    """`image` (C×H×W) with the pixels of `removed` (bool H×W) filled in by noisy linear
    imputation (module docstring); `noise` is the standard deviation of the Gaussian noise added
    to the imputed values (0: none; then `rng` is not needed)."""
    _, splu = _scipy()
    out = image.reshape(len(image), -1).copy()
    if not removed.any():
        return out.reshape(image.shape)
    if removed.all():
        raise InputError("ROAD cannot impute an image whose pixels are all removed")
    a, rhs, idx, place = system(image, removed)
    # Symmetric positive definite: no pivoting, the nested-dissection order kept as it is.
    lu = splu(a, permc_spec="NATURAL", diag_pivot_thresh=0.0, options={"SymmetricMode": True})
    values = lu.solve(rhs)[place].T  # back to the order of idx
    if noise:
        values = values + noise * (rng if rng is not None else np.random.default_rng()).standard_normal(values.shape)
    out[:, idx] = values
    return out.reshape(image.shape)


def removal_counts(pixels: int, percentages: Sequence[float]) -> np.ndarray:
    """``round(p · pixels)`` for each p."""
    return np.array([int(round(p * pixels)) for p in percentages], np.int64)


def road(ctx: MetricContext, most_relevant_first: bool, percentages: Sequence[float] = PERCENTAGES,
         noise: float = NOISE) -> MetricResult:
    """ROAD's curves (the class score after removing each fraction of `percentages`, most or least
    relevant first) and their mean per image. The noise is drawn from ``default_rng(ctx.seed)``."""
    percentages = [number(p, "ROAD percentage", 0.0, 1.0, positive=True, high_open=True) for p in percentages]
    noise = number(noise, "ROAD noise")
    x, n = ctx.x, len(ctx.x)
    k = removal_counts(x.shape[2] * x.shape[3], percentages)
    flat = ctx.saliency.reshape(n, -1)
    order = np.argsort(-flat if most_relevant_first else flat, axis=1, kind="stable")
    rng = np.random.default_rng(ctx.seed)
    scorer = Scorer(ctx, n * len(k), needs_base=False)  # only the imputed copies are scored

    def make(start: int, stop: int) -> np.ndarray:
        out = np.empty((stop - start, *x.shape[1:]), np.float32)
        for j, row in enumerate(range(start, stop)):
            i, p = divmod(row, len(k))
            removed = np.zeros(flat.shape[1], bool)
            removed[order[i, :k[p]]] = True
            out[j] = impute(x[i], removed.reshape(x.shape[2:]), noise, rng)
        return out

    curves = scorer.stream(n * len(k), np.repeat(ctx.class_idx, len(k)), make).reshape(n, len(k))
    return MetricResult(curves.mean(axis=1), curves, np.asarray(percentages, np.float64))


def road_morf(ctx: MetricContext) -> MetricResult:
    """ROAD, most relevant first: the mean class score after removing 10..90% (lower is better)."""
    return road(ctx, most_relevant_first=True)


def road_lerf(ctx: MetricContext) -> MetricResult:
    """ROAD, least relevant first: the mean class score after removing 10..90% (higher is better)."""
    return road(ctx, most_relevant_first=False)


PAPER = "https://arxiv.org/abs/2202.00449"
METRICS = (
    Metric("road-morf", "mean class score with 10..90% of the most relevant pixels imputed (lower is better)",
           PAPER, needs_annotations=False, higher_is_better=False, run=road_morf,
           runs=lambda ctx: rows(ctx, len(ctx.x) * len(PERCENTAGES), needs_base=False)),
    Metric("road-lerf", "mean class score with 10..90% of the least relevant pixels imputed (higher is better)",
           PAPER, needs_annotations=False, higher_is_better=True, run=road_lerf,
           runs=lambda ctx: rows(ctx, len(ctx.x) * len(PERCENTAGES), needs_base=False)),
)
