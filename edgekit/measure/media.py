"""`edgekit bench --image/--audio`: a prompt with one medium in it, measured on llama.cpp (mtmd).

Parent side (``describe``): each file is decoded once with the runtime's own decoders (media.py: Pillow,
libsndfile), so bad media fail in one line before any child starts; its sha256, dimensions or duration
and the soft-token count transformers' processor gives it go into the record. Child side (``run_media``):
per repetition, the prompt is BOS, the medium framed by its marker tokens (mtmd's tokenization), then
``n_prompt`` random text tokens; it is evaluated into an empty cache and ``n_gen`` tokens are decoded
after it, so ``-p`` + the medium + ``-n`` can fill the whole context.

How the towers live (``towers``, a llama.cpp knob; a target's [runtime] or --set):
- ``resident``: the projector is loaded once with the text model and stays (what `edgekit run` does).
- ``on_demand``: per prompt, the projector is loaded, encodes, and is freed before the text is
  evaluated: the towers' anonymous memory (weights and compute) is gone before the text's KV cache and
  compute buffers fill. TTFT then includes loading the projector (``towers_load_ms``).

Both modes evaluate the same segments the same way (text ids with llama_decode, soft tokens as an
embedding batch at their positions, with mtmd's causal/non-causal choice), so their figures compare.

The memory split is measured by phase, from /proc/self/status (RssAnon): ``towers_bytes`` is the
anonymous memory that appeared while the projector loaded plus what each encode added and kept (mtmd
keeps weights and compute buffers in anonymous memory; nothing of the text runs in those windows), at
its largest for the medium. ``text_bytes``: resident, the record's peak RSS less the towers' bytes;
on_demand, the largest RSS sampled after the towers were freed (text evaluation and decoding).
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..backends.mtmd import AUDIO_CHUNK, IMAGE_CHUNK, Projector, decode_embeddings
from ..backends.runner import majflt, mean_sd, prompt_tokens
from ..builder.projector import projector_file
from ..core.errors import ArtifactError, ConfigError
from ..model.checkpoint import sha256_file
from ..profiles.resolve import ResolvedArtifact
from ..results import Record
from ..serve.media import (
    DEFAULT_IMAGE_BUDGET,
    IMAGE_BUDGETS,
    MediaError,
    image_size_for_budget,
    image_tokens,
    open_audio,
    open_image,
    prepare_image,
)

TOWERS_MODES = ("resident", "on_demand")


@dataclass
class MediaSpec:
    """One medium of a bench run, as the parent read it (every field goes into the record)."""

    kind: str  # "image" | "audio"
    path: str
    sha256: str
    width: Optional[int] = None  # image: the file's size in pixels
    height: Optional[int] = None
    seconds: Optional[float] = None  # audio: the clip's duration
    budget: Optional[int] = None  # image: the soft-token budget it is sized for
    tokens: int = 0  # soft tokens transformers' processor gives it (the child reads mtmd's own count)

    @property
    def label(self) -> str:
        return f"image{self.tokens}" if self.kind == "image" else f"audio{self.tokens}"


def describe(images: list[Path], audios: list[Path], budgets: list[int]) -> list[MediaSpec]:
    """The media of a run: each image once per budget (a sweep), each clip once; MediaError (one line)
    for a file that cannot be read or decoded, or is over a limit."""
    for b in budgets:
        if b not in IMAGE_BUDGETS:
            raise ConfigError(f"--image-tokens {b}: choose among {', '.join(map(str, IMAGE_BUDGETS))}")
    out = []
    for p in images:
        img = open_image(Path(p), str(p))
        sha = sha256_file(Path(p))
        for b in budgets or [DEFAULT_IMAGE_BUDGET]:
            h, w = image_size_for_budget(img.height, img.width, b)
            out.append(
                MediaSpec("image", str(p), sha, width=img.width, height=img.height, budget=b, tokens=image_tokens(h, w))
            )
    for p in audios:
        a = open_audio(Path(p), str(p))
        out.append(MediaSpec("audio", str(p), sha256_file(Path(p)), seconds=a.seconds, tokens=a.tokens))
    return out


# ---------------------------------------------------------------- the child


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


@dataclass
class Segment:
    tokens: Optional[list[int]] = None  # text ids
    embd: Optional[np.ndarray] = None  # soft tokens [n, n_embd]
    non_causal: bool = False
    n_pos: int = 0


@dataclass
class Prepared:
    segments: list[Segment]
    n_tokens: int  # mtmd's soft-token count for the medium
    encode_ms: float
    load_ms: float  # projector load (on_demand only; 0 when resident)


def _load_image(spec: MediaSpec) -> Any:
    return prepare_image(open_image(Path(spec.path), spec.path), spec.budget or DEFAULT_IMAGE_BUDGET)


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
                n = ctypes.c_size_t(0)
                ids = m.mtmd_input_chunk_get_tokens_text(c, ctypes.byref(n))
                toks = [int(ids[j]) for j in range(n.value)]
                segs.append(Segment(tokens=toks, n_pos=len(toks)))
    finally:
        m.mtmd_input_chunks_free(chunks)
    return segs, n_tok, enc_ms


def _decode_embd(runner: Any, seg: Segment, pos0: int, logits_last: bool) -> None:
    """Soft tokens into the cache at positions pos0.. (backends.mtmd.decode_embeddings: mtmd's helper
    needs the mtmd context, which on_demand has freed by now)."""
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


@dataclass
class MediaTest:
    """One medium's repetitions (the child's answer; bench.py turns it into a Record's fields)."""

    n_tokens: int  # mtmd's soft tokens for the medium
    positions: int  # the prompt's positions: BOS, the framed medium, the text
    reps: list[dict[str, float]] = field(default_factory=list)
    towers_load_bytes: int = 0  # anonymous growth at projector load (its weights)
    towers_bytes: int = 0  # anonymous growth from before the load to the towers' peak (weights + compute)
    rss_with_towers: int = 0  # the largest RSS sampled while the towers were loaded
    rss_without_towers: int = 0  # ... while they were not (on_demand: text evaluation and decoding)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class Towers:
    """The projector in one of TOWERS_MODES, with the memory it adds tracked by phase.

    ``held``: the anonymous bytes the towers hold now, grown only inside their own windows (the load, each
    encode), so the text's KV cache and compute pages, touched while the text runs, are never counted."""

    def __init__(self, runner: Any, mmproj: Path, text: Path, mode: str, threads: int, budget: int, sample: Callable):
        if mode not in TOWERS_MODES:
            raise ConfigError(f"towers = {mode!r}: choose one of {', '.join(TOWERS_MODES)}")
        self.args = (runner, mmproj, text, threads, budget)
        self.mode, self.sample, self.proj = mode, sample, None
        self.held = self.load_bytes = self.peak = self.rss_with = self.rss_without = 0
        if mode == "resident":
            self.open()

    def open(self) -> float:
        runner, mmproj, text, threads, budget = self.args
        before = self.sample().anon
        t0 = time.perf_counter()
        self.proj = Projector(_TextModel(runner), mmproj, text, threads=threads, image_budget=budget)
        ms = (time.perf_counter() - t0) * 1e3
        self.held = max(self.sample().anon - before, 0)
        self.load_bytes = max(self.load_bytes, self.held)
        self.note()
        return ms

    def encode(self, spec: MediaSpec, decoded: Any, first: bool) -> tuple[list[Segment], int, float]:
        """Encode; on a medium's ``first`` encode (after a load), what mtmd allocated and kept (its compute
        buffers) joins ``held``. The medium's own buffers are made before the window; later encodes add
        nothing to mtmd, and counting their heap noise would grow ``held`` with every repetition."""
        bitmap = self.proj.bitmap(decoded, spec.kind)
        before = self.sample().anon
        out = prepare(self.proj, spec, bitmap)
        if first:
            self.held += max(self.sample().anon - before, 0)
        self.note()
        return out

    def note(self) -> None:
        """Sample now; the towers' bytes and the RSS go to the phase they belong to."""
        s = self.sample()
        if self.proj is None:
            self.rss_without = max(self.rss_without, s.rss)
        else:
            self.peak = max(self.peak, self.held)
            self.rss_with = max(self.rss_with, s.rss)

    def close(self) -> None:
        if self.proj is not None:
            self.proj.close()
            self.proj, self.held = None, 0


