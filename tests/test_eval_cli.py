"""`edgekit eval` through the CLI: bad input is one line on stderr and exit 1; records reach the store
and every printer parses back."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from edgekit.cli import app


def _run(*args):
    res = CliRunner().invoke(app, [str(a) for a in args])
    return res.exit_code, res.stdout, res.stderr


@pytest.fixture()
def f32(trained_dist):
    return trained_dist / "tiny-trained-F32.gguf"


def _one_line_error(code, err, *needles):
    assert code == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgekit: error: "), err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def test_tokenizer_mismatch_names_both(f32, tiny_ckpt, tmp_path):
    # Other weights are refused first (tests/faults/test_eval_inputs.py); forced, the tokenizers still differ.
    code, _, err = _run(
        "eval",
        f32,
        "--reference",
        tiny_ckpt,
        "--ctx",
        32,
        "--chunks",
        1,
        "--no-store",
        "--ref-cache",
        tmp_path / "c.npz",
        "--force-reference",
    )
    line = _one_line_error(code, err, "tiny-trained-F32.gguf", "tiny-gemma4", "tokenizer")
    assert "same checkpoint" in line


def test_empty_text(f32, tmp_path):
    (tmp_path / "empty.txt").write_text("\n  \n")
    code, _, err = _run("eval", f32, "--reference", f32, "--text", tmp_path / "empty.txt", "--no-store")
    assert (
        _one_line_error(code, err)
        == f"edgekit: error: {tmp_path / 'empty.txt'}: the text is empty; pass a file with text in it"
    )


def test_non_utf8_text(f32, tmp_path):
    (tmp_path / "latin1.txt").write_bytes("Café crème".encode("latin-1"))
    code, _, err = _run("eval", f32, "--reference", f32, "--text", tmp_path / "latin1.txt", "--no-store")
    assert _one_line_error(code, err) == (
        f"edgekit: error: {tmp_path / 'latin1.txt'}: not UTF-8 text (byte 0xe9 "
        "at offset 3); convert it, e.g. `iconv -t utf-8 FILE`"
    )


def test_cache_from_another_reference_is_refused(f32, trained_ckpt, tmp_path):
    cache = tmp_path / "ref.npz"
    code, _, err = _run("eval", f32, "--reference", f32, "--ctx", 32, "--chunks", 2, "--no-store", "--ref-cache", cache)
    assert code == 0, err
    code, _, err = _run(
        "eval", f32, "--reference", trained_ckpt, "--ctx", 32, "--chunks", 2, "--no-store", "--ref-cache", cache
    )
    _one_line_error(code, err, str(cache), "reference", "tiny-trained-F32.gguf vs tiny-trained")
    code, _, err = _run("eval", f32, "--reference", f32, "--ctx", 64, "--chunks", 2, "--no-store", "--ref-cache", cache)
    _one_line_error(code, err, "ctx 32, this run has 64")


def test_store_and_printers(f32, tmp_path):
    from edgekit.results import QualityRecord, Store
    from edgekit.results.quality import PARSERS

    db = tmp_path / "r.db"
    args = ("eval", f32, "--reference", f32, "--ctx", 32, "--chunks", 2, "--ref-cache", tmp_path / "c.npz", "--db", db)
    outs = {}
    for fmt in ("md", "csv", "json", "jsonl"):
        code, out, err = _run(*args, "-o", fmt)
        assert code == 0, err
        outs[fmt] = out
    with Store(db) as s:
        stored = s.read(QualityRecord)
    assert len(stored) == 4 and {r.sha256 for r in stored} == {stored[0].sha256}
    for fmt in ("csv", "json", "jsonl"):
        (rec,) = PARSERS[fmt](outs[fmt])
        assert rec.to_json() | {"timestamp": "", "seconds": 0, "host": {}} == stored[0].to_json() | {
            "timestamp": "",
            "seconds": 0,
            "host": {},
        }
    (row,) = PARSERS["md"](outs["md"])
    assert row["artifact"] == "tiny-trained-F32.gguf" and row["same top %"] == 100.0


def test_suite_results_go_to_the_store_and_the_report(trained_dist, tmp_path):
    """`eval --suite` on the trained Q4_0 against its Q8_0: the records printed (json) are the rows stored,
    with the suite file's and the artifacts' sha256; `edgekit report` shows the same accuracies in its
    quality section and counts a corrupt suite row as skipped."""
    import hashlib
    import json
    import sqlite3

    from edgekit.eval.suite import EXAMPLE_SUITE
    from edgekit.results import Store, SuiteRecord, parse_markdown
    from edgekit.results.quality import SUITE_PARSERS

    lines = EXAMPLE_SUITE.read_text().splitlines()
    suite = (
        tmp_path / "four.jsonl"
    )  # four cases over two suites (function_calling, extraction): seconds of greedy decoding
    suite.write_text("\n".join(lines[:4]) + "\n")
    q4, q8 = trained_dist / "tiny-trained-Q4_0.gguf", trained_dist / "tiny-trained-Q8_0.gguf"
    db = tmp_path / "r.db"
    code, out, err = _run(
        "eval",
        q4,
        "--reference",
        q8,
        "--suite",
        suite,
        "--max-tokens",
        8,
        "--threads",
        1,
        "--db",
        db,
        "-o",
        "json",
        "--device",
        "box",
    )
    assert code == 0, err
    printed = SUITE_PARSERS["json"](out)
    with Store(db) as s:
        stored = s.read(SuiteRecord)
    assert [r.to_json() for r in stored] == [r.to_json() for r in printed]
    by_case = {}
    for c in map(json.loads, lines[:4]):
        by_case.setdefault(c["suite"], []).append(c["id"])
    assert {(r.artifact, r.suite, r.cases) for r in stored} == {
        (a, s, len(ids)) for a in (q8.name, q4.name) for s, ids in by_case.items()
    }
    sha = hashlib.sha256(suite.read_bytes()).hexdigest()
    manifest = {a["file"]: a["sha256"] for a in json.loads((trained_dist / "manifest.json").read_text())["artifacts"]}
    for r in stored:
        assert r.suite_sha256 == sha and r.suite_file == "four.jsonl" and r.sha256 == manifest[r.artifact]
        assert r.accuracy == r.passed / r.cases and r.device == "box" and r.max_tokens == 8
        assert r.is_reference == (r.artifact == q8.name)
        if not r.is_reference:
            assert r.reference == q8.name and r.reference_sha256 == manifest[q8.name]
            ref = next(x for x in stored if x.is_reference and x.suite == r.suite)
            assert r.reference_passed == ref.passed
            assert len(r.differs) >= abs(r.passed - ref.passed)  # every flipped case is listed
    con = sqlite3.connect(db)
    con.execute(
        "INSERT INTO suites (timestamp, device, artifact, sha256, engine, quant, suite_sha256, suite, data) "
        "VALUES ('t', 'box', 'x', 'y', 'e', 'q', 'z', 's', '{\"accuracy\": \"high\"}')"
    )
    con.commit()
    con.close()
    code, out, err = _run("report", "--db", db, "--out", tmp_path / "rep")
    assert code == 0, err
    text = (tmp_path / "rep" / "report.md").read_text()
    assert "1 corrupt suite row(s) were skipped." in text
    section = text[text.index("### Task suites") :]
    rows = {r["artifact"]: r for r in parse_markdown(section) if "artifact" in r}  # not the side-by-side tables
    suites = sorted(by_case)
    for r in stored:
        label = r.artifact + (" (reference)" if r.is_reference else "")
        cell = rows[label][r.suite]
        assert cell == f"{100 * r.passed / r.cases:.0f}% ({r.passed}/{r.cases})", (cell, r)
    assert set(rows[q4.name]) >= set(suites)
