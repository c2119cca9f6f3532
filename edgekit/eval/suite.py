"""Task suites: JSONL cases, rendered through the model's chat template, greedy answers, scored.

One JSON object per line: ``id``, ``suite``, ``messages`` (chat messages) or ``prompt`` (one user turn),
``expected`` and ``scorer`` (scorers.py). The runner is written against a small interface, so any engine
fits: ``render(messages) -> prompt token ids`` and ``generate(ids, max_tokens) -> text`` (greedy, stopped
at the model's stop tokens). Each artifact's outputs are compared case by case with the reference's.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..core.errors import BenchError, ConfigError
from ..profiles.resolve import Overrides, ResolvedArtifact, resolve
from ..results import SuiteRecord, provenance
from ..serve.generate import Sampling
from ..serve.session import open_resolved
from . import scorers_pack  # noqa: F401  (registers the pack's scorers in SCORERS)
from .media_cases import parse_media, run_media_cases
from .packs import resolve_suite
from .scorers import SCORERS

EXAMPLE_SUITE = Path(__file__).resolve().parent / "data" / "example_suite.jsonl"

Render = Callable[[list[dict[str, Any]]], list[int]]
Generate = Callable[[list[int], int], str]


@dataclass(frozen=True)
class Case:
    id: str
    suite: str
    messages: list[dict[str, Any]]
    expected: Any
    scorer: str
    line: int
    media: tuple[Any, ...] = ()  # media_cases.CaseMedium: an image and/or audio beside the suite, sha256-pinned

    def score(self, output: str) -> bool:
        return SCORERS[self.scorer][0](output, self.expected)


def _not_text(node: Any, where: str = "") -> Optional[tuple[str, str]]:
    """(field, character) of the first lone surrogate in a parsed JSON value (json.loads accepts the
    escape "\\ud800" without its pair; no tokenizer can encode it), else None."""
    if isinstance(node, str):
        try:
            node.encode("utf-8")
        except UnicodeEncodeError as e:
            return where or "the line", node[e.start]
        return None
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for k, v in items:
        if isinstance(k, str) and _not_text(k) is not None:
            return f"a key in {where or 'the line'}", _not_text(k)[1]
        found = _not_text(v, f"{where}.{k}" if where and isinstance(k, str) else f"{where}[{k}]" if where else str(k))
        if found is not None:
            return found
    return None


def load_suite(path: Path) -> list[Case]:
    """Parse a suite file; any malformed line is a ConfigError naming FILE:LINE and the fix."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read the suite ({e.__class__.__name__}); pass a UTF-8 JSONL file") from None
    cases: list[Case] = []
    seen: set[str] = set()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            d = json.loads(line)
        except ValueError as e:
            raise ConfigError(
                f"{where}: not valid JSON ({e.msg} at column {e.colno}); one JSON object per line"
            ) from None
        if not isinstance(d, dict):
            raise ConfigError(
                f"{where}: a case must be a JSON object with id, suite, messages or prompt, expected, scorer"
            )
        bad = _not_text(d)
        if bad is not None:
            raise ConfigError(
                f"{where}: {bad[0]} holds {bad[1]!r}, half of a UTF-16 surrogate pair, which is not "
                "text; write the character itself or its full \\uXXXX\\uXXXX pair"
            )
        missing = [k for k in ("id", "suite", "expected", "scorer") if k not in d]
        if missing or ("messages" not in d and "prompt" not in d):
            raise ConfigError(f"{where}: case lacks {', '.join(missing) or 'messages or prompt'}")
        if d["scorer"] not in SCORERS:
            raise ConfigError(f"{where}: unknown scorer {d['scorer']!r}; choose one of {', '.join(SCORERS)}")
        problem = SCORERS[d["scorer"]][1](d["expected"])
        if problem:
            raise ConfigError(f"{where}: {d['scorer']}: {problem}")
        msgs = d.get("messages") or [{"role": "user", "content": str(d["prompt"])}]
        if not (isinstance(msgs, list) and all(isinstance(m, dict) and "role" in m and "content" in m for m in msgs)):
            raise ConfigError(f'{where}: messages must be a list of {{"role", "content"}} objects')
        cid = str(d["id"])
        if cid in seen:
            raise ConfigError(f"{where}: duplicate id {cid!r}; ids must be unique in a suite file")
        seen.add(cid)
        media = parse_media(d, path, where)
        cases.append(Case(cid, str(d["suite"]), msgs, d["expected"], d["scorer"], n, media))
    if not cases:
        raise ConfigError(f"{path}: the suite has no cases")
    return cases


def suite_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@dataclass
class CaseResult:
    case: Case
    output: str
    passed: bool


@dataclass
class SuiteRun:
    artifact: str
    results: list[CaseResult]
    meta: dict[str, Any] = field(default_factory=dict)  # the SuiteRecord fields of the artifact run

    def accuracy(self) -> dict[str, tuple[int, int]]:
        out: dict[str, tuple[int, int]] = {}
        for r in self.results:
            ok, n = out.get(r.case.suite, (0, 0))
            out[r.case.suite] = (ok + r.passed, n + 1)
        return out


def run_suite(cases: list[Case], render: Render, generate: Generate, max_tokens: int, label: str) -> SuiteRun:
    res = []
    for c in cases:
        out = generate(render(c.messages), max_tokens)
        res.append(CaseResult(c, out, c.score(out)))
    return SuiteRun(label, res)


def differences(run: SuiteRun, ref: SuiteRun) -> list[tuple[CaseResult, str]]:
    """Cases whose pass/fail differs from the reference's: (the artifact's result, reference output)."""
    by_id = {r.case.id: r for r in ref.results}
    return [
        (r, by_id[r.case.id].output) for r in run.results if r.case.id in by_id and r.passed != by_id[r.case.id].passed
    ]


