"""Write scikit-image's sample photos (a cat and an espresso) as PNG files for the demo.

    python tools/write_photos.py OUT_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

from skimage import data, io

PHOTOS = {"chelsea": data.chelsea, "coffee": data.coffee}


def main(out_dir: str) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, load in PHOTOS.items():
        io.imsave(out / f"{name}.png", load(), check_contrast=False)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "out/photos")
