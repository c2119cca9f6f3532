"""bench(path, options): measure every artifact in a fresh child process, aggregate into Records.

PATH is one artifact (a .gguf file or an MLX folder) or a dist folder with manifest.json. Artifacts
are checked against the manifest's sha256, and every setting (lengths, threads, context, the
engine's knobs) against its bounds, before anything runs; each artifact is then measured by
``edgekit.measure.worker`` in its own interpreter (edgekit.core.child), and the parent adds
provenance, the roofline and the target's budget. The record keeps what the engine applied (its
context, threads and knobs as read back), never what was merely asked. ``check_budget`` is the gate.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from ..backends.engines import ENGINES, Engine
from ..backends.formats import Format, detect, format_of
from ..backends.runner import mean_sd
from ..builder.manifest import MANIFEST, Artifact, artifact_digest, read_manifest
from ..core.child import ChildDied, run_child
from ..core.errors import ArtifactError, BenchError, BudgetExceeded, ConfigError
from ..core.host import physical_cores
from ..profiles.knobs import parse_set
from ..profiles.targets import TARGETS, Target
from ..results import Record, provenance
from .roofline import TokenBytes, host_bandwidth
from .worker import MeasureResult, MeasureSpec

log = logging.getLogger(__name__)

parse_knobs = parse_set  # `--set KEY=VALUE` items → raw strings, typed later by the engine's schema


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

    def test_list(self) -> list[tuple[int, int, int]]:
        if self.tests:
            return [(t.n_prompt, t.n_gen, t.depth) for t in self.tests]
        return [(self.n_prompt, self.n_gen, self.depth)]


@dataclass
class Planned:
    path: Path
    artifact: Artifact
    model: str
    target: Union[Target, str, None]
    tokens: TokenBytes = field(default_factory=lambda: TokenBytes(0, 0))

    @property
    def format(self) -> Format:
        return format_of(self.artifact.format)


@dataclass
class Settings:
    """Everything one artifact's run is asked to use, validated."""

    target: Optional[Target]
    engine: Engine
    threads: int
    ctx: int
    knobs: dict[str, Any]


# ---------------------------------------------------------------- resolving PATH


def _checked(folder: Path, a: Artifact) -> Path:
    p = folder / a.file
    if not p.exists():
        raise ArtifactError(f"{p}: listed in {MANIFEST} but missing; rebuild with `edgekit build`")
    if artifact_digest(p) != (a.bytes, a.sha256):
        raise ArtifactError(
            f"{p}: bytes/sha256 differ from {MANIFEST} (changed or truncated); rebuild with `edgekit build`"
        )
    return p


def plan(path: Path, target: Union[Target, str, None] = None) -> list[Planned]:
    """The artifacts PATH names, verified, with their bytes read per token (which parses each file)."""
    p = Path(path)
    if not p.exists():
        raise ArtifactError(f"{p}: no such artifact; pass a .gguf file, an MLX folder or a dist folder with {MANIFEST}")
    if p.is_dir() and (p / MANIFEST).exists():
        m = read_manifest(p)
        if not m.artifacts:  # run and serve take the first; bench and eval would measure nothing
            raise ArtifactError(f"{p / MANIFEST}: lists no artifacts; rebuild with `edgekit build`")
        out = [Planned(_checked(p, a), a, m.model, target or m.target) for a in m.artifacts]
    else:
        fmt = detect(p)
        if fmt is None:
            raise ArtifactError(
                f"{p}: not an artifact; pass a .gguf file, an MLX folder or a dist folder with {MANIFEST}"
            )
        listed = p.parent / MANIFEST
        m = read_manifest(p.parent) if listed.exists() else None
        a = next((x for x in m.artifacts if x.file == p.name), None) if m else None
        if a and m:
            out = [Planned(_checked(p.parent, a), a, m.model, target or m.target)]
        else:
            size, sha = artifact_digest(p)
            a = Artifact(file=p.name, format=fmt.name, quant=fmt.quant_label(p), recipe="", bytes=size, sha256=sha)
            out = [Planned(p, a, fmt.model_name(p), target)]
    for pl in out:
        pl.tokens = pl.format.token_bytes(pl.path)  # also rejects unreadable files up front
    return out


# ---------------------------------------------------------------- settings


def _target(t: Union[Target, str, None]) -> Optional[Target]:
    return t if isinstance(t, Target) else TARGETS.get(t) if t else None


