"""The memory gate's figures and lines: limits (edgekit.measure.limits), 16 KB pages (edgekit.measure.pages),
page faults.

A record passes when its child ran to the end inside its limit without thrashing and its peak is
under the target's budget. Thresholds, with why:

- ``THRASH_MAJFLT_PER_TOKEN = 64``: major page faults per decoded token. A run that fits reads only
  the per-layer-embedding rows of new tokens from disk (E2B: one 7,350-byte Q6_K row per token, 2-3
  pages, fewer where readahead brought them in with a neighbour), so it sees single figures; a run
  whose weights no longer fit re-reads the evicted part of ≈1.2 GB every token, thousands of faults
  (300,000 4 KB pages, or ≈10,000 at the kernel's 128 KB readahead). 64 (256 KB re-read per token) is
  far above the first and far below the second.
- ``TG_FRACTION = 0.5``: decode t/s inside the limit against the same artifact, test and knobs
  measured without one in the same run, when the run holds both (benchmarks/e2b_memory.py does;
  `edgekit bench --limit` runs each configuration once, as llama-bench prints one row per
  configuration, and its thrash signal is the fault count, which needs no second run). The gate is
  0.5 and not the 0.95 goal because t/s moves by ±30% on a shared 2-core host; the benchmark prints
  the ratio itself against the goal.
"""

from __future__ import annotations

from typing import Any, Optional

from ..results import MB, Record
from .pages import PAGE_16K

THRASH_MAJFLT_PER_TOKEN = 64
TG_FRACTION = 0.5


def majflt_means(reps: list[dict[str, Any]], n_gen: int) -> tuple[Optional[float], Optional[float]]:
    """(major faults per prefill, per decoded token), means over the repetitions."""
    if not reps or "majflt_prefill" not in reps[0]:
        return None, None
    pre = sum(r["majflt_prefill"] for r in reps) / len(reps)
    dec = sum(r["majflt_decode"] for r in reps) / len(reps)
    return pre, dec / n_gen if n_gen else None


def apply_pages(rec: Record, pages: Optional[dict[str, int]], device_page_size: int) -> None:
    """Every Linux record states its page size; a target whose kernel uses 16 KB pages (pi5) also gets
    the peak with the artifact's mapped pages counted in 16 KB file-aligned blocks."""
    if not pages:
        return
    rec.page_size = pages["page_size"]
    rec.extra["pages"] = dict(pages)
    if device_page_size == PAGE_16K and pages["page_size"] < PAGE_16K and pages["block"] == PAGE_16K:
        rec.peak_16k_bytes = rec.peak_rss_bytes + pages["blocks"] * pages["block"] - pages["resident_bytes"]


def apply_limit(rec: Record, lim: Any) -> None:
    """The limit's outcome on a record (``lim``: an edgekit.measure.limits.Limit after its block ended)."""
    rec.limit_bytes = lim.limit_bytes
    if lim.enforced:
        rec.limit_mechanism = lim.mechanism
        rec.cgroup_peak_bytes = lim.readings.peak_bytes
        rec.oom_killed = lim.readings.oom_kills > 0
        if lim.readings.failcnt is not None:
            rec.extra["cgroup_failcnt"] = lim.readings.failcnt
    else:
        rec.limit_not_enforced = lim.reason


def killed_result(tests: list[tuple[int, int, int]], n_media: int = 0) -> dict[str, Any]:
    """What a child that the kernel killed inside its limit leaves: no figures, one entry per test (and
    per medium of a run with media)."""
    empty = lambda: {"reps": [], "figures": {}, "memory": {"peak_rss_bytes": 0}, "pages": None}
    return {
        "load_ms": 0.0,
        "tests": [{**empty(), "media": [empty() for _ in range(n_media)]} for _ in tests],
    }


def _twin(r: Record, records: list[Record]) -> Optional[Record]:
    """The same artifact, test and knobs measured without a limit in the same run."""
    for b in records:
        if (
            b.limit_bytes is None
            and b.sha256 == r.sha256
            and (b.n_prompt, b.n_gen, b.depth, b.threads, b.ctx) == (r.n_prompt, r.n_gen, r.depth, r.threads, r.ctx)
            and b.runtime == r.runtime
            and b.tg_tps > 0
        ):
            return b
    return None


def fault(r: Record, records: list[Record]) -> Optional[tuple[str, str]]:
    """Why a record fails the gate, short (the bench table's budget column) and as the gate's line; None
    when it passes. ``records``: the run's records, for the unlimited twin of a limited run."""
    name = f"{r.artifact} ({r.pp_test}, {r.tg_test})"
    lim = f"{r.limit_bytes / MB:,.0f} MB" if r.limit_bytes else ""
    base = _twin(r, records) if r.limit_mechanism else None
    if r.oom_killed:
        return "OOM-killed", f"{name}: OOM-killed by the kernel inside the {lim} memory limit ({r.limit_mechanism})"
    if r.limit_mechanism and (r.majflt_per_token or 0) > THRASH_MAJFLT_PER_TOKEN:
        return "thrashing", (
            f"{name}: thrashes inside the {lim} memory limit: {r.majflt_per_token:,.0f} major page "
            f"faults per decoded token (the gate allows {THRASH_MAJFLT_PER_TOKEN})"
        )
    if base is not None and r.tg_tps < TG_FRACTION * base.tg_tps:
        return (
            f"slowed {r.tg_tps / base.tg_tps:.2f}x",
            f"{name}: decodes at {r.tg_tps:.2f} t/s inside the {lim} "
            f"memory limit, {r.tg_tps / base.tg_tps:.2f}x the {base.tg_tps:.2f} t/s without it (the gate needs "
            f"{TG_FRACTION}x)",
        )
    if r.budget_bytes is not None and r.peak_rss_bytes and r.gate_bytes > r.budget_bytes:
        what = "peak at 16 KB pages" if r.peak_16k_bytes and r.peak_16k_bytes > r.peak_rss_bytes else "peak RSS"
        return (
            f"over by {r.over_budget_bytes / MB:.1f} MB",
            f"{r.artifact}: {what} {r.gate_bytes / MB:.1f} MB is {r.over_budget_bytes / MB:.1f} MB over "
            f"the {r.target} budget of {r.budget_bytes / MB:.0f} MB",
        )
    return None


def verdict(r: Record, records: list[Record]) -> Optional[str]:
    """The budget column: "ok", why it fails, or None when no budget or limit applied."""
    f = fault(r, records)
    return f[0] if f else "ok" if r.budget_bytes is not None or r.limit_mechanism else None


def gate_lines(records: list[Record]) -> list[str]:
    """One line per record that fails: killed, thrashing, slowed down by the limit, or over budget."""
    return [f[1] for r in records if (f := fault(r, records))]


def limit_notes(records: list[Record]) -> list[str]:
    """A line per distinct reason an asked-for limit was not enforced: the gate then uses peak RSS."""
    seen = dict.fromkeys(r.limit_not_enforced for r in records if r.limit_not_enforced)
    return [f"memory limit not enforced ({why}); the gate uses peak RSS instead" for why in seen]
