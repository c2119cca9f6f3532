"""The library's own mtmd path: a text GGUF and its projector in one llama_cpp.Llama context of their own
(llama.cpp's defaults), media evaluated by mtmd and the reply decoded greedily, one token per llama_decode.
`projector_precision` compares towers with it; `edgekit run --image/--audio`, `serve` and eval's media
cases run media through the session's scheduler instead (serve/towers.py).

The artifact's projector comes from its manifest entry (``extra["projector"]``, sha256 checked) or
``--mmproj`` (find_projector). Images are sized to transformers' size for the token budget
(media.prepare_image), audio decoded to 16 kHz mono; each medium stands where mtmd's marker is in the
rendered chat (before the prompt, as in transformers' Gemma 4 examples).
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..backends.mtmd import Projector
from ..builder.projector import projector_file
from ..core.errors import ArtifactError
from .media import (
    DEFAULT_IMAGE_BUDGET,
    Audio,
    MediaError,
    open_audio,
    open_image,
    prepare_image,
)


@dataclass
class MediaPrompt:
    images: list[Any]  # prepared Pillow images
    audios: list[Audio]


def load_media(images: list[Path], audios: list[Path], budget: int = DEFAULT_IMAGE_BUDGET) -> MediaPrompt:
    return MediaPrompt(
        [prepare_image(open_image(p, str(p)), budget) for p in images], [open_audio(p, str(p)) for p in audios]
    )


def find_projector(artifact_path: Path, artifact: Any, mmproj: Optional[Path]) -> Path:
    if mmproj is not None:
        if not Path(mmproj).is_file():
            raise ArtifactError(f"{mmproj}: no such projector file")
        return Path(mmproj)
    proj = projector_file(artifact_path.parent, artifact)
    if proj is None:
        raise ArtifactError(
            f"{artifact_path.name} was built without towers; rebuild with `edgekit build --modalities "
            "vision,audio`, or pass --mmproj FILE"
        )
    return proj


class MediaModel:
    """A text GGUF and its projector on llama.cpp, for replies with media (single sequence, greedy)."""

    def __init__(
        self,
        text_gguf: Path,
        mmproj: Path,
        n_ctx: int = 2048,
        threads: int = 2,
        image_budget: int = DEFAULT_IMAGE_BUDGET,
        f32_cache: bool = False,
    ):
        # deferred: llama-cpp-python loads only when a tower runs
        import llama_cpp

        kw = dict(type_k=0, type_v=0) if f32_cache else {}
        self.llm = llama_cpp.Llama(str(text_gguf), n_ctx=n_ctx, n_batch=512, n_threads=threads, verbose=False, **kw)
        self.proj = Projector(self.llm, mmproj, text_gguf, threads=threads, image_budget=image_budget)
        self.n_vocab = self.llm.n_vocab()

    def close(self) -> None:
        self.proj.close()
        self.llm.close()

    def eval_prompt(self, text: str, media: MediaPrompt) -> dict[str, float]:
        """Evaluate ``text`` (one mtmd marker per medium: images first, then audio) into the context."""

        # deferred: llama-cpp-python, as __init__
        import llama_cpp

        m = self.proj._m
        bitmaps = [self.proj._bitmap_image(i) for i in media.images] + [
            self.proj._bitmap_audio(a) for a in media.audios
        ]
        try:
            chunks = self.proj.tokenize(text, bitmaps)
        finally:
            for b in bitmaps:
                m.mtmd_bitmap_free(b)
        try:
            n_past = llama_cpp.llama_pos(0)
            self.llm.reset()  # n_tokens only: a second prompt on this context needs its KV memory cleared too
            self.llm._ctx.kv_cache_clear()
            t0 = time.perf_counter()
            rc = m.mtmd_helper_eval_chunks(
                self.proj._ctx, self.llm.ctx, chunks, 0, 0, self.llm.n_batch, True, ctypes.byref(n_past)
            )
            if rc != 0:
                raise MediaError(
                    f"llama.cpp could not evaluate the prompt with its media (code {rc}); is it longer than --ctx?"
                )
            self.llm.n_tokens = n_past.value
            return {"prompt_ms": (time.perf_counter() - t0) * 1e3, "prompt_positions": float(n_past.value)}
        finally:
            m.mtmd_input_chunks_free(chunks)

    def _logits(self) -> np.ndarray:
        # deferred: llama-cpp-python, as __init__
        import llama_cpp

        ptr = llama_cpp.llama_get_logits_ith(self.llm.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))

    def greedy(self, max_tokens: int, stop_ids: frozenset[int] = frozenset()) -> Iterator[int]:
        for _ in range(max_tokens):
            tok = int(np.argmax(self._logits()))
            yield tok
            if tok in stop_ids:
                return
            self.llm.eval([tok])

    def piece(self, tok: int) -> bytes:
        return self.llm.detokenize([tok], special=False)

    def stop_ids(self, template: Any) -> frozenset[int]:
        """The template's end-of-reply texts that are single tokens of this model."""
        ids = (self.llm.tokenize(s.encode(), add_bos=False, special=True) for s in template.stop_texts)
        return frozenset(t[0] for t in ids if len(t) == 1)


def media_marker() -> str:
    # deferred: llama-cpp-python loads only when a tower runs
    from llama_cpp import mtmd_cpp

    return mtmd_cpp.mtmd_default_marker().decode()