def profile_knobs(tgt: Target, engine: Engine) -> dict[str, Any]:
    """The target's [runtime] knobs ``engine`` reads, typed; a key no engine knows is an error (a
    profile may hold knobs for its alternative engine: those are left to it)."""
    where = f"target {tgt.name} [runtime]"
    for name in tgt.runtime:
        if not any(name in ENGINES.get(e).knobs for e in ENGINES):
            known = sorted({k for e in ENGINES for k in ENGINES.get(e).knobs.knobs})
            raise ConfigError(f"{where}: unknown runtime knob {name!r}; known: {', '.join(known)}")
    return engine.knobs.validate(tgt.runtime, where, strict=False)


def settings(pl: Planned, opts: BenchOptions) -> Settings:
    """The validated settings for one artifact, or the ConfigError saying which one to fix."""
    tgt = _target(pl.target)
    engine = ENGINES.get(pl.format.engine)
    tests = opts.test_list()
    if any(p < 1 or n < 1 or d < 0 for p, n, d in tests) or opts.reps < 1:
        raise ConfigError("-p, -n and -r must be at least 1 (and -d at least 0)")
    if opts.threads is not None and opts.threads < 1:
        raise ConfigError(
            f"--threads {opts.threads}: use at least 1 thread (default: the target's, capped at this host's cores)"
        )
    if opts.ctx is not None and opts.ctx < 1:  # 0 would silently mean the default below
        raise ConfigError(f"--ctx {opts.ctx}: use at least 1 token (leave it out for the target's context)")
    threads = opts.threads or (min(tgt.threads, physical_cores()) if tgt else physical_cores())
    # llama-bench's context is p + n + d; each test here prefills d + p, then decodes d + n from a reset
    ctx = opts.ctx or (tgt.context if tgt else max(p + n + d for p, n, d in tests))
    for p, n, d in tests:
        if ctx < d + max(p, n, 1):
            at = f" after -d {d}" if d else ""
            raise ConfigError(f"--ctx {ctx} is shorter than the test (-p {p}, -n {n}{at}); raise --ctx")
    trained, engine_max = pl.format.max_context(pl.path), engine.max_ctx
    if engine_max and ctx > engine_max:
        raise ConfigError(
            f"--ctx {ctx} is too long: {engine.name} counts the context in 32 bits (at most "
            f"{engine_max}); pass a smaller --ctx"
        )
    if trained and ctx > trained:
        raise ConfigError(
            f"--ctx {ctx} is longer than {pl.artifact.file} was trained for (n_ctx_train "
            f"{trained}); pass --ctx {trained} or less"
        )
    knobs = {
        **engine.knobs.defaults(),
        **(profile_knobs(tgt, engine) if tgt else {}),
        **engine.knobs.validate(opts.runtime, "--set"),
    }
    return Settings(tgt, engine, threads, ctx, knobs)


# ---------------------------------------------------------------- records


def measure_tests(
    pl: Planned,
    opts: BenchOptions,
    bandwidth: Optional[dict[str, float]] = None,
    on_step: Callable[[str], None] = lambda s: None,
) -> list[Record]:
    """One artifact in one child (one load), a Record per test; inside a memory cgroup when asked."""
    from . import limits
    from .budget import apply_limit, killed_result

    st = settings(pl, opts)
    tgt, engine = st.target, st.engine
    tests = opts.test_list()
    spec = MeasureSpec(
        engine=engine.name,
        path=str(pl.path),
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
    )
    use_limit = opts.limit if opts.limit is not None else bool(tgt and tgt.enforce_limit)
    limit_bytes = opts.limit_bytes or (tgt.memory_budget_bytes if tgt else None)
    if use_limit and limit_bytes is None:
        raise ConfigError("--limit needs a size: pass --target (its budget) or --limit-mb")
    with limits.memory_limit(limit_bytes if use_limit else None) as lim:
        if lim.enforced:
            limits.evict(pl.path)  # its pages are then read in by, and charged to, the child's cgroup
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
                    f"{pl.path.name}: the {engine.name} child process died ({e.why}"
                    f"{': ' + e.tail if e.tail else ''}); rerun with `edgekit -v bench` to see the "
                    "engine log"
                ) from None
            killed = killed_result(tests)
            per_test, load_ms = killed["tests"], killed["load_ms"]
            applied = {"ctx": st.ctx, "threads": st.threads, "knobs": st.knobs}
    if applied["ctx"] != st.ctx:
        log.info("%s: asked for a context of %d, %s applied %d", pl.artifact.file, st.ctx, engine.name, applied["ctx"])
    records = [
        _record(pl, opts, st, load_ms, applied, t, test, bandwidth) for t, test in zip(per_test, tests, strict=True)
    ]
    for rec in records:
        if use_limit:
            apply_limit(rec, lim)
    return records


