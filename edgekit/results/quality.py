"""Eval's records (KL quality, task suites) and their printers (md for people; csv, json, jsonl carry every field).

A QualityRecord is linked to bench records by the artifact's sha256 (and device), and to its text by
the text's sha256, so ``edgekit report`` can put quality beside peak RAM and decode speed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Optional

from .base import ArtifactRecord, record_type
from .printers import CsvPrinter, JsonlPrinter, JsonPrinter, fmt, parse_csv, parse_json, parse_jsonl, parse_markdown


@record_type("quality", "text_sha256")
@dataclass
class QualityRecord(ArtifactRecord):
    reference: str  # the reference's name (folder or file)
    reference_sha256: str
    text: str  # text file name(s), comma-separated
    text_sha256: str
    ctx: int
    chunks: int
    tokens_scored: int
    top_k: int
    # The KL pass, over the reference's token windows (None for a lean artifact: another tokenizer, so
    # these are not defined; extra["kl"] says so).
    ppl: Optional[float]
    bits_per_byte: Optional[float]  # over the scored halves of the windows
    kl_mean: Optional[float]
    kl_lo: Optional[float]
    kl_hi: Optional[float]
    kl_median: Optional[float]
    kl_p99: Optional[float]
    kl_max: Optional[float]
    same_top: Optional[float]
    rms_dp: Optional[float]
    # Whole text, every token predicted once with the artifact's own tokenizer (eval/wholetext.py):
    # comparable across tokenizers. Set for a lean artifact, and for every artifact of a run that has one.
    vocab: Optional[int] = None  # tokens in the artifact's vocabulary
    text_bytes: Optional[int] = None  # UTF-8 bytes scored (the same for the reference)
    text_tokens: Optional[int] = None
    tokens_per_byte: Optional[float] = None
    text_bits_per_byte: Optional[float] = None
    reference_tokens_per_byte: Optional[float] = None
    reference_text_bits_per_byte: Optional[float] = None


def _g(x: Optional[float]) -> Optional[str]:
    """KL spans 1e-8 (F32 vs its reference) to 1 (a broken build): three significant digits."""
    return None if x is None else f"{x:.3g}"


_MD: list[tuple[str, Callable[[QualityRecord], Any], int]] = [
    ("artifact", lambda r: r.artifact, -1),
    ("quant", lambda r: r.quant, -1),
    ("engine", lambda r: r.engine, -1),
    ("size MB", lambda r: r.file_bytes / 1e6, 2),
    ("PPL", lambda r: r.ppl, 4),
    ("bits/byte", lambda r: r.bits_per_byte, 4),
    ("mean KL", lambda r: _g(r.kl_mean), -1),
    ("KL 95% interval", lambda r: None if r.kl_lo is None else f"{_g(r.kl_lo)} – {_g(r.kl_hi)}", -1),
    ("median KL", lambda r: _g(r.kl_median), -1),
    ("p99 KL", lambda r: _g(r.kl_p99), -1),
    ("same top %", lambda r: None if r.same_top is None else 100 * r.same_top, 2),
    ("RMS Δp %", lambda r: None if r.rms_dp is None else 100 * r.rms_dp, 3),
]

_MD_TEXT: list[tuple[str, Callable[[QualityRecord], Any], int]] = [
    ("artifact", lambda r: r.artifact, -1),
    ("quant", lambda r: r.quant, -1),
    ("vocab", lambda r: r.vocab, 0),
    ("size MB", lambda r: None if r.file_bytes is None else r.file_bytes / 1e6, 2),
    ("tokens", lambda r: r.text_tokens, 0),
    ("tokens/byte", lambda r: r.tokens_per_byte, 4),
    ("bits/byte", lambda r: r.text_bits_per_byte, 4),
    (
        "Δ bits/byte %",
        lambda r: (
            None
            if r.reference_text_bits_per_byte is None or r.text_bits_per_byte is None
            else 100 * (r.text_bits_per_byte / r.reference_text_bits_per_byte - 1)
        ),
        2,
    ),
    ("mean KL", lambda r: _g(r.kl_mean) if r.kl_mean is not None else "not defined" if "kl" in r.extra else None, -1),
]


def _table(cols: list[tuple[str, Callable[[QualityRecord], Any], int]], rows: list[QualityRecord]) -> list[str]:
    return [
        "| " + " | ".join(h for h, *_ in cols) + " |",
        "|" + "|".join("---" if d < 0 else "---:" for _, _, d in cols) + "|",
    ] + ["| " + " | ".join(fmt(get(r), d) for _, get, d in cols) + " |" for r in rows]


def to_markdown(records: Iterable[QualityRecord]) -> str:
    """One table per (reference, text, ctx): the figures llama-perplexity --kl-divergence prints; then,
    when a run has whole-text figures (a lean vocabulary), one table of bits and tokens per byte with
    the reference's own first."""
    records = list(records)
    groups: dict[tuple, list[QualityRecord]] = {}
    for r in records:
        if r.kl_mean is not None:
            groups.setdefault((r.reference, r.text, r.ctx, r.tokens_scored), []).append(r)
    out = []
    for (ref, text, ctx, n), rs in groups.items():
        tail = rs[0].extra.get("reference_tail_mass")
        kept = f", top {rs[0].top_k} kept" + (
            f" ({100 * tail:.2g}% of the reference's mass outside)" if tail is not None else ""
        )
        out.append(
            "\n".join(
                [
                    f"reference {ref}, text {text}, ctx {ctx}, {rs[0].chunks} chunks, {n} scored tokens{kept}",
                    "",
                    *_table(_MD, rs),
                ]
            )
        )
    if out:
        out[-1] += (
            "\n\nKL: KL(reference ‖ artifact) in nats per scored token (the second half of each window, as "
            "llama-perplexity), over the reference's top k plus one bin for the rest (exact when nothing is "
            "outside; else low by about that share); interval: mean ± 1.96 standard errors; same top: argmax "
            "agrees; Δp: artifact − reference probability of the actual next token"
        )
    whole: dict[tuple, list[QualityRecord]] = {}
    for r in records:
        if r.text_bits_per_byte is not None:
            whole.setdefault((r.reference, r.text, r.ctx, r.text_bytes), []).append(r)
    for (ref, text, ctx, nbytes), rs in whole.items():
        ref_row = QualityRecord(
            **{
                **rs[0].to_json(),
                "artifact": f"{ref} (reference)",
                "quant": "-",
                "file_bytes": None,
                "vocab": rs[0].extra.get("reference_vocab"),
                "text_tokens": round(rs[0].reference_tokens_per_byte * nbytes),
                "tokens_per_byte": rs[0].reference_tokens_per_byte,
                "text_bits_per_byte": rs[0].reference_text_bits_per_byte,
                "kl_mean": None,
                "extra": {},
            }
        )
        lines = [
            f"whole text, each with its own tokenizer: reference {ref}, text {text}, ctx {ctx}, {nbytes} bytes",
            "",
            *_table(_MD_TEXT, [ref_row, *rs]),
        ]
        out.append(
            "\n".join(lines) + "\n\nbits/byte: −log₂ P(text) / UTF-8 bytes of the same text, every token "
            "predicted once: comparable across tokenizers. " + NOT_COMPARABLE_MD
        )
    return "\n\n".join(out) + ("\n" if out else "")


