"""Task suites: the loader's errors name the line, each scorer on hand-written passing and failing
outputs, and the runner over a deterministic stand-in model (render/generate interface)."""

from __future__ import annotations

import json

import pytest

from edgekit.core.errors import ConfigError
from edgekit.eval.scorers import SCORERS, parse_tool_call
from edgekit.eval.suite import EXAMPLE_SUITE, differences, load_suite, run_suite, to_records
from edgekit.results.quality import suite_markdown

Q = '<|"|>'
CASES = [  # scorer, expected, passing output, failing output
    ("exact", "2026-03-03", "  2026-03-03\n", "2026-03-03 (a Tuesday)"),
    ("contains", ["certificate", "expired"], "The Certificate had expired.", "The certificate was renewed."),
    ("regex", r"\b(3|three)\b", "Up to three days.", "Up to 30 days."),
    ("choice", "B", "Answer: B) negative", "A"),
    ("choice", "C", "The answer is (C).", "Answer: D"),
    (
        "json",
        {"invoice": "INV-2291", "total": 1450.0},
        '```json\n{"invoice": "INV-2291", "total": 1450.0, "x": 1}\n```',
        '{"invoice": "INV-2291", "total": "1450"}',
    ),
    (
        "tool_call",
        {"name": "get_weather", "arguments": {"city": "Oslo", "unit": "C"}},
        f"<|tool_call>call:get_weather{{city:{Q}Oslo{Q},unit:{Q}C{Q}}}<tool_call|>",
        f"<|tool_call>call:get_weather{{city:{Q}Bergen{Q},unit:{Q}C{Q}}}<tool_call|>",
    ),
    (
        "tool_call",
        {"name": "set_timer", "arguments": {"minutes": 10}},
        f"Sure.<|tool_call>call:set_timer{{minutes:10,label:{Q}pasta, al dente{Q}}}<tool_call|>",
        "I set a timer for 10 minutes.",
    ),
]


@pytest.mark.parametrize("scorer,expected,good,bad", CASES)
def test_scorers(scorer, expected, good, bad):
    fn, check = SCORERS[scorer]
    assert check(expected) is None
    assert fn(good, expected) is True
    assert fn(bad, expected) is False


def test_tool_call_parse_nested():
    out = f"<|tool_call>call:book{{who:{Q}Ann{Q},seats:[1,2],opts:{{window:true,note:{Q}a:b, c{Q}}}}}<tool_call|>"
    assert parse_tool_call(out) == ("book", {"who": "Ann", "seats": [1, 2], "opts": {"window": True, "note": "a:b, c"}})
    assert parse_tool_call(f"<|tool_call>call:book{{who:{Q}Ann}}<tool_call|>") is None  # unterminated string


def _write(tmp_path, lines):
    p = tmp_path / "s.jsonl"
    p.write_text("\n".join(lines) + "\n")
    return p


GOOD = json.dumps({"id": "a", "suite": "s", "prompt": "hi", "expected": "x", "scorer": "exact"})


@pytest.mark.parametrize(
    "line,message",
    [
        ('{"id": "b", "suite": "s"', "not valid JSON (Expecting ',' delimiter at column 25); one JSON object per line"),
        (
            json.dumps({"id": "b", "suite": "s", "prompt": "p", "expected": "x", "scorer": "fuzzy"}),
            "unknown scorer 'fuzzy'; choose one of exact, contains, regex, choice, json, tool_call, json_schema, "
            "rouge_l, grounded, code, sql, instructions, refusal",
        ),
        (json.dumps({"id": "b", "suite": "s", "expected": "x", "scorer": "exact"}), "case lacks messages or prompt"),
        (
            json.dumps({"id": "b", "suite": "s", "prompt": "p", "expected": "E", "scorer": "choice"}).replace(
                '"E"', '"AB"'
            ),
            "choice: expected must be one letter A-J",
        ),
        (
            json.dumps({"id": "b", "suite": "s", "prompt": "p", "expected": "(", "scorer": "regex"}),
            "regex: expected is not a valid regex (missing ), unterminated subpattern at position 0)",
        ),
        (GOOD, "duplicate id 'a'; ids must be unique in a suite file"),
    ],
)
def test_loader_errors_name_the_line(tmp_path, line, message):
    p = _write(tmp_path, [GOOD, "", line])
    with pytest.raises(ConfigError) as e:
        load_suite(p)
    assert str(e.value) == f"{p}:3: {message}"


