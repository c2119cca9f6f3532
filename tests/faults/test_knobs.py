"""Runtime settings that were silently wrong (issue 11.5): each is typed by the engine's knob schema
or rejected with one line before any child starts, and a record states only what the engine applied."""

from __future__ import annotations

import dataclasses

import pytest
from typer.testing import CliRunner

from edgekit.cli import app
from edgekit.results import parse_jsonl

pytest.importorskip("llama_cpp")

LLAMA_KNOBS = "flash_attn, kv_type, lazy, mlock, n_batch, n_gpu_layers, n_ubatch, repack, swa_full, towers, use_mmap"


@pytest.fixture(scope="module")
def f16(tiny_ckpt, tmp_path_factory):
    from edgekit.builder.pipeline import build

    return (
        build(str(tiny_ckpt), target="pi5", quants=["f16"], out=tmp_path_factory.mktemp("dist"))
        / "tiny-gemma4-F16.gguf"
    )


@pytest.fixture
def no_child(monkeypatch):
    """Fail the test if a bench child is started: the settings must be rejected first."""
    import edgekit.measure.bench as bench_mod

    def started(*a, **kw):
        raise AssertionError("a child process was started")

    monkeypatch.setattr(bench_mod, "run_child", started)


def bench(*args):
    return CliRunner().invoke(app, ["bench", *map(str, args), "--no-store", "-o", "jsonl"])


def one_line(res, line: str) -> None:
    assert res.exit_code == 1, res.output
    assert res.stdout == ""
    assert res.stderr == f"edgekit: error: {line}\n"


@pytest.mark.parametrize(
    "value, expected", [("False", False), ("false", False), ("off", False), ("TRUE", True), ("1", True)]
)
def test_bool_knob_strings_are_booleans(value, expected):
    from edgekit.backends.gguf.runner import KNOBS

    assert KNOBS.validate({"repack": value}, "--set") == {"repack": expected}


def test_set_repack_false_reaches_the_record_as_false(f16):
    res = bench(f16, "-p", 8, "-n", 2, "-r", 1, "--ctx", 64, "--threads", 1, "--target", "pi5", "--set", "repack=False")
    assert res.exit_code == 0, res.output
    (rec,) = parse_jsonl(res.stdout)
    assert rec.runtime["repack"] is False


def test_bool_knob_other_words_are_rejected(f16, no_child):
    one_line(
        bench(f16, "--set", "repack=maybe"),
        "--set: runtime knob repack = 'maybe' is not a boolean; use a bool "
        "(let llama.cpp repack weights into CPU-friendly layouts (an anonymous copy))",
    )


def test_unknown_set_key_names_the_known_keys(f16, no_child):
    one_line(
        bench(f16, "--set", "n_ubach=64"), f"--set: unknown runtime knob 'n_ubach' for llama.cpp; known: {LLAMA_KNOBS}"
    )


def test_zero_ubatch_is_rejected(f16, no_child):
    one_line(
        bench(f16, "--set", "n_ubatch=0"),
        "--set: runtime knob n_ubatch = '0' is below 1; use a int (physical batch for prefill (capped at n_batch))",
    )


def test_negative_threads_are_rejected(f16, no_child):
    one_line(
        bench(f16, "-t", -4), "--threads -4: use at least 1 thread (default: the target's, capped at this host's cores)"
    )


def test_ctx_past_uint32_is_rejected(f16, no_child):
    one_line(
        bench(f16, "--ctx", 4294967312),
        "--ctx 4294967312 is too long: llama.cpp counts the context in 32 bits (at most 4294967295); pass a smaller "
        "--ctx",
    )


def test_ctx_past_the_trained_context_is_rejected(f16, no_child):
    # the tiny preset's max_position_embeddings, written as gemma4.context_length
    one_line(
        bench(f16, "--ctx", 131073),
        "--ctx 131073 is longer than tiny-gemma4-F16.gguf was trained for (n_ctx_train 131072); pass --ctx 131072 or "
        "less",
    )


def test_unknown_profile_knob_is_rejected(f16, no_child):
    from edgekit.core.errors import ConfigError
    from edgekit.measure.bench import BenchOptions
    from edgekit.measure.bench import bench as run
    from edgekit.profiles.targets import TARGETS

    tgt = dataclasses.replace(TARGETS.get("pi5"), runtime={"kv_typ": "q8_0"})
    with pytest.raises(ConfigError) as e:
        run(f16, BenchOptions(n_prompt=8, n_gen=2, reps=1, target=tgt, roofline=False))
    known = (
        "flash_attn, kv_fill, kv_type, lazy, mlock, n_batch, n_gpu_layers, n_ubatch, ple, repack, swa_full, "
        "towers, use_mmap"
    )
    assert str(e.value) == f"target pi5 [runtime]: unknown runtime knob 'kv_typ'; known: {known}"


def test_the_record_holds_the_context_llama_cpp_applied(f16):
    import llama_cpp

    res = bench(f16, "-p", 8, "-n", 2, "-r", 1, "--ctx", 100, "--threads", 1)
    assert res.exit_code == 0, res.output
    (rec,) = parse_jsonl(res.stdout)
    llm = llama_cpp.Llama(str(f16), n_ctx=100, n_batch=100, n_threads=1, verbose=False, swa_full=False)
    try:
        applied = llm.n_ctx()
    finally:
        llm.close()
    # llama.cpp rounds the context up (100 → 256 here, measured): the record says what it ran
    assert applied > 100 and rec.ctx == applied
    assert rec.runtime["n_batch"] == 100 and rec.threads == 1  # capped at the context asked, read back
