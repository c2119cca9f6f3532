"""`edgekit bench` as a llama-bench user reads it, and `edgekit report` after it, on tiny artifacts built here:
rows printed and stored as each child finishes (a later artifact that fails loses none), the compact table
by default and one table per run, swept values as columns, CSV cells without JSON, and a report that keeps
a --set sweep as two runs and a killed --limit run apart from the good one."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil

import gguf
import pytest
from typer.testing import CliRunner

from edgekit.builder.pipeline import build
from edgekit.cli import app
from edgekit.measure import bench as bench_mod
from edgekit.measure import limits
from edgekit.results import QualityRecord, Record, Store, parse_csv, parse_jsonl, parse_markdown

BW = {"read_gbs": 20.0, "copy_gbs": 30.0, "mib": 512, "threads": 2}
COMPACT = ["artifact", "size MB", "threads", "test", "t/s", "peak RSS MB", "budget"]
QUICK = ["-r", "1", "--threads", "1", "--ctx", "64"]


@pytest.fixture(autouse=True)
def fixed_bandwidth(monkeypatch):
    monkeypatch.setattr(bench_mod, "host_bandwidth", lambda **kw: dict(BW))


@pytest.fixture(scope="module")
def dist(tiny_ckpt, tmp_path_factory):
    return build(str(tiny_ckpt), target="pi5", quants=["q8_0", "q4_0"], out=tmp_path_factory.mktemp("dist"))


@pytest.fixture(scope="module")
def broken_third(dist, tmp_path_factory):
    """The build plus a third artifact that passes every check before the run (listed, sha256 right, a
    readable GGUF) but that llama.cpp cannot load: its header claims 99 layers."""
    folder = tmp_path_factory.mktemp("three") / "pi5"
    shutil.copytree(dist, folder)
    first = json.loads((folder / "manifest.json").read_text())["artifacts"][0]
    bad = folder / "tiny-broken.gguf"
    shutil.copy(folder / first["file"], bad)
    reader = gguf.GGUFReader(bad, "r+")
    field = reader.fields["gemma4.block_count"]
    field.parts[field.data[0]][0] = 99
    del reader
    m = json.loads((folder / "manifest.json").read_text())
    data = bad.read_bytes()
    m["artifacts"].append({**first, "file": bad.name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()})
    (folder / "manifest.json").write_text(json.dumps(m, indent=2))
    return folder


def _bench(*args):
    return CliRunner().invoke(app, ["bench", *map(str, args)])


def _tables(text: str) -> list[list[str]]:
    """The header row of each markdown table in the text."""
    return [
        [c.strip() for c in line.strip("|").split("|")] for line in text.splitlines() if line.startswith("| artifact |")
    ]


@pytest.mark.parametrize("fmt", ["md", "jsonl"])
def test_a_later_artifact_that_fails_leaves_the_finished_rows_printed_and_stored(broken_third, tmp_path, fmt):
    db = tmp_path / "r.db"
    res = _bench(broken_third, "-p", 8, "-n", 4, *QUICK, "-o", fmt, "--db", db)
    assert res.exit_code == 1
    assert res.stderr.startswith("edgekit: error: tiny-broken.gguf: llama.cpp could not load it")
    assert res.stderr.count("\n") == 1
    with Store(db) as s:
        stored = s.records()
    # artifacts 1 and 2 were measured before 3 failed: their rows are on stdout and in the store
    assert [r.artifact for r in stored] == ["tiny-gemma4-Q8_0.gguf", "tiny-gemma4-Q4_0.gguf"]
    if fmt == "jsonl":
        assert parse_jsonl(res.stdout) == stored
    else:
        rows = parse_markdown(res.stdout)
        assert [(r["artifact"], r["test"]) for r in rows] == [
            ("tiny-gemma4-Q8_0.gguf", "pp8"),
            ("tiny-gemma4-Q8_0.gguf", "tg4"),
            ("tiny-gemma4-Q4_0.gguf", "pp8"),
            ("tiny-gemma4-Q4_0.gguf", "tg4"),
        ]
        assert rows[1]["t/s"] == (round(stored[0].tg_tps, 2), round(stored[0].tg_tps_sd, 2))
        assert res.stdout.split("\n\n")[1].startswith("MB = 1e6 bytes")  # the footer was printed too


def test_the_compact_table_is_the_default_and_a_sweep_is_one_table(dist):
    q4 = dist / "tiny-gemma4-Q4_0.gguf"
    res = _bench(q4, "-p", "8,16", "-n", "4,8", *QUICK, "--no-store")
    assert res.exit_code == 0, res.stderr
    assert _tables(res.stdout) == [COMPACT]  # llama-bench's columns and the memory; one table, not four
    rows = parse_markdown(res.stdout)
    assert [r["test"] for r in rows] == ["pp8", "tg4", "pp8", "tg8", "pp16", "tg4", "pp16", "tg8"]
    assert all(r["budget"] == "ok" and r["t/s"][0] > 0 and r["threads"] == 1 for r in rows)
    note = res.stdout.split("\n\n")[1]
    assert "mean ± sd" in note and "budget:" in note and "roofline" not in note  # footnotes of the shown columns only
    assert max(map(len, res.stdout.splitlines())) < 120

    wide = _bench(q4, "-p", "8,16", "-n", "4", *QUICK, "--no-store", "--wide")
    assert wide.exit_code == 0, wide.stderr
    (head,) = _tables(wide.stdout)
    assert {"TTFT ms", "pp t/s", "tg t/s", "KV MB", "roofline %", "load ms", "verdict"} <= set(head)
    assert [r["test"] for r in parse_markdown(wide.stdout)] == ["pp8 + tg4", "pp16 + tg4"]
    assert "roofline:" in wide.stdout.split("\n\n")[1]


def test_a_set_sweep_is_a_column_and_stays_two_runs_in_the_report(dist, tmp_path):
    db, q4 = tmp_path / "r.db", dist / "tiny-gemma4-Q4_0.gguf"
    res = _bench(q4, "-p", 8, "-n", 4, *QUICK, "--set", "kv_type=f16,q8_0", "--db", db)
    assert res.exit_code == 0, res.stderr
    assert _tables(res.stdout) == [[*COMPACT[:3], "kv_type", *COMPACT[3:]]]
    assert [(r["kv_type"], r["test"]) for r in parse_markdown(res.stdout)] == [
        ("f16", "pp8"),
        ("f16", "tg4"),
        ("q8_0", "pp8"),
        ("q8_0", "tg4"),
    ]
    rep = CliRunner().invoke(app, ["report", "--db", str(db), "--out", str(tmp_path / "rep")])
    assert rep.exit_code == 0, rep.output
    rows = parse_markdown((tmp_path / "rep" / "report.md").read_text())
    with Store(db) as s:
        stored = s.records()
    assert [(r["kv_type"], r["tg t/s"][0]) for r in rows] == [
        (x.runtime["kv_type"], round(x.tg_tps, 2)) for x in stored
    ]
    assert [r["kv_type"] for r in rows] == ["f16", "q8_0"]


def test_csv_cells_hold_no_json_and_parse_back(dist):
    res = _bench(dist / "tiny-gemma4-Q4_0.gguf", "-p", 8, "-n", 4, *QUICK, "--no-store", "-o", "csv")
    assert res.exit_code == 0, res.stderr
    (rec,) = parse_csv(res.stdout)
    rows = list(csv.reader(io.StringIO(res.stdout)))
    head, cells = rows[0], rows[1]
    assert all(not c.startswith(("{", "[")) or c in ("[]", "{}") for c in cells)  # "[]": an empty list
    row = dict(zip(head, cells, strict=True))
    assert row["runtime.kv_type"] == rec.runtime["kv_type"] and row["host.cpu"] == rec.host["cpu"]
    assert row["samples.tg_tps"] == " ".join(map(repr, rec.samples["tg_tps"]))
    assert row["versions.llama.cpp"] == rec.versions["llama.cpp"]


def _cgroup() -> bool:
    with limits.memory_limit(64 << 20) as lim:
        return lim.enforced


@pytest.mark.skipif(not _cgroup(), reason="no memory cgroup here")
def test_a_killed_limit_run_stays_apart_from_the_good_one(dist, tmp_path):
    db, q4 = tmp_path / "r.db", dist / "tiny-gemma4-Q4_0.gguf"
    assert _bench(q4, "-p", 8, "-n", 4, *QUICK, "--db", db).exit_code == 0
    killed = _bench(q4, "-p", 8, "-n", 4, *QUICK, "--db", db, "--limit-mb", 30)
    assert killed.exit_code == 3
    assert [(r["test"], r["t/s"], r["budget"]) for r in parse_markdown(killed.stdout)] == [
        ("pp8", None, "OOM-killed"),
        ("tg4", None, "OOM-killed"),
    ]
    out = tmp_path / "rep"
    assert CliRunner().invoke(app, ["report", "--db", str(db), "--out", str(out)]).exit_code == 0
    text = (out / "report.md").read_text()
    good, bad = parse_markdown(text)
    with Store(db) as s:
        first = s.records()[0]
    assert good["tg t/s"] == (round(first.tg_tps, 2), round(first.tg_tps_sd, 2)) and good["verdict"] == "ok"
    assert bad["tg t/s"] is None and bad["OOM"] == "killed" and bad["verdict"] == "OOM-killed" and bad["limit MB"] == 30
    assert "1 failed, shown as failures" in text and (out / "tg_vs_peak.png").stat().st_size > 10_000


def _quality(artifact: str, sha: str, kl: float) -> QualityRecord:
    return QualityRecord(
        artifact=artifact,
        model="tiny",
        format="gguf",
        quant="Q4_0",
        engine="llama.cpp",
        sha256=sha,
        file_bytes=10,
        device="pi5-a",
        target="pi5",
        reference="tiny",
        reference_sha256="r",
        text="heldout.txt",
        text_sha256="t",
        ctx=64,
        chunks=2,
        tokens_scored=64,
        top_k=1024,
        ppl=3.0,
        bits_per_byte=6.0,
        kl_mean=kl,
        kl_lo=kl * 0.9,
        kl_hi=kl * 1.1,
        kl_median=kl,
        kl_p99=kl,
        kl_max=kl,
        same_top=0.9,
        rms_dp=0.01,
    )


def test_quality_png_is_drawn_from_eval_records_alone_and_says_so(tmp_path):
    import matplotlib.image

    from edgekit.results.report import write_report

    db = tmp_path / "q.db"
    with Store(db) as s:
        s.append([_quality("tiny-gemma4-Q4_0.gguf", "a" * 64, 0.2), _quality("tiny-gemma4-Q8_0.gguf", "b" * 64, 0.003)])
    md = write_report(db, tmp_path / "rep").read_text()
    assert "![mean KL per artifact](quality.png)" in md and "no bench record of these artifacts" in md
    assert matplotlib.image.imread(tmp_path / "rep" / "quality.png").shape[0] > 100
    assert not (tmp_path / "rep" / "tg_vs_peak.png").exists()


def test_a_failed_record_has_no_figures_in_either_table():
    from tests.test_results import make_record

    dead = make_record(
        4,
        oom_killed=True,
        limit_bytes=30_000_000,
        limit_mechanism="cgroup v1",
        tg_tps=0.0,
        tg_tps_sd=0.0,
        pp_tps=0.0,
        pp_tps_sd=0.0,
        ttft_ms=0.0,
        ttft_ms_sd=0.0,
        peak_rss_bytes=0,
        samples={"ttft_ms": [], "tg_tps": []},
    )
    assert dead.failed and not make_record(4).failed
    assert isinstance(dead, Record)
