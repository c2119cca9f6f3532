"""bench(path, options): measure every artifact in a fresh child process, aggregate into Records.

PATH is one artifact (a .gguf file or an MLX folder) or a dist folder with manifest.json. The resolver
(edgekit.profiles.resolve) checks the artifacts against the manifest's sha256 and resolves every setting
(threads, context, the engine's knobs); the lengths are checked here, all before anything runs. Each
artifact is then measured by ``edgekit.measure.worker`` in its own interpreter (edgekit.core.child), and
the parent adds provenance, the roofline and the target's budget. The record keeps what the engine applied (its
context, threads and knobs as read back), never what was merely asked. ``check_budget`` is the gate.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..backends.runner import mean_sd
from ..core.child import ChildDied, run_child
from ..core.errors import BenchError, BudgetExceeded, ConfigError
from ..profiles.resolve import Overrides, ResolvedArtifact, resolve
from ..profiles.targets import Target
from ..results import Record, provenance
from . import limits
from .budget import apply_limit, apply_pages, gate_lines, killed_result, majflt_means
from .media import check_media, media_record, projector_for
from .roofline import host_bandwidth
from .worker import MeasureResult, MeasureSpec

log = logging.getLogger(__name__)


@dataclass
class BenchOptions:
    n_prompt: int = 512
    n_gen: int = 128
    reps: int = 5
    threads: Optional[int] = None  # default: the target's threads capped at this host's cores
    ctx: Optional[int] = None  # default: the target's context, else n_prompt + n_gen (llama-bench)
    target: Union[Target, str, None] = None  # a Target, a profile name, or None: the manifest's
    device: Optional[str] = None  # default: $EDGEKIT_DEVICE, else the hostname
    roofline: bool = True
    runtime: dict[str, Any] = field(default_factory=dict)  # knobs over the target's [runtime] (--set)
    verbose: bool = False
    seed: int = 0
    depth: int = 0  # tokens already in the cache before each test (llama-bench -d)
    # A sweep's tests for one child (edgekit.measure.sweep.Test: n_prompt, n_gen, depth), run on one loaded
    # model; default: the one test (n_prompt, n_gen, depth).
    tests: Optional[list[Any]] = None
    limit: Optional[bool] = None  # run inside a memory cgroup; default: the target's [bench] enforce_limit
    limit_bytes: Optional[int] = None  # the limit; default: the target's memory budget
    # `--image/--audio` (edgekit.measure.media.describe): each test runs once per medium, the medium in its
    # prompt; the projector is the manifest's (or ``mmproj``)
    media: list[Any] = field(default_factory=list)
    mmproj: Optional[Path] = None

    def test_list(self) -> list[tuple[int, int, int]]:
        if self.tests:
            return [(t.n_prompt, t.n_gen, t.depth) for t in self.tests]
        return [(self.n_prompt, self.n_gen, self.depth)]


def overrides(opts: BenchOptions) -> Overrides:
    """The bench's options as the resolver's overrides (without --ctx or a target: the longest test)."""
    return Overrides(
        threads=opts.threads,
        ctx=opts.ctx,
        knobs=opts.runtime,
        fallback_ctx=max(p + n + d for p, n, d in opts.test_list()),
    )


def check_tests(opts: BenchOptions) -> None:
    """The lengths and repetitions, before any artifact is read."""
    if any(p < 1 or n < 1 or d < 0 for p, n, d in opts.test_list()) or opts.reps < 1:
        raise ConfigError("-p, -n and -r must be at least 1 (and -d at least 0)")


def check_fits(ra: ResolvedArtifact, opts: BenchOptions) -> None:
    """Every test fits the context (llama-bench's is p + n + d; each test here prefills d + p, then
    decodes d + n from a reset)."""
    ctx = ra.settings.ctx
    for p, n, d in opts.test_list():
        if ctx < d + max(p, n, 1):
            at = f" after -d {d}" if d else ""
            raise ConfigError(f"--ctx {ctx} is shorter than the test (-p {p}, -n {n}{at}); raise --ctx")
    if opts.media:
        check_media(ra)  # the engine benches media, in the towers mode asked
        m = max(x.tokens for x in opts.media)
        for p, n, d in opts.test_list():
            if d:
                raise ConfigError("-d cannot be combined with --image/--audio (the medium opens the prompt)")
            if ctx < 1 + m + p + n:
                raise ConfigError(
                    f"--ctx {ctx} is shorter than the test with its media (BOS + {m} soft tokens + -p {p} "
                    f"+ -n {n}, and the markers); raise --ctx or lower -p"
                )


def resolved(path: Path, opts: BenchOptions) -> list[ResolvedArtifact]:
    """The artifacts PATH names with this bench's settings, every one checked before any child starts."""
    check_tests(opts)
    arts = resolve(path, target=opts.target, overrides=overrides(opts))
    for ra in arts:
        check_fits(ra, opts)
    return arts


# ---------------------------------------------------------------- records


