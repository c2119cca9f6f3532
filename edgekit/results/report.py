"""``edgekit report``: a markdown report with PNG plots from the results store.

Every run is kept with what distinguishes it: device, artifact, engine, bench or served, target,
threads, context, test, the engine's knobs as applied and the memory limit. Re-running the same
configuration replaces its row; a run that failed (OOM-killed inside its limit) is its own row, shown
as a failure, and never replaces a good one.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Optional

from ..core.errors import EngineMissingError, OutputError
from ..core.fsutil import atomic_path
from ..measure.budget import verdict
from . import plots
from .bench import Record, table, varying
from .quality import QualityRecord, SuiteRecord, suite_markdown
from .quality import to_markdown as quality_md
from .store import Store

log = logging.getLogger(__name__)


def run_key(r: Record) -> tuple:
    """What makes two bench records the same run: a later one replaces an earlier one."""
    return (
        r.device,
        r.sha256,
        r.engine,
        r.via,
        r.target,
        r.threads,
        r.ctx,
        r.n_prompt,
        r.n_gen,
        r.depth,
        json.dumps(r.runtime, sort_keys=True),
        r.limit_bytes,
        r.failed,
    )


def latest(records: list[Record]) -> list[Record]:
    """The latest record of each run (run_key), in the order the runs were first stored."""
    seen: dict[tuple, Record] = {}
    for r in records:  # in store order, so later rows replace earlier ones
        seen[run_key(r)] = r
    return list(seen.values())


def latest_quality(quality: list) -> list:
    seen: dict[tuple, object] = {}
    for q in quality:  # later rows replace earlier ones
        seen[
            (
                q.device,
                q.sha256,
                q.engine,
                q.reference_sha256,
                q.text_sha256,
                q.ctx,
                json.dumps(q.runtime, sort_keys=True),
            )
        ] = q
    return list(seen.values())


def latest_suites(suites: list) -> list:
    """The latest run of each (device, artifact, engine, reference, suite file, suite, cap, runtime): later
    rows replace earlier ones, in the order they were stored; a run against another reference is kept."""
    seen: dict[tuple, object] = {}
    for s in suites:
        seen[
            (
                s.device,
                s.sha256,
                s.engine,
                s.is_reference,
                s.reference_sha256,
                s.suite_sha256,
                s.suite,
                s.max_tokens,
                json.dumps(s.runtime, sort_keys=True),
            )
        ] = s
    return list(seen.values())


def quality_pairs(records: list[Record], quality: list) -> list[tuple[Record, Any]]:
    """(bench record, quality record) of the same artifact (sha256) and engine, on the same device when
    the quality was measured there, else any device's bench of that artifact (quality does not depend on
    the device, memory and speed do). Failed bench runs have no figures to pair; of a configuration's runs
    of several tests (-p 16,64), the one of the test most runs have."""
    out = []
    ok = [r for r in records if not r.failed]
    tests = [(r.n_prompt, r.n_gen, r.depth) for r in ok]
    common = max(set(tests), key=tests.count, default=None)
    runs: dict[tuple, Record] = {}
    for r in ok:  # one point per configuration: its run of the most common test where it has one
        key = run_key(r)[:7] + run_key(r)[10:]
        if key not in runs or (r.n_prompt, r.n_gen, r.depth) == common:
            runs[key] = r
    for r in runs.values():
        # a lean artifact's record has no KL (another tokenizer): it is in the quality table, not the KL plot
        qs = [q for q in quality if q.sha256 == r.sha256 and q.engine == r.engine and q.kl_mean is not None]
        q = next((q for q in qs if q.device == r.device), qs[-1] if qs else None)
        if q is not None:
            out.append((r, q))
    return out


def bench_markdown(records: list[Record]) -> str:
    """The report's table: every figure, a column per knob that differs between runs of an artifact, and
    the gate's verdict (failed runs say why)."""
    return table(True, varying(records), decide=records, verdict=lambda r: verdict(r, records)).render(records)


