"""CAM methods as pure numpy functions of a layer's activation ``A`` and gradient ``G = ∂y_c/∂A``.

`METHODS` is the one table from a method's name to its `Method` record. Each record is declared
next to its code, in its family's module, and says what a caller needs to run it: the family,
the options class (its defaults, checked on construction), the map or explore function, the score
its copies are judged by and its number of runs. The contract (`Method`, `Options`, `Context`,
`SampleContext`) is in `camrt.methods.contract`; the families:

* ``"gradient"`` (`camrt.methods.gradient`, `camrt.methods.eigen`): one forward/backward pass.
* ``"sampled"`` (`camrt.methods.sampled`): copies of the input run in the same batch.
* ``"feature"`` (`camrt.methods.feature`): perturbed activations through the graph's tail.
* ``"input"`` (`camrt.methods.masking`, `camrt.methods.optimisation`): masked inputs through the
  forward-only graph.
* ``"relevance"`` (`camrt.methods.relevance`): the layer-wise relevance the graph computes
  (`camrt export --relevance`).
* ``"model"`` (`camrt.methods.model`): the model's own map output.

This package imports numpy only (no torch, onnxruntime or cv2).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from camrt.errors import InputError
from camrt.methods import eigen, feature, gradient, masking, model, optimisation, relevance, sampled
from camrt.methods._core import combine, normalize, relu, softmax, upsample
from camrt.methods.contract import Context, Family, Method, NoOptions, Options, SampleContext
from camrt.methods.eigen import eigencam, eigengradcam
from camrt.methods.feature import ablationcam, reciprocam
from camrt.methods.fusion import fuse
from camrt.methods.gradient import (
    abscam,
    abscam_channel_maps,
    cam,
    gradcam,
    gradcam_elementwise,
    gradcampp,
    hirescam,
    layercam,
    xgradcam,
)
from camrt.methods.masking import scorecam
from camrt.methods.sampled import integratedgradcam, integratedgradcam_samples, smoothgradcampp, smoothgradcampp_samples


def _table(*families: tuple[Method, ...]) -> dict[str, Method]:
    table: dict[str, Method] = {}
    for declared in families:
        for m in declared:
            if m.name in table:
                raise ValueError(f"method '{m.name}' is declared twice")
            table[m.name] = m
    return table


# The order is the order of `camrt methods` and of '--method all'.
METHODS: dict[str, Method] = _table(gradient.METHODS, eigen.METHODS, sampled.METHODS, feature.METHODS,
                                    masking.METHODS, optimisation.METHODS, relevance.METHODS, model.METHODS)


def get_method(name: str) -> Method:
    """`METHODS[name]`, or an InputError that lists the methods."""
    spec = METHODS.get(name) if isinstance(name, str) else None  # a list or a dict is not a key either
    if spec is None:
        raise InputError(f"unknown method '{name}'; `camrt methods` lists them: {', '.join(METHODS)}")
    return spec


def check_options(method: str, options: Mapping[str, Any] | Options | None = None) -> Options:
    """The options `method` runs with: its defaults overridden by `options`, every name and value
    checked (InputError saying which and why), so that a caller can fail before any run."""
    return get_method(method).configure(options)


__all__ = [
    "METHODS",
    "Context",
    "Family",
    "NoOptions",
    "Options",
    "SampleContext",
    "softmax",
    "check_options",
    "get_method",
    "ablationcam",
    "reciprocam",
    "scorecam",
    "Method",
    "abscam",
    "abscam_channel_maps",
    "cam",
    "combine",
    "eigencam",
    "eigengradcam",
    "fuse",
    "gradcam",
    "gradcam_elementwise",
    "gradcampp",
    "hirescam",
    "integratedgradcam",
    "integratedgradcam_samples",
    "layercam",
    "normalize",
    "relu",
    "smoothgradcampp",
    "smoothgradcampp_samples",
    "upsample",
    "xgradcam",
]