def measure_tests(
    ra: ResolvedArtifact,
    opts: BenchOptions,
    bandwidth: Optional[dict[str, float]] = None,
    on_step: Callable[[str], None] = lambda s: None,
) -> list[Record]:
    """One artifact in one child (one load), a Record per test; inside a memory cgroup when asked."""
    st, tgt, engine = ra.settings, ra.target, ra.engine
    tests = opts.test_list()
    spec = MeasureSpec(
        engine=engine.name,
        path=str(ra.path),
        n_prompt=tests[0][0],
        n_gen=tests[0][1],
        reps=opts.reps,
        threads=st.threads,
        ctx=st.ctx,
        knobs=st.knobs,
        seed=opts.seed,
        verbose=opts.verbose,
        depth=tests[0][2],
        tests=[list(t) for t in tests],
        mmproj=str(projector_for(ra, opts.mmproj, opts.media)) if opts.media else "",
        media=[dataclasses.asdict(m) for m in opts.media],
    )
    use_limit = opts.limit if opts.limit is not None else bool(tgt and tgt.enforce_limit)
    limit_bytes = opts.limit_bytes or (tgt.memory_budget_bytes if tgt else None)
    if use_limit and limit_bytes is None:
        raise ConfigError("--limit needs a size: pass --target (its budget) or --limit-mb")
    with limits.memory_limit(limit_bytes if use_limit else None) as lim:
        if lim.enforced:
            limits.evict(ra.path)  # its pages are then read in by, and charged to, the child's cgroup
        try:
            res = run_child(
                "edgekit.measure.worker:measure",
                spec,
                MeasureResult,
                verbose=opts.verbose,
                on_step=on_step,
                block=engine.block,
                wrap=lim.wrap,
            )
            per_test, load_ms, applied = res.tests, res.load_ms, res.applied
        except ChildDied as e:
            if not (lim.enforced and lim.read().oom_kills):
                raise BenchError(
                    f"{ra.path.name}: the {engine.name} child process died ({e.why}"
                    f"{': ' + e.tail if e.tail else ''}); rerun with `edgekit -v bench` to see the "
                    "engine log"
                ) from None
            killed = killed_result(tests, len(opts.media))
            per_test, load_ms = killed["tests"], killed["load_ms"]
            applied = {"ctx": st.ctx, "threads": st.threads, "knobs": st.knobs}
    if applied["ctx"] != st.ctx:
        log.info("%s: asked for a context of %d, %s applied %d", ra.artifact.file, st.ctx, engine.name, applied["ctx"])
    if opts.media:
        measured = engine.bench_media.memory if engine.bench_media else ""
        records = [
            media_record(_record(ra, opts, load_ms, applied, m, test, bandwidth), medium, m, spec.mmproj, measured)
            for t, test in zip(per_test, tests, strict=True)
            for medium, m in zip(opts.media, t["media"], strict=True)
        ]
    else:
        records = [
            _record(ra, opts, load_ms, applied, t, test, bandwidth) for t, test in zip(per_test, tests, strict=True)
        ]
    for rec in records:
        if use_limit:
            apply_limit(rec, lim)
    return records


def _record(
    ra: ResolvedArtifact,
    opts: BenchOptions,
    load_ms: float,
    applied: dict[str, Any],
    res: dict[str, Any],
    test: tuple[int, int, int],
    bandwidth: Optional[dict[str, float]],
) -> Record:
    tgt, engine = ra.target, ra.engine
    n_prompt, n_gen, depth = test
    reps, fig, mem = res["reps"], res["figures"], res["memory"]
    samples = {k: [r[k] for r in reps] for k in ("ttft_ms", "prefill_ms", "pp_tps", "tg_tps")}
    (ttft, ttft_sd), (pp, pp_sd), (tg, tg_sd) = (mean_sd(samples[k]) for k in ("ttft_ms", "pp_tps", "tg_tps"))
    prov = provenance(opts.device)
    rec = Record(
        artifact=ra.artifact.file,
        model=ra.model,
        format=ra.artifact.format,
        quant=ra.artifact.quant,
        engine=engine.name,
        sha256=ra.artifact.sha256,
        file_bytes=ra.artifact.bytes,
        target=tgt.name if tgt else "",
        threads=applied["threads"],
        ctx=applied["ctx"],
        n_prompt=n_prompt,
        n_gen=n_gen,
        reps=opts.reps,
        load_ms=load_ms,
        ttft_ms=ttft,
        ttft_ms_sd=ttft_sd,
        pp_tps=pp,
        pp_tps_sd=pp_sd,
        tg_tps=tg,
        tg_tps_sd=tg_sd,
        peak_rss_bytes=mem["peak_rss_bytes"],
        peak_anon_bytes=mem.get("peak_anon_bytes"),
        peak_file_bytes=mem.get("peak_file_bytes"),
        phys_footprint_bytes=mem.get("phys_footprint_bytes"),
        mlx_peak_bytes=fig.get("mlx_peak_bytes"),
        kv_cache_bytes=fig.get("kv_cache_bytes"),
        compute_buffer_bytes=fig.get("compute_buffer_bytes"),
        budget_bytes=tgt.memory_budget_bytes if tgt else None,
        depth=depth,
        **prov,
        engine_version=prov["versions"].get(engine.version_key, ""),
        runtime=applied["knobs"],
        samples=samples,
        extra={
            "model_buffers": fig.get("model_buffers") or [],
            "gathered_bytes_per_token": ra.tokens.gathered,
            "tensor_bytes": ra.tokens.file_tensor_bytes,
            "bandwidth": bandwidth or {},
            "lazy_tensors": fig.get("lazy_tensors") or [],
            "lazy_bytes": sum(ra.tokens.sizes.get(t, 0) for t in fig.get("lazy_tensors") or []),
        },
    )
    rec.majflt_prefill, rec.majflt_per_token = majflt_means(reps, n_gen)
    apply_pages(rec, res.get("pages"), tgt.page_size if tgt else 0)
    if ra.tokens.total:
        rec.bytes_per_token = ra.tokens.total
        if tgt:
            rec.predicted_tg_tps = tgt.bandwidth_gbs * 1e9 / ra.tokens.total
        if bandwidth:
            rec.host_read_gbs = bandwidth["read_gbs"]
            rec.achieved_gbs = ra.tokens.total * tg / 1e9
            rec.roofline_pct = 100 * rec.achieved_gbs / bandwidth["read_gbs"]
    return rec


