"""Media the tower tests share: a gradient image with noise (a shape the towers cannot flatten) and a chirp."""

from __future__ import annotations

import numpy as np


def gradient_image(h: int = 300, w: int = 400, seed: int = 0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    arr = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) % 255], -1) + rng.normal(0, 20, (h, w, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def chirp(seconds: float = 2.0) -> np.ndarray:
    """16 kHz, 200 Hz rising by 600 Hz a second, amplitude 0.5."""
    t = np.arange(int(16000 * seconds)) / 16000
    return (0.5 * np.sin(2 * np.pi * (200 + 300 * t) * t)).astype(np.float32)
