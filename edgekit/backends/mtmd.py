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
from ..core.host import trim_heap
from ..serve.media import DEFAULT_IMAGE_BUDGET, Audio, MediaError, image_tokens

IMAGE_CHUNK, AUDIO_CHUNK = 1, 2  # mtmd_input_chunk_type


def decode_embeddings(
    L: Any, lctx: Any, embd: np.ndarray, pos0: int, seq: int, n_batch: int, non_causal: bool, logits_last: bool = False
) -> int:
    """Soft tokens ``embd`` [n, width] into sequence ``seq`` of ``lctx`` at positions pos0.., in batches of
    ``n_batch`` (a non-causal medium in one: it attends to itself at once); the position after it. What
    mtmd's ``mtmd_helper_decode_image_chunk`` does for models without M-RoPE, but without mtmd's context,
    so a projector can be freed between encoding a medium and decoding it (towers = on_demand)."""
    n, width = embd.shape
    step = n if non_causal else n_batch
    if non_causal:
        L.llama_set_causal_attn(lctx, False)
    try:
        for s in range(0, n, step):
            k = min(step, n - s)
            batch = L.llama_batch_init(k, width, 1)
            try:
                rows = np.ascontiguousarray(embd[s : s + k], dtype=np.float32)
                ctypes.memmove(batch.embd, rows.ctypes.data, rows.nbytes)
                for j in range(k):
                    batch.pos[j] = pos0 + s + j
                    batch.n_seq_id[j] = 1
                    batch.seq_id[j][0] = seq
                    batch.logits[j] = logits_last and s + j == n - 1
                batch.n_tokens = k
                rc = L.llama_decode(lctx, batch)
                if rc != 0:
                    raise MediaError(f"llama.cpp could not decode the soft tokens (code {rc}); raise --ctx or n_ubatch")
            finally:
                L.llama_batch_free(batch)
    finally:
        if non_causal:
            L.llama_set_causal_attn(lctx, True)
    return pos0 + n