def test_example_suite_covers_the_tasks():
    cases = load_suite(EXAMPLE_SUITE)
    assert {c.suite for c in cases} == {
        "function_calling",
        "extraction",
        "classification",
        "summarization",
        "grounded_qa",
        "code",
    }
    assert {c.scorer for c in cases} == {"exact", "contains", "regex", "choice", "json", "tool_call"}


def test_runner_is_deterministic_and_shows_differences():
    cases = load_suite(EXAMPLE_SUITE)
    answers = {"ex-date": "2026-03-03", "cls-sentiment": "B", "code-output": "6"}

    def render(messages):  # stand-in chat template: the last message's bytes
        return list(messages[-1]["content"].encode())

    def oracle(ids, max_tokens):
        text = bytes(ids).decode()
        return next((v for k, v in answers.items() if _case(cases, k).messages[-1]["content"] == text), "no idea")[
            :max_tokens
        ]

    ref = run_suite(cases, render, oracle, 64, "ref")
    a = run_suite(cases, render, lambda ids, n: "no idea", 64, "art")
    b = run_suite(cases, render, lambda ids, n: "no idea", 64, "art")
    assert [r.output for r in a.results] == [r.output for r in b.results]
    assert ref.accuracy()["extraction"] == (1, 2) and a.accuracy()["extraction"] == (0, 2)
    diff = differences(a, ref)
    assert sorted(r.case.id for r, _ in diff) == sorted(answers)
    recs = to_records(ref, None, "s.jsonl", "ab" * 32, 64, is_reference=True) + to_records(
        a, ref, "s.jsonl", "ab" * 32, 64
    )
    ex = next(r for r in recs if r.suite == "extraction" and not r.is_reference)
    assert (ex.passed, ex.cases, ex.reference_passed, ex.reference) == (0, 2, 1, "ref")
    assert ex.differs == [{"id": "ex-date", "passed": False, "output": "no idea", "reference_output": "2026-03-03"}]
    md = suite_markdown(recs)
    assert "| ref (reference) | " in md and "| art | " in md and "| 50% (1/2) |" in md
    assert md.count("| all |") == 1 and "| 27% (3/11) |" in md and "| 0% (0/11) |" in md  # all cases, per artifact
    assert "case cls-sentiment (classification)" in md and "| no idea | B |" in md


def _case(cases, cid):
    return next(c for c in cases if c.id == cid)


def test_suite_on_a_real_artifact_is_deterministic(trained_dist):
    """`edgekit eval --suite` through the artifact's own chat template and greedy decoding (edgekit.serve.chat,
    edgekit.serve.session): two runs give identical outputs, and each prompt is the template's rendering."""
    from edgekit.eval.suite import engine_chat, run_suite
    from edgekit.profiles.resolve import Overrides, resolve
    from edgekit.serve.chat import ChatTemplate

    q8 = next(trained_dist.glob("*-Q8_0.gguf"))
    cases = load_suite(EXAMPLE_SUITE)[:3]
    (ra,) = resolve(q8, overrides=Overrides(threads=1))
    render, generate, close = engine_chat(ra)
    try:
        tmpl = ChatTemplate.from_artifact(q8)
        text = tmpl.render(cases[0].messages, enable_thinking=False)
        assert text.endswith("model\n") and cases[0].messages[-1]["content"] in text
        a = run_suite(cases, render, generate, 12, q8.name)
        b = run_suite(cases, render, generate, 12, q8.name)
    finally:
        close()
    assert [r.output for r in a.results] == [r.output for r in b.results]
    assert all(r.output for r in a.results)  # the trained model says something within 12 tokens


