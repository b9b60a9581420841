"""CAM methods as pure numpy functions of a layer's activation ``A`` and gradient ``G = ∂y_c/∂A``.

`METHODS` is the one table from a method's name to its function and facts. A method's function
returns the saliency map ``(N, h, w)`` after its ReLU; the caller then applies
``normalize(upsample(map, (H, W)))``. Families:

* ``"gradient"``: ``fn(activation, gradient)``, both ``(N, C, h, w)`` from one forward/backward pass.
* ``"sampled"``: ``fn(activation, gradient, sample_activation, sample_gradient)``; the copies of the
  input come from ``samples(x, rng, **sample_options, **inputs named in sample_inputs)`` and run in the
  same batch as the input (see `camrt.methods.sampled`).
* ``"feature"``: ``fn(activation, scores, base)``; copies of one image's activation from
  ``inputs(activation, chunk)`` (``count`` of them) go through the graph's tail in streamed chunks
  (see `camrt.methods.perturbation`).
* ``"input"``: ``fn(activation, scores, base)``; masked copies of one preprocessed image from
  ``inputs(x, activation, chunk)`` go through the forward-only graph (no gradient branch) in
  streamed chunks.

This package imports numpy only (no torch, onnxruntime or cv2).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

import numpy as np

from camrt.methods._core import combine, normalize, relu, upsample
from camrt.methods.eigen import eigencam, eigengradcam
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
from camrt.methods.perturbation import (
    ablation_count,
    ablation_inputs,
    ablationcam,
    reciprocam,
    reciprocam_count,
    reciprocam_inputs,
    scorecam,
    scorecam_count,
    scorecam_inputs,
)
from camrt.methods.sampled import (
    integratedgradcam,
    integratedgradcam_samples,
    smoothgradcampp,
    smoothgradcampp_samples,
)

Family = Literal["gradient", "sampled", "feature", "input"]


@dataclass(frozen=True)
class Method:
    """A CAM method: its function and what a caller needs to know to run it.

    Attributes:
        name: the key in `METHODS`, as typed on the command line.
        fn: the map function (signature set by `family`, see the module docstring).
        description: one line, shown by ``camrt methods``.
        paper: URL of the paper (or of the reference implementation when there is no paper).
        family: ``"gradient"``, ``"sampled"`` or ``"perturbation"``.
        samples: for sampled methods, ``samples(x, rng, **options) -> (N, S, C, H, W)`` copies of the input.
        sample_options: default keyword options of `samples` (e.g. number of copies).
        sample_inputs: keyword arguments of `samples` that the caller must supply (no default), e.g.
            ``"baseline"``: the preprocessed black image.
        uses_gradient: False when `fn` ignores the gradient, so a forward-only run is enough.
        inputs, count: for perturbation methods, the generator of perturbed activations
            (``inputs(activation, chunk)``) or inputs (``inputs(x, activation, chunk)``) and how
            many it yields for an activation.
        score: which class score the perturbed copies are judged by: "logit" or "probability".
    """

    name: str
    fn: Callable[..., np.ndarray]
    description: str
    paper: str
    family: Family
    samples: Callable[..., np.ndarray] | None = None
    sample_options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    sample_inputs: tuple[str, ...] = ()
    uses_gradient: bool = True
    inputs: Callable[..., Any] | None = None
    count: Callable[[np.ndarray], int] | None = None
    score: Literal["logit", "probability"] = "logit"


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
        sample_options=MappingProxyType({"n": 4, "sigma": 0.3})),
    "integratedgradcam": Method(
        "integratedgradcam", integratedgradcam, "Grad-CAM terms integrated along the path from a black image",
        "https://arxiv.org/abs/2102.07805", "sampled", samples=integratedgradcam_samples,
        sample_options=MappingProxyType({"steps": 20}), sample_inputs=("baseline",)),
    "ablationcam": Method(
        "ablationcam", ablationcam, "Relative drop of the class score when each channel is zeroed (tail re-runs)",
        "https://openaccess.thecvf.com/content_WACV_2020/html/Desai_Ablation-CAM_Visual_Explanations_for_Deep_"
        "Convolutional_Network_via_Gradient-free_Localization_WACV_2020_paper.html", "feature",
        uses_gradient=False, inputs=ablation_inputs, count=ablation_count, score="logit"),
    "reciprocam": Method(
        "reciprocam", reciprocam, "Class probability of each position's features alone (tail re-runs)",
        "https://arxiv.org/abs/2209.14074", "feature", uses_gradient=False, inputs=reciprocam_inputs,
        count=reciprocam_count, score="probability"),
    "scorecam": Method(
        "scorecam", scorecam, "Softmax over channels of the class score of the input masked by each channel",
        "https://arxiv.org/abs/1910.01279", "input", uses_gradient=False, inputs=scorecam_inputs,
        count=scorecam_count, score="logit"),
}

__all__ = [
    "METHODS",
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
