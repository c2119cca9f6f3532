"""One artifact's measurement in a child process (edgekit.child runs ``measure``): spec and result.

A fresh interpreter per artifact keeps one artifact's peak memory (and an engine's global state)
out of the next one's figures. The parent (edgekit.bench) builds a ``MeasureSpec`` with knobs the
engine's schema has already typed; the child loads, runs warm-up and repetitions under the memory
sampler, and returns a ``MeasureResult`` with what the engine applied.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable


@dataclass
class MeasureSpec:
    engine: str
    path: str
    n_prompt: int
    n_gen: int
    reps: int
    threads: int
    ctx: int
    knobs: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    verbose: bool = False


@dataclass
class MeasureResult:
    load_ms: float
    reps: list[dict[str, float]]
    figures: dict[str, Any]
    memory: dict[str, Any]
    applied: dict[str, Any]          # ctx, threads, knobs as the engine applied them


def measure(spec: MeasureSpec, step: Callable[[str], None]) -> MeasureResult:
    from ..memory import PeakSampler
    from . import ENGINES
    from .base import RunOptions, run_reps

    with PeakSampler() as sampler:
        runner = ENGINES.get(spec.engine).make()
        opts = RunOptions(threads=spec.threads, ctx=spec.ctx, knobs=spec.knobs, verbose=spec.verbose)
        t0 = time.perf_counter()
        runner.load(Path(spec.path), opts)
        load_ms = (time.perf_counter() - t0) * 1e3
        sampler.sample()
        step("loaded")
        reps = run_reps(runner, spec.n_prompt, spec.n_gen, spec.reps, seed=spec.seed,
                        on_step=step, on_sample=sampler.sample)
        figures = runner.figures()
        applied = runner.applied()
    peak = sampler.peak()
    runner.close()
    return MeasureResult(load_ms=load_ms, reps=[r.to_json() for r in reps], figures=figures,
                         memory=asdict(peak), applied=applied)
