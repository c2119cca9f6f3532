"""`edgekit bench --image/--audio`, the part every engine shares: the medium as the parent read it
(``MediaSpec``), the prompt's segments, the towers' memory tracked by phase (``Towers``) and the timed
loop (``run_media``). What differs per engine is a ``MediaBench``, its Backend's ``bench_media``:
where its towers are (parent side), how they load, encode a medium into the prompt's segments and are
freed, and how its runner evaluates those segments. llama.cpp: backends/gguf/bench_media.py (mtmd);
MLX: backends/mlx/bench_media.py (mlx-vlm's towers, the served path's own code).

Per repetition, the prompt is BOS, the medium framed by its marker tokens (the engine's layout, the one
`edgekit run` uses), then ``n_prompt`` random text tokens; it is evaluated into an empty cache and
``n_gen`` tokens are decoded after it, so ``-p`` + the medium + ``-n`` can fill the whole context.

How the towers live (``towers``, a knob; a target's [runtime] or --set; ``MediaBench.modes`` says which
modes an engine really does, the resolver's check refuses the others):
- ``resident``: the towers are loaded once with the text model and stay (what `edgekit run` does).
- ``on_demand``: per prompt, the towers are loaded, encode, and are freed before the text is evaluated,
  so their memory (weights and compute) is gone before the text's KV cache and compute fill. TTFT then
  includes loading them (``towers_load_ms``).

The memory split is measured by phase, from /proc/self/status (RssAnon): ``towers_bytes`` is the
anonymous memory that appeared while the towers loaded (from a trimmed heap) plus their compute: what
each medium's first encode added and kept (mtmd keeps its buffers), or, for an engine that hands its
compute back after the encode (MLX), the encode's peak by the engine's own count, for this medium.
Nothing of the text runs in those windows. ``text_bytes``: resident, the record's peak RSS less the
towers' bytes; on_demand, the largest RSS sampled after the towers were freed (text evaluation and
decoding). The media libraries (Pillow, libsndfile, the engine's: ``MediaBench.setup``) are imported
before the first window and recorded apart (``libs_bytes``); a text-only child does not import them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Protocol

import numpy as np

from ..core.errors import ConfigError
from ..core.host import trim_heap
from ..serve.media import DEFAULT_IMAGE_BUDGET, open_audio, open_image, prepare_image
from .runner import majflt, prompt_tokens

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
    tokens: int = 0  # soft tokens transformers' processor gives it (the child reads the engine's own count)

    @property
    def label(self) -> str:
        return f"image{self.tokens}" if self.kind == "image" else f"audio{self.tokens}"


@dataclass
class Segment:
    tokens: Optional[list[int]] = None  # text ids
    embd: Optional[np.ndarray] = None  # soft tokens [n, n_embd] float32, as they reach the text model
    non_causal: bool = False
    n_pos: int = 0


class Loaded(Protocol):
    """An engine's towers, loaded (``MediaBench.load``)."""

    def prepare(self, spec: MediaSpec, decoded: Any) -> Any:
        """The medium as the towers take it (outside the memory window: its own buffers, not the towers')."""

    def encode(self, prepared: Any) -> tuple[list[Segment], int, float]:
        """(the medium's segments: the marker ids around its soft tokens; soft tokens; encode ms)."""

    def close(self) -> None:
        """Free the towers: weights and compute, handed back to the kernel."""

    def compute_bytes(self) -> Optional[int]:
        """The last encode's compute at its largest by the engine's own count, for an engine that hands it
        back after the encode (MLX); None for one that keeps it (mtmd: then RssAnon's growth is held)."""


@dataclass(frozen=True)
class MediaBench:
    """One engine's side of bench --image/--audio (``Backend.bench_media``)."""

    # the ``towers`` modes this engine really does (anything else is refused before a child starts)
    modes: tuple[str, ...]
    # parent: (artifact path, its manifest entry, --mmproj or None, the run's media kinds) -> the towers'
    # file; a one-line error when the artifact has none (or none for a kind)
    projector: Callable[[Path, Any, Optional[Path], tuple[str, ...]], Path]
    # child: (runner, towers' file, text artifact path, threads, image budget) -> Loaded
    load: Callable[[Any, Path, Path, int, int], Loaded]
    # child: every segment into the runner's emptied cache, in order, the last one's logits computed;
    # returns the positions used
    evaluate: Callable[[Any, list[Segment]], int]
    # what the towers' and text's bytes are on this engine and host (the record's extra["towers"]["measured"])
    memory: str = ""
    # child: import the engine's media libraries before the towers' first window (their code and heap stay
    # when the towers are freed, so they are not the towers' bytes)
    setup: Callable[[], None] = lambda: None