def write_report(db: Optional[Path], out: Path) -> Path:
    """Write OUT/report.md and its plots (tg_vs_peak.png, ttft.png, quality.png); return the markdown's path."""
    try:
        # deferred: the report extra, checked only when a report is asked for
        import adjustText  # noqa: F401
        import matplotlib  # noqa: F401
    except ImportError as e:
        raise EngineMissingError(f"{e.name} is not installed; `pip install 'edgekit[report]'`") from None
    with Store(db) as store:
        records, where = latest(store.records()), store.path
        quality = latest_quality(store.read(QualityRecord))
        suites = latest_suites(store.read(SuiteRecord))
        skipped = {
            "": len(store.skipped["records"]),
            " quality": len(store.skipped["quality"]),
            " suite": len(store.skipped["suites"]),
        }
        corrupt = store.corrupt
    for kind, n in skipped.items():
        if n and kind:
            log.warning("%s: skipped %d corrupt%s row(s): not a readable eval record", where, n, kind)
    if corrupt:
        ids = ", ".join(map(str, corrupt[:5])) + (" …" if len(corrupt) > 5 else "")
        log.warning("%s: skipped %d corrupt row(s) (id %s): not a readable bench record", where, len(corrupt), ids)
    if not (records or quality or suites):
        raise OutputError(f"{where}: the results store holds no records; run `edgekit bench` first")
    out = Path(out)
    failed = sum(r.failed for r in records)
    text = (
        f"# edgekit bench report\n\n{len(records)} measurement(s) from `{where}` (the latest of each device, "
        "artifact, engine, bench or served, target, threads, context, test, knobs and memory limit"
        + (f"; {failed} failed, shown as failures" if failed else "")
        + ")."
        + "".join(f" {n} corrupt{kind} row(s) were skipped." for kind, n in skipped.items() if n)
        + "\n\n"
    )
    if records:  # a store with only eval's records still reports them
        plots.tg_vs_peak(records, out / "tg_vs_peak.png")
        plots.ttft(records, out / "ttft.png")
        devices = sorted({r.device for r in records})
        hosts = "\n".join(f"- **{d}**: " + _host_line(next(r for r in records if r.device == d)) for d in devices)
        text += (
            f"## Devices\n\n{hosts}\n\n## Figures\n\n{bench_markdown(records)}\n"
            "![decode t/s against peak RSS](tg_vs_peak.png)\n\n![TTFT per prompt length](ttft.png)\n"
        )
    if quality or suites:
        text += "\n## Quality\n\n" + (f"{quality_md(quality)}\n" if quality else "")
        if suites:
            text += f"### Task suites\n\n{suite_markdown(suites)}\n"
    text += _quality_plot(records, quality, out)
    md = out / "report.md"
    with atomic_path(md) as tmp:
        tmp.write_text(text)
    return md


def _quality_plot(records: list[Record], quality: list, out: Path) -> str:
    """quality.png and its line in the report, or the sentence that says why there is none."""
    if not quality:
        return ""
    with_kl = [q for q in quality if q.kl_mean is not None]
    if not with_kl:
        return (
            "\nNo quality.png: every quality record is of a lean vocabulary, whose KL against the full "
            "reference is not defined; its bits per byte are in the table above.\n"
        )
    pairs = quality_pairs(records, with_kl)
    if pairs:
        plots.quality(pairs, out / "quality.png")
        alone = len({q.sha256 for q in with_kl} - {q.sha256 for _, q in pairs})
        more = (
            f" {alone} evaluated artifact(s) have no bench record here and are only in the table above."
            if alone
            else ""
        )
        return f"\n![mean KL against peak RSS and decode t/s](quality.png)\n{more}\n"
    plots.kl_only(with_kl, out / "quality.png")
    return (
        "\n![mean KL per artifact](quality.png)\n\nquality.png shows KL alone: no bench record of these "
        "artifacts (same sha256 and engine) is in the store; `edgekit bench` them to plot KL against memory "
        "and speed.\n"
    )


def _host_line(r: Record) -> str:
    h = r.host
    ram = f"{h['ram_bytes'] / 1e9:.1f} GB RAM" if h.get("ram_bytes") else "RAM unknown"
    return (
        f"{h.get('cpu', '?')}, {h.get('cores_physical', '?')} cores, {ram}, {h.get('os', '?')}; "
        f"edgekit {r.edgekit_version}"
    )
