"""Write calibration/photos.txt: the real photographs that ship inside scikit-image and scikit-learn.

Offline stand-in for "calibrate on your own data" when a model was trained on natural images
(ImageNet-style). Synthetic images in skimage/data (chessboards, logos, phantoms, silhouettes)
are left out on purpose. Run after upgrading either package if a checksum no longer matches:

    python tools/make_photo_list.py
"""

from __future__ import annotations

import hashlib
from importlib import resources
from pathlib import Path

PHOTOS = {
    "skimage": [
        "data/astronaut.png", "data/brick.png", "data/camera.png", "data/chelsea.png", "data/clock_motion.png",
        "data/coffee.png", "data/coins.png", "data/grass.png", "data/gravel.png", "data/hubble_deep_field.jpg",
        "data/ihc.png", "data/moon.png", "data/motorcycle_left.png", "data/motorcycle_right.png", "data/page.png",
        "data/retina.jpg", "data/rocket.jpg", "data/text.png",
    ],
    "sklearn": ["datasets/images/china.jpg", "datasets/images/flower.jpg"],
}
OUT = Path(__file__).resolve().parent.parent / "calibration" / "photos.txt"


def main() -> None:
    lines = [
        "# Real photographs shipped inside scikit-image and scikit-learn (20 files: colour and grayscale),",
        "# for calibrating and checking ImageNet-style models offline. Needs scikit-image and scikit-learn.",
        "# Written by tools/make_photo_list.py. Format: <sha256>  <path> (pkg:<package>/<path inside it>).",
    ]
    for package, files in PHOTOS.items():
        for rel in files:
            data = resources.files(package).joinpath(rel).read_bytes()
            lines.append(f"{hashlib.sha256(data).hexdigest()}  pkg:{package}/{rel}")
    OUT.write_text("\n".join(lines) + "\n")
    print(f"wrote {OUT} ({len(lines) - 3} photographs)")


if __name__ == "__main__":
    main()
