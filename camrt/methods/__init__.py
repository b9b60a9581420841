"""CAM methods as pure numpy functions of a layer's activation ``A`` and gradient ``G = ∂y_c/∂A``.

`METHODS` is the one table from a method's name to its function and facts. A method's function
returns the saliency map ``(N, h, w)`` after its ReLU; the caller then applies
``normalize(upsample(map, (H, W)))``. Families:

* ``"gradient"``: ``fn(activation, gradient)``, both ``(N, C, h, w)`` from one forward/backward pass.
* ``"sampled"``: ``fn(activation, gradient, sample_activation, sample_gradient)``; the copies of the
  input come from ``samples(x, rng, **sample_options, **inputs named in sample_inputs)`` and run in the
  same batch as the input (see `camrt.methods.sampled`).
* ``"feature"`` and ``"input"``: perturbation methods. ``explore(activation, chunk=..., **needs,
  **options)`` is a coroutine that yields batches of perturbed copies, is sent each batch's class
  scores, and returns the map: copies of one image's activation go through the graph's tail
  ("feature", `camrt.methods.feature`), or masked copies of one preprocessed image through the
  forward-only graph ("input", `camrt.methods.masking`). ``count(activation, **options)`` bounds
  the number of copies (for progress reports). Opti-CAM (`camrt.methods.optimisation`) is also sent
  the gradient of the class score with respect to each input (`Method.input_gradient`).

This package imports numpy only (no torch, onnxruntime or cv2).
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

import numpy as np

from camrt.errors import InputError
from camrt.methods._core import combine, normalize, relu, upsample
from camrt.methods.eigen import eigencam, eigengradcam
from camrt.methods.feature import (
    ablation_count,
    ablation_explore,
    ablationcam,
    ablationpp_check,
    ablationpp_count,
    ablationpp_explore,
    reciprocam,
    reciprocam_check,
    reciprocam_count,
    reciprocam_explore,
)
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
from camrt.methods.masking import (
    groupcam_check,
    groupcam_count,
    groupcam_explore,
    iscam_check,
    iscam_count,
    iscam_explore,
    rise_check,
    rise_count,
    rise_explore,
    scorecam,
    scorecam_count,
    scorecam_explore,
    sscam_check,
    sscam_count,
    sscam_explore,
)
from camrt.methods.optimisation import opticam_check, opticam_count, opticam_explore
from camrt.methods.sampled import (
    integratedgradcam,
    integratedgradcam_check,
    integratedgradcam_samples,
    smoothgradcampp,
    smoothgradcampp_check,
    smoothgradcampp_samples,
)

Family = Literal["gradient", "sampled", "feature", "input"]


@dataclass(frozen=True)
class Method:
    """A CAM method: its function and what a caller needs to know to run it.

    Attributes:
        name: the key in `METHODS`, as typed on the command line.
        fn: the map function (signature set by `family`, see the module docstring); for
            perturbation methods, the function of the scores that `explore` ends with, or the
            `explore` coroutine itself when the map is built while the scores arrive.
        description: one line, shown by ``camrt methods``.
        paper: URL of the paper (or of the reference implementation when there is no paper).
        family: ``"gradient"``, ``"sampled"``, ``"feature"`` or ``"input"``.
        samples: for sampled methods, ``samples(x, rng, **options) -> (N, S, C, H, W)`` copies of the input.
        options: the method's keyword options and their defaults (e.g. number of copies); a caller
            may override them by name (``camrt explain -O n=8``).
        needs: keyword arguments the caller supplies from the run: ``"baseline"`` (the preprocessed
            black image), ``"x"`` (the preprocessed image), ``"gradient"`` (``∂y_c/∂A`` of the
            image), ``"base"`` (the unperturbed class score), ``"seed"``.
        uses_gradient: False when the method ignores the gradient, so a forward-only run is enough.
        explore, count: for perturbation methods, the coroutine and the bound on its copies.
        score: which class score the perturbed copies are judged by: "logit" or "probability".
        check: ``check(**options) -> options`` raises InputError for a bad option value, so that a
            caller fails before any run (`check_options`).
        input_gradient: the `explore` coroutine is sent ``(scores, ∂y_c/∂input)`` for each batch of
            inputs, which needs a model exported with ``input_gradient=True`` (Opti-CAM).
    """

    name: str
    fn: Callable[..., np.ndarray]
    description: str
    paper: str
    family: Family
    samples: Callable[..., np.ndarray] | None = None
    options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    needs: tuple[str, ...] = ()
    uses_gradient: bool = True
    explore: Callable[..., Generator[np.ndarray, np.ndarray, np.ndarray]] | None = None
    count: Callable[..., int] | None = None
    score: Literal["logit", "probability"] = "logit"
    input_gradient: bool = False
    check: Callable[..., dict] | None = None


def _opts(**kw: Any) -> Mapping[str, Any]:
    return MappingProxyType(kw)


METHODS: dict[str, Method] = {
    "cam": Method(
        "cam", cam, "Classifier weights of the class (global-average-pool → linear heads only)",
        "https://arxiv.org/abs/1512.04150", "gradient"),
    "gradcam": Method(
        "gradcam", gradcam, "Activations weighted by the spatial mean of their gradient",
        "https://arxiv.org/abs/1610.02391", "gradient"),
    "gradcam++": Method(
        "gradcam++", gradcampp, "Grad-CAM with pixel-wise weights from second and third gradient powers",
        "https://arxiv.org/abs/1710.11063", "gradient"),
    "xgradcam": Method(
        "xgradcam", xgradcam, "Gradients averaged with the normalised activations as weights",
        "https://arxiv.org/abs/2008.02312", "gradient"),
    "layercam": Method(
        "layercam", layercam, "Each activation weighted by its own positive gradient",
        "https://ieeexplore.ieee.org/document/9462463", "gradient"),
    "hirescam": Method(
        "hirescam", hirescam, "Element-wise gradient × activation summed over channels",
        "https://arxiv.org/abs/2011.08891", "gradient"),
    "gradcam-elementwise": Method(
        "gradcam-elementwise", gradcam_elementwise, "Positive parts of gradient × activation summed over channels",
        "https://github.com/jacobgil/pytorch-grad-cam", "gradient"),
    "eigencam": Method(
        "eigencam", eigencam, "First principal component of the activations (class-agnostic)",
        "https://arxiv.org/abs/2008.00299", "gradient", uses_gradient=False),
    "eigengradcam": Method(
        "eigengradcam", eigengradcam, "First principal component of gradient × activation",
        "https://github.com/jacobgil/pytorch-grad-cam", "gradient"),
    "abscam": Method(
        "abscam", abscam, "Activations weighted by the mean absolute gradient (Abs-CAM initial map)",
        "https://arxiv.org/abs/2207.03648", "gradient"),
    "smoothgradcam++": Method(
        "smoothgradcam++", smoothgradcampp, "Grad-CAM++ with gradient powers averaged over noisy copies",
        "https://arxiv.org/abs/1908.01224", "sampled", samples=smoothgradcampp_samples,
        options=_opts(n=4, sigma=0.3), check=smoothgradcampp_check),
    "integratedgradcam": Method(
        "integratedgradcam", integratedgradcam, "Grad-CAM terms integrated along the path from a black image",
        "https://arxiv.org/abs/2102.07805", "sampled", samples=integratedgradcam_samples,
        options=_opts(steps=20), needs=("baseline",), check=integratedgradcam_check),
    "ablationcam": Method(
        "ablationcam", ablationcam, "Relative drop of the class score when each channel is zeroed (tail re-runs)",
        "https://openaccess.thecvf.com/content_WACV_2020/html/Desai_Ablation-CAM_Visual_Explanations_for_Deep_"
        "Convolutional_Network_via_Gradient-free_Localization_WACV_2020_paper.html", "feature",
        uses_gradient=False, explore=ablation_explore, count=ablation_count, needs=("base",)),
    "ablationcam++": Method(
        "ablationcam++", ablationpp_explore, "Ablation-CAM on channel groups, split recursively where they matter",
        "https://ieeexplore.ieee.org/document/9897876", "feature", uses_gradient=False,
        explore=ablationpp_explore, count=ablationpp_count, needs=("base",), options=_opts(groups=16, threshold=0.5),
        check=ablationpp_check),
    "reciprocam": Method(
        "reciprocam", reciprocam, "Class probability of each position's features alone (tail re-runs)",
        "https://arxiv.org/abs/2209.14074", "feature", uses_gradient=False, explore=reciprocam_explore,
        count=reciprocam_count, score="probability", needs=("base",), options=_opts(kernel="onehot"),
        check=reciprocam_check),
    "scorecam": Method(
        "scorecam", scorecam, "Softmax over channels of the class score of the input masked by each channel",
        "https://arxiv.org/abs/1910.01279", "input", uses_gradient=False, explore=scorecam_explore,
        count=scorecam_count, needs=("x", "base")),
    "sscam": Method(
        "sscam", sscam_explore, "Score-CAM with scores averaged over noisy masks",
        "https://arxiv.org/abs/2006.14255", "input", uses_gradient=False, explore=sscam_explore,
        count=sscam_count, needs=("x", "seed"), options=_opts(n=35, sigma=2.0, noise="mask"), check=sscam_check),
    "iscam": Method(
        "iscam", iscam_explore, "Score-CAM with scores integrated over masks scaled from 0 to 1",
        "https://arxiv.org/abs/2010.03023", "input", uses_gradient=False, explore=iscam_explore,
        count=iscam_count, needs=("x",), options=_opts(n=10, cumulative=False), check=iscam_check),
    "groupcam": Method(
        "groupcam", groupcam_explore, "Gradient-weighted channel groups scored as masks over a blurred input",
        "https://arxiv.org/abs/2103.13859", "input", explore=groupcam_explore, count=groupcam_count,
        score="probability", needs=("x", "gradient"), options=_opts(groups=32, blur_kernel=51, blur_sigma=50.0),
        check=groupcam_check),
    "rise": Method(
        "rise", rise_explore, "Class probability under random smooth masks, averaged per pixel (model-agnostic)",
        "https://arxiv.org/abs/1806.07421", "input", uses_gradient=False, explore=rise_explore, count=rise_count,
        score="probability", needs=("x", "seed"), options=_opts(n=4000, cells=7, p=0.5), check=rise_check),
    "opticam": Method(
        "opticam", opticam_explore, "Channel weights optimised (Adam) to maximise the class score of the masked input",
        "https://arxiv.org/abs/2301.07002", "input", uses_gradient=False, explore=opticam_explore,
        count=opticam_count, needs=("x",), options=_opts(steps=100, lr=0.1), input_gradient=True,
        check=opticam_check),
}

def get_method(name: str) -> Method:
    """`METHODS[name]`, or an InputError that lists the methods."""
    spec = METHODS.get(name)
    if spec is None:
        raise InputError(f"unknown method '{name}'; `camrt methods` lists them: {', '.join(METHODS)}")
    return spec


def check_options(method: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The options `method` runs with: its defaults overridden by `options`, every name and value
    checked (InputError saying which and why), so that a caller can fail before any run."""
    spec = METHODS[method]
    unknown = set(options) - set(spec.options)
    if unknown:
        takes = f"it takes {', '.join(sorted(spec.options))}" if spec.options else "it takes no options"
        raise InputError(f"method '{method}' has no option(s) {', '.join(sorted(unknown))}; {takes}")
    merged = {**spec.options, **options}
    if spec.check is not None:
        spec.check(**merged)
    return merged


__all__ = [
    "METHODS",
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
