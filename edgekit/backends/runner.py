"""What every engine runner provides, and the timing loop shared by all of them.

A runner only says how to load an artifact, prefill a prompt, decode one token and read the greedy
next token. Timing, warm-up, repetitions and memory sampling live here and in ``measure.py``, so the
figures of different engines mean the same thing.

How to add an engine method that bench needs (e.g. a figure the engine reports): add it to ``Runner``
below with a docstring saying what it returns, implement it in each backend's runner.py (an engine that
cannot raise ConfigError with the fix), and call it from a child function of your own (a spec/result
pair run through ``edgekit.core.child.run_child``, as measure/worker.py does). What only one consumer
needs stays behind that consumer's protocol: eval's whole-window logits behind ``LogitsSource``
(backends/logits.py), serve's batched sampling behind ``Generator`` (backends/generator.py). How to add
an engine: see backends/backend.py.

The tests follow llama-bench: ``pp<p>`` prefills ``p`` fixed random token ids into an empty cache
(the first one BOS when the model adds one), ``tg<n>`` decodes ``n`` tokens one at a time from an
empty cache. TTFT is the prefill plus reading the greedy first token from its logits, so it is what a
user waits for before the first token; the pp rate excludes that read. Tokenization is excluded, and
so is the greedy pick between decode steps (it is not part of the engine's per-token cost).
"""

from __future__ import annotations

import resource
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Protocol

import numpy as np


@dataclass
class RunOptions:
    threads: int
    ctx: int
    knobs: dict[str, Any] = field(default_factory=dict)  # typed by the engine's KNOBS schema, defaults filled
    verbose: bool = False
    n_seq: int = 1  # sequences one context holds at once (edgekit serve's slots + its prefix cache)


class Runner(Protocol):
    engine: str

    def load(self, path: Path, opts: RunOptions) -> None: ...

    def n_vocab(self) -> int: ...

    def bos(self) -> Optional[int]: ...

    def reset(self) -> None: ...

    def prefill(self, tokens: Sequence[int]) -> None:
        """Decode the prompt into the cache; returns when the last token's logits are computed."""

    def decode(self, token: int) -> None:
        """Decode one token at the next position; returns when its logits are computed."""

    def next_token(self) -> int:
        """The greedy (argmax) token from the latest logits."""

    def figures(self) -> dict[str, Any]:
        """Engine-reported memory: kv_cache_bytes, compute_buffer_bytes, model_buffers, mlx_peak_bytes."""

    def applied(self) -> dict[str, Any]:
        """What the engine runs with, read back from it where it can say: ``ctx``, ``threads`` (None
        where the engine has no such setting) and ``knobs`` (name → value as applied)."""

    def close(self) -> None: ...


@dataclass
class Measurement:
    """One repetition."""

    ttft_ms: float
    prefill_ms: float
    pp_tps: float
    tg_tps: float
    decode_ms: float
    majflt_prefill: int = 0  # major page faults (pages read from disk) of this process while prefilling
    majflt_decode: int = 0  # ... while decoding the n_gen tokens (÷ n_gen: per token)

    def to_json(self) -> dict[str, float]:
        return asdict(self)


def prompt_tokens(runner: Runner, n: int, seed: int = 0) -> list[int]:
    rng = np.random.default_rng(seed)
    toks = [int(t) for t in rng.integers(0, runner.n_vocab(), size=n)]
    bos = runner.bos()
    if toks and bos is not None:
        toks[0] = bos
    return toks


def majflt() -> int:
    """Major page faults of this process so far (getrusage: one syscall, no file read)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_majflt


def one_rep(
    runner: Runner,
    prompt: Sequence[int],
    n_gen: int,
    first_token: int,
    clock: Callable[[], float] = time.perf_counter,
    on_sample: Callable[[], object] = lambda: None,
    depth: Sequence[int] = (),
) -> Measurement:
    """One repetition; with ``depth`` tokens, both tests run after those are already in the cache
    (llama-bench's -d: the depth prefill is untimed and done again before each test)."""
    runner.reset()
    if depth:
        runner.prefill(depth)
    f0 = majflt()
    t0 = clock()
    runner.prefill(prompt)
    t1 = clock()
    runner.next_token()
    t2 = clock()
    f1 = majflt()
    on_sample()  # the full prompt's cache and activations are live here (untimed)

    runner.reset()
    if depth:
        runner.prefill(depth)
    tok, decode_s = first_token, 0.0
    f2 = majflt()
    for _ in range(n_gen):
        t = clock()
        runner.decode(tok)
        decode_s += clock() - t
        tok = runner.next_token()
    f3 = majflt()
    prefill_s = t1 - t0
    return Measurement(
        ttft_ms=(t2 - t0) * 1e3,
        prefill_ms=prefill_s * 1e3,
        pp_tps=len(prompt) / prefill_s if prompt else 0.0,
        tg_tps=n_gen / decode_s if n_gen else 0.0,
        decode_ms=decode_s * 1e3,
        majflt_prefill=f1 - f0,
        majflt_decode=f3 - f2,
    )


def run_reps(
    runner: Runner,
    n_prompt: int,
    n_gen: int,
    reps: int,
    seed: int = 0,
    on_step: Callable[[str], None] = lambda s: None,
    on_sample: Callable[[], object] = lambda: None,
    depth: int = 0,
) -> list[Measurement]:
    """A warm-up repetition (discarded), then ``reps`` measured ones."""
    prompt = prompt_tokens(runner, n_prompt, seed)
    bos = runner.bos()
    first = bos if bos is not None else prompt_tokens(runner, 1, seed + 1)[0]
    ctx = prompt_tokens(runner, depth, seed + 2) if depth else []  # starts with BOS, as llama-bench's
    one_rep(runner, prompt, min(n_gen, 1) if n_gen else 0, first, on_sample=on_sample, depth=ctx)  # warm-up
    on_sample()
    on_step("warm-up")
    out = []
    for i in range(reps):
        out.append(one_rep(runner, prompt, n_gen, first, on_sample=on_sample, depth=ctx))
        on_sample()
        on_step(f"rep {i + 1}/{reps}")
    return out


def mean_sd(xs: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single sample)."""
    if not xs:
        return 0.0, 0.0
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)