NOT_COMPARABLE_MD = (
    'mean KL "not defined": a lean artifact predicts over other ids after another tokenization, '
    "so KL, same top and Δp against the full reference do not exist"
)


def _render(printer: Callable[[], Any]) -> Callable[[Iterable[Any]], str]:
    return lambda records: printer().render(records)


PRINTERS: dict[str, Callable[[Iterable[QualityRecord]], str]] = {
    "md": to_markdown,
    "csv": _render(lambda: CsvPrinter(QualityRecord)),
    "json": _render(JsonPrinter),
    "jsonl": _render(JsonlPrinter),
}
PARSERS: dict[str, Callable[[str], list[Any]]] = {
    "md": parse_markdown,
    "csv": lambda t: parse_csv(t, QualityRecord),
    "json": lambda t: parse_json(t, QualityRecord),
    "jsonl": lambda t: parse_jsonl(t, QualityRecord),
}


@record_type("suites", "suite_sha256", "suite")
@dataclass
class SuiteRecord(ArtifactRecord):
    """One artifact's accuracy on one suite of a task-suite file (``edgekit eval --suite``), linked to bench
    and quality records by the artifact's sha256 and to the file by its sha256. ``differs``: each case
    whose pass/fail differs from the reference's, with both outputs ({id, passed, output, reference_output})."""

    suite_file: str
    suite_sha256: str
    suite: str
    cases: int
    passed: int
    accuracy: float
    max_tokens: int
    is_reference: bool = False
    reference: str = ""  # the reference artifact's name ("" when the run had none)
    reference_sha256: str = ""
    reference_passed: Optional[int] = None
    differs: list[dict[str, Any]] = field(default_factory=list)
    # Without a reference: every case's answer ({id, passed, output}), so the run shows what the model said.
    answers: list[dict[str, Any]] = field(default_factory=list)


