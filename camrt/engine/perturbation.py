"""Perturbation methods on the engine: drive a method's explore coroutine for each image of a
pass, running every batch of copies it yields through the right sub-graph and sending back the
class scores. The batches are at most `chunk` rows: memory grows with the chunk, not with the
number of copies."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from camrt.engine.graphs import Graphs
from camrt.manifest import CLASS_IDX, CLASS_IDX_USED, INPUT, LOGITS, activation_name, gradient_name
from camrt.methods import Context, Method, Options, softmax

Progress = Callable[[int, int], None]


def perturbation_map(method: Method, options: Options, graphs: Graphs, x: np.ndarray,
                     outputs: dict[str, np.ndarray], layer: str, chunk: int, seed: int,
                     progress: Progress | None = None) -> np.ndarray:
    """The maps ``(N, h, w)`` (or ``(N, H, W)``) of `method` for the batch `x` whose full or
    forward-only run gave `outputs`: "feature" copies go through `layer`'s tail (the tensors
    crossing the cut are computed once per image), "input" copies through the forward-only graph,
    and a method with `input_gradient` through the logits + input-gradient graph.
    `progress(done, total)` is called after each batch; raising from it stops the run."""
    tail = graphs.tail(layer) if method.family == "feature" else None
    if method.input_gradient:
        session = graphs.input_gradient()
    else:
        session = tail.session if tail is not None else graphs.forward_only()
    feed_name = activation_name(layer) if tail is not None else INPUT
    acts, grads = outputs[activation_name(layer)], outputs.get(gradient_name(layer))
    used = outputs[CLASS_IDX_USED]
    base = outputs[LOGITS] if method.score == "logit" else softmax(outputs[LOGITS])
    budgets = [method.runs(a, options) for a in acts]
    total, done = sum(budgets), 0
    maps = []
    for n, a in enumerate(acts):
        crossing = tail.crossing(x[n:n + 1]) if tail is not None else {}
        ctx = Context(a, x[n], None if grads is None else grads[n], float(base[n, used[n]]), seed, chunk)
        explore = method.explore(ctx, options)
        image_done = 0
        try:
            batch = next(explore)
            while True:
                feed = {feed_name: batch, **{k: np.repeat(v, len(batch), axis=0) for k, v in crossing.items()}}
                if method.input_gradient:
                    feed[CLASS_IDX] = np.full(len(batch), used[n], np.int64)
                z, *rest = session.run(None, feed)
                scores = (softmax(z) if method.score == "probability" else z)[:, used[n]]
                image_done += len(batch)
                if progress is not None:
                    progress(done + min(image_done, budgets[n]), total)
                batch = explore.send((scores, rest[0]) if method.input_gradient else scores)
        except StopIteration as stop:
            maps.append(stop.value)
        done += budgets[n]
        if progress is not None and image_done < budgets[n]:  # a recursive method stopped early
            progress(done, total)
    return np.concatenate(maps)
