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


def transformers_reference(ckpt):
    """(Gemma4ForConditionalGeneration in fp32 with the checkpoint's weights, its image processor, its
    feature extractor): the reference the MLX tower tests compare with."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoFeatureExtractor, AutoImageProcessor, Gemma4Config, Gemma4ForConditionalGeneration

    model = Gemma4ForConditionalGeneration(Gemma4Config.from_pretrained(ckpt)).float().eval()
    state = {k: v.float() for f in ckpt.glob("*.safetensors") for k, v in load_file(f).items()}
    model.load_state_dict(state, strict=False)
    torch.set_num_threads(2)
    return model, AutoImageProcessor.from_pretrained(ckpt), AutoFeatureExtractor.from_pretrained(ckpt)
