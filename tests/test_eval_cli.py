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
    code, _, err = _run("eval", f32, "--reference", tiny_ckpt, "--ctx", 32, "--chunks", 1, "--no-store",
                        "--ref-cache", tmp_path / "c.npz")
    line = _one_line_error(code, err, "tiny-trained-F32.gguf", "tiny-gemma4", "tokenizer")
    assert "same checkpoint" in line


def test_empty_text(f32, tmp_path):
    (tmp_path / "empty.txt").write_text("\n  \n")
    code, _, err = _run("eval", f32, "--reference", f32, "--text", tmp_path / "empty.txt", "--no-store")
    assert _one_line_error(code, err) == f"edgekit: error: {tmp_path / 'empty.txt'}: the text is empty; pass a file with text in it"


def test_non_utf8_text(f32, tmp_path):
    (tmp_path / "latin1.txt").write_bytes("Café crème".encode("latin-1"))
    code, _, err = _run("eval", f32, "--reference", f32, "--text", tmp_path / "latin1.txt", "--no-store")
    assert _one_line_error(code, err) == (f"edgekit: error: {tmp_path / 'latin1.txt'}: not UTF-8 text (byte 0xe9 "
                                          "at offset 3); convert it, e.g. `iconv -t utf-8 FILE`")


def test_cache_from_another_reference_is_refused(f32, trained_ckpt, tmp_path):
    cache = tmp_path / "ref.npz"
    code, _, err = _run("eval", f32, "--reference", f32, "--ctx", 32, "--chunks", 2, "--no-store", "--ref-cache", cache)
    assert code == 0, err
    code, _, err = _run("eval", f32, "--reference", trained_ckpt, "--ctx", 32, "--chunks", 2, "--no-store",
                        "--ref-cache", cache)
    _one_line_error(code, err, str(cache), "reference", "tiny-trained-F32.gguf vs tiny-trained")
    code, _, err = _run("eval", f32, "--reference", f32, "--ctx", 64, "--chunks", 2, "--no-store", "--ref-cache", cache)
    _one_line_error(code, err, "ctx 32, this run has 64")


def test_store_and_printers(f32, tmp_path):
    from edgekit.eval.record import PARSERS
    from edgekit.results import Store

    db = tmp_path / "r.db"
    args = ("eval", f32, "--reference", f32, "--ctx", 32, "--chunks", 2, "--ref-cache", tmp_path / "c.npz", "--db", db)
    outs = {}
    for fmt in ("md", "csv", "json", "jsonl"):
        code, out, err = _run(*args, "-o", fmt)
        assert code == 0, err
        outs[fmt] = out
    with Store(db) as s:
        stored = s.quality_records()
    assert len(stored) == 4 and {r.sha256 for r in stored} == {stored[0].sha256}
    for fmt in ("csv", "json", "jsonl"):
        (rec,) = PARSERS[fmt](outs[fmt])
        assert rec.to_json() | {"timestamp": "", "seconds": 0, "host": {}} == \
            stored[0].to_json() | {"timestamp": "", "seconds": 0, "host": {}}
    (row,) = PARSERS["md"](outs["md"])
    assert row["artifact"] == "tiny-trained-F32.gguf" and row["same top %"] == 100.0
