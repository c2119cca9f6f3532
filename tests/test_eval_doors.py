"""`eval --suite` as a newcomer runs it (issue 22.1, 22.11): a Hugging Face folder as the reference
(which had a 2-token context), and a run without a reference shows what the model answered."""

from __future__ import annotations

import json

import pytest
from serve_fixture import cli


def _suite(tmp_path):
    from edgekit.eval.suite import EXAMPLE_SUITE

    lines = [json.loads(x) for x in EXAMPLE_SUITE.read_text().splitlines() if x.strip()][:2]
    p = tmp_path / "two.jsonl"
    p.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return p, [x["id"] for x in lines]


@pytest.mark.slow
def test_suite_against_a_hf_folder_and_without_reference(tiny_ckpt, tmp_path):
    from edgekit.builder.pipeline import build

    d = build(str(tiny_ckpt), target="pi5", quants=["q4_0"], out=tmp_path / "dist")
    art = d / "tiny-gemma4-Q4_0.gguf"
    suite, ids = _suite(tmp_path)
    r = cli(
        "eval",
        str(art),
        "--reference",
        str(tiny_ckpt),
        "--suite",
        str(suite),
        "-n",
        "4",
        "-t",
        "1",
        "--no-store",
        "-o",
        "json",
    )
    assert r.returncode == 0, r.stderr
    recs = json.loads(r.stdout)
    assert any(x["is_reference"] for x in recs) and all(x["answers"] == [] for x in recs)
    r = cli("eval", str(art), "--suite", str(suite), "-n", "4", "-t", "1", "--no-store", "-o", "json")
    assert r.returncode == 0, r.stderr
    from edgekit.results.quality import SUITE_PARSERS, suite_markdown

    recs = SUITE_PARSERS["json"](r.stdout)
    assert sorted(a["id"] for x in recs for a in x.answers) == sorted(ids)
    md = suite_markdown(recs)  # what `eval --suite` prints by default
    assert "no reference: every answer" in md
    for x in recs:
        for a in x.answers:
            assert f"| {a['id']} | {'pass' if a['passed'] else 'FAIL'} | " in md
