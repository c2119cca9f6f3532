"""Records: every printer parses back to the same records; the SQLite store keeps every row when two
processes append at once."""

from __future__ import annotations

import multiprocessing as mp
import sqlite3

import pytest

from edgekit.core.errors import OutputError
from edgekit.results import MB, PARSERS, PRINTERS, Record, Store, default_db, parse_markdown, to_markdown


def make_record(i: int, **over) -> Record:
    base = dict(
        artifact=f"tiny-Q{i}_0.gguf",
        model="tiny",
        format="gguf",
        quant=f"Q{i}_0",
        engine="llama.cpp",
        sha256=f"{i:064x}",
        file_bytes=10_053_664 + i,
        device="pi5-a",
        target="pi5",
        threads=4,
        ctx=2048,
        n_prompt=512,
        n_gen=128,
        reps=3,
        load_ms=12.345678 + i,
        ttft_ms=1234.56789 / (i + 1),
        ttft_ms_sd=0.1 / 3,
        pp_tps=2074.6012345,
        pp_tps_sd=31.16,
        tg_tps=1 / 3 + i,
        tg_tps_sd=2 / 7,
        peak_rss_bytes=1_122_263_040 + i,
        peak_anon_bytes=45_096_960,
        peak_file_bytes=43_552_768,
        kv_cache_bytes=7_340_032,
        compute_buffer_bytes=26_235_372,
        bytes_per_token=13_502_152,
        host_read_gbs=24.9,
        achieved_gbs=6.66,
        roofline_pct=26.73,
        predicted_tg_tps=1266.46,
        budget_bytes=1_500_000_000,
        timestamp="2026-11-23T02:35:58Z",
        edgekit_version="0.1.0",
        engine_version="0.3.36",
        host={"cpu": "AMD EPYC", "cores_physical": 2, "ram_bytes": 25_276_502_016, "os": "Linux"},
        versions={"edgekit": "0.1.0", "gguf": "0.19.0"},
        runtime={"use_mmap": True, "kv_type": "f16"},
        samples={"ttft_ms": [1.5, 2.25, 3.0], "tg_tps": [0.1, 0.2, 0.30000000000000004]},
        extra={"model_buffers": {"CPU_Mapped": 16_284_385}, "note": 'quotes " and , commas'},
    )
    base.update(over)
    return Record(**base)


RECORDS = [
    make_record(4),
    make_record(8),
    # an MLX record: no threads, no anon/file split, an MLX peak; odd characters in names
    make_record(
        1,
        artifact='tiny|mlx, "4bit"',
        format="mlx",
        engine="mlx",
        quant="4bit-g64",
        threads=None,
        peak_anon_bytes=None,
        peak_file_bytes=None,
        mlx_peak_bytes=377_100_000,
        compute_buffer_bytes=None,
        target="",
        budget_bytes=None,
        predicted_tg_tps=None,
        n_prompt=32,
        n_gen=8,
    ),
]


@pytest.mark.parametrize("fmt", ["csv", "json", "jsonl"])
def test_lossless_printers_parse_back_to_equal_records(fmt):
    text = PRINTERS[fmt](RECORDS)
    back = PARSERS[fmt](text)
    assert back == RECORDS
    # floats survive bit for bit, not just to printed precision
    assert [r.tg_tps for r in back] == [r.tg_tps for r in RECORDS]


def test_markdown_parses_back_to_the_printed_figures():
    text = to_markdown(RECORDS)  # the wide table (report, lab, --wide): one table, a row per record
    rows = parse_markdown(text)
    assert len(rows) == len(RECORDS)
    for r, row in zip(RECORDS, rows, strict=True):
        assert row["test"] == f"pp{r.n_prompt} + tg{r.n_gen}"  # llama-bench's names, in a column
        assert row["artifact"] == r.artifact
        assert row["quant"] == r.quant and row["engine"] == r.engine and row["device"] == r.device
        assert row["threads"] == (None if r.threads is None else float(r.threads))
        assert row["ctx"] == r.ctx
        assert row["TTFT ms"] == (round(r.ttft_ms, 2), round(r.ttft_ms_sd, 2))
        assert row["pp t/s"] == (round(r.pp_tps, 2), round(r.pp_tps_sd, 2))
        assert row["tg t/s"] == (round(r.tg_tps, 2), round(r.tg_tps_sd, 2))
        assert row["peak RSS MB"] == round(r.peak_rss_bytes / MB, 1)
        assert row["KV MB"] == round(r.kv_cache_bytes / MB, 2)
        assert row["roofline %"] == round(r.roofline_pct, 1)
        if r.engine == "mlx":
            assert row["MLX peak MB"] == round(r.mlx_peak_bytes / MB, 1)
            assert row["anon MB"] is None and row["budget MB"] is None
        else:
            assert row["anon MB"] == round(r.peak_anon_bytes / MB, 1)
            assert row["file MB"] == round(r.peak_file_bytes / MB, 1)
            assert row["budget MB"] == round(r.budget_bytes / MB)
            assert row["predicted tg t/s"] == round(r.predicted_tg_tps, 1)
            assert row["MLX peak MB"] is None
    # footnotes only for the columns shown: no limit, 16 KB page or served columns here
    note = text.split("\n\n")[1]
    assert "roofline:" in note and "anon/file:" in note
    assert "cgroup peak:" not in note and "peak @16K:" not in note and "via served:" not in note


