"""`edgekit eval` on bad input: each case is one line (an error and exit 1, or a warning and the run
goes on), no traceback, nothing measured for nothing and no result lost.

A 27 MB text with --chunks 2 (only its head is tokenized) and Ctrl-C during a whole-text pass; a
truncated, bit-flipped or edited reference cache; an unusable --db (a folder, a file that is not
SQLite, a read-only mount: found before measuring; a store that fails late: the records are printed);
a suite line holding a lone surrogate; a quantized reference and another checkpoint's; --chunks and
--threads of 0 or less; a full disk under --ref-cache.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import time

import numpy as np
import pytest
from faultkit import assert_one_line, edgekit_cmd, env, hidden_leftovers, run_cli, tmpfs
from typer.testing import CliRunner

from edgekit.cli import app
from edgekit.eval.text import DEFAULT_TEXT, PIECE_CHARS

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture()
def f32(trained_dist):
    return trained_dist / "tiny-trained-F32.gguf"


def _kl(out: str) -> float:
    (rec,) = json.loads(out)
    return rec["kl_mean"]


# ---------------------------------------------------------------- --chunks, --threads


@pytest.mark.parametrize(
    "flag, value, says",
    [
        ("--chunks", 0, "--chunks 0: must be at least 1; leave it out to score every window the text has"),
        ("--chunks", -3, "--chunks -3: must be at least 1; leave it out to score every window the text has"),
        ("--threads", 0, "--threads 0: use at least 1 thread (default: this host's cores)"),
    ],
)
def test_zero_or_negative_counts_are_refused(f32, tmp_path, flag, value, says):
    res = run(
        "eval", f32, "--reference", f32, "--ctx", 32, flag, value, "--no-store", "--ref-cache", tmp_path / "c.npz"
    )
    assert_one_line(res, 1, says)
    assert not (tmp_path / "c.npz").exists()


# ---------------------------------------------------------------- a long text


@pytest.fixture(scope="module")
def big_text(tmp_path_factory):
    """27 MB of the held-out text, repeated (newlines in it, as in any real text)."""
    text = DEFAULT_TEXT.read_text()
    path = tmp_path_factory.mktemp("text") / "big.txt"
    path.write_text(text * (27_000_000 // len(text) + 1))
    return path


def test_long_text_with_chunks_tokenizes_only_its_head(f32, big_text, tmp_path, monkeypatch):
    from edgekit.backends.gguf.runner import LlamaCppRunner
    from edgekit.eval.text import windows

    seen: list[int] = []
    real = LlamaCppRunner.tokenize
    monkeypatch.setattr(LlamaCppRunner, "tokenize", lambda self, text: seen.append(len(text)) or real(self, text))
    cache = tmp_path / "c.npz"
    res = run(
        "eval",
        f32,
        "--reference",
        f32,
        "--text",
        big_text,
        "--ctx",
        32,
        "--chunks",
        2,
        "--no-store",
        "--ref-cache",
        cache,
        "-o",
        "json",
    )
    assert res.exit_code == 0, res.output
    assert _kl(res.stdout) == pytest.approx(0.0, abs=1e-6)
    # 27 MB in, at most two pieces tokenized (before: all 27 MB, in one call)
    assert 0 < sum(seen) <= 2 * PIECE_CHARS + 4096, sum(seen)
    # the windows are those of the whole text's tokens: the cut after a newline run changes no token
    from edgekit.backends.registry import BACKENDS
    from edgekit.backends.runner import RunOptions
    from edgekit.eval.refcache import load

    src = BACKENDS.get("llama.cpp").logits(f32, RunOptions(threads=1, ctx=32, knobs={}))
    try:
        whole = windows(src.runner.tokenize(DEFAULT_TEXT.read_text()), 32, src.runner.bos(), 2)
    finally:
        src.close()
    np.testing.assert_array_equal(load(cache).windows, whole)


@pytest.mark.slow
def test_ctrl_c_stops_a_whole_text_pass_promptly(f32, big_text, tmp_path):
    """No --chunks: every window of 27 MB. Before, llama.cpp tokenized it in one C call (4 MB alone took
    188 s) and Ctrl-C waited for it; in pieces, Ctrl-C lands between two."""
    p = subprocess.Popen(
        edgekit_cmd(
            "eval",
            f32,
            "--reference",
            f32,
            "--text",
            big_text,
            "--ctx",
            32,
            "--no-store",
            "--ref-cache",
            tmp_path / "c.npz",
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env(),
    )
    time.sleep(8)  # imports, the model loaded, well into the text (whole, it takes minutes)
    assert p.poll() is None, p.communicate()
    t0 = time.monotonic()
    p.send_signal(signal.SIGINT)
    _out, err = p.communicate(timeout=60)
    waited = time.monotonic() - t0
    assert p.returncode == 130, err
    assert err == "edgekit: interrupted; partial files were removed\n"
    assert waited < 10, waited
    assert not (tmp_path / "c.npz").exists() and hidden_leftovers(tmp_path) == []


# ---------------------------------------------------------------- the reference cache


@pytest.fixture()
def made_cache(f32, tmp_path):
    cache = tmp_path / "ref.npz"
    res = run_cli(
        "eval",
        f32.parent / "tiny-trained-Q4_0.gguf",
        "--reference",
        f32,
        "--ctx",
        32,
        "--chunks",
        2,
        "--no-store",
        "--ref-cache",
        cache,
        "-o",
        "json",
    )
    assert res.returncode == 0, res.stderr
    return cache, _kl(res.stdout)


def _truncate(p):
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _flip(p):
    b = bytearray(p.read_bytes())
    b[len(b) // 2] ^= 0x10
    p.write_bytes(bytes(b))


def _edit(p):
    """Scale the reference's log-probabilities: still a valid .npz with the same key."""
    with np.load(p) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["top_logp"] = arrays["top_logp"] * 3
    with open(p, "wb") as f:
        np.savez(f, **arrays)