def check_mode(bench: Optional[MediaBench], engine: str, mode: str) -> None:
    """ConfigError (one line) for an engine without a media bench or a towers mode it does not do."""
    if bench is None:
        raise ConfigError(f"--image/--audio: {engine} artifacts have no media bench")
    if mode not in TOWERS_MODES:
        raise ConfigError(f"towers = {mode!r}: choose one of {', '.join(TOWERS_MODES)}")
    if mode not in bench.modes:
        raise ConfigError(f"towers = {mode}: {engine} does not free its towers between media; use towers = resident")


@dataclass
class MediaTest:
    """One medium's repetitions (the child's answer; measure/media.py turns it into a Record's fields)."""

    n_tokens: int  # the engine's soft tokens for the medium
    positions: int  # the prompt's positions: BOS, the framed medium, the text
    reps: list[dict[str, float]] = field(default_factory=list)
    towers_load_bytes: int = 0  # anonymous growth at the towers' load (their weights)
    towers_bytes: int = 0  # anonymous growth from before the load to the towers' peak (weights + compute)
    rss_with_towers: int = 0  # the largest RSS sampled while the towers were loaded
    rss_without_towers: int = 0  # ... while they were not (on_demand: text evaluation and decoding)
    towers_freed_bytes: int = 0  # on_demand: RssAnon just before the towers were freed less just after
    # the engine's compute after an encode: kept by the towers (mtmd: ``towers_bytes`` grows with the media),
    # or handed back (MLX: ``towers_bytes`` is the weights plus this medium's compute at its largest)
    compute_kept: bool = True
    rss_text: int = 0  # the largest RSS sampled while the text ran (prompt evaluated, tokens decoded)
    # RSS the media libraries' import added (Pillow, libsndfile, the engine's: MediaBench.setup): code and
    # heap of neither the text nor the towers, which a text-only bench child does not import
    libs_bytes: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class Towers:
    """An engine's towers in one of TOWERS_MODES, with the memory they add tracked by phase.

    ``held``: the anonymous bytes the towers hold now, grown only inside their own windows (the load, each
    medium's first encode), so the text's KV cache and compute pages, touched while the text runs, are
    never counted."""

    def __init__(
        self,
        bench: MediaBench,
        runner: Any,
        towers: Path,
        text: Path,
        mode: str,
        threads: int,
        budget: int,
        sample: Callable,
    ):
        check_mode(bench, runner.engine, mode)
        self.bench, self.args = bench, (runner, towers, text, threads, budget)
        self.mode, self.sample = mode, sample
        self.proj: Optional[Loaded] = None
        self.held = self.load_bytes = self.peak = self.rss_with = self.rss_without = self.freed = 0
        self.transient = self.rss_text = 0  # a medium's handed-back compute at its largest; the text's RSS
        self.compute_kept = True
        before = sample().rss
        _media_libraries()
        bench.setup()
        self.libs = max(sample().rss - before, 0)
        if mode == "resident":
            self.settle()
            self.open()

    @staticmethod
    def settle() -> None:
        """Before a load (untimed): hand the heap's free pages back (core.host.trim_heap). A load that reused
        them would grow RssAnon by less than it holds: MLX's tiny towers (3.6 MB) measured 0.5 MB so."""
        trim_heap()

    def open(self) -> float:
        """Load the towers; their bytes are RssAnon's growth across the load (``settle`` first)."""
        before = self.sample().anon
        t0 = time.perf_counter()
        self.proj = self.bench.load(*self.args)
        ms = (time.perf_counter() - t0) * 1e3
        self.held = max(self.sample().anon - before, 0)
        self.load_bytes = max(self.load_bytes, self.held)
        self.note()
        return ms

    def encode(self, spec: MediaSpec, decoded: Any, first: bool) -> tuple[list[Segment], int, float]:
        """Encode; on a medium's ``first`` encode (after a load), what the engine allocated and kept (its
        compute buffers) joins ``held``. The medium's own buffers are made before the window; later encodes
        add nothing to the towers, and counting their heap noise would grow ``held`` with every repetition.
        An engine that hands its compute back (``compute_bytes``) says how large it was: the towers' part at
        the encode is then ``held`` (weights) plus that, for this medium (``transient``)."""
        assert self.proj is not None
        prepared = self.proj.prepare(spec, decoded)
        before = self.sample().anon
        out = self.proj.encode(prepared)
        own = self.proj.compute_bytes()
        if own is not None:
            self.compute_kept, self.transient = False, max(self.transient, own)
        elif first:
            self.held += max(self.sample().anon - before, 0)
        self.note()
        return out

    def note(self, text: bool = False) -> None:
        """Sample now; the towers' bytes and the RSS go to the phase they belong to (``text``: the text ran)."""
        s = self.sample()
        if text:
            self.rss_text = max(self.rss_text, s.rss)
        if self.proj is None:
            self.rss_without = max(self.rss_without, s.rss)
        else:
            self.peak = max(self.peak, self.held + self.transient)
            self.rss_with = max(self.rss_with, s.rss)

    def close(self) -> None:
        """Free the towers; ``freed``: what that handed back to the kernel, at its largest (the proof that
        on_demand's mode happened: RssAnon just before less just after)."""
        if self.proj is not None:
            before = self.sample().anon
            self.proj.close()
            self.proj, self.held = None, 0
            self.freed = max(self.freed, before - self.sample().anon)


