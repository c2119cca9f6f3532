"""Target profiles: a variant (``extends``) is its base with the variant's fields over it."""

from __future__ import annotations

import dataclasses

from test_bench import BW, LOG_MIB, expected_kv_bytes

from edgekit.builder.pipeline import build
from edgekit.measure import bench as bench_mod
from edgekit.measure.bench import BenchOptions, bench
from edgekit.model.checkpoint import load_checkpoint
from edgekit.profiles.targets import TARGETS, load_target


def test_pi5_lean_is_pi5_with_the_lean_build_and_its_prefill_knobs():
    pi5, lean = TARGETS.get("pi5"), TARGETS.get("pi5-lean")
    assert lean.quants == ("iq4_xs-edge-lean",)
    assert lean.runtime == {**pi5.runtime, "kv_type": "f16", "n_ubatch": 512}
    assert pi5.runtime["kv_type"] == "q8_0" and pi5.runtime["n_ubatch"] == 64  # the base is untouched
    same = (
        "engine",
        "threads",
        "context",
        "memory_budget_gb",
        "bandwidth_gbs",
        "alternatives",
        "enforce_limit",
        "page_size",
    )
    assert {k: getattr(lean, k) for k in same} == {k: getattr(pi5, k) for k in same}
    assert lean.enforce_limit and lean.page_size == 16384


def test_a_variant_overrides_field_by_field_and_knob_by_knob(tmp_path):
    (tmp_path / "dev.toml").write_text(
        'name = "dev"\ndescription = "base"\nengine = "llama.cpp"\nquants = ["q4_0", "q8_0"]\nthreads = 4\n'
        "context = 2048\nmemory_budget_gb = 1.5\nbandwidth_gbs = 17.1\n"
        '[runtime]\nkv_type = "q8_0"\nn_ubatch = 64\nlazy = "on"\n[bench]\nenforce_limit = true\npage_size = 16384\n'
    )
    (tmp_path / "dev-fast.toml").write_text(
        'extends = "dev"\nthreads = 2\n[runtime]\nn_ubatch = 512\n[bench]\nenforce_limit = false\n'
    )
    (tmp_path / "dev-fast-small.toml").write_text('extends = "dev-fast"\nname = "small"\ncontext = 512\n')
    base, fast, small = (load_target(tmp_path / f"{n}.toml") for n in ("dev", "dev-fast", "dev-fast-small"))
    # the variant is named by its own file (never the base's name), or by its own name field
    assert (fast.name, small.name) == ("dev-fast", "small")
    assert fast == dataclasses.replace(
        base,
        name="dev-fast",
        threads=2,
        enforce_limit=False,
        runtime={"kv_type": "q8_0", "n_ubatch": 512, "lazy": "on"},
    )
    assert small == dataclasses.replace(fast, name="small", context=512)  # a chain resolves in order


def test_a_pi5_lean_build_runs_with_pi5_leans_knobs_and_the_engine_applies_them(tiny_ckpt, tmp_path, monkeypatch):
    """The build folder carries the profile's name, so bench (and run, serve, deploy) take pi5-lean's
    [runtime]; the record's knobs are what llama.cpp applied, and its KV buffer is an F16 cache's."""
    monkeypatch.setattr(bench_mod, "host_bandwidth", lambda: dict(BW))
    # --vocab is a request (the tiny model's 1,024 tokens are under the recipe's cap of 65,536)
    folder = build(str(tiny_ckpt), target="pi5-lean", vocab=512, out=tmp_path)
    assert folder.name == "pi5-lean"
    (rec,) = bench(folder, BenchOptions(n_prompt=32, n_gen=2, reps=1, threads=2, ctx=1024, limit=False))
    assert rec.target == "pi5-lean" and "v512-IQ4_XS-edge" in rec.artifact
    assert {k: rec.runtime[k] for k in ("kv_type", "n_ubatch", "flash_attn", "lazy")} == {
        "kv_type": "f16",
        "n_ubatch": 512,
        "flash_attn": "on",
        "lazy": "on",
    }
    expected = expected_kv_bytes(load_checkpoint(tiny_ckpt).config, 1024, rec.runtime)
    q8 = expected_kv_bytes(load_checkpoint(tiny_ckpt).config, 1024, {**rec.runtime, "kv_type": "q8_0"})
    assert abs(rec.kv_cache_bytes - expected) <= LOG_MIB and abs(rec.kv_cache_bytes - q8) > LOG_MIB


def test_a_build_with_towers_recommends_what_fits():
    """pi5's full-vocabulary text + a tower on demand is over its 1.5 GB (1,535 MB with vision on shape-true
    E2B), the lean text fits (1,410 MB): with towers pi5 builds the lean text first. Its variants keep
    their own lists; every listed recipe exists."""
    from edgekit.profiles.recipes import RECIPES

    pi5 = TARGETS.get("pi5")
    assert pi5.build_quants(()) == pi5.quants and pi5.quants[0] == "iq4_xs-edge"
    with_towers = pi5.build_quants(("vision",))
    assert with_towers[0] == "iq4_xs-edge-lean" and sorted(with_towers) == sorted(pi5.quants)
    for name in ("pi5-8gb", "pi5-lean"):
        t = TARGETS.get(name)
        assert t.build_quants(("vision", "audio")) == t.quants
    for t in map(TARGETS.get, TARGETS.names()):
        for q in t.quants_with_towers:
            assert RECIPES.get(q).name == q
