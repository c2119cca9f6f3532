"""The report's plots (matplotlib, Agg backend: no display needed; adjustText keeps labels apart).

Read at a glance: axes span the data (the budget line is drawn when it is near the points, else named
in a corner), a colour per model, a marker per device, a label per run with the knobs that tell it
apart, error bars that stop at zero, and failed runs as red crosses at the limit they were killed at.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..core.fsutil import atomic_path
from .base import MB
from .bench import Record, _knob, varying

MARKERS = "osD^vP*X"
FAIL = "#d62728"


def _plt() -> Any:
    # deferred: matplotlib (the report extra) loads only when plotting
    import matplotlib

    matplotlib.use("Agg")
    # deferred: pyplot after matplotlib.use("Agg") picks the headless backend
    import matplotlib.pyplot as plt

    return plt


def label(r: Record, records: Sequence[Record], axis: str = "") -> str:
    """What tells this run apart on the plot: the model (when several), the quant, and what differs between
    this artifact's runs on its device (knobs, ctx, test lengths, threads, served); ``axis``: a figure the
    plot's axis shows already ("pp": the prompt length)."""
    group = [x for x in records if (x.sha256, x.device) == (r.sha256, r.device)]
    parts = [r.model] if len({x.model for x in records}) > 1 else []
    parts.append(r.quant or r.artifact)
    parts += [f"ctx {r.ctx}" if k == "ctx" else f"{k}={_knob(r.runtime.get(k))}" for k in varying(group)]
    for name, get in (
        ("pp", lambda x: x.n_prompt),
        ("tg", lambda x: x.n_gen),
        ("d", lambda x: x.depth),
        ("t", lambda x: x.threads),
        ("", lambda x: "" if x.via == "bench" else x.via),
    ):
        if name != axis and len({get(x) for x in group}) > 1:
            parts.append(f"{name}{get(r)}")
    return " ".join(map(str, parts))


def _styles(records: Sequence[Record]) -> tuple[dict[str, Any], dict[str, str]]:
    # deferred: matplotlib, as _plt() above
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    models = sorted({r.model for r in records})
    devices = sorted({r.device for r in records})
    return (
        {m: cmap(i % 10) for i, m in enumerate(models)},
        {d: MARKERS[i % len(MARKERS)] for i, d in enumerate(devices)},
    )


def _legend(ax: Any, colors: dict[str, Any], markers: dict[str, str], failed: bool) -> None:
    # deferred: matplotlib, as _plt() above
    from matplotlib.lines import Line2D

    h = [Line2D([], [], color=c, marker="o", linestyle="", label=m) for m, c in colors.items()]
    if len(markers) > 1:
        h += [Line2D([], [], color="gray", marker=mk, linestyle="", label=d) for d, mk in markers.items()]
    if failed:
        h.append(
            Line2D(
                [],
                [],
                color=FAIL,
                marker="x",
                linestyle="",
                markersize=9,
                markeredgewidth=2,
                label="failed (OOM-killed)",
            )
        )
    ax.legend(handles=h, fontsize=8, loc="best", title="model" + (" / device" if len(markers) > 1 else ""))


def _labels(ax: Any, items: list[tuple[float, float, str, str]]) -> None:
    """Label points (x, y, text, colour: the point's) after the axes' limits are set: labels of points
    of one colour closer than 10 pixels are merged (runs that measured alike), then adjustText moves them apart."""
    merged: list[list[Any]] = []
    for x, y, text, color in items:
        px = ax.transData.transform((x, y))
        near = next((m for m in merged if m[3] == color and max(abs(m[4] - px)) < 10), None)
        if near is None:
            merged.append([x, y, text, color, px])
        elif text not in near[2].split("\n"):
            near[2] += "\n" + text
    texts = [ax.text(x, y, text, fontsize=8, color=color) for x, y, text, color, _ in merged]
    if len(texts) > 1:
        # deferred: adjustText (the report extra) loads only when plotting
        from adjustText import adjust_text

        adjust_text(
            texts,
            x=[m[0] for m in merged],
            y=[m[1] for m in merged],
            ax=ax,
            arrowprops=dict(arrowstyle="-", color="gray", lw=0.5),
        )


def _span(lo: float, hi: float, pad: float = 0.12) -> tuple[float, float]:
    w = hi - lo or max(abs(hi), 1.0) * 0.5
    return max(0.0, lo - pad * w), hi + pad * w


