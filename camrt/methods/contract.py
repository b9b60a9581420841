"""The method contract: what a CAM method declares, and what the engine hands it.

A method is a `Method` record declared next to its code (in its family's module), listing its
family, its options class, its map or explore function, the score its copies are judged by and
how many network runs it takes. `camrt.methods.METHODS` gathers the records of every family
module. Adding a method means writing its functions and its record in one module, and its tests
in one test file.

Families and the functions they declare:

* ``"gradient"``: ``map(activation, gradient) -> (N, h, w)``, both ``(N, C, h, w)`` from one
  forward/backward pass.
* ``"sampled"``: ``samples(SampleContext, options) -> (N, S, C_in, H, W)`` copies of the input,
  run in one batch with it, each explained for its source image's class; then ``map(activation,
  gradient, sample_activation, sample_gradient) -> (N, h, w)`` with the copies' activations and
  gradients reshaped to ``(N, S, C, h, w)``.
* ``"relevance"``: ``map(activation, relevance) -> (N, h, w)``, the relevance ``(N, C, h, w)`` of
  the explained class at the layer from the same graph run (`camrt export --relevance`).
* ``"model"``: ``map(model_map, classes) -> (N, h, w)`` from the model's own map output
  (`camrt export --map-output`: CALM, LFI-CAM), one forward pass.
* ``"feature"`` and ``"input"`` (perturbation): ``explore(Context, options)`` is a coroutine that
  yields batches of perturbed copies of one image (of its activation, run through the graph's
  tail, for "feature"; of the preprocessed image, run through the forward-only graph, for
  "input"), is sent each batch's class scores, and returns the map ``(1, h, w)`` or ``(1, H, W)``;
  ``runs(activation, options)`` bounds the number of copies for progress reports. A method with
  ``input_gradient`` is sent ``(scores, ∂y_c/∂input)`` instead of the scores (Opti-CAM). A
  "feature" method that also perturbs a tensor crossing the tail's cut (ViT-ReciproCAM masks the
  block input that the residual adds back) yields `TailCopies` instead of an array: the activation's
  copies and per-copy batches of those tensors, read from `Context.crossing`.

Every method's map is non-negative (after its ReLU); the caller upsamples and normalises it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np

from camrt.errors import InputError

Family = Literal["gradient", "sampled", "feature", "input", "model", "relevance"]
Score = Literal["logit", "probability"]
Explore = Generator[np.ndarray, Any, np.ndarray]


@dataclass(frozen=True)
class Options:
    """Base of every method's options: a frozen dataclass whose fields are the options with their
    defaults (the one place a default is written). Construction checks every value (`_checked`
    returns them in canonical types, or raises InputError naming the option), so an options object
    that exists is valid and is never checked again."""

    def __post_init__(self) -> None:
        for name, value in self._checked().items():
            object.__setattr__(self, name, value)

    def _checked(self) -> dict[str, Any]:
        """The fields' values, checked and converted; override in each options class."""
        return {}

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return {f.name: f.default for f in dataclasses.fields(cls)}

    @classmethod
    def build(cls, given: Mapping[str, Any], method: str) -> Options:
        """The options `given` by name (the rest at their defaults), checked; InputError for a name
        `method` does not take."""
        unknown = set(given) - set(cls.names())
        if unknown:
            takes = f"it takes {', '.join(sorted(cls.names()))}" if cls.names() else "it takes no options"
            raise InputError(f"method '{method}' has no option(s) {', '.join(sorted(unknown))}; {takes}")
        return cls(**given)

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.names()}


@dataclass(frozen=True)
class NoOptions(Options):
    """The options of a method that takes none."""


