"""One artifact's measurement in a child process (edgekit.core.child runs ``measure``): spec and result.

A fresh interpreter per artifact keeps one artifact's peak memory (and an engine's global state)
out of the next one's figures. The parent (edgekit.measure.bench) builds a ``MeasureSpec`` with knobs the
engine's schema has already typed; the child loads, runs warm-up and repetitions under the memory
sampler, and returns a ``MeasureResult`` with what the engine applied.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..backends.bench_media import MediaSpec, Towers, run_media
from ..backends.engines import ENGINES
from ..backends.runner import RunOptions, run_reps
from . import pages
from .memory import PeakSampler


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
    depth: int = 0  # tokens in the cache before each test (llama-bench -d)
    # the tests this child runs on one loaded model (a sweep's -p/-n/-d), each [n_prompt, n_gen, depth];
    # empty: the one test (n_prompt, n_gen, depth)
    tests: list[list[int]] = field(default_factory=list)
    # `bench --image/--audio` (backends/bench_media.py): the towers' file and each medium (MediaSpec as a dict);
    # every test then runs once per medium, with the medium in the prompt
    mmproj: str = ""
    media: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class MeasureResult:
    load_ms: float
    reps: list[dict[str, float]]
    figures: dict[str, Any]
    memory: dict[str, Any]
    applied: dict[str, Any]  # ctx, threads, knobs as the engine applied them
    pages: Optional[dict[str, int]] = None  # the first test's mapped pages in 16 KB blocks (edgekit.measure.pages)
    # per test, in spec order: {"reps", "figures", "memory", "pages"} (the fields above are the first's)
    tests: list[dict[str, Any]] = field(default_factory=list)


def _media(
    runner: Any, spec: MeasureSpec, n_prompt: int, n_gen: int, sampler: PeakSampler, step: Callable, towers: list
) -> list[dict[str, Any]]:
    """Each medium of ``spec`` in a prompt of ``n_prompt`` text tokens: a result per medium, its own peak.
    ``towers`` holds the one Towers of this child (made on the first call)."""
    if not towers:
        budget = max((m.get("budget") or 0 for m in spec.media), default=0) or 280
        mode = spec.knobs.get("towers") or "resident"
        bench = ENGINES.get(spec.engine).bench_media
        assert bench is not None  # the parent refused the artifact (measure.media.check_media)
        towers.append(
            Towers(bench, runner, Path(spec.mmproj), Path(spec.path), mode, spec.threads, budget, sampler.sample)
        )
    out = []
    for m in spec.media:
        sampler.reset()
        ms = MediaSpec(**m)
        res = run_media(runner, towers[0], ms, n_prompt, n_gen, spec.reps, spec.seed)
        memory = asdict(sampler.peak())
        count = pages.count(Path(spec.path))
        step(f"{ms.label} done")
        out.append(
            {
                "medium": res.to_json(),
                "reps": res.reps,
                "memory": memory,
                "figures": runner.figures(),
                "pages": count.to_json() if count else None,
            }
        )
    return out


def measure(spec: MeasureSpec, step: Callable[[str], None]) -> MeasureResult:
    tests = spec.tests or [[spec.n_prompt, spec.n_gen, spec.depth]]
    out: list[dict[str, Any]] = []
    towers: list[Any] = []  # the towers of a run with media (backends/bench_media.Towers)
    with PeakSampler() as sampler:
        runner = ENGINES.get(spec.engine).make()
        opts = RunOptions(threads=spec.threads, ctx=spec.ctx, knobs=spec.knobs, verbose=spec.verbose)
        t0 = time.perf_counter()
        runner.load(Path(spec.path), opts)
        load_ms = (time.perf_counter() - t0) * 1e3
        sampler.sample()
        step("loaded")
        for i, (n_prompt, n_gen, depth) in enumerate(tests):
            if i:  # each test's peak is its own; the load's memory is still mapped and counted
                sampler.reset()
            if spec.media:
                media = _media(runner, spec, n_prompt, n_gen, sampler, step, towers)
                out.append({**media[0], "media": media})
                continue
            reps = run_reps(
                runner, n_prompt, n_gen, spec.reps, seed=spec.seed, on_step=step, on_sample=sampler.sample, depth=depth
            )
            # the peak first: the page count below allocates (a few MB of pagemap entries), and the
            # kernel's VmHWM would add that to the figure it corrects
            memory = asdict(sampler.peak())
            # which pages of the mapped artifact are resident at the end of the test (16 KB blocks)
            count = pages.count(Path(spec.path))
            out.append(
                {
                    "reps": [r.to_json() for r in reps],
                    "figures": runner.figures(),
                    "memory": memory,
                    "pages": count.to_json() if count else None,
                }
            )
        applied = runner.applied()
    if not spec.media:
        applied["knobs"].pop("towers", None)  # no projector ran: the knob was not applied
    if towers:
        towers[0].close()
    runner.close()
    first = out[0]
    return MeasureResult(
        load_ms=load_ms,
        reps=first["reps"],
        figures=first["figures"],
        memory=first["memory"],
        applied=applied,
        pages=first["pages"],
        tests=out,
    )