def tg_vs_peak(records: list[Record], out: Path) -> Path:
    """Decode t/s against peak RSS, one point per run; failed runs as crosses at their limit."""
    plt = _plt()
    colors, markers = _styles(records)
    ok = [r for r in records if not r.failed]
    bad = [r for r in records if r.failed]
    fig, ax = plt.subplots(figsize=(9, 5.5))
    items: list[tuple[float, float, str, str]] = []
    for r in ok:
        x, y = r.peak_rss_bytes / MB, r.tg_tps
        ax.errorbar(
            [x],
            [y],
            yerr=[[min(r.tg_tps_sd, y)], [r.tg_tps_sd]],
            fmt=markers[r.device],
            color=colors[r.model],
            capsize=3,
            markersize=7,
        )
        items.append((x, y, label(r, records), colors[r.model]))
    fx = [(r.limit_bytes or r.cgroup_peak_bytes or 0) / MB for r in bad]
    top = max([r.tg_tps + r.tg_tps_sd for r in ok], default=1.0)
    for r, x in zip(bad, fx, strict=True):
        ax.plot([x], [0], marker="x", color=FAIL, markersize=11, markeredgewidth=2.5, clip_on=False, zorder=5)
        why = "OOM-killed" if r.oom_killed else "failed"
        limit = f" at {r.limit_bytes / MB:,.0f} MB limit" if r.limit_bytes else ""
        items.append((x, 0, f"{label(r, records)}: {why}{limit}", FAIL))
    allx = [r.peak_rss_bytes / MB for r in ok] + fx
    lo, hi = _span(min(allx, default=0.0), max(allx, default=1.0))
    budgets = sorted({r.budget_bytes / MB for r in records if r.budget_bytes})
    far = []
    for b in budgets:
        if b <= hi + 0.5 * (hi - lo):  # near the points: a line, and the axis reaches it
            hi = max(hi, b * 1.03)
            ax.axvline(b, color=FAIL, linestyle="--", linewidth=1)
            ax.text(
                b,
                0.98,
                f"budget {b:,.0f} MB ",
                transform=ax.get_xaxis_transform(),
                color=FAIL,
                fontsize=8,
                rotation=90,
                va="top",
                ha="right",
            )
        else:
            far.append(b)
    ax.set_xlim(lo, hi)
    ax.set_ylim(0, top * 1.15)
    ax.set_xlabel(
        "peak RSS (MB = 1e6 bytes)"
        + (
            f"; the budget ({', '.join(f'{b:,.0f}' for b in far)} MB) is far to the right: every run is under it"
            if far
            else ""
        )
    )
    ax.set_ylabel("decode (tg) tokens/s, mean ± sd")
    ax.set_title("Decode speed against peak memory, one point per run")
    ax.grid(alpha=0.3)
    _legend(ax, colors, markers, bool(bad))
    _labels(ax, items)
    return _save(fig, out)


def ttft(records: list[Record], out: Path) -> Path:
    """TTFT against prompt length, a line per run configuration (bars when each has one length)."""
    plt = _plt()
    ok = [r for r in records if not r.failed]
    colors, markers = _styles(ok)
    series: dict[tuple, list[Record]] = {}
    for r in ok:
        series.setdefault(
            (r.device, r.sha256, r.engine, r.via, r.threads, r.depth, r.ctx, json.dumps(r.runtime, sort_keys=True)), []
        ).append(r)
    lengths = sorted({r.n_prompt for r in ok})
    if len(lengths) > 1:
        fig, ax = plt.subplots(figsize=(9, 5.5))
        # deferred: matplotlib, as _plt() above
        import matplotlib

        cmap = matplotlib.colormaps["tab10"]
        n = len(series)
        for i, rs in enumerate(series.values()):
            rs = sorted(rs, key=lambda r: r.n_prompt)
            r0 = rs[0]
            dodge = 2 ** (0.025 * (i - (n - 1) / 2))  # series side by side at a shared length (log axis)
            ax.errorbar(
                [r.n_prompt * dodge for r in rs],
                [r.ttft_ms for r in rs],
                yerr=[[min(r.ttft_ms_sd, r.ttft_ms) for r in rs], [r.ttft_ms_sd for r in rs]],
                marker=markers[r0.device],
                color=cmap(i % 10),
                capsize=3,
                label=label(r0, ok, axis="pp") + (f" ({r0.device})" if len(markers) > 1 else ""),
            )
        ax.set_xscale("log", base=2)
        ax.set_xticks(lengths, [str(n) for n in lengths])
        ax.set_xlabel("prompt tokens (pp)")
        ax.set_ylabel("time to first token (ms), mean ± sd")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8)
        ax.set_title("TTFT against prompt length")
    else:
        rows = sorted(ok, key=lambda r: r.ttft_ms)
        fig, ax = plt.subplots(figsize=(9, 0.45 * len(rows) + 1.6))
        ax.barh(
            range(len(rows)),
            [r.ttft_ms for r in rows],
            color=[colors[r.model] for r in rows],
            xerr=[[min(r.ttft_ms_sd, r.ttft_ms) for r in rows], [r.ttft_ms_sd for r in rows]],
            capsize=3,
        )
        dev = len({r.device for r in rows}) > 1
        ax.set_yticks(range(len(rows)), [label(r, ok) + (f" ({r.device})" if dev else "") for r in rows], fontsize=8)
        ax.set_xlabel("time to first token (ms), mean ± sd")
        ax.set_title(f"TTFT at a {lengths[0] if lengths else '?'}-token prompt")
    ax.grid(alpha=0.3)
    return _save(fig, out)