def to_records(
    run: SuiteRun, ref: Optional[SuiteRun], suite_file: str, suite_sha: str, max_tokens: int, is_reference: bool = False
) -> list[SuiteRecord]:
    """One SuiteRecord per suite of the run; a run with a reference lists the cases that differ from it."""
    diffs = differences(run, ref) if ref is not None and not is_reference else []
    ref_acc = ref.accuracy() if ref is not None and not is_reference else {}
    meta = {
        "model": "",
        "format": "",
        "quant": "",
        "engine": "",
        "sha256": "",
        "file_bytes": 0,
        "device": "",
        "target": "",
        **run.meta,
    }
    out = []
    for name, (ok, n) in sorted(run.accuracy().items()):
        out.append(
            SuiteRecord(
                artifact=run.artifact,
                suite_file=suite_file,
                suite_sha256=suite_sha,
                suite=name,
                cases=n,
                passed=ok,
                accuracy=ok / n,
                max_tokens=max_tokens,
                is_reference=is_reference,
                reference=ref.artifact if ref_acc else "",
                reference_sha256=ref.meta.get("sha256", "") if ref_acc else "",
                reference_passed=ref_acc[name][0] if name in ref_acc else None,
                differs=[
                    {"id": r.case.id, "passed": r.passed, "output": r.output, "reference_output": theirs}
                    for r, theirs in diffs
                    if r.case.suite == name
                ],
                answers=[]
                if ref is not None or is_reference
                else [
                    {"id": r.case.id, "passed": r.passed, "output": r.output}
                    for r in run.results
                    if r.case.suite == name
                ],
                **meta,
            )
        )
    return out


@dataclass
class SuiteOptions:
    reference: Optional[str] = None
    max_tokens: int = 256
    threads: Optional[int] = None
    target: Optional[str] = None
    runtime: dict[str, Any] = field(default_factory=dict)
    device: Optional[str] = None


def engine_chat(
    ra: ResolvedArtifact, info: Optional[dict[str, Any]] = None
) -> tuple[Render, Generate, Callable[[], None]]:
    """render/generate for a resolved artifact: its own chat template (edgekit.serve.chat, the one `edgekit
    run` and `edgekit serve` use) and greedy decoding on the engine loaded with its settings, stopped at
    the template's stop tokens; the third item closes the engine. ``info`` gets the session's target
    and runtime knobs (what the record says was applied)."""
    session = open_resolved(ra)
    if info is not None:
        info.update(target=session.target, runtime=dict(session.runtime))

    def render(messages: list[dict[str, Any]]) -> list[int]:
        return session.prompt(messages, enable_thinking=False)[0]

    def generate(ids: list[int], max_tokens: int) -> str:
        text = ""
        for e in session.stream(ids, Sampling(max_tokens=max_tokens, temperature=0.0)):
            if e.kind == "done":
                if e.finish_reason == "error":
                    raise BenchError(
                        f"{ra.path.name}: generation failed ({e.text}); "
                        "rerun with `edgekit -v eval` to see the engine log"
                    )
                break
            text += e.text
        return text

    return render, generate, session.close


def run_artifact(ra: ResolvedArtifact, cases: list[Case], opts: SuiteOptions) -> SuiteRun:
    """One resolved artifact over the cases, with the record fields that identify it."""
    info: dict[str, Any] = {}
    t0 = time.perf_counter()
    text = [c for c in cases if not c.media]
    run = SuiteRun(ra.artifact.file, [])
    if text:
        render, generate, close = engine_chat(ra, info)
        try:
            run = run_suite(text, render, generate, opts.max_tokens, ra.artifact.file)
        finally:
            close()
    if len(text) < len(cases):  # images and audio: the artifact's towers (media_cases)
        replies = run_media_cases(ra, [c for c in cases if c.media], opts)
        media = [CaseResult(c, out, c.score(out)) for c, out in replies]
        run.results = sorted(run.results + media, key=lambda r: r.case.line)
    a = ra.artifact
    run.meta = {
        "model": ra.model,
        "format": a.format,
        "quant": a.quant,
        "engine": ra.engine.name,
        "sha256": a.sha256,
        "file_bytes": a.bytes,
        "threads": opts.threads,
        "seconds": round(time.perf_counter() - t0, 3),
        **provenance(opts.device),
        **info,
    }
    return run


def run_suites(paths: list[Path], suite: Path, opts: SuiteOptions) -> list[SuiteRecord]:
    """Every artifact the paths name (a dist folder: each in its manifest), and ``opts.reference`` (one
    artifact) when given, over the suite: one SuiteRecord per suite per artifact, each listing the cases
    whose result differs from the reference's (nothing stored or printed). Each artifact is read and
    hashed once, by the resolver."""
    suite = resolve_suite(suite)
    cases = load_suite(suite)
    name, sha = Path(suite).name, suite_sha256(suite)
    if not paths:
        raise ConfigError("no artifact given; pass a .gguf, an MLX folder or a dist folder")
    over = Overrides(threads=opts.threads, knobs=dict(opts.runtime))
    resolved = [ra for p in paths for ra in resolve(Path(p), target=opts.target, overrides=over)]
    out: list[SuiteRecord] = []
    ref = None
    if opts.reference:
        refs = resolve(Path(opts.reference), target=opts.target, overrides=over)
        if len(refs) != 1:
            raise ConfigError(f"--reference {opts.reference}: names {len(refs)} artifacts; pass one file or folder")
        ref = run_artifact(refs[0], cases, opts)
        out += to_records(ref, None, name, sha, opts.max_tokens, is_reference=True)
    for ra in resolved:
        out += to_records(run_artifact(ra, cases, opts), ref, name, sha, opts.max_tokens)
    return out
