"""Task suites: JSONL cases, rendered through the model's chat template, greedy answers, scored.

One JSON object per line: ``id``, ``suite``, ``messages`` (chat messages) or ``prompt`` (one user turn),
``expected`` and ``scorer`` (scorers.py). The runner is written against a small interface, so any engine
fits: ``render(messages) -> prompt token ids`` and ``generate(ids, max_tokens) -> text`` (greedy, stopped
at the model's stop tokens). Each artifact's outputs are compared case by case with the reference's.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from ..errors import BenchError, ConfigError
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

    def score(self, output: str) -> bool:
        return SCORERS[self.scorer][0](output, self.expected)


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
            raise ConfigError(f"{where}: not valid JSON ({e.msg} at column {e.colno}); one JSON object per line") from None
        if not isinstance(d, dict):
            raise ConfigError(f"{where}: a case must be a JSON object with id, suite, messages or prompt, expected, scorer")
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
            raise ConfigError(f"{where}: messages must be a list of {{\"role\", \"content\"}} objects")
        cid = str(d["id"])
        if cid in seen:
            raise ConfigError(f"{where}: duplicate id {cid!r}; ids must be unique in a suite file")
        seen.add(cid)
        cases.append(Case(cid, str(d["suite"]), msgs, d["expected"], d["scorer"], n))
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


def differences(run: SuiteRun, ref: SuiteRun) -> list[tuple[Case, str, str]]:
    """Cases whose pass/fail differs from the reference's: (case, artifact output, reference output)."""
    by_id = {r.case.id: r for r in ref.results}
    return [(r.case, r.output, by_id[r.case.id].output) for r in run.results
            if r.case.id in by_id and r.passed != by_id[r.case.id].passed]


def to_markdown(runs: list[SuiteRun], ref: Optional[SuiteRun] = None) -> str:
    suites = sorted({r.case.suite for run in runs for r in run.results})
    lines = ["| artifact | " + " | ".join(suites) + " |", "|---|" + "---:|" * len(suites)]
    for run in ([ref] if ref else []) + runs:
        acc = run.accuracy()
        lines.append(f"| {run.artifact} | " + " | ".join(
            f"{100 * acc[s][0] / acc[s][1]:.0f}% ({acc[s][0]}/{acc[s][1]})" if s in acc else "-" for s in suites) + " |")
    out = "\n".join(lines) + "\n"
    for run in runs if ref else []:
        for case, mine, theirs in differences(run, ref):
            out += (f"\n{run.artifact} vs {ref.artifact}, case {case.id} ({case.suite}):\n"
                    f"| {run.artifact} | {ref.artifact} |\n|---|---|\n"
                    f"| {_cell(mine)} | {_cell(theirs)} |\n")
    return out


def _cell(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", "<br>")


@dataclass
class SuiteOptions:
    reference: Optional[str] = None
    max_tokens: int = 256
    threads: Optional[int] = None
    target: Optional[str] = None
    runtime: dict[str, Any] = field(default_factory=dict)
    device: Optional[str] = None


def engine_chat(path: Path, opts: SuiteOptions) -> tuple[Render, Generate, Callable[[], None]]:
    """render/generate for an artifact: its own chat template (edgekit.chat, the one `edgekit run` and
    `edgekit serve` use) and greedy decoding on the engine loaded with the target's knobs, stopped at
    the template's stop tokens; the third item closes the engine."""
    from ..generate import Sampling
    from ..session import open_session

    session = open_session(Path(path), target=opts.target, threads=opts.threads, knobs=dict(opts.runtime))

    def render(messages: list[dict[str, Any]]) -> list[int]:
        return session.prompt(messages, enable_thinking=False)[0]

    def generate(ids: list[int], max_tokens: int) -> str:
        text = ""
        for e in session.stream(ids, Sampling(max_tokens=max_tokens, temperature=0.0)):
            if e.kind == "done":
                if e.finish_reason == "error":
                    raise BenchError(f"{Path(path).name}: generation failed ({e.text}); rerun with `edgekit -v eval` to see the engine log")
                break
            text += e.text
        return text

    return render, generate, session.close


def run_artifact(path: Path, cases: list[Case], opts: SuiteOptions) -> SuiteRun:
    render, generate, close = engine_chat(Path(path), opts)
    try:
        return run_suite(cases, render, generate, opts.max_tokens, Path(path).name)
    finally:
        close()


def run_suites(paths: list[Path], suite: Path, opts: SuiteOptions) -> str:
    """Every artifact (and ``opts.reference``, an artifact, when given) over the suite: accuracy per suite
    per artifact, then each case whose result differs from the reference's, the two outputs side by side."""
    cases = load_suite(suite)
    ref = run_artifact(Path(opts.reference), cases, opts) if opts.reference else None
    return to_markdown([run_artifact(Path(p), cases, opts) for p in paths], ref)