def _kl_errors(qs: list[Any]) -> tuple[list[float], list[list[float]]]:
    ys = [max(q.kl_mean, 1e-7) for q in qs]
    return ys, [
        [y - max(q.kl_lo, 1e-8) for y, q in zip(ys, qs, strict=True)],
        [max(q.kl_hi - y, 0.0) for y, q in zip(ys, qs, strict=True)],
    ]


def quality(pairs: list[tuple[Record, Any]], out: Path) -> Path:
    """Mean KL from the reference (log scale, 95% interval) against peak RSS and against decode t/s:
    lower-left is small and faithful, lower-right fast and faithful."""
    plt = _plt()
    recs = [r for r, _ in pairs]
    colors, markers = _styles(recs)
    fig, (a, b) = plt.subplots(1, 2, figsize=(13, 5.5), sharey=True)
    for ax, x, name in (
        (a, lambda r: r.peak_rss_bytes / MB, "peak RSS (MB)"),
        (b, lambda r: r.tg_tps, "decode (tg) tokens/s"),
    ):
        items, xs = [], []
        ys, err = _kl_errors([q for _, q in pairs])
        for (r, _q), y, lo, hi in zip(pairs, ys, *err, strict=True):
            ax.errorbar([x(r)], [y], yerr=[[lo], [hi]], fmt=markers[r.device], color=colors[r.model], capsize=3)
            items.append((x(r), y, label(r, recs), colors[r.model]))
            xs.append(x(r))
        ax.set_xlabel(name)
        ax.set_yscale("log")
        ax.set_xlim(*_span(min(xs), max(xs), pad=0.2))  # room for the labels at the edges
        ax.grid(alpha=0.3)
        ax.set_ylim(min(ys) / 3, max(ys) * 3)
        _labels(ax, items)
    a.set_ylabel("mean KL from the reference (nats/token)")
    _legend(a, colors, markers, False)
    fig.suptitle("Quality against memory and speed, per artifact (edgekit eval + bench)")
    return _save(fig, out)


def kl_only(quality_records: list[Any], out: Path) -> Path:
    """Mean KL per evaluated artifact (log scale, 95% interval), when none of them was benched."""
    plt = _plt()
    qs = sorted(quality_records, key=lambda q: q.kl_mean)
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(qs) + 1.8))
    ys, err = _kl_errors(qs)
    # points, not bars: a log axis has no zero for a bar to start from
    ax.errorbar(ys, range(len(qs)), xerr=err, fmt="o", capsize=3, color="#1f77b4")
    dev = len({q.device for q in qs}) > 1
    ax.set_yticks(
        range(len(qs)),
        [f"{q.artifact} (vs {q.reference}, ctx {q.ctx}" + (f", {q.device})" if dev else ")") for q in qs],
        fontsize=8,
    )
    ax.set_ylim(-0.6, len(qs) - 0.4)
    ax.set_xscale("log")
    ax.set_xlabel("mean KL from the reference (nats/token), 95% interval")
    ax.set_title("Quality per artifact (no bench records of these artifacts to plot against)")
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, out)


def _save(fig: Any, out: Path) -> Path:
    plt = _plt()
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return out
