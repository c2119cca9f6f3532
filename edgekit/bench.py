"""bench(path, options): measure every artifact in a fresh child process, aggregate into Records.

PATH is one artifact (a .gguf file or an MLX folder) or a dist folder with manifest.json. Artifacts
are checked against the manifest's sha256 before anything runs; each is then measured by
``edgekit.runners.child`` in its own interpreter (warm-up, then ``reps`` repetitions), and the
parent adds provenance, the roofline and the target's budget. ``check_budget`` is the gate.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from .errors import ArtifactError, BenchError, BudgetExceeded, ConfigError, EdgekitError
from .manifest import MANIFEST, Artifact, artifact_digest, read_manifest, versions
from .results import MB, Record, host_info
from .roofline import TokenBytes, host_bandwidth, token_bytes
from .runners import engine_for
from .runners.base import mean_sd
from .targets import TARGETS, Target

log = logging.getLogger(__name__)


@dataclass
class BenchOptions:
    n_prompt: int = 512
    n_gen: int = 128
    reps: int = 5
    threads: Optional[int] = None     # default: the target's threads capped at this host's cores
    ctx: Optional[int] = None         # default: the target's context, else n_prompt + n_gen (llama-bench)
    target: Optional[str] = None      # default: the manifest's target
    device: Optional[str] = None      # default: $EDGEKIT_DEVICE, else the hostname
    roofline: bool = True
    runtime: dict[str, Any] = field(default_factory=dict)   # knobs over the target's [runtime]
    verbose: bool = False
    seed: int = 0
    depth: int = 0                    # tokens already in the cache before each test (llama-bench -d)
    # A sweep's tests for one child (edgekit.sweep.Test: n_prompt, n_gen, depth), run on one loaded
    # model; default: the one test (n_prompt, n_gen, depth).
    tests: Optional[list[Any]] = None
    limit: Optional[bool] = None      # run inside a memory cgroup; default: the target's [bench] enforce_limit
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
    target: Optional[str]
    tokens: TokenBytes = field(default_factory=lambda: TokenBytes(0, 0))


def parse_knobs(items: list[str]) -> dict[str, Any]:
    """``--set key=value`` pairs as runtime knobs; values read as TOML scalars (true, 512, "q8_0" or q8_0)."""
    import tomllib

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set kv_type=q8_0")
        try:
            out[key.strip()] = tomllib.loads(f"v = {value.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            out[key.strip()] = value.strip()  # a bare word: a string knob such as q8_0
    return out


# ---------------------------------------------------------------- resolving PATH

def _gguf_quant(path: Path) -> str:
    import gguf

    from .formats.gguf_header import read_gguf_header

    try:
        ftype = read_gguf_header(path).scalars["general.file_type"]
        return gguf.LlamaFileType(int(ftype)).name.removeprefix("MOSTLY_").removeprefix("ALL_")
    except (EdgekitError, KeyError, ValueError):  # no such key (or a file the roofline check rejects)
        return "unknown"


def _mlx_quant(folder: Path) -> str:
    try:
        q = json.loads((folder / "config.json").read_text()).get("quantization") or {}
    except (OSError, ValueError):
        return "unknown"
    return f"{q['bits']}bit-g{q['group_size']}" if "bits" in q and "group_size" in q else "float"


def _checked(folder: Path, a: Artifact) -> Path:
    p = folder / a.file
    if not p.exists():
        raise ArtifactError(f"{p}: listed in {MANIFEST} but missing; rebuild with `edgekit build`")
    if artifact_digest(p) != (a.bytes, a.sha256):
        raise ArtifactError(f"{p}: bytes/sha256 differ from {MANIFEST} (changed or truncated); rebuild with `edgekit build`")
    return p


def plan(path: Path, target: Optional[str] = None) -> list[Planned]:
    """The artifacts PATH names, verified, with their bytes read per token (which parses each file)."""
    p = Path(path)
    if not p.exists():
        raise ArtifactError(f"{p}: no such artifact; pass a .gguf file, an MLX folder or a dist folder with {MANIFEST}")
    if p.is_dir() and (p / MANIFEST).exists():
        m = read_manifest(p)
        out = [Planned(_checked(p, a), a, m.model, target or m.target) for a in m.artifacts]
    else:
        if p.is_file() and p.suffix == ".gguf":
            fmt = "gguf"
        elif p.is_dir() and (p / "config.json").exists() and any(p.glob("*.safetensors")):
            fmt = "mlx"
        else:
            raise ArtifactError(f"{p}: not an artifact; pass a .gguf file, an MLX folder or a dist folder with {MANIFEST}")
        listed = p.parent / MANIFEST
        m = read_manifest(p.parent) if listed.exists() else None
        a = next((x for x in m.artifacts if x.file == p.name), None) if m else None
        if a and m:
            out = [Planned(_checked(p.parent, a), a, m.model, target or m.target)]
        else:
            size, sha = artifact_digest(p)
            quant = _gguf_quant(p) if fmt == "gguf" else _mlx_quant(p)
            a = Artifact(file=p.name, format=fmt, quant=quant, recipe="", bytes=size, sha256=sha)
            out = [Planned(p, a, p.stem if fmt == "gguf" else p.name, target)]
    for pl in out:
        engine_for(pl.artifact.format)
        pl.tokens = token_bytes(pl.path, pl.artifact.format)  # also rejects unreadable files up front
    return out


# ---------------------------------------------------------------- the child process

def _run_child(spec: dict[str, Any], verbose: bool, on_step: Callable[[str], None],
               wrap: Callable[[list[str]], list[str]] = list) -> dict[str, Any]:
    import edgekit

    env = dict(os.environ)
    root = str(Path(edgekit.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([root] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    name = Path(spec["path"]).name
    with tempfile.TemporaryDirectory(prefix="edgekit-bench-") as d:
        spec_path, err_path = Path(d) / "spec.json", Path(d) / "stderr.log"
        spec_path.write_text(json.dumps(spec))
        r, w = os.pipe()
        with open(err_path, "w+b") as err:
            sink = None if verbose else err
            proc = subprocess.Popen(wrap([sys.executable, "-m", "edgekit.runners.child", str(spec_path), str(w)]),
                                    pass_fds=(w,), stdin=subprocess.DEVNULL,
                                    stdout=2 if verbose else err, stderr=sink, env=env)  # never our stdout
            os.close(w)
            result: Optional[dict[str, Any]] = None
            try:
                with os.fdopen(r) as msgs:
                    for line in msgs:
                        msg = json.loads(line)
                        if "step" in msg:
                            on_step(msg["step"])
                        elif "error" in msg:
                            raise _rebuild(msg["error"])
                        elif "result" in msg:
                            result = msg["result"]
                rc = proc.wait()
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            if result is None:
                err.seek(0)
                tail = [ln for ln in err.read().decode("utf-8", "replace").splitlines() if ln.strip()][-1:]
                why = f"signal {signal.Signals(-rc).name}" if rc < 0 else f"exit code {rc}"
                raise BenchError(f"{name}: the {spec['engine']} child process died ({why}"
                                 f"{': ' + tail[0].strip() if tail else ''}); rerun with `edgekit -v bench` to see the engine log")
    return result


def _rebuild(err: dict[str, str]) -> EdgekitError:
    import edgekit.errors as errors

    cls = getattr(errors, err.get("type", ""), BenchError)
    return cls(err["message"]) if isinstance(cls, type) and issubclass(cls, EdgekitError) else BenchError(err["message"])


# ---------------------------------------------------------------- records

def _physical_cores() -> int:
    import psutil

    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


def _settings(pl: Planned, opts: BenchOptions) -> tuple[Optional[Target], int, int]:
    tgt = TARGETS.get(pl.target) if pl.target else None
    threads = opts.threads or (min(tgt.threads, _physical_cores()) if tgt else _physical_cores())
    tests = opts.test_list()
    # llama-bench's context is p + n + d; each test here prefills d + p, then decodes d + n from a reset
    ctx = opts.ctx or (tgt.context if tgt else max(p + n + d for p, n, d in tests))
    for p, n, d in tests:
        if p < 1 or n < 1 or d < 0 or opts.reps < 1:
            raise ConfigError("-p, -n and -r must be at least 1 (and -d at least 0)")
        if ctx < d + max(p, n, 1):
            at = f" after -d {d}" if d else ""
            raise ConfigError(f"--ctx {ctx} is shorter than the test (-p {p}, -n {n}{at}); raise --ctx")
    return tgt, threads, ctx


def measure(pl: Planned, opts: BenchOptions, bandwidth: Optional[dict[str, float]] = None,
            on_step: Callable[[str], None] = lambda s: None) -> Record:
    """One artifact, one test (the first of ``opts.test_list()``)."""
    return measure_tests(pl, opts, bandwidth, on_step)[0]


def measure_tests(pl: Planned, opts: BenchOptions, bandwidth: Optional[dict[str, float]] = None,
                  on_step: Callable[[str], None] = lambda s: None) -> list[Record]:
    """One artifact in one child (one load), a Record per test; inside a memory cgroup when asked."""
    from . import limits
    from .budget import apply_limit, killed_result

    tgt, threads, ctx = _settings(pl, opts)
    engine = engine_for(pl.artifact.format)
    runtime = {**(tgt.runtime if tgt else {}), **opts.runtime}
    tests = opts.test_list()
    spec = {"engine": engine, "path": str(pl.path), "n_prompt": tests[0][0], "n_gen": tests[0][1],
            "depth": tests[0][2], "tests": [list(t) for t in tests], "reps": opts.reps, "seed": opts.seed,
            "opts": {"threads": threads, "ctx": ctx, "runtime": runtime, "verbose": opts.verbose}}
    use_limit = opts.limit if opts.limit is not None else bool(tgt and tgt.enforce_limit)
    limit_bytes = opts.limit_bytes or (tgt.memory_budget_bytes if tgt else None)
    if use_limit and limit_bytes is None:
        raise ConfigError("--limit needs a size: pass --target (its budget) or --limit-mb")
    with limits.memory_limit(limit_bytes if use_limit else None) as lim:
        if lim.enforced:
            limits.evict(pl.path)  # its pages are then read in by, and charged to, the child's cgroup
        try:
            res = _run_child(spec, opts.verbose, on_step, wrap=lim.wrap)
        except BenchError:
            if not (lim.enforced and lim.read().oom_kills):
                raise
            res = killed_result(tests)
    records = [_record(pl, opts, tgt, threads, ctx, engine, runtime, res["load_ms"], t, test, bandwidth)
               for t, test in zip(res["tests"], tests)]
    for rec in records:
        if use_limit:
            apply_limit(rec, lim)
    return records


def _record(pl: Planned, opts: BenchOptions, tgt: Optional[Target], threads: int, ctx: int, engine: str,
            runtime: dict[str, Any], load_ms: float, res: dict[str, Any], test: tuple[int, int, int],
            bandwidth: Optional[dict[str, float]]) -> Record:
    from .budget import apply_pages, majflt_means

    n_prompt, n_gen, depth = test
    reps, fig, mem = res["reps"], res["figures"], res["memory"]
    samples = {k: [r[k] for r in reps] for k in ("ttft_ms", "prefill_ms", "pp_tps", "tg_tps")}
    (ttft, ttft_sd), (pp, pp_sd), (tg, tg_sd) = (mean_sd(samples[k]) for k in ("ttft_ms", "pp_tps", "tg_tps"))
    vers = versions()
    rec = Record(
        artifact=pl.artifact.file, model=pl.model, format=pl.artifact.format, quant=pl.artifact.quant,
        engine=engine, sha256=pl.artifact.sha256, file_bytes=pl.artifact.bytes,
        device=opts.device or os.environ.get("EDGEKIT_DEVICE") or socket.gethostname(),
        target=tgt.name if tgt else "", threads=threads if engine != "mlx" else None, ctx=ctx,
        n_prompt=n_prompt, n_gen=n_gen, reps=opts.reps, load_ms=load_ms,
        ttft_ms=ttft, ttft_ms_sd=ttft_sd, pp_tps=pp, pp_tps_sd=pp_sd, tg_tps=tg, tg_tps_sd=tg_sd,
        peak_rss_bytes=mem["peak_rss_bytes"], peak_anon_bytes=mem.get("peak_anon_bytes"),
        peak_file_bytes=mem.get("peak_file_bytes"), phys_footprint_bytes=mem.get("phys_footprint_bytes"),
        mlx_peak_bytes=fig.get("mlx_peak_bytes"), kv_cache_bytes=fig.get("kv_cache_bytes"),
        compute_buffer_bytes=fig.get("compute_buffer_bytes"),
        budget_bytes=tgt.memory_budget_bytes if tgt else None, depth=depth,
        timestamp=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        edgekit_version=vers.get("edgekit", ""),
        engine_version=vers.get("llama-cpp-python" if engine == "llama.cpp" else "mlx", ""),
        host=host_info(), versions=vers, runtime=runtime, samples=samples,
        extra={"model_buffers": fig.get("model_buffers") or [], "gathered_bytes_per_token": pl.tokens.gathered,
               "tensor_bytes": pl.tokens.file_tensor_bytes, "bandwidth": bandwidth or {},
               "lazy_tensors": fig.get("lazy_tensors") or [],
               "lazy_bytes": sum(pl.tokens.sizes.get(t, 0) for t in fig.get("lazy_tensors") or [])},
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


def bench(path: Path, opts: Optional[BenchOptions] = None) -> list[Record]:
    """Measure every artifact PATH names; return one Record each (nothing is stored or printed)."""
    opts = opts or BenchOptions()
    planned = plan(path, opts.target)
    for pl in planned:
        _settings(pl, opts)  # reject bad lengths / unknown targets before any child starts
    bw = None
    if opts.roofline:
        log.info("host bandwidth: measured once, then cached")
        bw = host_bandwidth()
    out = []
    with _progress(len(planned) * (len(opts.test_list()) * (opts.reps + 1) + 1)) as advance:
        for i, pl in enumerate(planned, 1):
            label = f"bench {pl.artifact.file} ({i}/{len(planned)})"
            advance(0, label)
            out += measure_tests(pl, opts, bw, on_step=lambda s, label=label: advance(1, f"{label}: {s}"))
    return out


def bench_sweep(path: Path, opts: BenchOptions, points: list[Any]) -> list[Record]:
    """Every grid point of ``edgekit.sweep.expand`` (threads, ctx, knobs; its tests on one load) on
    every artifact PATH names: one child per artifact per point, a Record per test."""
    import dataclasses

    runs = [dataclasses.replace(opts, threads=pt.threads or opts.threads, ctx=pt.ctx or opts.ctx,
                                runtime={**opts.runtime, **pt.knobs}, tests=list(pt.tests) or None) for pt in points]
    if len(runs) > 1:
        planned = plan(path, opts.target)
        for o in runs:  # every point's settings are checked before the first child starts
            for pl in planned:
                _settings(pl, o)
    return [r for o in runs for r in bench(path, o)]


def check_budget(records: list[Record], enforce: bool = True) -> list[str]:
    """The gate (edgekit.budget.gate_lines): a child OOM-killed or thrashing inside its limit, or a peak
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

            self.prog = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=Console(stderr=True), transient=True)
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
