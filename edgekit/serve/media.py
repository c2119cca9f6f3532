"""Images and audio in, as Gemma 4 sees them: decoded by Pillow and libsndfile (soundfile), sized and
resampled here so llama.cpp's mtmd and transformers see the same pixels at the same token budget.

Images. transformers' Gemma 4 processor resizes every image to the largest size that fits its soft-token
budget (default 280) with both sides multiples of 48 px (16-px patches pooled 3×3), stretching slightly;
llama.cpp letterboxes to the nearest 48 px and rescales only outside 70-1120 tokens (224×224: 256
tokens in transformers, 81 in llama.cpp). ``prepare_image`` makes transformers' size with Pillow's
bicubic resize, so mtmd (given that budget) and transformers both receive exactly these pixels.

Audio. 16 kHz mono float32, resampled with soxr when the file is at another rate; 25 soft tokens per
second (40 ms each), at most 30 s per clip as transformers' processor caps it.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import EdgekitError

SAMPLE_RATE = 16_000
MS_PER_AUDIO_TOKEN = 40
MAX_AUDIO_SECONDS = 30.0
IMAGE_BUDGETS = (70, 140, 280, 560, 1120)  # transformers' allowed max_soft_tokens
DEFAULT_IMAGE_BUDGET = 280
MAX_PIXELS = 50_000_000  # refuse decompression bombs before decoding them whole


class MediaError(EdgekitError):
    """Media that cannot be used: unreadable, unsupported, or over a limit (one line, exit 2 / HTTP 400)."""

    exit_code = 2


def image_size_for_budget(
    height: int, width: int, budget: int = DEFAULT_IMAGE_BUDGET, patch: int = 16, pool: int = 3
) -> tuple[int, int]:
    """(height, width) transformers' Gemma 4 image processor resizes an image to for ``budget`` soft
    tokens (its get_aspect_ratio_preserving_size, re-derived: sides floored to multiples of patch×pool)."""
    max_patches = budget * pool * pool
    factor = math.sqrt(max_patches * patch * patch / (height * width))
    side = pool * patch
    th, tw = math.floor(factor * height / side) * side, math.floor(factor * width / side) * side
    longest = (max_patches // pool**2) * side
    if th == 0 and tw == 0:
        raise MediaError(f"a {width}x{height} image is too small to make a single soft token")
    if th == 0:
        th, tw = side, min(math.floor(width / height) * side, longest)
    elif tw == 0:
        tw, th = side, min(math.floor(height / width) * side, longest)
    return th, tw


def image_tokens(height: int, width: int, patch: int = 16, pool: int = 3) -> int:
    return (height // patch // pool) * (width // patch // pool)


def open_image(data: bytes | Path, what: str = "image", max_pixels: int = MAX_PIXELS) -> Any:
    """A Pillow RGB image from a file or bytes; MediaError for anything Pillow cannot decode."""
    # deferred: Pillow loads only for an image
    from PIL import Image, UnidentifiedImageError

    try:
        # closed by `with src` below
        src = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else open(data, "rb")  # noqa: SIM115
    except OSError as e:
        raise MediaError(f"{what}: cannot read it ({e.strerror or e})") from None
    try:
        with src:
            img = Image.open(src)
            if img.width * img.height > max_pixels:
                raise MediaError(f"{what}: {img.width}x{img.height} is over {max_pixels:,} pixels")
            img.load()
            return img.convert("RGB")
    except MediaError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise MediaError(f"{what}: not an image Pillow can decode ({e.__class__.__name__})") from None


def prepare_image(img: Any, budget: int = DEFAULT_IMAGE_BUDGET) -> Any:
    """``img`` resized as transformers' processor does for ``budget`` tokens (bicubic, Pillow)."""
    # deferred: Pillow loads only for an image
    from PIL import Image

    if budget not in IMAGE_BUDGETS:
        raise MediaError(f"image token budget {budget}; choose one of {', '.join(map(str, IMAGE_BUDGETS))}")
    h, w = image_size_for_budget(img.height, img.width, budget)
    return img if (img.height, img.width) == (h, w) else img.resize((w, h), Image.Resampling.BICUBIC)


@dataclass(frozen=True)
class Audio:
    samples: np.ndarray  # float32 mono at SAMPLE_RATE
    source_rate: int

    @property
    def seconds(self) -> float:
        return len(self.samples) / SAMPLE_RATE

    @property
    def tokens(self) -> int:
        """Soft tokens transformers' processor gives this clip: ceil(ms / 40)."""
        return math.ceil(self.seconds * 1000 / MS_PER_AUDIO_TOKEN)


def open_audio(data: bytes | Path, what: str = "audio", max_seconds: float = MAX_AUDIO_SECONDS) -> Audio:
    """Decode any format libsndfile reads (WAV, FLAC, OGG, MP3) to 16 kHz mono float32."""
    # deferred: libsndfile loads only for audio
    import soundfile as sf

    try:
        src = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else Path(data)
        x, rate = sf.read(src, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError, TypeError) as e:
        raise MediaError(f"{what}: not audio libsndfile can decode ({str(e).splitlines()[0][:80]})") from None
    if x.shape[0] == 0:
        raise MediaError(f"{what}: the clip is empty")
    if x.shape[0] / rate > max_seconds:
        raise MediaError(f"{what}: {x.shape[0] / rate:.1f} s is over the {max_seconds:g} s a clip may last")
    mono = x.mean(axis=1, dtype=np.float32)
    if rate != SAMPLE_RATE:
        # deferred: soxr loads only for audio that needs resampling
        import soxr

        mono = soxr.resample(mono, rate, SAMPLE_RATE).astype(np.float32)
    return Audio(np.ascontiguousarray(mono), rate)
