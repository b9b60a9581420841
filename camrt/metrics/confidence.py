"""Average Drop and Increase in Confidence (Grad-CAM++, Chattopadhay et al., WACV 2018,
https://arxiv.org/abs/1710.11063) and ADCC (Poppi et al., CVPR Workshops 2021,
https://arxiv.org/abs/2104.10252).

With ``Y`` the softmax score of the explained class on the image and ``O`` the same on the image
multiplied by its map (``x ⊙ s``, the map broadcast over the channels of the preprocessed input,
so that 0 is the normalisation's mean colour, as pytorch-grad-cam and TorchCAM do):

    Average Drop            AD = max(0, Y − O) / Y      (per image; the paper's % is 100× the mean)
    Increase in Confidence  IC = 1[O > Y]
    ADCC                    3 / (1 / Coh + 1 / (1 − Com) + 1 / (1 − AD))
        Coh (coherency)  = (Pearson(s, s') + 1) / 2, s' the map of ``x ⊙ s`` explained again with
                           the same method, options and class (`Engine.explain`)
        Com (complexity) = mean of s (its L1 norm over H·W)

pytorch-grad-cam's `DropInConfidence` returns ``max(0, Y − O)`` without the division by ``Y``;
camrt follows the paper (the tests compare with both variants). ADCC is 0 when any of its three
terms is 0 and NaN when the coherency is undefined (a constant map, or maps no method made).
"""

from __future__ import annotations

import numpy as np

from camrt.metrics.contract import Metric, MetricContext, MetricResult, Scorer, rows


def masked(x: np.ndarray, saliency: np.ndarray) -> np.ndarray:
    """``x ⊙ s``: each preprocessed image times its map, broadcast over channels (float32)."""
    return x * saliency[:, None].astype(x.dtype, copy=False)


def drop_and_masked(ctx: MetricContext, scorer: Scorer) -> tuple[np.ndarray, np.ndarray]:
    """``(Y, O)``: the class scores on the images and on the images times their maps, streamed."""
    base = scorer.base()
    x, s = ctx.x, ctx.saliency
    out = scorer.stream(len(x), ctx.class_idx, lambda a, b: masked(x[a:b], s[a:b]))
    return base, out


def average_drop_values(base: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``max(0, Y − O) / Y`` per image."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.maximum(base - out, 0.0) / base


def average_drop(ctx: MetricContext) -> MetricResult:
    """Average Drop per image: ``max(0, Y − O) / Y`` (lower is better)."""
    base, out = drop_and_masked(ctx, Scorer(ctx, len(ctx.x)))
    return MetricResult(average_drop_values(base, out))


def increase_in_confidence(ctx: MetricContext) -> MetricResult:
    """Increase in Confidence per image: 1 when ``O > Y``, else 0 (higher is better)."""
    base, out = drop_and_masked(ctx, Scorer(ctx, len(ctx.x)))
    return MetricResult((out > base).astype(np.float64))


def pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of each pair of maps (N×H×W each), NaN where one is constant."""
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        return (a * b).sum(axis=1) / np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))


def harmonic3(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """``3 / (1/a + 1/b + 1/c)``, 0 where any term is 0, NaN where any is NaN."""
    with np.errstate(divide="ignore", invalid="ignore"):
        out = 3.0 / (1.0 / a + 1.0 / b + 1.0 / c)
    return np.where((a == 0) | (b == 0) | (c == 0), 0.0, out) + 0.0 * (a + b + c)  # NaN propagates


def adcc(ctx: MetricContext) -> MetricResult:
    """ADCC per image: the harmonic mean of coherency, 1 − complexity and 1 − Average Drop."""
    n = len(ctx.x)
    if ctx.method is None:
        return MetricResult(np.full(n, np.nan))
    scorer = Scorer(ctx, 2 * n)  # the masked images, then the re-explained ones
    base, out = drop_and_masked(ctx, scorer)
    drop = average_drop_values(base, out)
    options = dict(ctx.method_options or {})
    chunk = ctx.engine.chunk_size
    again = np.empty_like(ctx.saliency)
    for s in range(0, n, chunk):  # re-explained a chunk of images at a time: memory bounded by the chunk
        e = min(s + chunk, n)
        r = ctx.engine.explain(masked(ctx.x[s:e], ctx.saliency[s:e]), ctx.method, class_idx=ctx.class_idx[s:e],
                               seed=ctx.seed, **options)
        again[s:e] = r.saliency
        scorer.advance(e - s)
    coherency = (pearson(ctx.saliency, again) + 1) / 2
    complexity = ctx.saliency.reshape(n, -1).mean(axis=1, dtype=np.float64)
    return MetricResult(harmonic3(coherency, 1 - complexity, 1 - drop))


def _adcc_runs(ctx: MetricContext) -> int:
    return 0 if ctx.method is None else rows(ctx, 2 * len(ctx.x))


GRADCAMPP = "https://arxiv.org/abs/1710.11063"
METRICS = (
    Metric("average-drop", "mean relative drop of the class score on the image times its map (lower is better)",
           GRADCAMPP, needs_annotations=False, higher_is_better=False, run=average_drop,
           runs=lambda ctx: rows(ctx, len(ctx.x))),
    Metric("increase-in-confidence", "share of images whose class score rises on the image times its map",
           GRADCAMPP, needs_annotations=False, higher_is_better=True, run=increase_in_confidence,
           runs=lambda ctx: rows(ctx, len(ctx.x))),
    Metric("adcc", "harmonic mean of coherency, 1 − complexity and 1 − Average Drop (re-explains x ⊙ map)",
           "https://arxiv.org/abs/2104.10252", needs_annotations=False, higher_is_better=True, run=adcc,
           runs=_adcc_runs),
)
