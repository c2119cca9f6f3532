"""llama.cpp's side of `edgekit bench --image/--audio` (backends/bench_media.py has the shared loop): the
projector is the manifest's mmproj (or --mmproj), loaded by mtmd (backends/mtmd.py) against the bench
runner's model; a medium is tokenized by mtmd around its marker and encoded; the soft tokens go into the
cache as embedding batches at their positions, with mtmd's causal/non-causal choice. Both towers modes
evaluate the same segments the same way, so their figures compare.

Memory: mtmd copies every projector tensor into anonymous memory at load and keeps its compute buffers
there, so RssAnon's growth in the towers' windows is the towers' part.
"""

from __future__ import annotations

import ctypes
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ...core.errors import ConfigError
from ...serve.media import MediaError
from ..bench_media import TOWERS_MODES, MediaBench, MediaSpec, Segment

IMAGE_CHUNK, AUDIO_CHUNK = 1, 2  # mtmd_input_chunk_type (as backends/mtmd.py, imported only with a projector)


class _TextModel:
    """What backends.mtmd.Projector asks of a text model, over the bench runner's llama.cpp handles."""

    def __init__(self, runner: Any):
        self.r, self.model = runner, runner.model

    def tokenize(self, text: bytes, add_bos: bool = False, special: bool = True) -> list[int]:
        L = self.r.L
        vocab = L.llama_model_get_vocab(self.model)
        buf = (L.llama_token * (len(text) + 16))()
        n = L.llama_tokenize(vocab, text, len(text), buf, len(buf), add_bos, special)
        return list(buf[: max(n, 0)])

    def n_embd(self) -> int:
        return int(self.r.L.llama_model_n_embd_inp(self.model))


def prepare(proj: Any, spec: MediaSpec, bitmap: Any) -> tuple[list[Segment], int, float]:
    """mtmd's chunks for the medium's marker, the medium encoded: (segments, soft tokens, encode ms);
    ``bitmap`` (the medium as mtmd holds it) is freed."""
    m = proj.lib
    try:
        chunks = proj.tokenize(proj.marker, [bitmap])
    finally:
        m.mtmd_bitmap_free(bitmap)
    segs, n_tok, enc_ms = [], 0, 0.0
    try:
        for i in range(m.mtmd_input_chunks_size(chunks)):
            c = m.mtmd_input_chunks_get(chunks, i)
            if m.mtmd_input_chunk_get_type(c) in (IMAGE_CHUNK, AUDIO_CHUNK):
                if m.mtmd_decode_use_mrope(proj.ctx):
                    raise MediaError("this projector uses M-RoPE positions, which bench does not lay out")
                n = int(m.mtmd_input_chunk_get_n_tokens(c))
                t0 = time.perf_counter()
                if m.mtmd_encode_chunk(proj.ctx, c) != 0:
                    raise MediaError(f"mtmd failed to encode the {spec.kind} ({Path(spec.path).name})")
                enc_ms += (time.perf_counter() - t0) * 1e3
                out = m.mtmd_get_output_embd(proj.ctx)
                embd = np.ctypeslib.as_array(out, shape=(n * proj.n_embd,)).reshape(n, proj.n_embd).copy()
                causal = bool(m.mtmd_decode_use_non_causal(proj.ctx, c))
                segs.append(Segment(embd=embd, non_causal=causal, n_pos=int(m.mtmd_input_chunk_get_n_pos(c))))
                n_tok += n
            else:
                count = ctypes.c_size_t(0)
                ids = m.mtmd_input_chunk_get_tokens_text(c, ctypes.byref(count))
                toks = [int(ids[j]) for j in range(count.value)]
                segs.append(Segment(tokens=toks, n_pos=len(toks)))
    finally:
        m.mtmd_input_chunks_free(chunks)
    return segs, n_tok, enc_ms


def _decode_embd(runner: Any, seg: Segment, pos0: int, logits_last: bool) -> None:
    """Soft tokens into the cache at positions pos0.. (backends.mtmd.decode_embeddings: mtmd's helper
    needs the mtmd context, which on_demand has freed by now)."""
    from ..mtmd import decode_embeddings  # deferred: as Projector below, with media only

    assert seg.embd is not None
    n = seg.embd.shape[0]
    if seg.non_causal and n > runner.knobs["n_ubatch"]:  # llama.cpp asserts (aborts) on this
        raise ConfigError(
            f"this model attends inside a medium non-causally (llama.cpp does for text widths other than "
            f"E2B's and E4B's), which needs the {n} soft tokens in one physical batch: --set n_ubatch={n}"
        )
    decode_embeddings(runner.L, runner.ctx, seg.embd, pos0, 0, runner.n_batch, seg.non_causal, logits_last)


def evaluate(runner: Any, segments: list[Segment]) -> int:
    """Every segment into an empty cache, in order; returns the positions used."""
    runner.reset()
    pos = 0
    for i, seg in enumerate(segments):
        last = i == len(segments) - 1
        if seg.embd is not None:
            _decode_embd(runner, seg, pos, last)
        elif seg.tokens:
            runner.prefill(seg.tokens)
        pos += seg.n_pos
    runner.L.llama_synchronize(runner.ctx)
    return pos


class MtmdTowers:
    """The mmproj loaded by mtmd against the bench runner's model (bench_media.Loaded)."""

    def __init__(self, runner: Any, mmproj: Path, text: Path, threads: int, budget: int):
        from ..mtmd import Projector  # deferred: llama-cpp-python's mtmd loads when a bench has media

        self.proj = Projector(_TextModel(runner), mmproj, text, threads=threads, image_budget=budget)

    def prepare(self, spec: MediaSpec, decoded: Any) -> Any:
        self.proj.image_budget = spec.budget or self.proj.image_budget
        return spec, self.proj.bitmap(decoded, spec.kind)

    def encode(self, prepared: Any) -> tuple[list[Segment], int, float]:
        spec, bitmap = prepared
        return prepare(self.proj, spec, bitmap)

    def close(self) -> None:
        self.proj.close()  # frees mtmd's context and trims the heap (core.host.trim_heap)

    def compute_bytes(self) -> Optional[int]:
        return None  # mtmd keeps its compute buffers: RssAnon's growth at the first encode is held


def projector(path: Path, artifact: Any, mmproj: Optional[Path], kinds: tuple[str, ...] = ()) -> Path:
    """--mmproj, else the projector the manifest links to the artifact (sha256 checked); mtmd refuses a
    medium the projector has no tower for, in the child."""
    from ...serve.media_run import find_projector  # deferred: the manifest's projector checks, with media only

    return find_projector(path, artifact, mmproj)


def _setup() -> None:
    """mtmd's bindings and backends/mtmd.py (with the projector checks it reads: 21.9 MB of code and heap
    measured) imported before the towers' first window, so the towers' bytes are the projector's."""
    # deferred: a bench with media only
    from llama_cpp import mtmd_cpp  # noqa: F401

    from .. import mtmd  # noqa: F401


BENCH = MediaBench(
    modes=TOWERS_MODES,
    projector=projector,
    load=MtmdTowers,
    evaluate=evaluate,
    setup=_setup,
    memory="RssAnon growth while mtmd loads the projector and first encodes (its weights and compute buffers)",
)
