"""The one artifact resolver (edgekit.profiles.resolve): PATH → verified artifacts, each hashed once, with
its settings in one precedence (engine defaults < target < --threads/--ctx/--set), checked in one line."""

from __future__ import annotations

import dataclasses
import shutil

import pytest
from typer.testing import CliRunner

import edgekit.profiles.resolve as resolve_mod
from edgekit.backends.engines import ENGINES
from edgekit.builder.manifest import read_manifest
from edgekit.cli import app
from edgekit.core.errors import ArtifactError, ConfigError
from edgekit.core.host import physical_cores
from edgekit.profiles.resolve import RUN, SCORE, Overrides, default_ctx, resolve, resolve_threads
from edgekit.profiles.targets import TARGETS


@pytest.fixture(scope="module")
def dist(tiny_ckpt, tmp_path_factory):
    """Three artifacts for two engines in one dist folder (its manifest names target pi5)."""
    from edgekit.builder.pipeline import build

    return build(str(tiny_ckpt), target="pi5", quants=["f16", "q8_0", "mlx-bf16"], out=tmp_path_factory.mktemp("d"))


@pytest.fixture()
def loose(dist, tmp_path):
    """A .gguf no manifest lists: no target unless one is given."""
    p = tmp_path / "loose.gguf"
    shutil.copyfile(dist / "tiny-gemma4-F16.gguf", p)
    return p


@pytest.fixture()
def digests(monkeypatch):
    """Every sha256 the resolver computes, by file name."""
    seen: list[str] = []
    real = resolve_mod.artifact_digest

    def counted(p):
        seen.append(p.name)
        return real(p)

    monkeypatch.setattr(resolve_mod, "artifact_digest", counted)
    return seen


def test_a_dist_folder_is_every_artifact_in_manifest_order_each_hashed_once(dist, digests):
    m = read_manifest(dist)
    arts = resolve(dist)
    assert [ra.artifact.file for ra in arts] == [a.file for a in m.artifacts]
    assert sorted(digests) == sorted(a.file for a in m.artifacts)  # one hash per artifact
    assert [ra.engine.name for ra in arts] == [ENGINES.get(ra.format.engine).name for ra in arts]
    assert {ra.engine.name for ra in arts} == {"llama.cpp", "mlx"}
    assert all(ra.target is TARGETS.get("pi5") and ra.manifest == m and ra.model == m.model for ra in arts)
    assert all(ra.sha256 == a.sha256 and ra.tokens.total > 0 for ra, a in zip(arts, m.artifacts, strict=True))
    first = resolve(dist, first=True)
    assert [ra.artifact.file for ra in first] == [m.artifacts[0].file]
    assert len(digests) == 2 * len(m.artifacts)  # `first` still verifies every artifact, as run and serve did


def test_other_settings_do_not_hash_again(dist, digests):
    (ra,) = resolve(dist / "tiny-gemma4-F16.gguf")
    again = ra.with_overrides(Overrides(threads=1, ctx=64, knobs={"n_ubatch": "32"}))
    assert digests == ["tiny-gemma4-F16.gguf"]
    assert (again.settings.threads, again.settings.ctx, again.settings.knobs["n_ubatch"]) == (1, 64, 32)
    assert again.artifact is ra.artifact and ra.settings.knobs["n_ubatch"] == 64  # pi5's, unchanged


def test_precedence_engine_defaults_then_target_then_overrides(loose):
    engine = ENGINES.get("llama.cpp")
    pi5 = TARGETS.get("pi5")
    (bare,) = resolve(loose)
    assert bare.target is None and bare.settings.knobs == engine.knobs.defaults()
    assert bare.settings.threads == physical_cores()
    assert bare.settings.ctx == default_ctx(bare.format.max_context(loose))

    (tgt,) = resolve(loose, target="pi5")
    assert tgt.settings.knobs == {**engine.knobs.defaults(), **engine.knobs.validate(pi5.runtime, "t", strict=False)}
    assert tgt.settings.knobs["n_ubatch"] == 64 != engine.knobs.defaults()["n_ubatch"]  # the target over the engine
    assert tgt.settings.threads == min(pi5.threads, physical_cores()) and tgt.settings.ctx == pi5.context

    over = Overrides(threads=3, ctx=128, knobs={"n_ubatch": "16", "n_batch": "256"})
    (user,) = resolve(loose, target="pi5", overrides=over)
    assert (user.settings.threads, user.settings.ctx) == (3, 128)
    assert user.settings.knobs == {**tgt.settings.knobs, "n_ubatch": 16, "n_batch": 256}  # typed, over the target
    assert user.settings.run_options().knobs == user.settings.knobs

    few = dataclasses.replace(pi5, threads=1, context=96)  # a Target object is taken as it is
    (small,) = resolve(loose, target=few)
    assert (small.settings.threads, small.settings.ctx) == (1, 96)
    (fallback,) = resolve(loose, overrides=Overrides(fallback_ctx=80))  # bench's longest test, without a target
    assert fallback.settings.ctx == 80
    (targeted,) = resolve(loose, target="pi5", overrides=Overrides(fallback_ctx=80))
    assert targeted.settings.ctx == pi5.context  # the target's context comes before the fallback


def test_scoring_uses_the_hosts_cores_and_drops_stand_in_context(dist):
    arts = resolve(dist, overrides=Overrides(knobs={"n_ubatch": "32"}), use=SCORE)
    gguf = [ra for ra in arts if ra.engine.name == "llama.cpp"]
    (mlx,) = [ra for ra in arts if ra.engine.name == "mlx"]
    assert all(ra.settings.threads == physical_cores() for ra in arts)  # not pi5's 4, capped
    assert all(ra.settings.knobs["n_ubatch"] == 32 for ra in gguf)  # a mixed run: the engine that has it
    assert "n_ubatch" not in mlx.settings.knobs and "kv_fill" not in mlx.settings.knobs
    assert "kv_fill" in mlx.with_overrides(Overrides(), RUN).settings.knobs  # bench, run, serve keep it
    with pytest.raises(ConfigError, match="unknown runtime knob"):  # strict where one artifact is run
        resolve(dist, overrides=Overrides(knobs={"n_ubatch": "32"}), use=RUN)


