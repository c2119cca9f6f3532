"""llama.cpp's mtmd through llama-cpp-python (``llama_cpp.mtmd_cpp``): a projector beside a loaded
text model, media in, soft tokens out, and prompts with media evaluated into the model's context.

``Projector.encode_*`` returns the embeddings mtmd hands the language model (after the towers'
projection into the text width), the numbers tests/test_mmproj_numbers.py checks against transformers.
"""

from __future__ import annotations

import contextlib
import ctypes
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..builder.projector import check_pair
from ..core.errors import ArtifactError, EngineMissingError
from ..serve.media import DEFAULT_IMAGE_BUDGET, Audio, MediaError, image_tokens

IMAGE_CHUNK, AUDIO_CHUNK = 1, 2  # mtmd_input_chunk_type


@dataclass
class Encoded:
    kind: str  # "image" | "audio"
    embeddings: np.ndarray  # [n_tokens, n_embd] float32, what reaches the language model
    seconds: float  # encode time


class Projector:
    """An mmproj loaded against ``llm`` (a llama_cpp.Llama). ``image_tokens``: the budget mtmd may use
    per image; edgekit sizes images to it first (media.prepare_image), so mtmd never rescales them."""

    def __init__(
        self,
        llm: Any,
        mmproj: Path,
        text_gguf: Path,
        threads: int = 2,
        image_budget: int = DEFAULT_IMAGE_BUDGET,
        flash_attn: bool = False,
    ):
        try:
            from llama_cpp import mtmd_cpp
        except ImportError:  # pragma: no cover - a runtime dependency
            raise EngineMissingError(
                "llama-cpp-python with mtmd is not installed; pip install 'edgekit[runtime]'"
            ) from None
        self._m = mtmd_cpp
        # mtmd logs through its own hook: route it to llama-cpp-python's, which a Llama(verbose=False) silences.
        from llama_cpp._logger import llama_log_callback

        mtmd_cpp.mtmd_log_set(llama_log_callback, None)
        mtmd_cpp.mtmd_helper_log_set(llama_log_callback, None)

        def has_token(text: str) -> bool:
            return len(llm.tokenize(text.encode(), add_bos=False, special=True)) == 1

        self.modalities = check_pair(Path(text_gguf), Path(mmproj), has_token)
        p = mtmd_cpp.mtmd_context_params_default()
        p.use_gpu = False
        p.print_timings = False
        p.n_threads = threads
        p.warmup = False
        # mtmd's flash attention casts K/V to F16 (≈1.5e-3 vs 1.1e-3 soft-token error on tiny): off by default.
        p.flash_attn_type = 1 if flash_attn else 0
        # mtmd's own policy (llama.cpp, gemma4v) rounds to 48 px and rescales outside 70-1120 tokens; with the
        # floor at 1 and the ceiling at the budget, an image prepare_image sized passes through unchanged.
        p.image_min_tokens = 1
        p.image_max_tokens = image_budget
        self.image_budget = image_budget
        self._marker = mtmd_cpp.mtmd_default_marker()
        self._ctx = mtmd_cpp.mtmd_init_from_file(str(mmproj).encode(), llm.model, p)
        if not self._ctx:
            raise ArtifactError(
                f"{Path(mmproj).name}: llama.cpp's mtmd could not load it; rebuild it with `edgekit build "
                "--modalities ...`"
            )
        self.n_embd = llm.n_embd()

    def close(self) -> None:
        if getattr(self, "_ctx", None):
            self._m.mtmd_free(self._ctx)
            self._ctx = None

    def __enter__(self) -> Projector:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _bitmap_image(self, img: Any) -> Any:
        if "vision" not in self.modalities:
            raise MediaError("this build has no vision tower; build it with --modalities vision")
        h, w = img.height, img.width
        if image_tokens(h, w) > self.image_budget:
            raise MediaError(f"a {w}x{h} image makes {image_tokens(h, w)} tokens, over the budget {self.image_budget}")
        buf = np.ascontiguousarray(np.asarray(img, dtype=np.uint8))
        arr = (ctypes.c_uint8 * buf.nbytes).from_buffer_copy(buf.tobytes())
        return self._m.mtmd_bitmap_init(w, h, arr)

    def _bitmap_audio(self, audio: Audio) -> Any:
        if "audio" not in self.modalities:
            raise MediaError("this build has no audio tower; build it with --modalities audio")
        x = np.ascontiguousarray(audio.samples, dtype=np.float32)
        arr = (ctypes.c_float * len(x)).from_buffer_copy(x.tobytes())
        return self._m.mtmd_bitmap_init_from_audio(len(x), arr)

    def tokenize(self, text: str, bitmaps: list[Any]) -> Any:
        """mtmd chunks for ``text`` whose media markers stand for ``bitmaps`` (in order)."""
        m = self._m
        chunks = m.mtmd_input_chunks_init()
        raw = text.encode()
        inp = m.mtmd_input_text(text=raw, text_len=len(raw), add_special=False, parse_special=True)
        arr = (m.mtmd_bitmap_p_ctypes * len(bitmaps))(*bitmaps)
        rc = m.mtmd_tokenize(self._ctx, chunks, ctypes.byref(inp), arr, len(bitmaps))
        if rc != 0:
            m.mtmd_input_chunks_free(chunks)
            raise MediaError(f"mtmd could not tokenize the prompt with its media (code {rc})")
        return chunks

    @contextlib.contextmanager
    def _media_chunk(self, bitmap: Any, kind: str) -> Iterator[Any]:
        """The one media chunk mtmd makes of ``bitmap`` alone (the bitmap is freed; the chunk on exit)."""
        m = self._m
        try:
            chunks = self.tokenize(self._marker.decode(), [bitmap])
        finally:
            m.mtmd_bitmap_free(bitmap)
        try:
            media = [m.mtmd_input_chunks_get(chunks, i) for i in range(m.mtmd_input_chunks_size(chunks))]
            media = [c for c in media if m.mtmd_input_chunk_get_type(c) in (IMAGE_CHUNK, AUDIO_CHUNK)]
            if len(media) != 1:
                raise MediaError(f"mtmd made {len(media)} {kind} chunks of one {kind}")
            yield media[0]
        finally:
            m.mtmd_input_chunks_free(chunks)

    def _encode(self, bitmap: Any, kind: str) -> Encoded:
        m = self._m
        with self._media_chunk(bitmap, kind) as chunk:
            n = m.mtmd_input_chunk_get_n_tokens(chunk)
            t0 = time.perf_counter()
            if m.mtmd_encode_chunk(self._ctx, chunk) != 0:
                raise MediaError(f"mtmd failed to encode the {kind}")
            dt = time.perf_counter() - t0
            out = m.mtmd_get_output_embd(self._ctx)
            return Encoded(
                kind, np.ctypeslib.as_array(out, shape=(n * self.n_embd,)).reshape(n, self.n_embd).copy(), dt
            )

    def count_tokens(self, bitmap: Any, kind: str) -> int:
        """Soft tokens mtmd makes for a bitmap (tokenized, not encoded); frees the bitmap."""
        with self._media_chunk(bitmap, kind) as chunk:
            return int(self._m.mtmd_input_chunk_get_n_tokens(chunk))

    def image_tokens(self, img: Any) -> int:
        return self.count_tokens(self._bitmap_image(img), "image")

    def audio_tokens(self, audio: Audio) -> int:
        return self.count_tokens(self._bitmap_audio(audio), "audio")

    def encode_image(self, img: Any) -> Encoded:
        """Soft tokens for a prepared image (media.prepare_image): exactly its pixels, no rescaling."""
        return self._encode(self._bitmap_image(img), "image")

    def encode_audio(self, audio: Audio) -> Encoded:
        return self._encode(self._bitmap_audio(audio), "audio")
