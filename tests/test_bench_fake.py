"""bench driven by the fake backend (tests/fake_backend.py): every figure below is predicted from the
artifact's knobs, so these check bench's own arithmetic and streaming, with no compiled engine."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from edgekit.builder.manifest import Artifact, Manifest, artifact_digest, write_manifest
from edgekit.cli import app
from edgekit.core.errors import BenchError, BudgetExceeded
from edgekit.measure.bench import BenchOptions, bench, bench_sweep, check_budget
from edgekit.measure.sweep import expand
from edgekit.profiles.targets import Target
from edgekit.results import Store

QUICK = {"n_prompt": 8, "n_gen": 4, "reps": 2, "roofline": False}


def dist(folder, fb, specs):
    """A dist folder with a manifest listing one fake artifact per (quant, knobs), in order."""
    folder.mkdir(exist_ok=True)
    arts = []
    for quant, knobs in specs:
        p = fb.write_artifact(folder, quant, **knobs)
        size, sha = artifact_digest(p)
        arts.append(Artifact(file=p.name, format="fake", quant=quant, recipe=quant, bytes=size, sha256=sha))
    write_manifest(folder, Manifest("fake", "", {}, arts, {}, {}))
    return folder


def target(budget_bytes: float) -> Target:
    return Target("fake-dev", "a device for the fake backend", "fake", (), 2, 64, budget_bytes / 1e9, 1.0)


def test_records_carry_what_the_engine_applied(fake_backend, tmp_path):
    p = fake_backend.write_artifact(tmp_path, weights_bytes=123_456)
    (r,) = bench(p, BenchOptions(**QUICK, threads=1, runtime={"kv_bytes": "100"}))
    assert (r.engine, r.format, r.quant, r.artifact) == ("fake", "fake", "F1", "fake-F1.fake")
    assert (r.ctx, r.threads, r.n_prompt, r.n_gen, r.reps) == (12, 1, 8, 4, 2)  # ctx = p + n (llama-bench)
    assert r.runtime == {"kv_bytes": 100, "n_batch": 512}  # --set typed by the fake's schema, defaults filled
    assert r.kv_cache_bytes == 12 * 100  # the runner's figure for the applied context
    assert r.bytes_per_token == 123_456 and r.file_bytes == p.stat().st_size
    assert len(r.samples["tg_tps"]) == 2


def test_speed_is_what_the_engine_spends(fake_backend, tmp_path):
    """decode sleeps 40 ms (slow) or 2 ms (fast) a token and prefill 2 ms a token. A sleep never ends early,
    so bench's rates are at most 1000/ms; a loaded host only lowers them (the lower bounds, 20x under,
    catch a unit slip, not a slow host)."""
    slow = fake_backend.write_artifact(tmp_path, "SLOW", decode_ms=40, prefill_ms=2)
    fast = fake_backend.write_artifact(tmp_path, "FAST", decode_ms=2, prefill_ms=2)
    (s,) = bench(slow, BenchOptions(**QUICK))
    (f,) = bench(fast, BenchOptions(**QUICK))
    assert 25 / 20 < s.tg_tps <= 25 * 1.001
    assert 500 / 20 < f.tg_tps <= 500 * 1.001
    assert f.tg_tps > s.tg_tps
    for r in (s, f):
        assert 500 / 20 < r.pp_tps <= 500 * 1.001 and r.ttft_ms >= 8 * 2  # 8 prompt tokens at 2 ms
        assert r.tg_tps == pytest.approx(sum(r.samples["tg_tps"]) / 2)


def test_memory_held_is_measured_and_gated(fake_backend, tmp_path):
    """An artifact that holds 150 MB peaks 150 MB above one that holds none; a budget between the two
    stops the second only."""
    folder = dist(tmp_path / "d", fake_backend, [("LEAN", {}), ("HEAVY", {"hold_mb": 150})])
    lean, heavy = bench(folder, BenchOptions(**QUICK))
    assert heavy.peak_rss_bytes - lean.peak_rss_bytes == pytest.approx(150e6, rel=0.1)
    assert check_budget([lean, heavy]) == []  # no target: no budget
    budget = lean.peak_rss_bytes + 75e6
    lean, heavy = bench(folder, BenchOptions(**QUICK, target=target(budget)))
    assert lean.budget_bytes == heavy.budget_bytes == int(budget)
    lines = check_budget([lean, heavy], enforce=False)
    assert len(lines) == 1 and "fake-HEAVY.fake" in lines[0], lines
    with pytest.raises(BudgetExceeded, match=r"fake-HEAVY\.fake"):
        check_budget([lean, heavy])


def test_failures_are_one_clear_error(fake_backend, tmp_path):
    with pytest.raises(BenchError, match="failed to load it"):
        bench(fake_backend.write_artifact(tmp_path, "L", fail="load"), BenchOptions(**QUICK))
    with pytest.raises(BenchError, match=r"fake child process died \(exit code 3"):
        bench(fake_backend.write_artifact(tmp_path, "C", fail="crash"), BenchOptions(**QUICK))
    with pytest.raises(BenchError, match="decode call 3"):  # the warm-up decodes 1, the first rep fails at 3
        bench(fake_backend.write_artifact(tmp_path, "D", fail="decode", fail_after=2), BenchOptions(**QUICK))


def test_cli_prints_and_stores_each_row_before_a_later_artifact_fails(fake_backend, tmp_path):
    folder = dist(tmp_path / "d", fake_backend, [("A", {}), ("B", {}), ("BAD", {"fail": "load"}), ("C", {})])
    db = tmp_path / "r.db"
    res = CliRunner().invoke(
        app, ["bench", str(folder), "-p", "8", "-n", "4", "-r", "1", "-o", "jsonl", "--db", str(db)]
    )
    assert res.exit_code != 0
    rows = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    assert [r["quant"] for r in rows] == ["A", "B"]
    with Store(db) as store:
        assert [r.quant for r in store.records()] == ["A", "B"]
    assert "fake-BAD.fake: the fake engine failed to load it" in res.output
    assert "Traceback" not in res.output


def test_sweep_runs_every_point_in_order_with_what_it_applied(fake_backend, tmp_path):
    p = fake_backend.write_artifact(tmp_path)
    points = expand([8], [4], [0], [1, 2], [None], {"kv_bytes": [10, 30]})
    recs = bench_sweep(p, BenchOptions(reps=1, roofline=False), points)
    got = [(r.threads, r.runtime["kv_bytes"], r.kv_cache_bytes) for r in recs]
    want = [(pt.threads, pt.knobs["kv_bytes"], 12 * pt.knobs["kv_bytes"]) for pt in points]
    assert got == want and len(got) == 4 and sorted(set(got)) == sorted(got)


def test_sweep_of_tests_runs_on_one_load(fake_backend, tmp_path):
    """-p 4,8 -n 2: one child, a record per test, each with its own context-independent figures."""
    p = fake_backend.write_artifact(tmp_path, prefill_ms=1)
    points = expand([4, 8], [2], [0], [None], [16], {})
    recs = bench_sweep(p, BenchOptions(reps=1, roofline=False), points)
    assert [(r.n_prompt, r.n_gen, r.ctx) for r in recs] == [(4, 2, 16), (8, 2, 16)]
    assert recs[0].load_ms == recs[1].load_ms  # the same load