def _media_libraries() -> None:
    """Pillow and libsndfile, imported before the towers' first window (serve/media.py defers them)."""
    # deferred: the decoders load with a bench that has media
    import soundfile  # noqa: F401
    from PIL import Image  # noqa: F401


def decoded_medium(spec: MediaSpec) -> Any:
    """The medium decoded as run and serve decode it: the image sized for its budget, or the clip."""
    if spec.kind == "image":
        return prepare_image(open_image(Path(spec.path), spec.path), spec.budget or DEFAULT_IMAGE_BUDGET)
    return open_audio(Path(spec.path), spec.path)


def run_media(
    runner: Any, towers: Towers, spec: MediaSpec, n_prompt: int, n_gen: int, reps: int, seed: int
) -> MediaTest:
    """A warm-up and ``reps`` repetitions of: [towers loaded] → medium encoded → [towers freed] → prompt
    evaluated → first token read (TTFT) → ``n_gen`` tokens decoded after the prompt."""
    decoded = decoded_medium(spec)
    text = prompt_tokens(runner, n_prompt + 1, seed)[1:]  # BOS goes first, before the medium
    bos = [runner.bos()] if runner.bos() is not None else []
    ctx = runner.applied()["ctx"]
    towers.peak, towers.rss_with, towers.rss_without = towers.held, 0, 0  # this medium's own figures
    towers.transient = towers.rss_text = 0
    if towers.mode == "on_demand":
        towers.load_bytes = towers.freed = 0  # loaded (and freed) again for this medium
    result: Optional[MediaTest] = None
    for _ in range(reps + 1):
        runner.reset()
        fresh = towers.proj is None
        if fresh:
            towers.settle()
        f0 = majflt()
        t0 = time.perf_counter()
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
        towers.bench.evaluate(runner, segments)
        tok = runner.next_token()
        t2 = time.perf_counter()
        f1 = majflt()
        towers.note(text=True)  # the full prompt's cache and activations are live here
        decode_s = 0.0
        for _ in range(n_gen):
            t = time.perf_counter()
            runner.decode(tok)
            decode_s += time.perf_counter() - t
            tok = runner.next_token()
        f2 = majflt()
        towers.note(text=True)
        if result is None:  # the warm-up: the first encode also allocates the towers' compute buffers
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
    result.towers_freed_bytes = towers.freed
    result.compute_kept, result.rss_text, result.libs_bytes = towers.compute_kept, towers.rss_text, towers.libs
    return result