@pytest.mark.parametrize(
    "spoil, why",
    [
        (_truncate, "not a whole edgekit eval reference cache (BadZipFile)"),
        (_flip, None),  # the zip's CRC or the stored sha256, whichever the flipped byte reaches
        (_edit, "does not match the sha256 eval stored in it (changed after it was written)"),
    ],
)
def test_spoiled_cache_is_one_warning_and_computed_again(f32, made_cache, spoil, why):
    cache, kl = made_cache
    spoil(cache)
    res = run_cli(
        "eval",
        f32.parent / "tiny-trained-Q4_0.gguf",
        "--reference",
        f32,
        "--ctx",
        32,
        "--chunks",
        2,
        "--no-store",
        "--ref-cache",
        cache,
        "-o",
        "json",
    )
    assert res.returncode == 0, res.stderr
    (line,) = res.stderr.splitlines()
    assert line.startswith(f"WARNING edgekit.eval.run: {cache}: ") and line.endswith("; computing the reference again")
    if why:
        assert why in line, line
    assert _kl(res.stdout) == kl  # the same KL as from the cache eval wrote (the edit made it 79 times larger)
    again = run_cli(
        "eval",
        f32.parent / "tiny-trained-Q4_0.gguf",
        "--reference",
        f32,
        "--ctx",
        32,
        "--chunks",
        2,
        "--no-store",
        "--ref-cache",
        cache,
        "-o",
        "json",
    )
    assert again.returncode == 0 and again.stderr == "" and _kl(again.stdout) == kl  # the file was replaced


@pytest.mark.parametrize("spoil", [_truncate, _edit])
def test_spoiled_cache_as_the_reference_is_refused(f32, made_cache, spoil):
    cache, _ = made_cache
    spoil(cache)
    res = run(
        "eval", f32.parent / "tiny-trained-Q4_0.gguf", "--reference", cache, "--ctx", 32, "--chunks", 2, "--no-store"
    )
    why = (
        "not a whole edgekit eval reference cache (BadZipFile)"
        if spoil is _truncate
        else "does not match the sha256 eval stored in it (changed after it was written)"
    )
    assert_one_line(res, 1, f"{cache}: {why}; make it again where the reference runs, or pass the reference itself")


def test_full_disk_under_the_cache_names_ref_cache(f32, tmp_path):
    with tmpfs(tmp_path / "small", "64k") as mnt:
        res = run_cli(
            "eval",
            f32,
            "--reference",
            f32,
            "--ctx",
            32,
            "--chunks",
            8,
            "--no-store",
            "--ref-cache",
            mnt / "ref.npz",
            "-o",
            "json",
        )
        assert res.returncode == 0, res.stderr
        assert res.stderr == (
            f"WARNING edgekit.eval.run: reference cache not kept: {mnt / 'ref.npz'}: no space left "
            "on the device; free space or pass --ref-cache on a larger disk\n"
        )
        assert _kl(res.stdout) == pytest.approx(0.0, abs=1e-6)  # the results are not lost with the cache
        assert hidden_leftovers(mnt) == [] and list(mnt.iterdir()) == []


# ---------------------------------------------------------------- --db


def _not_sqlite(p):
    p.write_text("these are my notes, not a database\n")
    return "file is not a database"


def _folder(p):
    p.mkdir()
    return "unable to open database file"


@pytest.mark.parametrize("make", [_not_sqlite, _folder])
def test_unusable_db_is_found_before_measuring(f32, tmp_path, make):
    db = tmp_path / "r.db"
    why = make(db)
    res = run(
        "eval", f32, "--reference", f32, "--ctx", 32, "--chunks", 2, "--db", db, "--ref-cache", tmp_path / "c.npz"
    )
    assert_one_line(res, 1, f"{db}: cannot open the results store ({why}); pass --db with a writable path")
    assert not (tmp_path / "c.npz").exists()  # nothing was measured


def test_db_on_a_read_only_mount_is_found_before_measuring(f32, tmp_path):
    with tmpfs(tmp_path / "ro", "1m") as mnt:
        db = mnt / "r.db"
        with sqlite3.connect(db) as con:
            con.execute("CREATE TABLE t (x)")
        con.close()
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        res = run(
            "eval", f32, "--reference", f32, "--ctx", 32, "--chunks", 2, "--db", db, "--ref-cache", tmp_path / "c.npz"
        )
        assert res.exit_code == 1 and "Traceback" not in res.stderr
        (line,) = res.stderr.splitlines()
        assert line.startswith(f"edgekit: error: {db}: cannot ") and line.endswith(
            "; pass --db with a writable path"
        ), line
        assert not (tmp_path / "c.npz").exists()


