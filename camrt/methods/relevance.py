"""Relevance family: channel weights from the layer-wise relevance (LRP) at the target layer.

The relevance ``R`` (N×C×h×w) of the explained class at the target layer is computed inside the
graph by `camrt export --relevance` (`camrt.exporter.relevance`: the contrastive initial
relevance, the z⁺ rule through convolutions with batch norm folded in and linear layers, sums
and pooling split in proportion to their inputs) and read from the output `relevance.L`.
"""

from __future__ import annotations

import numpy as np

from camrt.errors import InputError
from camrt.methods._core import check_pair, combine, relu
from camrt.methods.contract import Method


def relevancecam(activation: np.ndarray, relevance: np.ndarray) -> np.ndarray:
    """Relevance-CAM: feature maps weighted by their total layer-wise relevance.

    ``L = ReLU(Σ_k w_k A_k)``, ``w_k = Σ_ij R_kij``, with R the relevance of class c at the target
    layer, propagated from the class output by LRP's z⁺ (α1β0) rule from the contrastive initial
    relevance ``e_c − (1 − e_c) / K`` (Lee et al., "Relevance-CAM: Your Model Already Knows Where to
    Look", CVPR 2021). Unlike a gradient, the relevance is not shattered by the network's depth,
    so the map stays class-discriminative at shallow layers too.

    Paper: https://arxiv.org/abs/2106.02052

    Args:
        activation: target-layer activation ``A``, shape ``(N, C, h, w)``.
        relevance: the relevance ``R`` at that layer (the graph output `relevance.L`), same shape.

    Returns:
        Saliency maps ``(N, h, w)`` after ReLU.

    Raises:
        InputError: if the shapes are wrong.
    """
    if relevance is None:
        raise InputError("Relevance-CAM needs the layer's relevance; export the model with --relevance")
    check_pair(activation, relevance)
    return relu(combine(relevance.sum(axis=(2, 3)), activation))


METHODS = (
    Method("relevancecam", "Activations weighted by their total layer-wise relevance (LRP z+; export --relevance)",
           "https://arxiv.org/abs/2106.02052", "relevance", map=relevancecam),
)