def run_media(
    runner: Any, towers: Towers, spec: MediaSpec, n_prompt: int, n_gen: int, reps: int, seed: int
) -> MediaTest:
    """A warm-up and ``reps`` repetitions of: [towers loaded] → medium encoded → [towers freed] → prompt
    evaluated → first token read (TTFT) → ``n_gen`` tokens decoded after the prompt."""
    if spec.kind == "image":
        decoded = _load_image(spec)
    else:
        decoded = open_audio(Path(spec.path), spec.path)
    text = prompt_tokens(runner, n_prompt + 1, seed)[1:]  # BOS goes first, before the medium
    bos = [runner.bos()] if runner.bos() is not None else []
    ctx = runner.applied()["ctx"]
    towers.peak, towers.rss_with, towers.rss_without = towers.held, 0, 0  # this medium's own figures
    if towers.mode == "on_demand":
        towers.load_bytes = 0  # loaded again for this medium
    result: Optional[MediaTest] = None
    for _ in range(reps + 1):
        runner.reset()
        f0 = majflt()
        t0 = time.perf_counter()
        fresh = towers.proj is None
        load_ms = towers.open() if fresh else 0.0
        segs, n_tok, enc_ms = towers.encode(spec, decoded, first=fresh or result is None)
        if towers.mode == "on_demand":
            towers.close()
        segments = [Segment(tokens=bos, n_pos=len(bos)), *segs, Segment(tokens=text, n_pos=len(text))]
        pos = sum(s.n_pos for s in segments)
        if pos + n_gen > ctx:
            raise ConfigError(
                f"the prompt with its {spec.kind} takes {pos} positions and -n {n_gen} more is over the "
                f"context of {ctx}; lower -p or -n, or raise --ctx"
            )
        t1 = time.perf_counter()
        evaluate(runner, segments)
        tok = runner.next_token()
        t2 = time.perf_counter()
        f1 = majflt()
        towers.note()  # the full prompt's cache and activations are live here
        decode_s = 0.0
        for _ in range(n_gen):
            t = time.perf_counter()
            runner.decode(tok)
            decode_s += time.perf_counter() - t
            tok = runner.next_token()
        f2 = majflt()
        towers.note()
        if result is None:  # the warm-up: the first encode also allocates mtmd's compute buffers
            result = MediaTest(n_tokens=n_tok, positions=pos)
            continue
        result.reps.append(
            {
                "ttft_ms": (t2 - t0) * 1e3,
                "prefill_ms": (t2 - t1) * 1e3,
                # text positions (BOS, markers, text) per second of evaluating the prompt, soft tokens aside
                "pp_tps": (pos - n_tok) / (t2 - t1) if t2 > t1 else 0.0,
                "tg_tps": n_gen / decode_s if decode_s else 0.0,
                "decode_ms": decode_s * 1e3,
                "encode_ms": enc_ms,
                "towers_load_ms": load_ms,
                "majflt_prefill": f1 - f0,
                "majflt_decode": f2 - f1,
            }
        )
    assert result is not None
    result.towers_load_bytes, result.towers_bytes = towers.load_bytes, towers.peak
    result.rss_with_towers, result.rss_without_towers = towers.rss_with, towers.rss_without
    return result


