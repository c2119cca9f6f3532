"""A markdown report with PNG plots from the results store (matplotlib, Agg backend: no display needed).

The latest record per (device, artifact sha256, engine, threads, ctx, lengths) is reported, so
re-running a bench updates the report instead of piling up rows.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

from .errors import EngineMissingError, OutputError
from .fsutil import atomic_path
from .results import MB, Record, Store, to_markdown

log = logging.getLogger(__name__)


def latest(records: list[Record]) -> list[Record]:
    seen: dict[tuple, Record] = {}
    for r in records:  # in store order, so later rows replace earlier ones
        seen[(r.device, r.sha256, r.engine, r.via, r.threads, r.ctx, r.n_prompt, r.n_gen)] = r
    return list(seen.values())


def _label(r: Record) -> str:
    return f"{r.artifact} ({r.engine}{', served' if r.via == 'served' else ''}, {r.device})"


def plot_tg_vs_peak(records: list[Record], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for dev in sorted({r.device for r in records}):
        rs = [r for r in records if r.device == dev]
        ax.errorbar([r.peak_rss_bytes / MB for r in rs], [r.tg_tps for r in rs], yerr=[r.tg_tps_sd for r in rs],
                    fmt="o", capsize=3, label=dev)
        for r in rs:
            ax.annotate(f"{r.quant} {r.engine}{' served' if r.via == 'served' else ''}", (r.peak_rss_bytes / MB, r.tg_tps), fontsize=7,
                        xytext=(4, 4), textcoords="offset points")
    for b in sorted({r.budget_bytes for r in records if r.budget_bytes}):
        ax.axvline(b / MB, color="red", linestyle="--", linewidth=1)
        ax.text(b / MB, 0.97, f"budget {b / MB:.0f} MB ", transform=ax.get_xaxis_transform(), color="red",
                fontsize=7, rotation=90, va="top", ha="right")
    ax.set_xlabel("peak RSS (MB)")
    ax.set_ylabel("decode (tg) tokens/s")
    ax.set_title("Decode speed against peak memory, per artifact and device")
    ax.grid(alpha=0.3)
    ax.legend(title="device", fontsize=8)
    return _save(fig, out)


def plot_ttft(records: list[Record], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 0.5 * len(records) + 1.5))
    ys = range(len(records))
    ax.barh(list(ys), [r.ttft_ms for r in records], xerr=[r.ttft_ms_sd for r in records], capsize=3)
    ax.set_yticks(list(ys), [f"{_label(r)} p={r.n_prompt}" for r in records], fontsize=7)
    ax.set_xlabel("time to first token (ms)")
    ax.set_title("TTFT per artifact")
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, out)


def latest_quality(quality: list) -> list:
    seen: dict[tuple, object] = {}
    for q in quality:  # later rows replace earlier ones
        seen[(q.device, q.sha256, q.engine, q.reference_sha256, q.text_sha256, q.ctx, json.dumps(q.runtime, sort_keys=True))] = q
    return list(seen.values())


def latest_suites(suites: list) -> list:
    """The latest run of each (device, artifact, engine, suite file, suite, runtime): later rows replace
    earlier ones, in the order they were stored."""
    seen: dict[tuple, object] = {}
    for s in suites:
        seen[(s.device, s.sha256, s.engine, s.is_reference, s.suite_sha256, s.suite, s.max_tokens,
              json.dumps(s.runtime, sort_keys=True))] = s
    return list(seen.values())


def quality_pairs(records: list[Record], quality: list) -> list[tuple[Record, object]]:
    """(bench record, quality record) of the same artifact (sha256) and engine, on the same device when
    the quality was measured there, else any device's bench of that artifact (quality does not depend on
    the device, memory and speed do)."""
    out = []
    for r in records:
        # a lean artifact's record has no KL (another tokenizer): it is in the quality table, not the KL plot
        qs = [q for q in quality if q.sha256 == r.sha256 and q.engine == r.engine and q.kl_mean is not None]
        q = next((q for q in qs if q.device == r.device), qs[-1] if qs else None)
        if q is not None:
            out.append((r, q))
    return out


def plot_quality(pairs: list[tuple[Record, object]], out: Path) -> Path:
    """Mean KL from the reference (log scale, 95% interval as error bars) against peak RSS and against
    decode t/s: lower-left is small and faithful, lower-right fast and faithful."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 5), sharey=True)
    for ax, x, label in ((a, lambda r: r.peak_rss_bytes / MB, "peak RSS (MB)"), (b, lambda r: r.tg_tps, "decode (tg) tokens/s")):
        for dev in sorted({r.device for r, _ in pairs}):
            ps = [(r, q) for r, q in pairs if r.device == dev]
            ys = [max(q.kl_mean, 1e-7) for _, q in ps]
            err = [[y - max(q.kl_lo, 1e-8) for y, (_, q) in zip(ys, ps)], [q.kl_hi - y for y, (_, q) in zip(ys, ps)]]
            ax.errorbar([x(r) for r, _ in ps], ys, yerr=err, fmt="o", capsize=3, label=dev)
            for (r, q), y in zip(ps, ys):
                ax.annotate(f"{r.quant} {r.engine}", (x(r), y), fontsize=7, xytext=(4, 4), textcoords="offset points")
        ax.set_xlabel(label)
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    for bgt in sorted({r.budget_bytes for r, _ in pairs if r.budget_bytes}):
        a.axvline(bgt / MB, color="red", linestyle="--", linewidth=1)
    a.set_ylabel("mean KL from the reference (nats/token)")
    a.legend(title="device", fontsize=8)
    fig.suptitle("Quality against memory and speed, per artifact (edgekit eval + bench)")
    return _save(fig, out)