def test_store_failing_late_keeps_the_printed_records(f32, tmp_path):
    """A store that opens and takes a write, but refuses the insert (a trigger): the records are on stdout."""
    db = tmp_path / "r.db"
    from edgekit.results import RECORD_TYPES
    from edgekit.results.store import table_schema

    con = sqlite3.connect(db)
    con.execute(table_schema(RECORD_TYPES.get("quality")))
    con.execute("CREATE TRIGGER no BEFORE INSERT ON quality BEGIN SELECT RAISE(ABORT, 'quota exceeded'); END")
    con.commit()
    con.close()
    res = run(
        "eval",
        f32,
        "--reference",
        f32,
        "--ctx",
        32,
        "--chunks",
        2,
        "--db",
        db,
        "--ref-cache",
        tmp_path / "c.npz",
        "-o",
        "json",
    )
    assert_one_line(
        res,
        1,
        f"{db}: cannot append to the results store (quota exceeded): the 1 record(s) above "
        "were printed but not stored; rerun with --db elsewhere",
    )
    assert _kl(res.stdout) == pytest.approx(0.0, abs=1e-6)


# ---------------------------------------------------------------- suites


def test_suite_line_with_a_lone_surrogate(f32, tmp_path):
    suite = tmp_path / "s.jsonl"
    suite.write_text(
        '{"id": "a", "suite": "s", "prompt": "ok", "expected": "x", "scorer": "contains"}\n'
        '{"id": "b", "suite": "s", "messages": [{"role": "user", "content": "hi \\ud800"}], '
        '"expected": "x", "scorer": "contains"}\n'
    )
    res = run("eval", f32, "--suite", suite, "--db", tmp_path / "r.db")
    assert_one_line(
        res,
        1,
        f"{suite}:2: messages[0].content holds '\\ud800', half of a UTF-16 surrogate pair, which "
        "is not text; write the character itself or its full \\uXXXX\\uXXXX pair",
    )
    assert not (tmp_path / "r.db").exists()


# ---------------------------------------------------------------- which reference


def test_quantized_reference_is_refused_unless_forced(trained_dist, tmp_path):
    q4, q8 = trained_dist / "tiny-trained-Q4_0.gguf", trained_dist / "tiny-trained-Q8_0.gguf"
    args = ("eval", q4, "--reference", q8, "--ctx", 32, "--chunks", 2, "--no-store", "--ref-cache", tmp_path / "c.npz")
    assert_one_line(
        run(*args),
        1,
        "--reference tiny-trained-Q8_0.gguf is quantized (Q8_0): the KL would measure the "
        "distance between two quantized builds, not what the build lost; pass the checkpoint "
        "or its f32/f16/bf16 build, or --force-reference to use it anyway",
    )
    assert not (tmp_path / "c.npz").exists()
    res = run(*args, "--force-reference", "-o", "json")
    assert res.exit_code == 0, res.output
    assert _kl(res.stdout) > 0


def test_another_checkpoints_reference_is_refused(tiny_ckpt, tmp_path):
    """Same shape and tokenizer, other weights (synth seed 1 vs seed 0): their KL measures two models."""
    from edgekit.builder.pipeline import build
    from edgekit.dev.synth import synth

    other = synth(tmp_path / "tiny-gemma4", preset="tiny", seed=1)
    dist = build(str(other), target="pi5", quants=["f32"], out=tmp_path / "dist")
    art = dist / "tiny-gemma4-F32.gguf"
    manifest = json.loads((dist / "manifest.json").read_text())
    mine = manifest["source"]["files"]["model-00001-of-00001.safetensors"]
    from edgekit.model.checkpoint import sha256_file

    ref = sha256_file(tiny_ckpt / "model-00001-of-00001.safetensors")
    args = (
        "eval",
        art,
        "--reference",
        tiny_ckpt,
        "--ctx",
        32,
        "--chunks",
        1,
        "--no-store",
        "--ref-cache",
        tmp_path / "c.npz",
    )
    assert_one_line(
        run(*args),
        1,
        f"tiny-gemma4-F32.gguf was built from other weights than the reference tiny-gemma4 (safetensors "
        f"sha256 {mine[:12]} by its manifest, the reference's {ref[:12]}): the KL would compare two models, "
        "not measure the build; pass the checkpoint it was built from or its f32/f16 build, or "
        "--force-reference to use it anyway",
    )
    assert not (tmp_path / "c.npz").exists()
    # the checkpoint it was built from is accepted
    res = run(
        "eval",
        art,
        "--reference",
        other,
        "--ctx",
        32,
        "--chunks",
        1,
        "--no-store",
        "--ref-cache",
        tmp_path / "c2.npz",
        "-o",
        "json",
    )
    assert res.exit_code == 0, res.output
