"""`Engine`: explanations from a camrt ONNX model with ONNX Runtime."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from camrt.engine.preprocess import preprocess
from camrt.engine.session import open_session
from camrt.errors import InputError
from camrt.manifest import CLASS_IDX, INPUT, INPUT_GRADIENT, LOGITS, METADATA_KEY, Manifest, activation_name
from camrt.methods import Method, check_options, fuse, get_method, normalize, upsample

logger = logging.getLogger("camrt")

DEFAULT_CHUNK = 16


@dataclass
class Result:
    """What `Engine.explain` returns, per image n.

    saliency: N×H×W float32 in [0, 1] at the model's input resolution.
    low_res: N×h×w map before upsampling and normalisation (for several fused layers, the
        deepest layer's map; the fused map exists only at input resolution).
    class_idx: N classes explained; logits: N×K; scores: N softmax probabilities of those classes.
    timings: seconds spent in the model runs ("inference") and in the method ("method").
    """

    method: str
    layers: tuple[str, ...]
    saliency: np.ndarray
    low_res: np.ndarray
    class_idx: np.ndarray
    logits: np.ndarray
    scores: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Pass:
    """The outputs of one run of the full graph on a preprocessed batch `x`."""

    x: np.ndarray
    outputs: dict[str, np.ndarray]
    seconds: float


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


class Engine:
    """Run a model exported by `camrt export` and turn its outputs into CAMs.

    Args:
        model: path of the .onnx file.
        device: "auto" (CUDA when onnxruntime-gpu finds a GPU, else CPU), "cpu" or "cuda" (falls
            back to CPU with a logged warning when CUDA is unavailable).
        chunk_size: at most this many rows (images, or images × copies for sampled methods) go
            through one `session.run`; larger batches are split, with identical results.
        spinning: let ONNX Runtime's worker threads spin after a run (its default: lowest latency
            for back-to-back runs). Turn it off when other threads share the cores, as in
            `camrt video`, where spinning threads starved the decode and encode threads
            (EfficientNet-Lite0 pipeline 1.78 → 1.51× inference alone on 2 cores).
    """

    def __init__(self, model: str | os.PathLike, device: str = "auto", chunk_size: int = DEFAULT_CHUNK,
                 spinning: bool = True) -> None:
        path = Path(model)
        if not path.is_file():
            raise InputError(f"model file '{path}' does not exist")
        if int(chunk_size) != chunk_size or chunk_size < 1:
            raise InputError(f"chunk_size must be a positive integer, got {chunk_size}")
        self.path = path
        self.chunk_size = int(chunk_size)
        try:
            self._session = open_session(path, device, spinning=spinning)
        except InputError:
            raise
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own types for bad files
            raise InputError(f"'{path}' is not a loadable ONNX model: {str(e).splitlines()[0][:200]}") from e
        meta = self._session.get_modelmeta().custom_metadata_map
        if METADATA_KEY not in meta:
            raise InputError(f"'{path}' has no camrt manifest; export the model with `camrt export`")
        try:
            self.manifest = Manifest.from_json(meta[METADATA_KEY])
        except (ValueError, KeyError, TypeError) as e:
            raise InputError(f"'{path}' has an unreadable camrt manifest: {e}") from e
        self.provider: str = self._session.get_providers()[0]
        if device == "cuda" and self.provider != "CUDAExecutionProvider":
            logger.warning("CUDA was asked for but is not available to onnxruntime; running on %s", self.provider)
        self._outputs = [o.name for o in self._session.get_outputs()]
        self._device = device
        self._tails: dict[str, tuple[object, object | None, list[str]]] = {}  # per layer, built on first use
        self._forward: object | None = None
        self._activations: object | None = None
        self._input_gradient: object | None = None
        self._model_proto: object | None = None

    @property
    def input_size(self) -> tuple[int, int]:
        return int(self.manifest.input_shape[2]), int(self.manifest.input_shape[3])

    def prepare(self, images: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        """A float32 N×C×H×W batch: `images` itself if already one, else RGB images preprocessed
        with the manifest's resize and normalisation."""
        if isinstance(images, np.ndarray) and images.ndim == 4 and images.dtype == np.float32:
            expected = tuple(self.manifest.input_shape[1:])
            if images.shape[1:] != expected:
                raise InputError(f"a preprocessed batch must be N×{'×'.join(map(str, expected))}, got {images.shape}")
            return images
        if isinstance(images, np.ndarray) and images.ndim in (2, 3):
            raise InputError("pass a list of images (or a float32 N×C×H×W batch), not a single image array")
        if len(images) == 0:
            raise InputError("no images given")
        return preprocess(list(images), self.input_size, self.manifest.preprocessing)

    def _class_idx(self, class_idx: int | Sequence[int] | np.ndarray | None, n: int) -> np.ndarray:
        k = self.manifest.num_classes
        c = np.full(n, -1, np.int64) if class_idx is None else np.asarray(class_idx, dtype=np.int64).reshape(-1)
        if c.size == 1:
            c = np.full(n, int(c[0]), np.int64)
        if c.size != n:
            raise InputError(f"class_idx has {c.size} entries for {n} images; give one, or one per image")
        bad = c[(c < -1) | (c >= k)]
        if bad.size:
            raise InputError(f"class_idx {int(bad[0])} is out of range: the model has {k} classes (0..{k - 1}); "
                             "-1 means the top-1 class")
        return c

    def run(self, x: np.ndarray, class_idx: np.ndarray) -> dict[str, np.ndarray]:
        """All graph outputs for a batch, in chunks of `chunk_size` rows."""
        parts: list[list[np.ndarray]] = []
        for s in range(0, len(x), self.chunk_size):
            parts.append(self._session.run(None, {INPUT: x[s:s + self.chunk_size],
                                                  CLASS_IDX: class_idx[s:s + self.chunk_size]}))
        if len(parts) == 1:
            return dict(zip(self._outputs, parts[0], strict=True))
        return {name: np.concatenate([p[i] for p in parts]) for i, name in enumerate(self._outputs)}

    def forward(self, images: np.ndarray | Sequence[np.ndarray],
                class_idx: int | Sequence[int] | np.ndarray | None = None, gradient: bool = True) -> Pass:
        """One run of the full graph: logits, classes, activations and gradients of every layer.
        Any number of methods can then be computed from it with `explain_pass`. With
        `gradient=False` the run skips the gradient branch (a forward-only graph), which is all
        that methods without gradients need."""
        x = self.prepare(images)
        cls = self._class_idx(class_idx, len(x))
        t0 = time.perf_counter()
        if gradient:
            out = self.run(x, cls)
        else:
            session = self._activations_session()
            names = [LOGITS, *(la.activation for la in self.manifest.layers)]
            parts = [session.run(names, {INPUT: x[s:s + self.chunk_size]}) for s in range(0, len(x), self.chunk_size)]
            out = {name: np.concatenate([p[i] for p in parts]) for i, name in enumerate(names)}
            out["class_idx_used"] = np.where(cls == -1, out[LOGITS].argmax(axis=1), cls)
        return Pass(x, out, time.perf_counter() - t0)

    def explain(
        self,
        images: np.ndarray | Sequence[np.ndarray],
        method: str = "gradcam",
        class_idx: int | Sequence[int] | np.ndarray | None = None,
        layer: str | Sequence[str] | None = None,
        seed: int = 0,
        progress: Callable[[int, int], None] | None = None,
        **options: object,
    ) -> Result:
        """Explain `images` with `method` (a name from `camrt.methods.METHODS`).

        Args:
            images: a float32 N×C×H×W preprocessed batch, or a list of RGB images (H×W×3 uint8, any
                size; grayscale, RGBA and 16-bit are converted).
            class_idx: None or -1 for the top-1 class, an int for all images, or one per image.
            layer: a target layer name, a list of names to fuse (LayerCAM-style, shallow to deep),
                or None for the model's last exported layer.
            seed: seeds randomised methods (Smooth Grad-CAM++, SS-CAM, RISE): same seed, same map.
            progress: for methods that re-run the network many times (perturbation methods),
                called as progress(done, total) after each chunk; raising from it stops the run.
            options: the method's options (`METHODS[method].options` lists them with their defaults),
                e.g. ``n=8`` for SS-CAM.
        """
        spec = get_method(method)  # fail before running the model
        self.resolve_layers(layer)
        self._options(spec, options)
        return self.explain_pass(self.forward(images, class_idx, gradient=spec.uses_gradient), method, layer, seed,
                                 progress, **options)

    def explain_pass(self, p: Pass, /, method: str = "gradcam", layer: str | Sequence[str] | None = None,
                     seed: int = 0, progress: Callable[[int, int], None] | None = None,
                     **options: object) -> Result:
        """`explain` on the outputs of an earlier `forward` (no new run for gradient methods)."""
        spec = get_method(method)
        layers = self.resolve_layers(layer)
        out, used = p.outputs, p.outputs["class_idx_used"]
        if spec.uses_gradient and self.manifest.layers[0].gradient not in out:
            raise InputError(f"method '{spec.name}' needs the gradient, and this pass was run with gradient=False")
        timings = {"inference": p.seconds}
        opts = self._options(spec, options)
        samples = None
        if spec.family == "sampled":
            samples, t_inf = self._run_samples(spec, p.x, used, layers, seed, opts)
            timings["inference"] += t_inf
        t1 = time.perf_counter()
        maps = []
        for la in layers:
            a, g = out[self.manifest.layer(la).activation], out.get(self.manifest.layer(la).gradient)
            if spec.family in ("feature", "input"):
                maps.append(self._perturbation_map(spec, p, la, progress, seed, opts))
            elif samples is None:
                maps.append(spec.fn(a, g))
            else:
                sa, sg = samples[la]
                maps.append(spec.fn(a, g, sa, sg))
        size = self.input_size
        if len(maps) == 1:
            up = upsample(maps[0], size)
            saliency = normalize(up, out=up)
        else:
            saliency = fuse(maps, size)
        timings["method"] = time.perf_counter() - t1
        logits = out[LOGITS]
        return Result(spec.name, tuple(layers), saliency.astype(np.float32, copy=False),
                      maps[-1].astype(np.float32, copy=False), used,
                      logits, _softmax(logits)[np.arange(len(used)), used], timings)

    def resolve_layers(self, layer: str | Sequence[str] | None) -> list[str]:
        """The target layers `layer` names (None: the last exported one), checked against the model."""
        names = [la.name for la in self.manifest.layers]
        wanted = [names[-1]] if layer is None else [layer] if isinstance(layer, str) else list(layer)
        for la in wanted:
            if la not in names:
                raise InputError(f"layer '{la}' was not exported; this model has: {', '.join(names)}")
        if not wanted:
            raise InputError("layer is an empty list")
        return wanted

    def _tail(self, layer: str):
        """(tail session, forward-only session for the tensors crossing the cut or None, their names),
        built once per layer from the model file with camrt.graph's passes."""
        if layer not in self._tails:
            from camrt.graph import forward_only, tail

            model = self._proto()
            sub, boundary = tail(model, layer)
            fwd = (open_session(forward_only(model, boundary).SerializeToString(), self._device, spinning=False)
                   if boundary else None)
            self._tails[layer] = (open_session(sub.SerializeToString(), self._device, spinning=False), fwd, boundary)
        return self._tails[layer]

    def _proto(self):
        """The model file as a ModelProto, read once for all the sub-graphs cut from it."""
        if self._model_proto is None:
            import onnx

            self._model_proto = onnx.load(str(self.path))
        return self._model_proto

    def _activations_session(self):
        """A session on the forward-only graph that also returns every target activation."""
        if self._activations is None:
            from camrt.graph import forward_only

            model = forward_only(self._proto(), [la.activation for la in self.manifest.layers])
            self._activations = open_session(model.SerializeToString(), self._device, spinning=False)
        return self._activations

    def _forward_only(self):
        """(a session on the graph without its gradient branch, None, no crossing tensors), built once."""
        if self._forward is None:
            from camrt.graph import forward_only

            model = forward_only(self._proto())
            self._forward = open_session(model.SerializeToString(), self._device, spinning=False)
        return self._forward, None, []

    def _options(self, spec: Method, options: dict) -> dict:
        """The method's options (defaults overridden by `options`, names and values checked), once
        the model is known to have what the method needs."""
        if spec.input_gradient and not self.manifest.input_gradient:
            raise InputError(f"method '{spec.name}' needs the gradient of the class score with respect to the input, "
                             f"which '{self.path.name}' lacks; re-export the model with `camrt export "
                             "--input-gradient` (or camrt.export(..., input_gradient=True))")
        return check_options(spec.name, options)

    def _input_gradient_session(self):
        """A session on the sub-graph that computes only the logits and ∂y_c/∂input, built once."""
        if self._input_gradient is None:
            from camrt.graph import keep_outputs

            model = keep_outputs(self._proto(), [LOGITS, INPUT_GRADIENT])
            self._input_gradient = open_session(model.SerializeToString(), self._device, spinning=False)
        return self._input_gradient

    def _perturbation_map(self, spec: Method, p: Pass, layer: str, progress: Callable[[int, int], None] | None,
                          seed: int, opts: dict) -> np.ndarray:
        """Drive the method's `explore` coroutine for each image: run every batch of perturbed
        activations it yields through the tail ("feature" methods), or of masked inputs through the
        forward-only graph ("input" methods), and send back the class scores. The batches are at
        most `chunk_size` rows: memory grows with the chunk, not with the number of copies."""
        feature = spec.family == "feature"
        if spec.input_gradient:
            session, fwd, boundary = self._input_gradient_session(), None, []
        else:
            session, fwd, boundary = self._tail(layer) if feature else self._forward_only()
        acts = p.outputs[activation_name(layer)]
        grads = p.outputs.get(self.manifest.layer(layer).gradient)
        logits, used = p.outputs[LOGITS], p.outputs["class_idx_used"]
        base_scores = logits if spec.score == "logit" else _softmax(logits)
        budgets = [spec.count(a, **opts) for a in acts]
        total, done = sum(budgets), 0
        maps = []
        for n, a in enumerate(acts):
            crossing = dict(zip(boundary, fwd.run(boundary, {INPUT: p.x[n:n + 1]}), strict=True)) if fwd else {}
            context = {"x": p.x[n], "base": float(base_scores[n, used[n]]), "seed": seed,
                       "gradient": None if grads is None else grads[n]}
            explore = spec.explore(activation=a, chunk=self.chunk_size, **{k: context[k] for k in spec.needs},
                                   **opts)
            image_done = 0
            try:
                batch = next(explore)
                while True:
                    feed = {activation_name(layer) if feature else INPUT: batch}
                    feed.update({k: np.repeat(v, len(batch), axis=0) for k, v in crossing.items()})
                    if spec.input_gradient:
                        feed[CLASS_IDX] = np.full(len(batch), used[n], np.int64)
                    z, *rest = session.run(None, feed)
                    if spec.score == "probability":
                        z = _softmax(z)
                    image_done += len(batch)
                    if progress is not None:
                        progress(done + min(image_done, budgets[n]), total)
                    batch = explore.send((z[:, used[n]], rest[0]) if spec.input_gradient else z[:, used[n]])
            except StopIteration as stop:
                maps.append(stop.value)
            done += budgets[n]
            if progress is not None and image_done < budgets[n]:  # a recursive method stopped early
                progress(done, total)
        return np.concatenate(maps)

    def _run_samples(self, spec: Method, x: np.ndarray, used: np.ndarray, layers: list[str], seed: int,
                     options: dict) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], float]:
        """Run all copies of every image in one batched (chunked) pass, each explained for the
        class chosen for its source image."""
        extra = {}
        if "baseline" in spec.needs:  # the black image, preprocessed
            p = self.manifest.preprocessing
            extra["baseline"] = ((0.0 - np.asarray(p.mean)) / np.asarray(p.std)).astype(np.float32)[None, :, None, None]
        copies = spec.samples(x, np.random.default_rng(seed), **options, **extra)
        n, s = copies.shape[:2]
        t0 = time.perf_counter()
        out = self.run(copies.reshape(n * s, *copies.shape[2:]), np.repeat(used, s))
        elapsed = time.perf_counter() - t0
        result = {}
        for la in layers:
            a, g = out[self.manifest.layer(la).activation], out[self.manifest.layer(la).gradient]
            result[la] = (a.reshape(n, s, *a.shape[1:]), g.reshape(n, s, *g.shape[1:]))
        return result, elapsed
