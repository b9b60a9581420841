"""`Engine`: explanations from a camrt ONNX model with ONNX Runtime."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Collection, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from camrt.checks import non_negative_int, positive_int
from camrt.engine.binding import Binder, FixedBatch, Outputs
from camrt.engine.graphs import Graphs, run_chunked
from camrt.engine.perturbation import perturbation_map
from camrt.engine.preprocess import check_batch, images_text, nonfinite_images, preprocess
from camrt.engine.session import open_session
from camrt.engine.targets import Target, as_target
from camrt.errors import InputError, first_line
from camrt.manifest import (
    CLASS_IDX,
    CLASS_IDX_USED,
    INPUT,
    LOGITS,
    METADATA_KEY,
    MODEL_MAP,
    OUTPUT,
    SCORE,
    TARGET,
    Manifest,
    map_name,
    saliency_name,
)
from camrt.methods import Method, Options, SampleContext, fuse, get_method, normalize, softmax, upsample
from camrt.methods.gradient import check_pooled_head

logger = logging.getLogger("camrt")

DEFAULT_CHUNK = 16


@dataclass
class Result:
    """What `Engine.explain` returns, per image n.

    saliency: N×H×W float32 in [0, 1] at the model's input resolution. When no map head output it
        (a file written with `camrt add-maps --no-saliency`, or a method the engine computes), it
        is `low_res` upsampled and min-max normalised (`camrt.methods.upsample`, `normalize`) on
        first read, so a caller that keeps only the low-resolution map (to draw it with its own
        resize) does not pay for it; several fused layers' saliency is computed at once.
    low_res: N×h×w map before upsampling and normalisation (for several fused layers, the
        deepest layer's map; the fused map exists only at input resolution).
    class_idx: N classes explained; logits: N×K; scores: N softmax probabilities of those classes.
        In target mode: class_idx all -1, logits the explained output (N × its shape), scores the
        explained score of each image (the graph's `score`, or the target's own, such as a cosine
        similarity).
    timings: seconds spent in the model runs ("inference") and in the method ("method"; a
        saliency computed on first read is not in it).
    """

    method: str
    layers: tuple[str, ...]
    low_res: np.ndarray
    class_idx: np.ndarray
    logits: np.ndarray
    scores: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)
    size: tuple[int, int] | None = None  # the input's H×W, for a saliency computed on first read
    _saliency: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def saliency(self) -> np.ndarray:
        if self._saliency is None:
            if self.size is None:
                raise ValueError("a Result needs its saliency or the input size (size=) to compute it")
            up = upsample(self.low_res, self.size)
            self._saliency = normalize(up, out=up).astype(np.float32, copy=False)
        return self._saliency


@dataclass(frozen=True)
class Pass:
    """The outputs of one run of the full graph on a preprocessed batch `x`."""

    x: np.ndarray
    outputs: Mapping[str, np.ndarray]  # with IO binding, what stayed on the device is copied on first read
    seconds: float
    target: Target | None = None  # target mode: what was explained (outputs[TARGET] holds its vector)
    checked: frozenset[str] = frozenset()  # outputs found finite after the run (not checked again)

    def rows(self, index: Sequence[int] | np.ndarray) -> Pass:
        """The pass of the images `index` only (their inputs and every output's rows; what stayed on
        the device is copied to the host). `seconds` stays the whole run's."""
        idx = np.asarray(index, dtype=np.int64)
        return Pass(self.x[idx], {k: np.asarray(self.outputs[k])[idx] for k in self.outputs}, self.seconds,
                    self.target)


class Engine:
    """Run a model exported by `camrt export` and turn its outputs into CAMs.

    Args:
        model: path of the .onnx file.
        device: "auto" (CUDA when onnxruntime-gpu finds a GPU, else CPU), "cpu", "cuda" (falls
            back to CPU with a logged warning when CUDA is unavailable) or "openvino" (ONNX
            Runtime's OpenVINO execution provider, from `camrt[openvino]`; an error without it).
        precision: None (float32), or with device "openvino" "bf16" (CPUs with native bfloat16)
            or "f16" (Intel GPUs): `camrt.engine.session.providers_for`.
        chunk_size: at most this many rows (images, or images × copies for sampled methods) go
            through one `session.run`; larger batches are split, with identical results.
        spinning: let ONNX Runtime's worker threads spin after a run (its default: lowest latency
            for back-to-back runs). Turn it off when other threads share the cores, as in
            `camrt video`, where spinning threads starve the decode and encode threads
            (measured in docs/benchmarks.md).
        chunk_graphs: whether perturbation methods build their copies inside ONNX Runtime (True),
            with numpy on the host (False), or per method as measured fastest on the CPU (None; see
            `Graphs.chunk_graphs`). The maps are the same either way.
        io_binding: device-resident runs (`camrt.engine.binding`): the image and activation that a
            perturbation method's chunk graphs read are uploaded once per image, and of a run's
            outputs only those read come to the host (a map head's map, not the activations and
            gradients it was computed from). None (the default): on with the CUDA provider, off on
            the CPU, where it changes nothing but costs a little; the results are the same.
        cuda_graphs: capture the full graph's run in a CUDA graph and replay it (ONNX Runtime's
            `enable_cuda_graph`): less launch overhead per run for small batches. Needs the CUDA
            provider with every node on it (no Memcpy nodes) and fixed shapes: every run of the full
            graph is then `chunk_size` rows, smaller batches padded (same results). Perturbation
            sub-graphs run without it. Refused when the engine does not run on CUDA.
        threads: CPU threads per operator in every session (ONNX Runtime's intra-op threads;
            None: its default, one per physical core), for several engines on one machine
            (`camrt batch` gives each worker its share of the cores).

    The engine is the only place that runs graphs: `Graphs` holds its sessions (the full graph and
    the sub-graphs cut from it), `camrt.engine.perturbation` drives the perturbation methods.
    """

    def __init__(self, model: str | os.PathLike, device: str = "auto", chunk_size: int = DEFAULT_CHUNK,
                 spinning: bool = True, chunk_graphs: bool | None = None, io_binding: bool | None = None,
                 cuda_graphs: bool = False, precision: str | None = None, threads: int | None = None) -> None:
        path = Path(model)
        if not path.is_file():
            raise InputError(f"model file '{path}' does not exist")
        self.path = path
        self._last_vector: tuple[Hashable, np.ndarray] | None = None  # (`_target_vector`)
        self.chunk_size = positive_int(chunk_size, "chunk_size")
        if threads is not None:
            positive_int(threads, "threads")
        try:
            self.graphs = Graphs(path, device, spinning=spinning, chunk_graphs=chunk_graphs, precision=precision,
                                 threads=threads)
        except InputError:
            raise
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own types for bad files
            raise InputError(f"'{path}' is not a loadable ONNX model: {str(e).splitlines()[0][:200]}") from e
        self._session = self.graphs.full
        meta = self._session.get_modelmeta().custom_metadata_map
        if METADATA_KEY not in meta:
            raise InputError(f"'{path}' has no camrt manifest; export the model with `camrt export`")
        try:
            self.manifest = Manifest.from_json(meta[METADATA_KEY])
        except (ValueError, KeyError, TypeError) as e:
            raise InputError(f"'{path}' has an unreadable camrt manifest: {e}") from e
        self._outputs = {o.name for o in self._session.get_outputs()}
        self.provider: str = self._session.get_providers()[0]
        if device == "cuda" and self.provider != "CUDAExecutionProvider":
            logger.warning("CUDA was asked for but is not available to onnxruntime; running on %s", self.provider)
        on_cuda = self.provider == "CUDAExecutionProvider"
        if io_binding is not None and not isinstance(io_binding, bool):
            raise InputError(f"io_binding must be True, False or None (on with CUDA), got {io_binding!r}")
        if io_binding or (io_binding is None and on_cuda):
            self.graphs.binder = Binder("cuda" if on_cuda else "cpu")
        self._fixed: FixedBatch | None = None
        if not isinstance(cuda_graphs, bool):
            raise InputError(f"cuda_graphs must be True or False, got {cuda_graphs!r}")
        if cuda_graphs:
            if not on_cuda:
                raise InputError(f"cuda_graphs=True needs the CUDA execution provider, and this engine runs on "
                                 f"{self.provider} (device='{device}'); leave cuda_graphs off, or install "
                                 "onnxruntime-gpu on a machine with an NVIDIA GPU")
            try:
                session = open_session(path, device, spinning=spinning, cuda_graph=True)
                self._fixed = FixedBatch(session, self.chunk_size, self.graphs.binder or Binder("cuda"))
            except Exception as e:  # noqa: BLE001 - onnxruntime's own types
                raise InputError(f"'{path.name}' cannot run as a CUDA graph: {first_line(e)}; CUDA graphs need "
                                 "every node on the CUDA provider and static shapes; leave cuda_graphs off") from e

    @property
    def input_size(self) -> tuple[int, int]:
        return int(self.manifest.input_shape[2]), int(self.manifest.input_shape[3])

    def prepare(self, images: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        """A float32 N×C×H×W batch: `images` itself if already one, else RGB images preprocessed
        with the manifest's resize and normalisation."""
        if isinstance(images, np.ndarray) and images.ndim == 4 and np.issubdtype(images.dtype, np.floating):
            return check_batch(images, tuple(self.manifest.input_shape[1:]))
        if isinstance(images, np.ndarray) and images.ndim in (2, 3):
            raise InputError("pass a list of images (or a float32 N×C×H×W batch), not a single image array")
        if len(images) == 0:
            raise InputError("no images given")
        return preprocess(list(images), self.input_size, self.manifest.preprocessing)

    def check_class_idx(self, class_idx: int | Sequence[int] | np.ndarray | None, n: int) -> np.ndarray:
        """One int64 class per image, checked: integers only (a float or a string is refused, not
        truncated or parsed), one for all or one per image, each -1 or a class of the model."""
        k = self.manifest.num_classes
        if class_idx is None:
            return np.full(n, -1, np.int64)
        try:
            given = np.asarray(class_idx)
        except ValueError:  # a ragged list, such as [[1], [2, 3]]
            given = np.asarray(None)
        if not np.issubdtype(given.dtype, np.integer) or given.size == 0:
            raise InputError(f"class_idx must be an integer class (or one per image), got {class_idx!r}; "
                             "None or -1 means the top-1 class")
        flat = given.reshape(-1)
        bad = flat[(flat < -1) | (flat >= k)]  # before the int64 cast, which wraps 2**64 - 1 to -1
        c = flat.astype(np.int64)
        if c.size == 1:
            c = np.full(n, int(c[0]), np.int64)
        if c.size != n:
            raise InputError(f"class_idx has {c.size} entries for {n} images; give one, or one per image")
        if bad.size:
            raise InputError(f"class_idx {int(bad[0])} is out of range: the model has {k} classes (0..{k - 1}); "
                             "-1 means the top-1 class")
        return c

    def run(self, x: np.ndarray, class_idx: np.ndarray,
            host: Collection[str] | None = None) -> Mapping[str, np.ndarray]:
        """All graph outputs for a batch, in chunks of `chunk_size` rows. With IO binding, those in
        `host` (None: all) are copied to the host at once, the others when first read. In target
        mode `class_idx` is the target's vector, one per image."""
        feeds = {INPUT: x, TARGET if self.manifest.targeted else CLASS_IDX: class_idx}
        if self._fixed is not None:  # its buffers are bound once: every output comes to the host
            return run_chunked(self._fixed, feeds, self.chunk_size)
        return run_chunked(self._session, feeds, self.chunk_size, binder=self.graphs.binder, host=host)

    def class_scores(self, x: np.ndarray, class_idx: int | Sequence[int] | np.ndarray,
                     probability: bool = True) -> np.ndarray:
        """The score of class ``class_idx[n]`` for each image of the preprocessed batch `x` (float32
        N×C×H×W): its softmax probability, or with ``probability=False`` its logit, as float64 (N,).
        The images go through the forward-only graph (no gradient branch) `chunk_size` rows per run,
        so memory grows with the chunk, not with N (`camrt.metrics` streams its perturbed images
        through here). -1 means each image's own top-1 class."""
        x = self.prepare(x)
        cls = self.check_class_idx(class_idx, len(x))
        logits = run_chunked(self.graphs.forward_only(), {INPUT: x}, self.chunk_size, [LOGITS],
                             binder=self.graphs.binder)[LOGITS].astype(np.float64)
        scores = softmax(logits) if probability else logits
        return scores[np.arange(len(x)), np.where(cls == -1, logits.argmax(axis=1), cls)]

    def forward(self, images: np.ndarray | Sequence[np.ndarray],
                class_idx: int | Sequence[int] | np.ndarray | None = None, gradient: bool = True,
                host: Collection[str] | None = None, heads: Sequence[str] = (),
                target: Target | np.ndarray | None = None) -> Pass:
        """One run of the full graph: logits, classes, activations and gradients of every layer.
        Any number of methods can then be computed from it with `explain_pass`. With
        `gradient=False` the run skips the gradient branch (a forward-only graph), which is all
        that methods without gradients need. With IO binding (`Engine(io_binding=...)`), `host`
        names the outputs to copy to the host at once (None: all; the logits always); the others
        stay on the device until read from `Pass.outputs`. `heads`: with `gradient=False`, outputs
        of gradient-free map heads (`map.reciprocam.L`, `saliency.reciprocam`) to compute in the
        same run. A model exported in target mode takes `target` instead of `class_idx`
        (`camrt.engine.targets`)."""
        return self._forward(images, class_idx, gradient, host, heads, target=target)

    def _forward(self, images: np.ndarray | Sequence[np.ndarray], class_idx: int | Sequence[int] | np.ndarray | None,
                 gradient: bool, host: Collection[str] | None, heads: Sequence[str],
                 only: Sequence[str] | None = None, target: Target | np.ndarray | None = None) -> Pass:
        """`forward`; with `only` (`explain` reading a map head), the run returns those outputs, the
        logits and the classes and no others (activations and gradients are neither copied out nor
        checked: a NaN in them shows in the map and logits computed from them)."""
        if self.manifest.targeted or target is not None:
            return self._forward_target(images, class_idx, gradient, target)
        x = self.prepare(images)
        cls = self.check_class_idx(class_idx, len(x))
        host = None if host is None else {LOGITS, CLASS_IDX_USED, *host}
        t0 = time.perf_counter()
        if self.manifest.maps_only:  # (`camrt add-maps --maps-only`) the heads' outputs are all there is
            names = [LOGITS, CLASS_IDX_USED, *([*only] if only is not None else
                                               sorted(self._outputs - {LOGITS, CLASS_IDX_USED}))]
            out = (self.run(x, cls, host) if self._fixed is not None else
                   run_chunked(self._session, {INPUT: x, CLASS_IDX: cls}, self.chunk_size, names,
                               binder=self.graphs.binder, host=host))
        elif gradient and only is not None and self._fixed is None:
            out = run_chunked(self._session, {INPUT: x, CLASS_IDX: cls}, self.chunk_size,
                              [LOGITS, CLASS_IDX_USED, *only], binder=self.graphs.binder, host=host)
        elif gradient:
            out = self.run(x, cls, host)
        elif heads:
            activations = [la.activation for la in self.manifest.layers] if only is None else []
            names = [LOGITS, CLASS_IDX_USED, *activations, *heads]
            out = run_chunked(self.graphs.outputs(names), {INPUT: x, CLASS_IDX: cls}, self.chunk_size, names,
                              binder=self.graphs.binder, host=host)
        else:
            activations = [la.activation for la in self.manifest.layers]
            out = run_chunked(self.graphs.activations(activations), {INPUT: x}, self.chunk_size, [LOGITS, *activations],
                              binder=self.graphs.binder, host=host)
            out[CLASS_IDX_USED] = np.where(cls == -1, out[LOGITS].argmax(axis=1), cls)
        # What stayed on the device is not read here: a NaN there shows in the map computed from it.
        copied = out.on_host() if isinstance(out, Outputs) else list(out)
        floats = [k for k in copied if out[k].dtype.kind == "f"]
        bad = nonfinite_images(*(out[k] for k in floats))
        if bad:  # a finite input can still overflow float32 inside the model (values near 3.4e38)
            raise InputError(f"the model's outputs hold NaN or infinite values for {images_text(bad)}: its float32 "
                             f"arithmetic overflowed (the input's largest magnitude is {float(np.abs(x).max()):.3g}); "
                             "check the preprocessing that produced the input")
        return Pass(x, out, time.perf_counter() - t0, checked=frozenset(floats))

    def _target_vector(self, built: Target, first: Mapping[str, np.ndarray] | None, shape: tuple[int, ...],
                       n: int) -> np.ndarray:
        """`built`'s vector; the last one again (read-only) when the target says it is the same
        (`Target.reuse_key`) and reads no output."""
        key = built.reuse_key(shape, n) if first is None else None
        if key is not None and self._last_vector is not None and self._last_vector[0] == key:
            return self._last_vector[1]
        vector = built.vector(None if first is None else first[OUTPUT], shape, n)
        if key is not None:
            vector.flags.writeable = False  # it is handed out again (Pass.outputs["target"])
            self._last_vector = (key, vector)
        return vector

    def _forward_target(self, images: np.ndarray | Sequence[np.ndarray],
                        class_idx: int | Sequence[int] | np.ndarray | None, gradient: bool,
                        target: Target | np.ndarray | None) -> Pass:
        """`forward` of a model exported in target mode: the target's vector (after a forward-only
        run when it reads the output), then the full graph (or, without `gradient`, the forward
        graph with the activations). Every output comes to the host."""
        if not self.manifest.targeted:
            raise InputError(f"'{self.path.name}' was exported for classes (class_idx); re-export it with "
                             "`camrt export --target` to explain it for a target")
        if class_idx is not None:
            raise InputError(f"'{self.path.name}' was exported in target mode: give target= (a camrt.engine.targets "
                             "builder or an array), not class_idx")
        if target is None:
            raise InputError(f"'{self.path.name}' was exported in target mode and needs a target: "
                             "camrt.engine.targets.ClassTarget(k), RegionTarget(k, mask), SimilarityTarget(concept) "
                             "or an array of the output's shape")
        built = as_target(target)
        shape = tuple(self.manifest.target_shape)
        built.check(shape)
        x = self.prepare(images)
        t0 = time.perf_counter()
        activations = [la.activation for la in self.manifest.layers]
        first = None
        if built.needs_output or not gradient:
            first = dict(run_chunked(self.graphs.activations(activations), {INPUT: x}, self.chunk_size,
                                     [OUTPUT, *activations], binder=self.graphs.binder))
        vector = self._target_vector(built, first, shape, len(x))
        if gradient:
            out = dict(self.run(x, vector))
        else:
            out = first
        out[TARGET] = vector
        if not (gradient and built.linear):  # else the graph's `score` is the target's own
            out[SCORE] = np.asarray([built.score(out[OUTPUT][n:n + 1], vector[n])[0] for n in range(len(x))],
                                    np.float32)
        # (a vector finite by construction is not summed again: 22 MB per call for a segmentation batch)
        bad = nonfinite_images(*(v for k, v in out.items()
                                 if v.dtype.kind == "f" and not (k == TARGET and built.finite_vector)))
        if bad:
            raise InputError(f"the model's outputs hold NaN or infinite values for {images_text(bad)}: its float32 "
                             f"arithmetic overflowed (the input's largest magnitude is {float(np.abs(x).max()):.3g}); "
                             "check the preprocessing that produced the input")
        return Pass(x, out, time.perf_counter() - t0, built)

    def explain(
        self,
        images: np.ndarray | Sequence[np.ndarray],
        method: str = "gradcam",
        class_idx: int | Sequence[int] | np.ndarray | None = None,
        layer: str | Sequence[str] | None = None,
        seed: int = 0,
        progress: Callable[[int, int], None] | None = None,
        target: Target | np.ndarray | None = None,
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
            target: for a model exported in target mode (`camrt export --target`), what to explain
                of its output instead of a class: a `camrt.engine.targets` builder or an array.
                Perturbation methods judge their copies by the target's score (no softmax).
            options: the method's options (`METHODS[method].options` lists them with their defaults),
                e.g. ``n=8`` for SS-CAM.
        """
        spec = get_method(method)  # fail before running the model
        layers = self.resolve_layers(layer)
        non_negative_int(seed, "seed")
        opts = self.configure(spec, options)
        head = self._head(spec, layers, opts)
        self._check_maps_only(spec, layers, opts, head)
        read, heads = None, []
        if head is not None:
            # Only the map (and CAM's gradient, for its check) are read: no other output is fetched.
            outputs = [head, *[n for n in [saliency_name(spec.name)] if n in self._outputs]]
            read = [*outputs, *([self.manifest.layer(layers[0]).gradient] if spec.name == "cam" else [])]
            heads = [] if spec.uses_gradient else outputs  # a gradient-free head (Recipro-CAM): no gradient branch
        if spec.family == "model":  # the model's own map: a forward pass that also returns it
            heads = [MODEL_MAP]
        if self.manifest.targeted and spec.input_gradient:
            raise InputError(f"method '{spec.name}' optimises a class score and is not offered in target mode")
        # (no `host`: every output fetched is read, so all of it comes to the host)
        p = self._forward(images, class_idx, spec.uses_gradient, None, heads, only=read, target=target)
        return self._explain_pass(p, spec, layers, seed, progress, opts, head)

    def _check_maps_only(self, spec: Method, layers: Sequence[str], options: Options, head: str | None) -> None:
        """A `--maps-only` file answers only its heads' methods, for their layer and options."""
        if self.manifest.maps_only and head is None:
            raise InputError(f"'{self.path.name}' holds only the maps of its heads ({', '.join(self.manifest.maps)}; "
                             f"`camrt add-maps --maps-only`), and method '{spec.name}' at {', '.join(layers)} with "
                             f"options {options.as_dict()} is not one of them: ask for a head's method, or use the "
                             "file it was made from")

    def _head(self, spec: Method, layers: Sequence[str], options: Options) -> str | None:
        """The output of the map head (`camrt add-maps`) that computes `spec`'s map of `layers` with
        `options` (the manifest's `map_options` for the head), if the model has one."""
        if spec.name not in self.manifest.maps or len(layers) != 1:
            return None
        name = map_name(spec.name, layers[0])
        if name not in self._outputs or self.manifest.map_options.get(spec.name, {}) != options.as_dict():
            return None
        return name

    def explain_pass(self, p: Pass, /, method: str = "gradcam", layer: str | Sequence[str] | None = None,
                     seed: int = 0, progress: Callable[[int, int], None] | None = None,
                     options: Options | None = None, **given: object) -> Result:
        """`explain` on the outputs of an earlier `forward` (no new run for gradient methods).
        Options go by name (`given`) or as the method's checked options object (`options`)."""
        spec = get_method(method)
        layers = self.resolve_layers(layer)
        non_negative_int(seed, "seed")
        if options is not None and given:
            raise InputError("give method options either by name or as an options object, not both")
        opts = self.configure(spec, options if options is not None else given)
        if spec.uses_gradient and not self.manifest.maps_only and self.manifest.layers[0].gradient not in p.outputs:
            raise InputError(f"method '{spec.name}' needs the gradient, and this pass was run with gradient=False")
        head = self._head(spec, layers, opts)
        self._check_maps_only(spec, layers, opts, head)
        return self._explain_pass(p, spec, layers, seed, progress, opts, head)

    def _explain_pass(self, p: Pass, spec: Method, layers: list[str], seed: int,
                      progress: Callable[[int, int], None] | None, opts: Options, head: str | None) -> Result:
        """`explain_pass` with its arguments checked (`head`: `_head`'s answer for them)."""
        out = p.outputs
        targeted = p.target is not None
        used = np.full(len(p.x), -1, np.int64) if targeted else out[CLASS_IDX_USED]
        timings = {"inference": p.seconds}
        samples = None
        if spec.family == "sampled":
            samples, t_inf = self._run_samples(spec, opts, p.x, out[TARGET] if targeted else used, layers, seed)
            timings["inference"] += t_inf
        t1 = time.perf_counter()
        maps, saliency = [], None
        # A map head (`camrt add-maps`) computed the map in the graph run, and for the last layer its saliency.
        if head is not None and head in out:
            if spec.name == "cam":  # its check (a gradient constant over each map) cannot fail inside the graph
                check_pooled_head(out[self.manifest.layer(layers[0]).gradient])
            maps.append(out[head])
            # a gradient head's saliency is the last layer's; a gradient-free head's, its own layer's
            if layers[0] == self.manifest.layers[-1].name or not spec.uses_gradient:
                saliency = out.get(saliency_name(spec.name))
        if spec.family == "model":
            if MODEL_MAP not in out:
                raise InputError("method 'model-map' reads the model's own map, which this pass did not compute; "
                                 "run forward() with the full graph (gradient=True) or call explain()")
            maps.append(spec.map(out[MODEL_MAP], used))
        for la in layers if not maps else ():
            a, g = out[self.manifest.layer(la).activation], out.get(self.manifest.layer(la).gradient)
            if spec.family == "relevance":
                g = out.get(self.manifest.layer(la).relevance)
                if g is None:
                    raise InputError(f"method '{spec.name}' reads the relevance, which this pass did not compute; "
                                     "run forward() with the full graph (gradient=True) or call explain()")
            if spec.perturbation:
                maps.append(perturbation_map(spec, opts, self.graphs, p.x, out, la, self.chunk_size, seed, progress,
                                             p.target))
            elif samples is None:
                maps.append(spec.map(a, g))
            else:
                maps.append(spec.map(a, g, *samples[la]))
        bad = [] if head is not None and head in p.checked else nonfinite_images(*maps)  # (a head's: checked)
        if bad:  # the method's copies or its own arithmetic overflowed float32
            raise InputError(f"method '{spec.name}' gave NaN or infinite values for {images_text(bad)} with options "
                             f"{opts.as_dict()}: float32 overflowed; use smaller option values (or a smaller input)")
        size = self.input_size
        if saliency is None and len(maps) > 1:
            saliency = fuse(maps, size)
        timings["method"] = time.perf_counter() - t1
        low = maps[-1].astype(np.float32, copy=False)
        saliency = None if saliency is None else saliency.astype(np.float32, copy=False)  # else: on first read
        if targeted:
            return Result(spec.name, tuple(layers), low, used, out[OUTPUT], out[SCORE], timings, size, saliency)
        logits = out[LOGITS]
        return Result(spec.name, tuple(layers), low, used, logits, softmax(logits)[np.arange(len(used)), used],
                      timings, size, saliency)

    def resolve_layers(self, layer: str | Sequence[str] | None) -> list[str]:
        """The target layers `layer` names (None: the last exported one), checked against the model."""
        names = [la.name for la in self.manifest.layers]
        if layer is not None and not isinstance(layer, str) and not (
                isinstance(layer, (list, tuple)) and all(isinstance(la, str) for la in layer)):
            raise InputError(f"layer must be a layer name or a list of names, got {layer!r}; this model has: "
                             f"{', '.join(names)}")
        wanted = [names[-1]] if layer is None else [layer] if isinstance(layer, str) else list(layer)
        for la in wanted:
            if la not in names:
                raise InputError(f"layer '{la}' was not exported; this model has: {', '.join(names)}")
        if not wanted:
            raise InputError("layer is an empty list")
        return wanted

    def configure(self, method: Method, options: Mapping[str, object] | Options | None = None) -> Options:
        """The method's options (defaults overridden by `options`, names and values checked), once
        the model is known to have what the method needs."""
        if method.uses_gradient and not self.manifest.gradients and not self.manifest.maps_only:
            raise InputError(f"method '{method.name}' needs the gradient, and '{self.path.name}' was written without "
                             "its gradient branch (`camrt add-maps --no-gradients`); use the file it was made from")
        if method.family == "model" and not self.manifest.model_map:
            raise InputError(f"method '{method.name}' reads the model's own map output, and '{self.path.name}' has "
                             "none; export a model that returns its map (CALM, LFI-CAM) with "
                             "`camrt export --map-output NAME`")
        if method.family == "relevance" and not self.manifest.relevance:
            raise InputError(f"method '{method.name}' reads the layer-wise relevance, which '{self.path.name}' lacks; "
                             "re-export the model with `camrt export --relevance` (or camrt.export(..., "
                             "relevance=True))")
        if method.input_gradient and not self.manifest.input_gradient:
            raise InputError(f"method '{method.name}' needs the gradient of the class score with respect to the "
                             f"input, which '{self.path.name}' lacks; re-export the model with `camrt export "
                             "--input-gradient` (or camrt.export(..., input_gradient=True))")
        return method.configure(options)

    def _run_samples(self, spec: Method, options: Options, x: np.ndarray, used: np.ndarray, layers: list[str],
                     seed: int) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], float]:
        """Run all copies of every image in one batched (chunked) pass, each explained for the
        class chosen for its source image (in target mode `used` holds each image's target vector):
        per layer, the copies' activations and gradients
        ``(N, S, C, h, w)``, and the seconds the runs took."""
        p = self.manifest.preprocessing
        black = ((0.0 - np.asarray(p.mean)) / np.asarray(p.std)).astype(np.float32)[None, :, None, None]
        copies = spec.samples(SampleContext(x, np.random.default_rng(seed), black), options)
        n, s = copies.shape[:2]
        # Copies of noise sigma=inf are all infinite, yet their map comes out finite (and meaningless).
        bad = nonfinite_images(copies)
        t0 = time.perf_counter()
        if not bad:
            out = self.run(copies.reshape(n * s, *copies.shape[2:]), np.repeat(used, s, axis=0))
            bad = nonfinite_images(*(v.reshape(n, -1) for v in out.values() if v.dtype.kind == "f"))
        if bad:
            raise InputError(f"method '{spec.name}' gave copies or outputs with NaN or infinite values for "
                             f"{images_text(bad)} with options {options.as_dict()}: float32 overflowed; use smaller "
                             "option values")
        elapsed = time.perf_counter() - t0
        result = {}
        for la in layers:
            a, g = out[self.manifest.layer(la).activation], out[self.manifest.layer(la).gradient]
            result[la] = (a.reshape(n, s, *a.shape[1:]), g.reshape(n, s, *g.shape[1:]))
        return result, elapsed
