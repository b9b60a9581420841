"""The ONNX Runtime sessions of one camrt model: the full graph, and the sub-graphs cut from the
same file on first use with `camrt.graph`'s passes (ONNX Runtime computes every node of a graph
whatever outputs are asked for, so the methods that run the network many times must run graphs
without the gradient branch). Plus `run_chunked`, the one loop that splits a batch into runs.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from camrt.engine.binding import Binder, FixedBatch, Outputs
from camrt.engine.session import open_session
from camrt.errors import InputError
from camrt.manifest import INPUT, INPUT_GRADIENT, LOGITS


def run_chunked(session: ort.InferenceSession | FixedBatch, feeds: Mapping[str, np.ndarray], chunk: int,
                names: Sequence[str] | None = None, binder: Binder | None = None,
                host: Collection[str] | None = None) -> Mapping[str, np.ndarray]:
    """`session`'s outputs `names` (None: all) for `feeds`, run `chunk` rows at a time: every feed
    is split along its first axis and the outputs are concatenated, so the result is the same for
    any chunk size and memory grows with the chunk, not with the batch.

    With a `binder` (IO binding), the outputs in `host` (None: all) come to the host at once; the
    others stay on the device, per chunk, until read from the returned `Outputs`."""
    names = [o.name for o in session.get_outputs()] if names is None else list(names)
    rows = len(next(iter(feeds.values())))
    starts = range(0, max(rows, 1), chunk)
    if binder is not None:
        keep = names if host is None else [n for n in names if n in host]
        runs = [binder.run(session, {k: v[s:s + chunk] for k, v in feeds.items()}, names, keep) for s in starts]
        return Outputs({name: [r[name] for r in runs] for name in names})
    parts = [session.run(names, {k: v[s:s + chunk] for k, v in feeds.items()}) for s in starts]
    if len(parts) == 1:
        return dict(zip(names, parts[0], strict=True))
    return {name: np.concatenate([p[i] for p in parts]) for i, name in enumerate(names)}


@dataclass(frozen=True)
class Tail:
    """The layers after a target layer: `session` takes the activation (and the `boundary` tensors
    computed before the cut that the tail reads, such as a skip connection) and gives the logits;
    `boundary_session` computes the boundary tensors from the input (None when there are none)."""

    session: ort.InferenceSession
    boundary_session: ort.InferenceSession | None
    boundary: tuple[str, ...]

    def crossing(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """The boundary tensors of one preprocessed image batch `x` (empty when there are none)."""
        if self.boundary_session is None:
            return {}
        return dict(zip(self.boundary, self.boundary_session.run(list(self.boundary), {INPUT: x}), strict=True))


class Graphs:
    """The sessions one `Engine` runs, each built once: the full graph (opened at construction), and
    on first use the forward-only graph, the forward graph that also returns every target
    activation, each layer's tail, the logits + input-gradient graph, and the perturbation methods'
    chunk graphs (`camrt.graph.chunks`). Sub-graph sessions never spin: they take turns with each
    other and with the full graph.

    `chunk_graphs`: whether perturbation methods build their copies inside ONNX Runtime, in a chunk
    graph (`camrt.graph.chunks`), rather than in numpy: True for every method that has one
    (`camrt.engine.perturbation.CHUNK_FORMS`), False for none (the numpy copies, as before chunk
    graphs existed), None (the default) for those measured not slower on the CPU (Score-CAM, and
    Recipro-CAM with Gaussian masks; docs/benchmarks.md). The maps are the same either way, up to
    float32 rounding.
    Set it on an engine's graphs (``engine.graphs.chunk_graphs = False``) to compare the two.

    `binder`: None, or the `camrt.engine.binding.Binder` that runs the sessions with IO binding.
    """

    def __init__(self, path: str | os.PathLike, device: str, spinning: bool = True,
                 chunk_graphs: bool | None = None, precision: str | None = None, threads: int | None = None) -> None:
        self.path = Path(path)
        self.device = device
        self.precision = precision
        self.threads = threads
        self.chunk_graphs = chunk_graphs
        self.full: ort.InferenceSession = open_session(self.path, device, spinning=spinning, precision=precision,
                                                       threads=threads)
        self._proto: onnx.ModelProto | None = None
        self._forward: ort.InferenceSession | None = None
        self._activations: ort.InferenceSession | None = None
        self._input_gradient: ort.InferenceSession | None = None
        self._tails: dict[str, Tail] = {}
        self._chunks: dict[Hashable, Tail | None] = {}
        self._kept: dict[tuple[str, ...], ort.InferenceSession] = {}
        self.binder: Binder | None = None  # set by the engine for device-resident runs (IO binding)

    @property
    def chunk_graphs(self) -> bool | None:
        return self._chunk_graphs

    @chunk_graphs.setter
    def chunk_graphs(self, value: bool | None) -> None:
        if value is not None and not isinstance(value, bool):
            raise InputError(f"chunk_graphs must be True, False or None (the measured default), got {value!r}")
        self._chunk_graphs = value

    def _open(self, model: onnx.ModelProto) -> ort.InferenceSession:
        return open_session(model.SerializeToString(), self.device, spinning=False, precision=self.precision,
                            threads=self.threads)

    def proto(self) -> onnx.ModelProto:
        """The model file as a ModelProto, read once for all the sub-graphs cut from it."""
        if self._proto is None:
            self._proto = onnx.load(str(self.path))
        return self._proto

    def forward_only(self) -> ort.InferenceSession:
        """The graph without its gradient branch: input → logits."""
        if self._forward is None:
            from camrt.graph import forward_only

            self._forward = self._open(forward_only(self.proto()))
        return self._forward

    def activations(self, names: Sequence[str]) -> ort.InferenceSession:
        """The forward-only graph that also returns the tensors `names` (the target activations)."""
        if self._activations is None:
            from camrt.graph import forward_only

            self._activations = self._open(forward_only(self.proto(), list(names)))
        return self._activations

    def outputs(self, names: Sequence[str]) -> ort.InferenceSession:
        """The graph cut down to the outputs `names` and the nodes they need (`keep_outputs`): for
        a gradient-free map head, the forward pass and the head without the gradient branch."""
        key = tuple(names)
        if key not in self._kept:
            from camrt.graph import keep_outputs

            self._kept[key] = self._open(keep_outputs(self.proto(), list(names)))
        return self._kept[key]

    def input_gradient(self) -> ort.InferenceSession:
        """The sub-graph that computes only the logits and ∂y_c/∂input."""
        if self._input_gradient is None:
            from camrt.graph import keep_outputs

            self._input_gradient = self._open(keep_outputs(self.proto(), [LOGITS, INPUT_GRADIENT]))
        return self._input_gradient

    def tail(self, layer: str) -> Tail:
        """The graph from `layer`'s activation to the logits."""
        if layer not in self._tails:
            from camrt.graph import forward_only, tail

            model = self.proto()
            sub, boundary = tail(model, layer)
            fwd = self._open(forward_only(model, boundary)) if boundary else None
            self._tails[layer] = Tail(self._open(sub), fwd, tuple(boundary))
        return self._tails[layer]

    def chunk_graph(self, key: Hashable,
                    build: Callable[[onnx.ModelProto], tuple[onnx.ModelProto, Sequence[str]]]) -> Tail | None:
        """The chunk graph `build(model)` gives (a graph of `camrt.graph.chunks` and the names of the
        tail's boundary tensors it takes), built once per `key`, as a `Tail` whose session gives the
        class scores of a chunk's copies; None when the model's opset is older than the chunk graphs
        need (the caller then builds the copies in numpy)."""
        if key not in self._chunks:
            from camrt.graph import forward_only
            from camrt.graph.chunks import MIN_OPSET, opset

            model = self.proto()
            if opset(model) < MIN_OPSET:
                self._chunks[key] = None
            else:
                sub, boundary = build(model)
                fwd = self._open(forward_only(model, list(boundary))) if boundary else None
                self._chunks[key] = Tail(self._open(sub), fwd, tuple(boundary))
        return self._chunks[key]