def _records(ref_name, ref_sha, ref_answers, art_answers, max_tokens=64, runtime=None):
    """One `eval --suite` run's records: the art.gguf artifact against ``ref_name``, both answering the
    example suite with the given {case id: answer} (every other case: "no idea")."""
    cases = load_suite(EXAMPLE_SUITE)

    def answering(answers):
        by_prompt = {_case(cases, k).messages[-1]["content"]: v for k, v in answers.items()}
        return lambda ids, n: by_prompt.get(bytes(ids).decode(), "no idea")

    def render(messages):
        return list(messages[-1]["content"].encode())

    ref = run_suite(cases, render, answering(ref_answers), max_tokens, ref_name)
    art = run_suite(cases, render, answering(art_answers), max_tokens, "art.gguf")
    ref.meta = {"sha256": ref_sha, "runtime": dict(runtime or {})}
    art.meta = {"sha256": "a" * 64, "runtime": dict(runtime or {})}
    return to_records(ref, None, "s.jsonl", "ab" * 32, max_tokens, is_reference=True) + to_records(
        art, ref, "s.jsonl", "ab" * 32, max_tokens
    )


def _tables(md):
    """{table header line: {row label: "all" cell}} of suite_markdown's accuracy tables."""
    out, head = {}, None
    for line in md.splitlines():
        if line.startswith("suite "):
            head = line
            out[head] = {}
        elif head and line.startswith("| ") and not line.startswith("| artifact") and line.count("|") > 3:
            cells = [c.strip() for c in line.strip("|").split("|")]
            if "%" in cells[-1]:
                out[head][cells[0]] = cells[-1]
    return out


def test_suite_tables_keep_runs_against_other_references_and_caps_apart():
    """The same artifact and suite file against two references (F32 and Q8_0) and with another cap: three
    tables, each with its own reference row, never one table mixing them."""
    f32 = _records("F32.gguf", "1" * 64, {"ex-date": "2026-03-03", "cls-sentiment": "B"}, {"ex-date": "2026-03-03"})
    q8 = _records("Q8_0.gguf", "8" * 64, {"code-output": "6"}, {"code-output": "6", "cls-sentiment": "B"})
    short = _records("F32.gguf", "1" * 64, {}, {}, max_tokens=8)
    md = suite_markdown(f32 + q8 + short)
    sha = "abababababab"
    assert _tables(md) == {
        f"suite s.jsonl (sha256 {sha}), max tokens 64, reference F32.gguf (sha256 111111111111)": {
            "F32.gguf (reference)": "18% (2/11)",
            "art.gguf": "9% (1/11)",
        },
        f"suite s.jsonl (sha256 {sha}), max tokens 64, reference Q8_0.gguf (sha256 888888888888)": {
            "Q8_0.gguf (reference)": "9% (1/11)",
            "art.gguf": "18% (2/11)",
        },
        f"suite s.jsonl (sha256 {sha}), max tokens 8, reference F32.gguf (sha256 111111111111)": {
            "F32.gguf (reference)": "0% (0/11)",
            "art.gguf": "0% (0/11)",
        },
    }
    # the differing cases are listed under their own reference's table
    f32_part = md[: md.index("reference Q8_0.gguf")]
    assert "art.gguf vs F32.gguf, case cls-sentiment" in f32_part and "vs Q8_0.gguf" not in f32_part


def test_suite_table_rows_tell_runs_with_other_knobs_apart_and_the_report_keeps_both_references():
    from edgekit.results.report import latest_suites

    f16 = _records("F32.gguf", "1" * 64, {"ex-date": "2026-03-03"}, {}, runtime={"kv_type": "f16", "flash": False})
    f32 = _records(
        "F32.gguf",
        "1" * 64,
        {"ex-date": "2026-03-03"},
        {"ex-date": "2026-03-03"},
        runtime={"kv_type": "f32", "flash": False},
    )
    (rows,) = _tables(suite_markdown(f16 + f32)).values()
    assert rows == {
        "F32.gguf (reference) [kv_type=f16]": "9% (1/11)",
        "F32.gguf (reference) [kv_type=f32]": "9% (1/11)",
        "art.gguf [kv_type=f16]": "0% (0/11)",
        "art.gguf [kv_type=f32]": "9% (1/11)",
    }
    # the store's latest run of each: a run against another reference does not replace the first
    q8 = _records("Q8_0.gguf", "8" * 64, {}, {}, runtime={"kv_type": "f32", "flash": False})
    kept = latest_suites(f32 + q8)
    assert {(r.artifact, r.reference) for r in kept} == {
        ("F32.gguf", ""),
        ("art.gguf", "F32.gguf"),
        ("Q8_0.gguf", ""),
        ("art.gguf", "Q8_0.gguf"),
    }
    assert len(kept) == len(f32 + q8)
