"""The reference implementations' set-up for the camrt.methods parity tests (no tests here): a
random-weight resnet18, one fixed input batch, its eager activations and gradients (from the
one oracle, `tests.oracle.eager_cam`, in float32 as the references compute), and the calls into
pytorch-grad-cam and TorchCAM."""

from __future__ import annotations

import contextlib
from functools import cache, lru_cache

import numpy as np
import torch
import torchvision

from tests.oracle import eager_cam

SIZE = (160, 160)
CLASSES = [7, 281]  # one class per image of the batch
# The head is scaled so that |G| at layer4 is ~0.4 instead of ~4e-4: pytorch-grad-cam's Grad-CAM++ adds
# 1e-6 and TorchCAM's Smooth Grad-CAM++ 1e-8 to denominators of order G², which at random-init magnitudes
# change the map by several percent. Every method is invariant to this scale except through those epsilons.
HEAD_SCALE = 1e3


def native_kernels() -> contextlib.AbstractContextManager:
    """oneDNN's convolution backward deviates ~1e-2 from float64 on CPU; the native kernels do not
    (see tests/oracle.py). Every eager and reference run below uses them."""
    return torch.backends.mkldnn.flags(enabled=False)


@lru_cache(maxsize=1)
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None).eval()
    with torch.no_grad():
        net.fc.weight.mul_(HEAD_SCALE)
        net.fc.bias.mul_(HEAD_SCALE)
    # Only the target layers and the head need gradients: the references call backward() on the whole graph,
    # and frozen early layers keep that short (values are unchanged).
    for name, param in net.named_parameters():
        param.requires_grad_(name.startswith(("layer3.", "layer4.", "fc.")))
    return net


@lru_cache(maxsize=1)
def image() -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(len(CLASSES), 3, *SIZE, generator=gen)


def eager(x: torch.Tensor, layers: tuple[str, ...] = ("layer4",)) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per layer name: (activation, gradient of sum_n logits[n, CLASSES[n]]) as float32 numpy arrays."""
    classes = np.repeat(CLASSES, len(x) // len(CLASSES))
    out = eager_cam(model(), x.numpy(), classes, layers, dtype=torch.float32)
    return {name: (out[f"activation.{name}"], out[f"gradient.{name}"]) for name in layers}


@cache
def fixed(layers: tuple[str, ...] = ("layer4",)) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """`eager` on the fixed batch, computed once per set of layers."""
    return eager(image(), layers)


def layer4() -> tuple[np.ndarray, np.ndarray]:
    """Activation and gradient of layer4 for the fixed batch."""
    return fixed()["layer4"]


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    return float(np.corrcoef(a, b)[0, 1])


def gradcam_reference(cam_class: type, layer: str = "layer4") -> np.ndarray:
    """A pytorch-grad-cam extractor's output on the fixed batch: maps at input resolution, scaled per image."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    net = model()
    with native_kernels(), cam_class(model=net, target_layers=[dict(net.named_modules())[layer]]) as extractor:
        return extractor(input_tensor=image(), targets=[ClassifierOutputTarget(c) for c in CLASSES])


def torchcam_reference(cam_class: type, layer: str | list[str] = "layer4", normalized: bool = True,
                       **options) -> list[np.ndarray]:
    """A TorchCAM extractor's low-resolution maps on the fixed batch, one (N, h, w) array per layer."""
    net = model()
    with native_kernels(), cam_class(net, layer, **options) as extractor:
        scores = net(image())
        maps = extractor(class_idx=CLASSES, scores=scores, normalized=normalized)
    return [m.detach().numpy() for m in maps]