@dataclass(frozen=True)
class Context:
    """What the engine hands a perturbation method about one image; each method reads what it uses.

    activation: the target layer's activation ``(C, h, w)``.
    x: the preprocessed image ``(C_in, H, W)``.
    gradient: ``∂y_c/∂A`` ``(C, h, w)`` (None when the run had no gradient; see `Method.uses_gradient`).
    base: the class score of the unperturbed image, as `Method.score` says (logit or probability).
    seed: seed of randomised methods (same seed, same map, whatever the chunk).
    chunk: at most this many copies per yielded batch.
    crossing: the tensors of this image that cross the tail's cut (1×… each, by graph name): what
        the layers after the target read from before it, such as a skip connection around the
        target, a transformer block's input and its prefix tokens. Empty when the caller has none.
    """

    activation: np.ndarray
    x: np.ndarray | None = None
    gradient: np.ndarray | None = None
    base: float = math.nan
    seed: int = 0
    chunk: int = 16
    crossing: Mapping[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.chunk, bool) or not isinstance(self.chunk, (int, np.integer)) or self.chunk < 1:
            raise InputError(f"chunk must be a positive integer, got {self.chunk!r}")
        if np.ndim(self.activation) != 3:
            raise InputError(f"a perturbation method takes one image's activation C×h×w, got "
                             f"{np.shape(self.activation)}")
        if self.x is not None and np.ndim(self.x) != 3:
            raise InputError(f"a perturbation method takes one image C×H×W, got {np.shape(self.x)}")
        if self.gradient is not None and np.shape(self.gradient) != np.shape(self.activation):
            raise InputError(f"gradient {np.shape(self.gradient)} must have the activation's shape "
                             f"{np.shape(self.activation)}")

    def need(self, what: str) -> Any:
        """The field `what`, or an InputError when the caller did not provide it."""
        value = getattr(self, what)
        if value is None or (what == "base" and math.isnan(value)):
            raise InputError(f"this method needs `{what}` in its Context")
        return value


@dataclass(frozen=True)
class TailCopies:
    """A batch of a "feature" method that perturbs more than the activation: `activation` holds the
    k copies of the activation ``(k, C, h, w)``, `crossing` k copies of some of `Context.crossing`'s
    tensors by name (``(k, …)`` each); the caller repeats the other crossing tensors."""

    activation: np.ndarray
    crossing: Mapping[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.activation)


@dataclass(frozen=True)
class SampleContext:
    """What the engine hands a sampled method's `samples` function.

    x: the preprocessed batch ``(N, C_in, H, W)``; rng: the seeded generator to draw from;
    baseline: the preprocessed black image ``(1, C_in, 1, 1)`` (the preprocessing of zeros).
    """

    x: np.ndarray
    rng: np.random.Generator
    baseline: np.ndarray


@dataclass(frozen=True)
class Method:
    """A CAM method and what a caller needs to know to run it.

    name: the key in `METHODS`, as typed on the command line.
    description: one line, shown by ``camrt methods``; paper: URL of the paper (or reference code).
    family: ``"gradient"``, ``"sampled"``, ``"feature"`` or ``"input"`` (see the module docstring).
    options: the frozen dataclass of its options and defaults (`NoOptions` if none).
    map: the map function of gradient and sampled methods.
    samples: the copies of a sampled method.
    explore, runs: the coroutine of a perturbation method and the bound on its copies per image.
    score: what the copies are judged by: the class ``"logit"`` or its softmax ``"probability"``.
    uses_gradient: False when the method never reads the layer gradient (a forward-only run is enough).
    input_gradient: the coroutine is sent ``(scores, ∂y_c/∂input)``; needs a model exported with
        ``input_gradient=True``.
    """

    FAMILIES: ClassVar[tuple[str, ...]] = ("gradient", "sampled", "feature", "input", "model", "relevance")

    name: str
    description: str
    paper: str
    family: Family
    options: type[Options] = NoOptions
    map: Callable[..., np.ndarray] | None = None
    samples: Callable[[SampleContext, Any], np.ndarray] | None = None
    explore: Callable[[Context, Any], Explore] | None = None
    runs: Callable[[np.ndarray, Any], int] | None = None
    score: Score = "logit"
    uses_gradient: bool = True
    input_gradient: bool = False
    _fields_needed: ClassVar[dict[str, tuple[str, ...]]] = {
        "gradient": ("map",), "sampled": ("map", "samples"), "feature": ("explore", "runs"),
        "input": ("explore", "runs"), "model": ("map",), "relevance": ("map",),
    }

    def __post_init__(self) -> None:
        if self.family not in self.FAMILIES:
            raise ValueError(f"method {self.name}: family {self.family!r} is not one of {self.FAMILIES}")
        missing = [f for f in self._fields_needed[self.family] if getattr(self, f) is None]
        if missing:
            raise ValueError(f"method {self.name} ({self.family}) must declare {', '.join(missing)}")

    @property
    def perturbation(self) -> bool:
        """True for methods that re-run the network once per perturbed copy ("feature", "input")."""
        return self.family in ("feature", "input")

    def configure(self, given: Mapping[str, Any] | Options | None = None) -> Options:
        """This method's options: `given` by name over the defaults, every value checked."""
        if isinstance(given, self.options):
            return given
        if isinstance(given, Options):
            raise InputError(f"method '{self.name}' takes {self.options.__name__}, got {type(given).__name__}")
        return self.options.build(dict(given or {}), self.name)