def _append_many(db: str, who: str, n: int) -> None:
    store = Store(db, timeout_s=120)
    for i in range(n):  # one transaction each: the most interleaving two writers can have
        store.append([make_record(4, device=who, artifact=f"{who}-{i}")])
    store.close()


def test_two_processes_appending_at_once_keep_every_row(tmp_path):
    db = str(tmp_path / "results.db")
    Store(db).close()  # create the schema first, as a bench does before children start
    ctx = mp.get_context("spawn")
    n = 150
    procs = [ctx.Process(target=_append_many, args=(db, who, n)) for who in ("a", "b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    with Store(db) as store:
        got = store.records()
    assert len(got) == 2 * n
    assert {r.artifact for r in got} == {f"{w}-{i}" for w in "ab" for i in range(n)}
    assert got[0] == make_record(4, device=got[0].device, artifact=got[0].artifact)
    assert sqlite3.connect(db).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_default_store_path_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("EDGEKIT_DB", str(tmp_path / "x.db"))
    assert default_db() == tmp_path / "x.db"
    monkeypatch.delenv("EDGEKIT_DB")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert default_db() == tmp_path / "data" / "edgekit" / "results.db"


def test_unusable_store_is_one_clear_error(tmp_path):
    bad = tmp_path / "not-a-db.db"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(OutputError, match=r"not-a-db.db: cannot open the results store .*; pass --db"):
        Store(bad)


def test_report_writes_the_latest_figures_and_plots(tmp_path):
    from typer.testing import CliRunner

    from edgekit.cli import app

    db = tmp_path / "r.db"
    old = make_record(4, tg_tps=1.0, timestamp="2026-11-22T00:00:00Z")
    new = make_record(4, tg_tps=2.5)  # same device/artifact/settings: replaces `old`
    other = make_record(8, device="mac-m4", engine="mlx", threads=None)
    with Store(db) as s:
        s.append([old, new, other])
    res = CliRunner().invoke(app, ["report", "--db", str(db), "--out", str(tmp_path / "rep")])
    assert res.exit_code == 0, res.output
    md = tmp_path / "rep" / "report.md"
    assert res.stdout == f"{md}\n"
    rows = parse_markdown(md.read_text())
    assert [(r["artifact"], r["device"], r["tg t/s"][0]) for r in rows] == [
        (new.artifact, "pi5-a", 2.5),
        (other.artifact, "mac-m4", round(other.tg_tps, 2)),
    ]
    import matplotlib.image

    for png in ("tg_vs_peak.png", "ttft.png"):
        assert f"]({png})" in md.read_text()
        img = matplotlib.image.imread(tmp_path / "rep" / png)
        assert img.shape[0] > 100 and img.shape[1] > 100


def test_report_on_an_empty_store_is_one_clear_line(tmp_path):
    from typer.testing import CliRunner

    from edgekit.cli import app

    Store(tmp_path / "empty.db").close()
    res = CliRunner().invoke(app, ["report", "--db", str(tmp_path / "empty.db"), "--out", str(tmp_path / "rep")])
    assert res.exit_code == 1
    assert res.stderr == (
        f"edgekit: error: {tmp_path / 'empty.db'}: the results store holds no records; run `edgekit bench` first\n"
    )


def test_json_streams_the_bytes_a_whole_list_dump_writes():
    import json

    from edgekit.results import JsonPrinter

    p = JsonPrinter()
    streamed = "".join(p.feed([r]) for r in RECORDS) + p.footer()  # a row at a time, as bench prints them
    assert streamed == json.dumps([r.to_json() for r in RECORDS], indent=2, sort_keys=True) + "\n"
    assert JsonPrinter().render([]) == "[]\n"


def test_a_streamed_table_names_a_column_a_later_row_needed():
    from edgekit.results import printer

    mlx, gguf = RECORDS[2], RECORDS[0]  # the first row has no anon/file split, the second has
    p = printer("md", wide=True)
    text = p.feed([mlx]) + p.feed([gguf]) + p.footer()
    assert "anon MB" not in text.splitlines()[0]  # the header was printed before the second row existed
    assert (
        "not shown: target, anon MB, file MB, compute MB, predicted tg t/s, budget MB, verdict (values in later "
        "rows; -o json has every field)"
    ) in text.splitlines()
