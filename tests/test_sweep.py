"""Sweeps as llama-bench runs them (grid, names, depth), the gate's limit lines, and the store and
printers with the limit fields."""

from __future__ import annotations

import dataclasses
import json
import sqlite3

import pytest
from typer.testing import CliRunner

from edgekit.cli import app
from edgekit.core.errors import ConfigError
from edgekit.measure.budget import THRASH_MAJFLT_PER_TOKEN, gate_lines
from edgekit.measure.sweep import Point, Test, expand, ints, knob_lists
from edgekit.results import PARSERS, PRINTERS, Store, parse_markdown, printer, to_markdown
from tests.test_results import make_record


def test_grid_is_llama_bench_nesting_with_tests_inside_each_point():
    pts = expand(
        [128, 512],
        [32],
        depth=[0, 1024],
        threads=[2, 4],
        ctx=[4096],
        knobs=knob_lists({"kv_type": "f16,q8_0", "n_ubatch": 64}),
    )
    tests = (Test(128, 32, 0), Test(512, 32, 0), Test(128, 32, 1024), Test(512, 32, 1024))
    assert pts == [
        Point(threads=t, ctx=4096, knobs={"kv_type": kv, "n_ubatch": 64}, tests=tests)
        for kv in ("f16", "q8_0")
        for t in (2, 4)
    ]
    assert [t.knobs for t in pts] == [{"kv_type": "f16", "n_ubatch": 64}] * 2 + [
        {"kv_type": "q8_0", "n_ubatch": 64}
    ] * 2
    assert [t.pp_name for t in tests] == ["pp128", "pp512", "pp128 @ d1024", "pp512 @ d1024"]
    assert tests[3].tg_name == "tg32 @ d1024" and tests[3].name == "pp512 @ d1024 + tg32 @ d1024"


def test_defaults_are_one_point_one_test():
    assert expand([512], [128]) == [Point(threads=None, ctx=None, knobs={}, tests=(Test(512, 128, 0),))]


def test_knob_values_split_one_by_one():
    # raw --set strings: each engine's knob schema types them (edgekit.profiles.knobs)
    assert knob_lists({"n_ubatch": "64,128", "repack": "true,false", "lazy": "on"}) == {
        "n_ubatch": ["64", "128"],
        "repack": ["true", "false"],
        "lazy": ["on"],
    }


def test_bad_lists_are_one_clear_line():
    assert ints("128, 512,128", "-p") == [128, 512]
    with pytest.raises(ConfigError, match=r"^-p '128,x': expected comma-separated integers, e.g. -p 128,512$"):
        ints("128,x", "-p")
    with pytest.raises(ConfigError, match=r"^-n 0: must be at least 1$"):
        ints("0", "-n")
    assert ints("0", "-d", minimum=0) == [0]


def test_cli_rejects_a_bad_sweep_before_anything_runs(tmp_path):
    r = CliRunner().invoke(app, ["bench", str(tmp_path), "-p", "128,abc"])
    assert (
        r.exit_code == 1
        and r.stderr.strip() == "edgekit: error: -p '128,abc': expected comma-separated integers, e.g. -p 128,512"
    )


def test_markdown_names_tests_as_llama_bench():
    recs = [make_record(4, depth=1024, n_prompt=512, n_gen=128), make_record(8)]
    rows = parse_markdown(to_markdown(recs))
    assert [r["test"] for r in rows] == ["pp512 @ d1024 + tg128 @ d1024", "pp512 + tg128"]
    compact = parse_markdown(printer("md").render(recs))  # bench's default: a row per test, as llama-bench
    assert [r["test"] for r in compact] == ["pp512 @ d1024", "tg128 @ d1024", "pp512", "tg128"]


LIMITED = dict(
    limit_bytes=1_500_000_000,
    limit_mechanism="cgroup v1 memory.limit_in_bytes",
    oom_killed=False,
    cgroup_peak_bytes=1_400_000_000,
    majflt_prefill=12.0,
    majflt_per_token=2.5,
    page_size=4096,
    peak_16k_bytes=1_130_000_000,
)


def test_gate_lines_say_which():
    ok = make_record(4, **LIMITED)
    killed = dataclasses.replace(ok, oom_killed=True)
    thrash = dataclasses.replace(ok, majflt_per_token=THRASH_MAJFLT_PER_TOKEN + 0.5)
    base = make_record(4, tg_tps=10.0)
    slow = dataclasses.replace(ok, tg_tps=4.9)
    assert gate_lines([ok]) == []
    assert gate_lines([killed]) == [
        "tiny-Q4_0.gguf (pp512, tg128): OOM-killed by the kernel inside the 1,500 MB "
        "memory limit (cgroup v1 memory.limit_in_bytes)"
    ]
    assert gate_lines([thrash]) == [
        "tiny-Q4_0.gguf (pp512, tg128): thrashes inside the 1,500 MB memory limit: "
        "64 major page faults per decoded token (the gate allows 64)"
    ]
    assert gate_lines([base, slow]) == [
        "tiny-Q4_0.gguf (pp512, tg128): decodes at 4.90 t/s inside the 1,500 MB "
        "memory limit, 0.49x the 10.00 t/s without it (the gate needs 0.5x)"
    ]
    assert gate_lines([base, dataclasses.replace(ok, tg_tps=5.0)]) == []
    over16 = dataclasses.replace(ok, peak_16k_bytes=1_500_100_000)
    assert gate_lines([over16]) == [
        "tiny-Q4_0.gguf: peak at 16 KB pages 1500.1 MB is 0.1 MB over the pi5 budget of 1500 MB"
    ]


@pytest.mark.parametrize("fmt", ["csv", "json", "jsonl"])
def test_limit_fields_survive_every_lossless_printer(fmt):
    recs = [
        make_record(4, **LIMITED, depth=256),
        make_record(8, **{**LIMITED, "oom_killed": True}),
        make_record(1, limit_bytes=1_500_000_000, limit_not_enforced="no memory cgroups on darwin (Linux only)"),
    ]
    assert PARSERS[fmt](PRINTERS[fmt](recs)) == recs


def test_old_store_rows_read_back_with_the_new_fields_unset(tmp_path):
    db = tmp_path / "old.db"
    old = make_record(4).to_json()
    for k in (
        "depth",
        "page_size",
        "peak_16k_bytes",
        "limit_bytes",
        "limit_mechanism",
        "limit_not_enforced",
        "cgroup_peak_bytes",
        "oom_killed",
        "majflt_prefill",
        "majflt_per_token",
    ):
        del old[k]
    with Store(db):
        pass
    con = sqlite3.connect(db)
    con.execute(
        "INSERT INTO records (timestamp, device, artifact, sha256, engine, quant, data) VALUES (?,?,?,?,?,?,?)",
        ("t", "d", "a", "s", "llama.cpp", "q", json.dumps(old)),
    )
    con.commit()
    con.close()
    with Store(db) as s:
        (back,) = s.records()
    assert back == make_record(4) and back.depth == 0 and back.limit_bytes is None and back.oom_killed is None