@pytest.mark.parametrize(
    "kwargs, says",
    [
        ({"target": "pi4"}, "unknown target 'pi4'; choose one of: "),
        (
            {"overrides": Overrides(knobs={"n_ubach": "64"})},
            "--set: unknown runtime knob 'n_ubach' for llama.cpp; known: ",
        ),
        (
            {"overrides": Overrides(knobs={"n_ubatch": "0"})},
            "--set: runtime knob n_ubatch = '0' is below 1",
        ),
        (
            {"overrides": Overrides(threads=0)},
            "--threads 0: use at least 1 thread (default: the target's, capped at this host's cores)",
        ),
        (
            {"overrides": Overrides(threads=0), "use": SCORE},
            "--threads 0: use at least 1 thread (default: this host's cores)",
        ),
        ({"overrides": Overrides(ctx=0)}, "--ctx 0: use at least 1 token (leave it out for the target's context)"),
        (
            {"overrides": Overrides(ctx=131073)},
            "--ctx 131073 is longer than loose.gguf was trained for (n_ctx_train 131072); pass --ctx 131072 or less",
        ),
    ],
)
def test_bad_settings_are_one_line(loose, kwargs, says):
    with pytest.raises(ConfigError) as e:
        resolve(loose, **kwargs)
    assert str(e.value).startswith(says) and "\n" not in str(e.value)


def test_an_unknown_knob_in_a_target_names_the_target(loose):
    bad = dataclasses.replace(TARGETS.get("pi5"), runtime={"kv_typ": "q8_0"})
    with pytest.raises(ConfigError, match=r"^target pi5 \[runtime\]: unknown runtime knob 'kv_typ'; known: "):
        resolve(loose, target=bad)


def test_thread_rule():
    pi5 = TARGETS.get("pi5")
    assert resolve_threads(5, pi5) == 5 and resolve_threads(None, pi5) == min(pi5.threads, physical_cores())
    assert resolve_threads(None, pi5, SCORE) == physical_cores() == resolve_threads(None, None)


def test_a_changed_artifact_or_missing_path_is_one_line(dist, tmp_path):
    copy = tmp_path / "d"
    shutil.copytree(dist, copy)
    with (copy / "tiny-gemma4-Q8_0.gguf").open("r+b") as f:
        f.seek(-1, 2)
        f.write(b"\x01" if f.read(1) != b"\x01" else b"\x02")
    with pytest.raises(ArtifactError, match=r"tiny-gemma4-Q8_0.gguf: bytes/sha256 differ from manifest.json"):
        resolve(copy, first=True)  # the first artifact is fine: a folder is verified whole
    with pytest.raises(ArtifactError, match="no such artifact"):
        resolve(tmp_path / "nope.gguf")


def test_bench_with_a_bad_target_or_knob_exits_1_before_any_child(dist, monkeypatch):
    import edgekit.measure.bench as bench_mod

    monkeypatch.setattr(bench_mod, "run_child", lambda *a, **kw: pytest.fail("a child process was started"))
    runner = CliRunner()
    for args, says in (
        (["--target", "pi4"], "unknown target 'pi4'; choose one of: "),
        (["--set", "n_ubach=64"], "--set: unknown runtime knob 'n_ubach' for llama.cpp; known: "),
    ):
        res = runner.invoke(app, ["bench", str(dist / "tiny-gemma4-F16.gguf"), "--no-store", "-p", "8", *args])
        assert res.exit_code == 1 and res.stdout == "", res.output
        assert res.stderr.startswith(f"edgekit: error: {says}") and res.stderr.count("\n") == 1


def test_a_sweep_hashes_each_artifact_once(dist, digests, monkeypatch):
    """bench_sweep resolves PATH once and derives each point's settings from it."""
    import edgekit.measure.bench as bench_mod
    from edgekit.measure.sweep import expand

    seen = []
    monkeypatch.setattr(bench_mod, "measure_all", lambda arts, opts, on_records: seen.append(arts) or [])
    points = expand([8], [2], threads=[1, 2], ctx=[64, 128])
    bench_mod.bench_sweep(dist / "tiny-gemma4-F16.gguf", bench_mod.BenchOptions(reps=1), points)
    assert digests == ["tiny-gemma4-F16.gguf"]
    assert [(a.settings.threads, a.settings.ctx) for (a,) in seen] == [(1, 64), (2, 64), (1, 128), (2, 128)]


@pytest.mark.slow
def test_a_task_suite_hashes_each_artifact_once(dist, digests, tmp_path):
    """eval --suite used to plan each artifact, then open a session that planned (and hashed) it again."""
    import json

    from edgekit.eval.suite import SuiteOptions, run_suites

    suite = tmp_path / "s.jsonl"
    suite.write_text(json.dumps({"id": "a", "suite": "t", "prompt": "Hi", "expected": "x", "scorer": "exact"}) + "\n")
    f16, q8 = dist / "tiny-gemma4-F16.gguf", dist / "tiny-gemma4-Q8_0.gguf"
    recs = run_suites([q8], suite, SuiteOptions(reference=str(f16), max_tokens=2, threads=1))
    assert sorted(digests) == sorted([f16.name, q8.name])
    assert {r.artifact for r in recs} == {f16.name, q8.name}