# ---------------------------------------------------------------- the parent's records


def projector_for(ra: ResolvedArtifact, mmproj: Optional[Path]) -> Path:
    """--mmproj, else the projector the manifest links to the artifact (sha256 checked)."""
    if mmproj is not None:
        if not Path(mmproj).is_file():
            raise ArtifactError(f"{mmproj}: no such projector file")
        return Path(mmproj)
    proj = projector_file(ra.path.parent, ra.artifact)
    if proj is None:
        raise ArtifactError(
            f"{ra.path.name} was built without towers; rebuild with `edgekit build --modalities "
            "vision,audio`, or pass --mmproj FILE"
        )
    return proj


def media_record(rec: Record, medium: Any, res: dict[str, Any], mmproj: str) -> Record:
    """A record of a test with a medium in its prompt (edgekit.measure.media): what the medium is, its
    encode time, and the peak split into text and towers."""
    got = res.get("medium") or {}
    reps = res["reps"]
    rec.media_kind, rec.media_sha256 = medium.kind, medium.sha256
    rec.media_width, rec.media_height, rec.media_seconds = medium.width, medium.height, medium.seconds
    rec.image_tokens_budget = medium.budget
    rec.media_tokens = got.get("n_tokens")
    rec.n_positions = got.get("positions")
    if reps:
        rec.encode_ms, rec.encode_ms_sd = mean_sd([r["encode_ms"] for r in reps])
        rec.towers_load_ms = mean_sd([r["towers_load_ms"] for r in reps])[0]
    rec.samples.update({k: [r[k] for r in reps] for k in ("encode_ms", "towers_load_ms")})
    if got:
        rec.towers_bytes = got["towers_bytes"]
        resident = rec.runtime.get("towers", "resident") == "resident"
        # resident: the towers' memory is part of every moment after load, so of the peak too; on_demand:
        # the text's part is the largest RSS seen with the towers freed
        rec.text_bytes = rec.peak_rss_bytes - rec.towers_bytes if resident else got["rss_without_towers"]
        rec.extra["towers"] = {
            "load_bytes": got["towers_load_bytes"],
            "rss_with_towers": got["rss_with_towers"],
            "rss_without_towers": got["rss_without_towers"],
        }
    rec.extra["media"] = {"file": Path(medium.path).name, "processor_tokens": medium.tokens}
    rec.extra["projector"] = {"file": Path(mmproj).name}
    return rec