class MediaSpan:
    """One image or audio clip of a prompt for a generator: mtmd's chunk (an owned copy) and, once
    ``Projector.encode_span`` ran, its embeddings. The generator's prefill calls ``decode`` when the
    sequence reaches ``start``; the text positions around it are ordinary tokens. While the projector
    is loaded, mtmd's helper decodes it (positions, non-causal attention where the projector asks);
    once ``detach`` ran (the projector is about to be freed: towers = on_demand), ``decode_embeddings``
    does the same from the copied embeddings."""

    def __init__(self, m: Any, mctx: Any, chunk: Any, kind: str):
        self._m, self._mctx, self._chunk, self.kind = m, mctx, chunk, kind
        self.n_tokens = int(m.mtmd_input_chunk_get_n_tokens(chunk))
        self.n_pos = int(m.mtmd_input_chunk_get_n_pos(chunk))
        self.non_causal = bool(m.mtmd_decode_use_non_causal(mctx, chunk))
        # one position per soft token, in order (Gemma 4); M-RoPE and HunyuanVL's layouts need mtmd's helper
        self.plain_positions = not m.mtmd_decode_use_mrope(mctx) and self.n_pos == self.n_tokens
        self.start = -1  # its first position in the prompt (set by whoever lays the prompt out)
        self.embd: np.ndarray | None = None
        self.encode_s = 0.0

    def detach(self) -> None:
        """Drop every tie to mtmd's context (the chunk, the context itself): the span then decodes from
        ``embd`` alone. Models that place media in 2-D (M-RoPE) need mtmd's helper, so their context."""
        if not self.plain_positions:
            raise MediaError(f"this model places the {self.kind}'s soft tokens in 2-D; its towers must stay resident")
        self.close()
        self._mctx = None

    def decode(self, lctx: Any, seq: int, pos: int, n_batch: int) -> int:
        """Decode the embeddings into sequence ``seq`` of ``lctx`` from ``pos``; the position after it."""
        # deferred: llama-cpp-python loads only when a tower runs
        import llama_cpp
        from llama_cpp.mtmd_cpp import mtmd_helper_post_decode_callback as _NO_CALLBACK  # called with 0: NULL

        if self.embd is None:
            raise MediaError(f"the {self.kind} was never encoded")
        if self._mctx is None:
            decode_embeddings(llama_cpp, lctx, self.embd, pos, seq, n_batch, self.non_causal)
            return pos + self.n_pos
        out = llama_cpp.llama_pos(0)
        buf = self.embd.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        rc = self._m.mtmd_helper_decode_image_chunk(
            self._mctx, lctx, self._chunk, buf, pos, seq, n_batch, ctypes.byref(out), _NO_CALLBACK(0), None
        )
        if rc != 0:
            raise MediaError(f"llama.cpp could not decode the {self.kind}'s embeddings (code {rc})")
        return int(out.value)

    def close(self) -> None:
        if self._chunk is not None:
            self._m.mtmd_input_chunk_free(self._chunk)
            self._chunk = None

    __del__ = close


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
        log_callback: Any = None,
    ):
        try:
            from llama_cpp import mtmd_cpp  # deferred: llama-cpp-python loads only when a tower runs
        except ImportError:  # pragma: no cover - a runtime dependency
            raise EngineMissingError(
                "llama-cpp-python with mtmd is not installed; pip install 'edgekit[runtime]'"
            ) from None
        self._m = mtmd_cpp
        # mtmd logs through its own hook: route it to llama-cpp-python's, which a Llama(verbose=False) silences.
        # (or to ``log_callback``: a served engine's, which keeps llama.cpp's lines for -vv and its errors)
        if log_callback is None:
            from llama_cpp._logger import llama_log_callback as log_callback  # deferred: as mtmd_cpp above

        mtmd_cpp.mtmd_log_set(log_callback, None)
        mtmd_cpp.mtmd_helper_log_set(log_callback, None)

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
            trim_heap()  # glibc would keep the towers' freed buffers (core.host)

    def __enter__(self) -> Projector:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def lib(self) -> Any:
        """llama-cpp-python's mtmd bindings (for callers that walk chunks themselves: bench --image)."""
        return self._m

    @property
    def ctx(self) -> Any:
        """The mtmd context (None once closed)."""
        return self._ctx

    @property
    def marker(self) -> str:
        """mtmd's media marker: the text that stands for one medium in a prompt."""
        return str(self._marker.decode())

    def bitmap(self, decoded: Any, kind: str) -> Any:
        """An mtmd bitmap of a decoded image (media.prepare_image) or Audio; the caller frees it (or
        tokenize's caller does)."""
        return self._bitmap_image(decoded) if kind == "image" else self._bitmap_audio(decoded)

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

    def span(self, bitmap: Any, kind: str) -> tuple[list[int], MediaSpan, list[int]]:
        """The text tokens mtmd puts before and after a medium (Gemma 4: ``<|image>`` ... ``<image|>``) and
        the medium as a MediaSpan, not yet encoded; frees the bitmap."""
        m = self._m
        try:
            chunks = self.tokenize(self._marker.decode(), [bitmap])
        finally:
            m.mtmd_bitmap_free(bitmap)
        before: list[int] = []
        after: list[int] = []
        span: MediaSpan | None = None
        try:
            for i in range(m.mtmd_input_chunks_size(chunks)):
                c = m.mtmd_input_chunks_get(chunks, i)
                if m.mtmd_input_chunk_get_type(c) in (IMAGE_CHUNK, AUDIO_CHUNK):
                    if span is not None:
                        span.close()
                        raise MediaError(f"mtmd made more than one chunk of one {kind}")
                    span = MediaSpan(m, self._ctx, m.mtmd_input_chunk_copy(c), kind)
                else:
                    n = ctypes.c_size_t(0)
                    toks = m.mtmd_input_chunk_get_tokens_text(c, ctypes.byref(n))
                    (before if span is None else after).extend(int(toks[j]) for j in range(n.value))
        finally:
            m.mtmd_input_chunks_free(chunks)
        if span is None:
            raise MediaError(f"mtmd made no {kind} chunk of the {kind}")
        return before, span, after

    def encode_span(self, span: MediaSpan) -> None:
        """Run the tower on ``span`` (one at a time per Projector: mtmd's context is not re-entrant)."""
        m = self._m
        t0 = time.perf_counter()
        if m.mtmd_encode_chunk(self._ctx, span._chunk) != 0:
            raise MediaError(f"mtmd failed to encode the {span.kind}")
        span.encode_s = time.perf_counter() - t0
        out = m.mtmd_get_output_embd(self._ctx)
        n = span.n_tokens * self.n_embd
        span.embd = np.ctypeslib.as_array(out, shape=(n,)).reshape(span.n_tokens, self.n_embd).copy()

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