def suite_group(r: SuiteRecord) -> tuple[str, str, str, str, int]:
    """What makes suite records one table: the same suite file (name and sha256), the same reference (a
    reference's own records belong with the artifacts compared to it) and the same generation cap (a
    longer one can turn a failed case into a passed one). Runs against another reference, or with another
    --max-tokens, get a table of their own."""
    ref = (r.artifact, r.sha256) if r.is_reference else (r.reference, r.reference_sha256)
    return (r.suite_file, r.suite_sha256, *ref, r.max_tokens)


def _row_key(r: SuiteRecord) -> tuple[Any, ...]:
    """One row per run of an artifact: the same file with other knobs, target or device is another row."""
    return (r.artifact, r.sha256, r.is_reference, r.engine, r.device, r.target, json.dumps(r.runtime, sort_keys=True))


def _row_labels(keys: list[tuple[Any, ...]]) -> dict[tuple[Any, ...], str]:
    """The artifact's name (and "(reference)"); where one artifact has several rows, what tells them apart:
    the engine, device and target and the knobs that differ among them."""
    out = {}
    for k in keys:
        label = k[0] + (" (reference)" if k[2] else "")
        twins = [t for t in keys if t[:3] == k[:3]]
        if len(twins) > 1:
            parts = [
                f"{n} {k[i]}"
                for n, i in (("engine", 3), ("device", 4), ("target", 5))
                if len({t[i] for t in twins}) > 1
            ]
            knobs = [json.loads(t[6]) for t in twins]
            mine = json.loads(k[6])
            for n in sorted({n for kn in knobs for n in kn}):
                if len({json.dumps(kn.get(n)) for kn in knobs}) > 1:
                    parts.append(f"{n}={mine.get(n, '-')}")
            label += f" [{', '.join(parts)}]"
        out[k] = label
    return out


def suite_markdown(records: Iterable[SuiteRecord]) -> str:
    """Per suite file, reference and generation cap (suite_group): accuracy per suite (columns, then all cases)
    per artifact run (rows, the reference first), then each case whose result differs from the reference's, the
    two outputs side by side."""
    groups: dict[tuple[str, str, str, str, int], list[SuiteRecord]] = {}
    for r in records:
        groups.setdefault(suite_group(r), []).append(r)
    out = []
    for (name, sha, ref_name, ref_sha, max_tokens), rs in groups.items():
        suites = sorted({r.suite for r in rs})
        rows: dict[tuple[Any, ...], dict[str, SuiteRecord]] = {}
        for r in sorted(rs, key=lambda r: not r.is_reference):
            rows.setdefault(_row_key(r), {})[r.suite] = r
        labels = _row_labels(list(rows))
        against = (
            f"reference {ref_name}" + (f" (sha256 {ref_sha[:12]})" if ref_sha else "") if ref_name else "no reference"
        )
        lines = [
            f"suite {name}" + (f" (sha256 {sha[:12]})" if sha else "") + f", max tokens {max_tokens}, {against}",
            "",
            "| artifact | " + " | ".join(suites) + " | all |",
            "|---|" + "---:|" * (len(suites) + 1),
        ]
        for key, by in rows.items():
            ok, n = sum(r.passed for r in by.values()), sum(r.cases for r in by.values())
            lines.append(
                f"| {labels[key]} | "
                + " | ".join(
                    f"{100 * by[s].accuracy:.0f}% ({by[s].passed}/{by[s].cases})" if s in by else "-" for s in suites
                )
                + f" | {100 * ok / n:.0f}% ({ok}/{n}) |"
            )
        text = "\n".join(lines) + "\n"
        for r in rs:
            if r.answers:
                text += (
                    f"\n{r.artifact}, {r.suite} (no reference: every answer):\n"
                    "| case | result | answer |\n|---|---|---|\n"
                )
                text += "".join(
                    f"| {a['id']} | {'pass' if a['passed'] else 'FAIL'} | {_cell(a['output'])} |\n" for a in r.answers
                )
            for d in r.differs:
                text += (
                    f"\n{r.artifact} vs {r.reference}, case {d['id']} ({r.suite}):\n"
                    f"| {r.artifact} | {r.reference} |\n|---|---|\n"
                    f"| {_cell(d['output'])} | {_cell(d['reference_output'])} |\n"
                )
        out.append(text)
    return "\n".join(out)


def _cell(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", "<br>")


SUITE_PRINTERS: dict[str, Callable[[Iterable[SuiteRecord]], str]] = {
    "md": suite_markdown,
    "csv": _render(lambda: CsvPrinter(SuiteRecord)),
    "json": _render(JsonPrinter),
    "jsonl": _render(JsonlPrinter),
}
SUITE_PARSERS: dict[str, Callable[[str], list[Any]]] = {
    "csv": lambda t: parse_csv(t, SuiteRecord),
    "json": lambda t: parse_json(t, SuiteRecord),
    "jsonl": lambda t: parse_jsonl(t, SuiteRecord),
}