def _save(fig, out: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return out


def write_report(db: Optional[Path], out: Path) -> Path:
    """Write OUT/report.md, OUT/tg_vs_peak.png and OUT/ttft.png; return the markdown's path."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise EngineMissingError("matplotlib is not installed; `pip install 'edgekit[report]'`") from None
    with Store(db) as store:
        records, where, corrupt = latest(store.records()), store.path, store.corrupt
        quality = latest_quality(store.quality_records())
        suites = latest_suites(store.suite_records())
        bad_eval = {"quality": len(store.corrupt_quality), "suite": len(store.corrupt_suites)}
    for kind, n in bad_eval.items():
        if n:
            log.warning("%s: skipped %d corrupt %s row(s): not a readable eval record", where, n, kind)
    if corrupt:
        ids = ", ".join(map(str, corrupt[:5])) + (" …" if len(corrupt) > 5 else "")
        log.warning("%s: skipped %d corrupt row(s) (id %s): not a readable bench record", where, len(corrupt), ids)
    if not (records or quality or suites):
        raise OutputError(f"{where}: the results store holds no records; run `edgekit bench` first")
    out = Path(out)
    skipped = f" {len(corrupt)} corrupt row(s) were skipped." if corrupt else ""
    skipped += "".join(f" {n} corrupt {kind} row(s) were skipped." for kind, n in bad_eval.items() if n)
    text = (f"# edgekit bench report\n\n{len(records)} measurement(s) from `{where}` "
            f"(latest per device, artifact, engine, bench or served, threads, context and lengths).{skipped}\n\n")
    if records:  # a store with only eval's records still reports them
        plot_tg_vs_peak(records, out / "tg_vs_peak.png")
        plot_ttft(records, out / "ttft.png")
        devices = sorted({r.device for r in records})
        hosts = "\n".join(f"- **{d}**: " + _host_line(next(r for r in records if r.device == d)) for d in devices)
        text += (f"## Devices\n\n{hosts}\n\n## Figures\n\n{to_markdown(records)}\n"
                 "![decode t/s against peak RSS](tg_vs_peak.png)\n\n![TTFT per artifact](ttft.png)\n")
    pairs = quality_pairs(records, quality)
    if quality or suites:
        from .eval.record import suite_markdown
        from .eval.record import to_markdown as quality_md

        text += "\n## Quality\n\n" + (f"{quality_md(quality)}\n" if quality else "")
        if suites:
            text += f"### Task suites\n\n{suite_markdown(suites)}\n"
    if pairs:
        plot_quality(pairs, out / "quality.png")
        text += "![mean KL against peak RSS and decode t/s](quality.png)\n"
    md = out / "report.md"
    with atomic_path(md) as tmp:
        tmp.write_text(text)
    return md


def _host_line(r: Record) -> str:
    h = r.host
    ram = f"{h['ram_bytes'] / 1e9:.1f} GB RAM" if h.get("ram_bytes") else "RAM unknown"
    return (f"{h.get('cpu', '?')}, {h.get('cores_physical', '?')} cores, {ram}, {h.get('os', '?')}; "
            f"edgekit {r.edgekit_version}")
