"""Model family: architectures trained to produce their own attribution map (CALM, LFI-CAM).

Such a model returns its map beside its logits; `camrt export --map-output NAME` writes that
output as the graph output `model_map` (`camrt.manifest.MODEL_MAP`), and the method `model-map`
serves it at the cost of one forward pass: the map of the explained class from an N×K×h×w
output (one map per class), or the N×h×w map as it is.
"""

from __future__ import annotations

import numpy as np

from camrt.errors import InputError
from camrt.methods._core import relu
from camrt.methods.contract import Method


def model_map(maps: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """The model's own map of each image's explained class: ``maps[n, c_n]`` of an N×K×h×w output
    (for CALM, ``p(y = c, z | x)`` over the cue locations z), or ``maps[n]`` of an N×h×w one, after
    a ReLU (the maps of the family's models are non-negative already).

    Paper (CALM): https://arxiv.org/abs/2106.07861

    Args:
        maps: the graph output `model_map`, ``(N, K, h, w)`` or ``(N, h, w)``.
        classes: the explained class of each image, ``(N,)``.

    Returns:
        Saliency maps ``(N, h, w)``.
    """
    maps = np.asarray(maps)
    if maps.ndim == 3:
        return relu(maps)
    if maps.ndim != 4 or len(classes) != len(maps):
        raise InputError(f"a model map is N×K×h×w or N×h×w, one per image; got {maps.shape} for {len(classes)} images")
    return relu(maps[np.arange(len(maps)), np.asarray(classes, np.int64)])


METHODS = (
    Method("model-map", "The model's own attribution map output (CALM, LFI-CAM; export with --map-output)",
           "https://arxiv.org/abs/2106.07861", "model", map=model_map, uses_gradient=False),
)
