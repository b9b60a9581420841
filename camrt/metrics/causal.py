"""Deletion and insertion (RISE, Petsiuk et al., BMVC 2018, https://arxiv.org/abs/1806.07421).

Pixels are taken in decreasing saliency (ties in row-major order), a fixed count per step.
Deletion replaces the first ``k`` of them, in every channel, with the baseline; insertion puts the
first ``k`` of them from the image onto a blurred copy. The curve is the softmax score of the
explained class against the fraction ``k / (H·W)``, and the metric its area by the trapezoid rule
over that fraction:

    AUC = Σ_i (f_{i+1} − f_i) · (p_i + p_{i+1}) / 2,   f_i = k_i / (H·W).

A faithful map makes deletion fall fast (low AUC) and insertion rise fast (high AUC).

Choices (the paper leaves them to the implementation):
- Steps: ``STEPS = 50``, i.e. ``ceil(H·W / 50)`` pixels per step (1004 at 224×224, about 2% of the
  image), 51 points per curve. RISE's own evaluation takes 224 pixels per step at 224×224 (224
  steps); 50 steps cost 4.5× fewer runs, and TorchCAM's `DeletionInsertionMetric` defaults to 20.
  The last step is shorter when 50 does not divide H·W; the trapezoid uses the actual fractions,
  as TorchCAM does (RISE's code assumes equal steps).
- Baseline for deletion: 0 in the preprocessed input, i.e. the normalisation's mean colour, as
  RISE's code (`torch.zeros_like` on the normalised tensor) and TorchCAM do.
- Blur for insertion: RISE's kernel size 11 and σ = 5, as `camrt.methods.masking.gaussian_blur`
  (a sampled Gaussian with reflect padding; RISE's kernel is scipy's `gaussian_filter` of a
  delta on 11×11 taps, and it pads with zeros).
- The two curves' end points that are the image itself (deletion's first, insertion's last) are
  its score, not run again.
"""

from __future__ import annotations

import numpy as np

from camrt.checks import positive_int
from camrt.methods.masking import gaussian_blur
from camrt.metrics.contract import Metric, MetricContext, MetricResult, Scorer, rows

STEPS = 50
BLUR_KERNEL = 11
BLUR_SIGMA = 5.0


def counts(pixels: int, steps: int = STEPS) -> np.ndarray:
    """The pixel counts at the curve's points: 0, then ``ceil(pixels / steps)`` more per step,
    ending at `pixels` (fewer than `steps` + 1 points when the step rounds up)."""
    step = -(-pixels // positive_int(steps, "steps"))
    return np.array([*range(0, pixels, step), pixels], np.int64)


def ranks(saliency: np.ndarray) -> np.ndarray:
    """Each pixel's place in decreasing saliency, N×(H·W) (0 = most salient; ties in row-major order)."""
    flat = saliency.reshape(len(saliency), -1)
    order = np.argsort(-flat, axis=1, kind="stable")
    out = np.empty_like(order)
    np.put_along_axis(out, order, np.arange(flat.shape[1])[None].repeat(len(flat), 0), axis=1)
    return out


def auc(curves: np.ndarray, fractions: np.ndarray) -> np.ndarray:
    """Trapezoid area under each row of `curves` over `fractions`."""
    return ((curves[:, 1:] + curves[:, :-1]) / 2 * np.diff(fractions)).sum(axis=1)


def causal(ctx: MetricContext, insertion: bool, steps: int = STEPS, blur_kernel: int = BLUR_KERNEL,
           blur_sigma: float = BLUR_SIGMA) -> MetricResult:
    """Deletion (``insertion=False``) or insertion curves and their AUCs (see the module docstring)."""
    x, n = ctx.x, len(ctx.x)
    pixels = x.shape[2] * x.shape[3]
    k = counts(pixels, steps)
    fractions = k / pixels
    order = ranks(ctx.saliency)
    inner = k[:-1] if insertion else k[1:]  # the points that need a run (the image itself is `base`)
    scorer = Scorer(ctx, n * len(inner))
    base = scorer.base()
    cache: dict[int, np.ndarray] = {}

    def start_of(i: int) -> np.ndarray:  # what the pixels not yet taken hold
        if i not in cache:
            cache.clear()
            cache[i] = gaussian_blur(x[i], blur_kernel, blur_sigma) if insertion else np.zeros_like(x[i])
        return cache[i]

    def make(start: int, stop: int) -> np.ndarray:
        out = np.empty((stop - start, *x.shape[1:]), np.float32)
        for j, r in enumerate(range(start, stop)):
            i, count = divmod(r, len(inner))
            taken = (order[i] < inner[count]).reshape(x.shape[2:])
            out[j] = np.where(taken, x[i], start_of(i)) if insertion else np.where(taken, start_of(i), x[i])
        return out

    scores = scorer.stream(n * len(inner), np.repeat(ctx.class_idx, len(inner)), make).reshape(n, len(inner))
    curves = np.concatenate([scores, base[:, None]] if insertion else [base[:, None], scores], axis=1)
    return MetricResult(auc(curves, fractions), curves, fractions)


def deletion(ctx: MetricContext) -> MetricResult:
    """Deletion AUC: pixels in decreasing saliency replaced by the baseline (0 after preprocessing)."""
    return causal(ctx, insertion=False)


def insertion(ctx: MetricContext) -> MetricResult:
    """Insertion AUC: pixels in decreasing saliency put back onto a blurred copy (kernel 11, σ = 5)."""
    return causal(ctx, insertion=True)


def _runs(ctx: MetricContext) -> int:
    return rows(ctx, len(ctx.x) * (len(counts(ctx.x.shape[2] * ctx.x.shape[3])) - 1))


PAPER = "https://arxiv.org/abs/1806.07421"
METRICS = (
    Metric("deletion", "area under the class score as the most salient pixels are deleted (lower is better)",
           PAPER, needs_annotations=False, higher_is_better=False, run=deletion, runs=_runs),
    Metric("insertion", "area under the class score as the most salient pixels are inserted into a blurred copy",
           PAPER, needs_annotations=False, higher_is_better=True, run=insertion, runs=_runs),
)
