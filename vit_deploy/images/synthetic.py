"""Seeded synthetic model inputs: random pixels pushed through the artifact's preprocessing.

Used where real images are not needed (export-time validation, tests): the values land in the
same range a real photograph would after normalisation, unlike raw standard-normal noise.
"""

from __future__ import annotations

import numpy as np

from ..specs import Preprocessing


def random_images(
    batch: int, img_size: int, prep: Preprocessing, seed: int = 0, channels: int = 3, width: int | None = None
) -> np.ndarray:
    """float32 [batch, channels, img_size, width or img_size]: uniform pixels in [0, 1], then (x - mean) / std."""
    rng = np.random.default_rng(seed)
    pixels = rng.random((batch, channels, img_size, img_size if width is None else width), dtype=np.float32)
    mean = np.asarray(prep.mean, dtype=np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(prep.std, dtype=np.float32).reshape(1, -1, 1, 1)
    return ((pixels - mean) / std).astype(np.float32)