def _record(
    pl: Planned,
    opts: BenchOptions,
    st: Settings,
    load_ms: float,
    applied: dict[str, Any],
    res: dict[str, Any],
    test: tuple[int, int, int],
    bandwidth: Optional[dict[str, float]],
) -> Record:
    from .budget import apply_pages, majflt_means

    tgt, engine = st.target, st.engine
    n_prompt, n_gen, depth = test
    reps, fig, mem = res["reps"], res["figures"], res["memory"]
    samples = {k: [r[k] for r in reps] for k in ("ttft_ms", "prefill_ms", "pp_tps", "tg_tps")}
    (ttft, ttft_sd), (pp, pp_sd), (tg, tg_sd) = (mean_sd(samples[k]) for k in ("ttft_ms", "pp_tps", "tg_tps"))
    prov = provenance(opts.device)
    rec = Record(
        artifact=pl.artifact.file,
        model=pl.model,
        format=pl.artifact.format,
        quant=pl.artifact.quant,
        engine=engine.name,
        sha256=pl.artifact.sha256,
        file_bytes=pl.artifact.bytes,
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
            "gathered_bytes_per_token": pl.tokens.gathered,
            "tensor_bytes": pl.tokens.file_tensor_bytes,
            "bandwidth": bandwidth or {},
            "lazy_tensors": fig.get("lazy_tensors") or [],
            "lazy_bytes": sum(pl.tokens.sizes.get(t, 0) for t in fig.get("lazy_tensors") or []),
        },
    )
    rec.majflt_prefill, rec.majflt_per_token = majflt_means(reps, n_gen)
    apply_pages(rec, res.get("pages"), tgt.page_size if tgt else 0)
    if pl.tokens.total:
        rec.bytes_per_token = pl.tokens.total
        if tgt:
            rec.predicted_tg_tps = tgt.bandwidth_gbs * 1e9 / pl.tokens.total
        if bandwidth:
            rec.host_read_gbs = bandwidth["read_gbs"]
            rec.achieved_gbs = pl.tokens.total * tg / 1e9
            rec.roofline_pct = 100 * rec.achieved_gbs / bandwidth["read_gbs"]
    return rec


def bench(
    path: Path, opts: Optional[BenchOptions] = None, on_records: Callable[[list[Record]], None] = lambda rs: None
) -> list[Record]:
    """Measure every artifact PATH names; return a Record per test. ``on_records`` gets each artifact's
    records as its child finishes (the CLI prints and stores them there, so a later failure loses none)."""
    opts = opts or BenchOptions()
    planned = plan(path, opts.target)
    for pl in planned:
        settings(pl, opts)  # reject bad lengths, knobs, contexts, unknown targets before any child starts
    bw = None
    if opts.roofline:
        log.info("host bandwidth: measured once, then cached")
        bw = host_bandwidth()
    out = []
    with _progress(len(planned) * (len(opts.test_list()) * (opts.reps + 1) + 1)) as advance:
        for i, pl in enumerate(planned, 1):
            label = f"bench {pl.artifact.file} ({i}/{len(planned)})"
            advance(0, label)
            recs = measure_tests(pl, opts, bw, on_step=lambda s, label=label: advance(1, f"{label}: {s}"))
            on_records(recs)
            out += recs
    return out


def bench_sweep(
    path: Path, opts: BenchOptions, points: list[Any], on_records: Callable[[list[Record]], None] = lambda rs: None
) -> list[Record]:
    """Every grid point of ``edgekit.measure.sweep.expand`` (threads, ctx, knobs; its tests on one load) on
    every artifact PATH names: one child per artifact per point, a Record per test, each child's
    records passed to ``on_records`` as it finishes."""
    import dataclasses

    # A point's 0 stays 0 (settings refuses it), never the default (-t 1,0 used to run the default twice).
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
    if len(runs) > 1:
        planned = plan(path, opts.target)
        for o in runs:  # every point's settings are checked before the first child starts
            for pl in planned:
                settings(pl, o)
    return [r for o in runs for r in bench(path, o, on_records)]


def check_budget(records: list[Record], enforce: bool = True) -> list[str]:
    """The gate (edgekit.measure.budget.gate_lines): a child OOM-killed or thrashing inside its limit, or a peak
    over its target's budget (the 16 KB-page peak where larger), raises BudgetExceeded with the first
    line (or, not enforced, the lines are returned)."""
    from .budget import gate_lines

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
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

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