def bench(
    path: Path, opts: Optional[BenchOptions] = None, on_records: Callable[[list[Record]], None] = lambda rs: None
) -> list[Record]:
    """Measure every artifact PATH names; return a Record per test. ``on_records`` gets each artifact's
    records as its child finishes (the CLI prints and stores them there, so a later failure loses none)."""
    opts = opts or BenchOptions()
    return measure_all(resolved(path, opts), opts, on_records)


def measure_all(
    arts: list[ResolvedArtifact], opts: BenchOptions, on_records: Callable[[list[Record]], None] = lambda rs: None
) -> list[Record]:
    """Each resolved artifact in its own child, in order (their settings already checked)."""
    bw = None
    if opts.roofline:
        log.info("host bandwidth: measured once, then cached")
        bw = host_bandwidth()
    out = []
    with _progress(len(arts) * (len(opts.test_list()) * (opts.reps + 1) + 1)) as advance:
        for i, ra in enumerate(arts, 1):
            label = f"bench {ra.artifact.file} ({i}/{len(arts)})"
            advance(0, label)
            recs = measure_tests(ra, opts, bw, on_step=lambda s, label=label: advance(1, f"{label}: {s}"))
            on_records(recs)
            out += recs
    return out


def bench_sweep(
    path: Path, opts: BenchOptions, points: list[Any], on_records: Callable[[list[Record]], None] = lambda rs: None
) -> list[Record]:
    """Every grid point of ``edgekit.measure.sweep.expand`` (threads, ctx, knobs; its tests on one load) on
    every artifact PATH names: one child per artifact per point, a Record per test, each child's
    records passed to ``on_records`` as it finishes. PATH is read and hashed once."""
    # A point's 0 stays 0 (the resolver refuses it), never the default (-t 1,0 used to run the default twice).
    runs = [
        dataclasses.replace(
            opts,
            threads=opts.threads if pt.threads is None else pt.threads,
            ctx=opts.ctx if pt.ctx is None else pt.ctx,
            runtime={**opts.runtime, **pt.knobs},
            tests=list(pt.tests) or None,
        )
        for pt in points
    ]
    if not runs:
        return []
    arts = resolved(path, runs[0])
    per_run = [arts]
    for o in runs[1:]:  # every point's settings are checked before the first child starts
        check_tests(o)
        per_run.append([ra.with_overrides(overrides(o)) for ra in arts])
        for ra in per_run[-1]:
            check_fits(ra, o)
    return [r for o, arts_o in zip(runs, per_run, strict=True) for r in measure_all(arts_o, o, on_records)]


def check_budget(records: list[Record], enforce: bool = True) -> list[str]:
    """The gate (edgekit.measure.budget.gate_lines): a child OOM-killed or thrashing inside its limit, or a peak
    over its target's budget (the 16 KB-page peak where larger), raises BudgetExceeded with the first
    line (or, not enforced, the lines are returned)."""
    over = gate_lines(records)
    if over and enforce:
        more = f" (and {len(over) - 1} more)" if len(over) > 1 else ""
        raise BudgetExceeded(f"{over[0]}{more}; choose a smaller quant or --ctx, or pass --no-gate to only warn")
    return over


class _progress:
    """A rich bar on stderr over all artifacts' steps; silent when stderr is not a terminal."""

    def __init__(self, total: int):
        self.total = total
        self.prog: Any = None

    def __enter__(self) -> Callable[[int, str], None]:
        if sys.stderr.isatty() and not os.environ.get("EDGEKIT_NO_PROGRESS"):
            self.prog = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            self.prog.__enter__()
            self.task = self.prog.add_task("bench", total=self.total)
        return self.advance

    def advance(self, n: int, label: str) -> None:
        if self.prog is not None:
            self.prog.update(self.task, advance=n, description=label)
        else:
            log.info("%s", label)

    def __exit__(self, *exc: object) -> None:
        if self.prog is not None:
            self.prog.__exit__(*exc)
