"""The main job: the pretrained EfficientNet-Lite0 explains real photos, and the maps cover the object.

Criterion, per photo and gradient method (the energy-based pointing game of the Score-CAM
paper, with a hand-drawn box): the map's peak lies inside a box drawn by hand around the object,
and the box holds at least 1.3 times the share of saliency mass that a uniform map would put
there (its share of the image area). A map that ignores the object, or highlights the
background, fails one or the other; the boxes are tight (the cat's face, the cup without its
saucer), so they cover 46% and 31% of the images.
"""

from __future__ import annotations

import numpy as np
import pytest
from skimage import data

from camrt.engine import Engine
from camrt.explain import served_methods
from camrt.methods import upsample

BOXES = {  # (x0, y0, x1, y1) in the photo's pixels, drawn by hand on a 50-pixel grid
    "chelsea": ((110, 50, 370, 290), {"tabby", "tiger cat", "Egyptian cat"}),
    "coffee": ((170, 15, 430, 300), {"espresso", "cup"}),
}


@pytest.mark.slow
@pytest.mark.parametrize("photo", list(BOXES))
def test_maps_cover_the_object(lite0, photo: str) -> None:
    _, path = lite0
    engine = Engine(path, device="cpu")
    (x0, y0, x1, y1), expected = BOXES[photo]
    image = getattr(data, photo)()
    h, w = image.shape[:2]
    p = engine.forward([image])
    assert engine.manifest.labels[int(p.outputs["class_idx_used"][0])] in expected
    area = (x1 - x0) * (y1 - y0) / (h * w)
    for method in served_methods():
        s = upsample(engine.explain_pass(p, method).saliency, (h, w))[0]
        peak_y, peak_x = np.unravel_index(np.argmax(s), s.shape)
        share = s[y0:y1, x0:x1].sum() / s.sum()
        assert x0 <= peak_x < x1 and y0 <= peak_y < y1, f"{method}: peak at ({peak_x}, {peak_y}) outside the box"
        assert share >= 1.3 * area, f"{method}: {share:.2f} of the mass in a box of {area:.2f} of the area"
