"""Perturbation methods on the engine: drive a method's explore coroutine for each image of a
pass, running every batch of copies it yields through the right sub-graph and sending back the
class scores. The batches are at most `chunk` rows: memory grows with the chunk, not with the
number of copies.

Methods listed in `CHUNK_FORMS` can build their copies inside ONNX Runtime instead, as
`Graphs.chunk_graphs` chooses (`chunk_form`): a chunk graph of `camrt.graph.chunks` takes the image, its
activation and the chunk's rows (channel or position indices; Group-CAM's group maps, RISE's grids
and shifts) and gives the class scores of the chunk's copies, and a coroutine like the method's own
yields those rows, in the same order and batches, and returns the map from their scores with the
method's own map function (Group-CAM and RISE: its own arithmetic, their masks built on the host
again, since the graph returns only the scores).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from functools import partial

import numpy as np
import onnx
import onnxruntime as ort

from camrt.engine.binding import Binder
from camrt.engine.graphs import Graphs
from camrt.engine.targets import Target
from camrt.errors import InputError
from camrt.graph import ablationcam_chunks, groupcam_chunks, reciprocam_chunks, rise_chunks, scorecam_chunks
from camrt.graph.chunks import ACTIVATION, CHANNELS, CLASS, GRIDS, MAPS, POSITIONS, SCORES
from camrt.manifest import CLASS_IDX, CLASS_IDX_USED, INPUT, LOGITS, SCORE, TARGET, activation_name, gradient_name
from camrt.methods import Context, Method, Options, ablationcam, reciprocam, scorecam, softmax
from camrt.methods._core import scores_of
from camrt.methods.contract import Explore, TailCopies
from camrt.methods.feature import _KERNELS  # the one definition of Recipro-CAM's masks
from camrt.methods.masking import (
    _constant_channels,  # the channels that share Score-CAM's zero mask
    abscam_final,
    groupcam_explore,
    rise_explore,
)

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class ChunkForm:
    """A perturbation method's copies as a chunk graph.

    build(model, layer, options, probability): the graph (`camrt.graph.chunks`) and the tail's
        boundary tensors it takes; `probability` (from `Method.score`) makes it give softmax
        probabilities instead of logits.
    rows: the graph input that takes a chunk's rows.
    explore(ctx, options): the method's coroutine with each batch of copies replaced by its rows.
    default(options): whether the form is used when `Graphs.chunk_graphs` is None (the default):
        True where the chunk graph was measured not slower than the numpy copies on the CPU
        (docs/benchmarks.md, "Perturbation chunks as graphs").
    key(options): the options the graph depends on (one session per value).
    """

    build: Callable[[onnx.ModelProto, str, Options, bool], tuple[onnx.ModelProto, list[str]]]
    rows: str
    explore: Callable[[Context, Options], Explore]
    default: Callable[[Options], bool]
    key: Callable[[Options], Hashable] = lambda options: ()


def _runs(total: int, chunk: int) -> Iterator[np.ndarray]:
    return (np.arange(start, min(start + chunk, total)) for start in range(0, total, chunk))


def _scorecam_rows(ctx: Context, options: Options, abs_weights: bool = False) -> Explore:
    """`camrt.methods.masking.scorecam_explore` by rows: the non-constant channels `chunk` at a time,
    then one constant channel alone (its normalised map is all zeros: the numpy path's zero input).
    With `abs_weights`, Abs-CAM's second phase on the same copies (`abscam_final_explore`)."""
    ctx.need("x")
    constant = _constant_channels(ctx.activation)
    sources = np.flatnonzero(~constant)
    batches = [sources[part] for part in _runs(len(sources), ctx.chunk)]
    scores = yield from scores_of([*batches, *([np.flatnonzero(constant)[:1]] if constant.any() else [])])
    if abs_weights:
        return abscam_final(ctx.activation[None], ctx.need("gradient")[None], scores)
    return scorecam(ctx.activation[None], scores)


def _ablation_rows(ctx: Context, options: Options) -> Explore:
    """`camrt.methods.feature.ablation_explore` by rows: channel k zeroed in copy k."""
    scores = yield from scores_of(_runs(ctx.activation.shape[0], ctx.chunk))
    return ablationcam(ctx.activation[None], scores, ctx.need("base"))


def _reciprocam_rows(ctx: Context, options: Options) -> Explore:
    """`camrt.methods.feature.reciprocam_explore` by rows: position i·w + j in copy i·w + j."""
    _, h, w = ctx.activation.shape
    scores = yield from scores_of(_runs(h * w, ctx.chunk))
    return reciprocam(ctx.activation[None], scores)


# Group-CAM and RISE yield their rows themselves (`rows=True`): the group maps, the grids and shifts.
_groupcam_rows = partial(groupcam_explore, rows=True)
_rise_rows = partial(rise_explore, rows=True)


def _scorecam_graph(model: onnx.ModelProto, layer: str, options: Options, probability: bool
                    ) -> tuple[onnx.ModelProto, list[str]]:
    return scorecam_chunks(model, layer, probability), []


def _ablation_graph(model: onnx.ModelProto, layer: str, options: Options, probability: bool
                    ) -> tuple[onnx.ModelProto, list[str]]:
    return ablationcam_chunks(model, layer, probability)


def _reciprocam_graph(model: onnx.ModelProto, layer: str, options: Options, probability: bool
                      ) -> tuple[onnx.ModelProto, list[str]]:
    return reciprocam_chunks(model, layer, _KERNELS[options.kernel], probability)


def _vitreciprocam_graph(model: onnx.ModelProto, layer: str, options: Options, probability: bool
                         ) -> tuple[onnx.ModelProto, list[str]]:
    return reciprocam_chunks(model, layer, _KERNELS[options.kernel], probability, mask_block_input=True)


def _groupcam_graph(model: onnx.ModelProto, layer: str, options: Options, probability: bool
                    ) -> tuple[onnx.ModelProto, list[str]]:
    return groupcam_chunks(model, layer, options.blur_kernel, options.blur_sigma, probability), []


def _rise_graph(model: onnx.ModelProto, layer: str, options: Options, probability: bool
                ) -> tuple[onnx.ModelProto, list[str]]:
    return rise_chunks(model, layer, options.cells, probability), []


# Defaults from tools/bench_chunks.py on the CPU (resnet18 at layer4, chunk 16; docs/benchmarks.md).
# Score-CAM: the same time either way (its 16 forward runs per chunk dwarf the masks). Recipro-CAM's
# Gaussian masks: faster in the graph (ViT-ReciproCAM follows it, not measured). Its one-hot masks:
# ONNX Runtime's broadcast product of the activation by k sparse masks costs more than numpy's, and
# Ablation-CAM's tail (pooling and one linear layer) is so cheap that the graph's extra nodes,
# microseconds each per run, do not pay: both keep their numpy copies unless asked. Group-CAM and
# RISE: the engine's calls measure the same either way (33 and n forward runs), but their work
# besides the network is more on the graph path (the host builds each chunk's masks again for the
# map, the graph returns only scores): numpy.
CHUNK_FORMS: dict[str, ChunkForm] = {
    "scorecam": ChunkForm(_scorecam_graph, CHANNELS, _scorecam_rows, default=lambda options: True),
    "abscam-final": ChunkForm(_scorecam_graph, CHANNELS, partial(_scorecam_rows, abs_weights=True),
                              default=lambda options: True),
    "ablationcam": ChunkForm(_ablation_graph, CHANNELS, _ablation_rows, default=lambda options: False),
    "reciprocam": ChunkForm(_reciprocam_graph, POSITIONS, _reciprocam_rows,
                            default=lambda options: options.kernel == "gaussian", key=lambda options: options.kernel),
    "vitreciprocam": ChunkForm(_vitreciprocam_graph, POSITIONS, _reciprocam_rows,
                               default=lambda options: options.kernel == "gaussian",
                               key=lambda options: options.kernel),
    "groupcam": ChunkForm(_groupcam_graph, MAPS, _groupcam_rows, default=lambda options: False,
                          key=lambda options: (options.blur_kernel, options.blur_sigma)),
    "rise": ChunkForm(_rise_graph, GRIDS, _rise_rows, default=lambda options: False, key=lambda options: options.cells),
}
"""The methods whose copies can be built in a chunk graph, by name."""


def chunk_form(method: Method, options: Options, chunk_graphs: bool | None) -> ChunkForm | None:
    """The chunk graph form `method` runs with `options` under the switch `chunk_graphs` (see
    `Graphs`): None (the numpy copies) when it has none, when the switch is False, or when it is
    None and the form is not on by default for these options."""
    form = CHUNK_FORMS.get(method.name)
    if form is None or chunk_graphs is False or (chunk_graphs is None and not form.default(options)):
        return None
    return form


def run_scores(session: ort.InferenceSession, feeds: dict[str, np.ndarray | ort.OrtValue],
               binder: Binder | None) -> np.ndarray:
    """A chunk graph's class scores for `feeds` (with a `binder`, some may be OrtValues on the device)."""
    if binder is None:
        return session.run([SCORES], feeds)[0]
    return binder.run(session, feeds, [SCORES], [SCORES])[SCORES]


def perturbation_map(method: Method, options: Options, graphs: Graphs, x: np.ndarray,
                     outputs: dict[str, np.ndarray], layer: str, chunk: int, seed: int,
                     progress: Progress | None = None, target: Target | None = None) -> np.ndarray:
    """The maps ``(N, h, w)`` (or ``(N, H, W)``) of `method` for the batch `x` whose full or
    forward-only run gave `outputs`: "feature" copies go through `layer`'s tail (the tensors
    crossing the cut are computed once per image), "input" copies through the forward-only graph,
    and a method with `input_gradient` through the logits + input-gradient graph; a method of
    `CHUNK_FORMS` through its chunk graph as `graphs.chunk_graphs` says (`chunk_form`).
    `progress(done, total)` is called after each batch; raising from it stops the run.

    In target mode (`target`, with `outputs[TARGET]` its vector per image) every copy is judged by
    the target's score of its output (`Target.score`: Σ vector ⊙ output for a linear target), the
    base by the image's, and `Method.score` (logit or probability) does not apply; the copies are
    built by numpy (chunk graphs select a class)."""
    probability = method.score == "probability"
    if target is not None and graphs.chunk_graphs:
        raise InputError("chunk graphs select a class and are not offered in target mode; leave chunk_graphs unset")
    form = None if target is not None else chunk_form(method, options, graphs.chunk_graphs)
    chunks = None
    if form is not None:
        chunks = graphs.chunk_graph((method.name, layer, form.key(options)),
                                    lambda model: form.build(model, layer, options, probability))
    tail = graphs.tail(layer) if method.family == "feature" and chunks is None else None
    if chunks is not None:
        session = chunks.session
    elif method.input_gradient:
        session = graphs.input_gradient()
    else:
        session = tail.session if tail is not None else graphs.forward_only()
    feed_name = activation_name(layer) if tail is not None else INPUT
    cut = chunks if chunks is not None else tail  # the sessions that compute the tensors crossing the cut
    takes_image = INPUT in {i.name for i in session.get_inputs()}
    acts, grads = outputs[activation_name(layer)], outputs.get(gradient_name(layer))
    if target is not None:
        vectors = outputs[TARGET]
        used = np.zeros(len(acts), np.int64)
        base = np.asarray(outputs[SCORE], np.float64)[:, None]  # the image's own score, as column 0
    else:
        used = outputs[CLASS_IDX_USED]
        base = outputs[LOGITS] if method.score == "logit" else softmax(outputs[LOGITS])
    budgets = [method.runs(a, options) for a in acts]
    total, done = sum(budgets), 0
    maps = []
    for n, a in enumerate(acts):
        crossing = cut.crossing(x[n:n + 1]) if cut is not None else {}
        ctx = Context(a, x[n], None if grads is None else grads[n], float(base[n, used[n]]), seed, chunk, crossing)
        if chunks is not None:
            fixed = {ACTIVATION: a[None], CLASS: np.asarray(used[n], np.int64), **crossing}
            if takes_image:
                fixed[INPUT] = x[n:n + 1]
            if graphs.binder is not None:  # device-resident: uploaded once, read by every chunk
                fixed = {k: graphs.binder.upload(v) for k, v in fixed.items()}
            explore = form.explore(ctx, options)
        else:
            explore = method.explore(ctx, options)
        image_done = 0
        try:
            batch = next(explore)
            while True:
                if chunks is not None:
                    reply = run_scores(session, {**fixed, form.rows: batch}, graphs.binder)
                else:
                    copies = batch.activation if isinstance(batch, TailCopies) else batch
                    feed = {feed_name: copies, **{k: np.repeat(v, len(copies), axis=0) for k, v in crossing.items()}}
                    if isinstance(batch, TailCopies):
                        feed.update(batch.crossing)
                    if method.input_gradient:
                        feed[CLASS_IDX] = np.full(len(batch), used[n], np.int64)
                    z, *rest = session.run(None, feed)
                    if target is not None:
                        scores = target.score(z, vectors[n]).astype(z.dtype)
                    else:
                        scores = (softmax(z) if probability else z)[:, used[n]]
                    reply = (scores, rest[0]) if method.input_gradient else scores
                image_done += len(batch)
                if progress is not None:
                    progress(done + min(image_done, budgets[n]), total)
                batch = explore.send(reply)
        except StopIteration as stop:
            maps.append(stop.value)
        done += budgets[n]
        if progress is not None and image_done < budgets[n]:  # a recursive method stopped early
            progress(done, total)
    return np.concatenate(maps)
