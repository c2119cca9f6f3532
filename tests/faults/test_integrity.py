"""Data integrity: nothing outside the build folder, no manifest over replaced or unchecked bytes,
no NaN/Inf weights built silently, no measured record dropped, and a full disk mid-write leaves
nothing that looks finished.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pytest
from faultkit import assert_one_line, hidden_leftovers, tmpfs
from typer.testing import CliRunner

from edgekit.builder.manifest import read_manifest, verify
from edgekit.cli import app

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture()
def good_build(tiny_ckpt, tmp_path):
    out = tmp_path / "dist"
    assert run("build", "-m", tiny_ckpt, "-q", "f16,q8_0", "--out", out).exit_code == 0
    folder = out / "tiny-gemma4" / "pi5"
    return out, folder, snapshot(folder)


@pytest.fixture()
def disk(tmp_path):
    """disk(size): a fresh small tmpfs, unmounted after the test."""
    with ExitStack() as stack:
        yield lambda size: stack.enter_context(tmpfs(tmp_path / f"tmpfs-{size}", size))


# ---------------------------------------------------------------- names that would leave the folder


@pytest.mark.parametrize("quant", ["x/../../../../evil", "/tmp/evil", "..", "Q4\\..\\evil"])
def test_a_recipe_quant_that_is_a_path_is_refused_before_anything_is_written(tiny_ckpt, tmp_path, monkeypatch, quant):
    from edgekit.profiles.recipes import RECIPES

    monkeypatch.setitem(RECIPES._items, "evil", dataclasses.replace(RECIPES.get("f16"), name="evil", quant=quant))
    before = sorted(tmp_path.parent.rglob("*evil*"))
    assert_one_line(
        run("build", "-m", tiny_ckpt, "-q", "evil", "--out", tmp_path / "out"),
        1,
        f"recipe 'evil': quant must be a plain name (letters, digits, . _ + -; no path separator or "
        f"leading dot), not the string {quant!r}; fix the recipe",
    )
    assert not (tmp_path / "out").exists() and sorted(tmp_path.parent.rglob("*evil*")) == before


@pytest.mark.parametrize("entry", ["/etc/hostname", "../victim.gguf", "sub/../../victim.gguf", "..", "", "-oX"])
def test_a_manifest_entry_outside_the_folder_is_refused_by_bench_and_deploy(good_build, tmp_path, entry):
    _out, folder, _ = good_build
    victim = folder.parent / "victim.gguf"
    shutil.copyfile(folder / "tiny-gemma4-F16.gguf", victim)  # a real GGUF with the right sha256, outside
    m = json.loads((folder / "manifest.json").read_text())
    m["artifacts"][0]["file"] = entry
    (folder / "manifest.json").write_text(json.dumps(m))
    line = (
        f"{folder / 'manifest.json'}: artifact name {entry!r} is not a plain name inside the build folder "
        "(absolute, .., or a path separator); rebuild with `edgekit build`"
    )
    assert_one_line(run("bench", folder, "--no-store", "-p", "4", "-n", "2", "-r", "1"), 1, line)
    inv = tmp_path / "lab.toml"
    inv.write_text('[devices.pi]\ntarget = "pi5"\nhost = "127.0.0.1"\nport = 1\nconnect_timeout = 2\n')
    assert_one_line(run("deploy", folder, "--device", "pi", "--inventory", inv), 1, line)


@pytest.mark.parametrize("entry", ["/etc/hostname", "../victim.npy", "..", "-oX"])
def test_a_lean_id_map_outside_the_folder_is_refused_by_bench_eval_and_deploy(good_build, tmp_path, entry):
    """eval reads a lean artifact's id map and deploy sends it: its name passes the same check as an artifact's."""
    _out, folder, _ = good_build
    m = json.loads((folder / "manifest.json").read_text())
    m["artifacts"][0]["extra"]["vocab"] = {"size": 512, "id_map": entry, "id_map_sha256": "0" * 64}
    (folder / "manifest.json").write_text(json.dumps(m))
    line = (
        f"{folder / 'manifest.json'}: artifact name {entry!r} is not a plain name inside the build folder "
        "(absolute, .., or a path separator); rebuild with `edgekit build`"
    )
    assert_one_line(run("bench", folder, "--no-store", "-p", "4", "-n", "2", "-r", "1"), 1, line)
    assert_one_line(run("eval", folder, "--reference", folder / "tiny-gemma4-F16.gguf", "--no-store"), 1, line)
    inv = tmp_path / "lab.toml"
    inv.write_text('[devices.pi]\ntarget = "pi5"\nhost = "127.0.0.1"\nport = 1\nconnect_timeout = 2\n')
    assert_one_line(run("deploy", folder, "--device", "pi", "--inventory", inv), 1, line)


# ---------------------------------------------------------------- failed rebuilds keep the earlier build


def _poke(shard: Path, tensor: str, value: float) -> None:
    """Set element 7 of ``tensor`` to ``value`` in place, in the tensor's own dtype."""
    from edgekit.model.safetensors_io import read_header

    header, _, base = read_header(shard)
    info = header[tensor]
    dt = {"BF16": np.float32, "F16": np.float16, "F32": np.float32}[info["dtype"]]
    raw = np.array([value], dtype=dt).tobytes()
    if info["dtype"] == "BF16":
        raw = raw[2:]  # the high half of the float32 is the bfloat16
    with open(shard, "r+b") as f:
        f.seek(base + info["data_offsets"][0] + 7 * len(raw))
        f.write(raw)


TENSOR = "model.language_model.layers.3.mlp.down_proj.weight"


@pytest.mark.parametrize("dtype", ["bf16", "f16", "f32"])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_nonfinite_source_weights_are_refused_naming_the_tensor(tmp_path, dtype, value):
    from edgekit.dev.synth import synth

    ckpt = synth(tmp_path / "tiny-gemma4", preset="tiny", seed=3, dtype=dtype)
    _poke(next(ckpt.glob("*.safetensors")), TENSOR, value)
    for quant in ("f32", "q8_0"):  # unquantized (written by the converter) and quantized by llama.cpp
        assert_one_line(
            run("build", "-m", ckpt, "-q", quant, "--out", tmp_path / "out"),
            1,
            f"{ckpt}: tensor {TENSOR} holds 1 NaN/Inf value(s); the checkpoint is corrupt: fetch it "
            "again, or pass --allow-nonfinite to build it anyway",
        )
        folder = tmp_path / "out" / "tiny-gemma4" / "pi5"
        assert not (folder / "manifest.json").exists() and list(folder.iterdir()) == []


def test_allow_nonfinite_builds_and_the_manifest_says_so(tmp_path):
    from edgekit.dev.synth import synth

    ckpt = synth(tmp_path / "tiny-gemma4", preset="tiny", seed=3)
    shard = next(ckpt.glob("*.safetensors"))
    _poke(shard, TENSOR, np.nan)
    _poke(shard, "model.language_model.embed_tokens.weight", np.inf)
    res = run("build", "-m", ckpt, "-q", "f16", "--out", tmp_path / "out", "--allow-nonfinite")
    assert res.exit_code == 0, res.output
    folder = tmp_path / "out" / "tiny-gemma4" / "pi5"
    assert read_manifest(folder).source["nonfinite_tensors"] == {
        TENSOR: 1,
        "model.language_model.embed_tokens.weight": 1,
    }
    assert verify(folder) == []


def test_a_rebuild_refused_late_keeps_the_earlier_build(good_build, tiny_ckpt, tmp_path):
    """NaN found while converting (the scan runs beside it): the earlier manifest and files stay."""
    out, folder, before = good_build
    ckpt = tmp_path / "tiny-gemma4"
    shutil.copytree(tiny_ckpt, ckpt)
    _poke(next(ckpt.glob("*.safetensors")), TENSOR, np.nan)
    res = run("build", "-m", ckpt, "-q", "f16,q8_0", "--out", out)
    assert res.exit_code == 1 and "NaN/Inf" in res.stderr
    assert snapshot(folder) == before and verify(folder) == [] and hidden_leftovers(out) == []


def test_a_quantizer_failure_on_the_last_recipe_keeps_the_earlier_build(good_build, tiny_ckpt, monkeypatch):
    import edgekit.backends.gguf.quantize as q
    from edgekit.core.errors import QuantizeError

    out, folder, before = good_build
    real = q.quantize

    def fails_on_q4_0(src, dst, recipe, threads=0, **kw):
        if recipe.name == "q4_0":
            raise QuantizeError("llama.cpp could not quantize (injected)")
        return real(src, dst, recipe, threads, **kw)

    monkeypatch.setattr(q, "quantize", fails_on_q4_0)
    assert_one_line(
        run("build", "-m", tiny_ckpt, "-q", "q8_0,f16,q4_0", "--out", out), 1, "llama.cpp could not quantize (injected)"
    )
    assert snapshot(folder) == before and verify(folder) == [] and hidden_leftovers(out) == []


def test_an_mlx_build_checks_the_tokenizer_before_copying_it(tiny_ckpt, tmp_path):
    ckpt = tmp_path / "tiny-gemma4"
    shutil.copytree(tiny_ckpt, ckpt)
    out = tmp_path / "dist"
    assert run("build", "-m", ckpt, "--target", "m2", "-q", "mlx-4bit", "--out", out).exit_code == 0
    folder = out / "tiny-gemma4" / "m2"
    before = snapshot(folder)
    tok = ckpt / "tokenizer.json"
    tok.write_bytes(tok.read_bytes()[: tok.stat().st_size // 2])  # a torn download
    line = f"{tok} is unreadable or corrupt (JSONDecodeError); replace it with the original Gemma 4 tokenizer.json"
    assert_one_line(run("build", "-m", ckpt, "--target", "m2", "-q", "mlx-4bit", "--out", out), 1, line)
    assert snapshot(folder) == before and verify(folder) == []
    assert_one_line(run("build", "-m", ckpt, "--target", "m2", "-q", "mlx-4bit", "--out", tmp_path / "fresh"), 1, line)
    assert not (tmp_path / "fresh").exists()


# ---------------------------------------------------------------- full disk mid-write


def test_full_disk_mid_rebuild_keeps_the_earlier_build(tiny_ckpt, disk):
    mnt = disk("48m")  # one F16 build (29.5 MB) fits; a second copy beside it does not
    assert run("build", "-m", tiny_ckpt, "-q", "f16", "--out", mnt).exit_code == 0
    folder = mnt / "tiny-gemma4" / "pi5"
    before = snapshot(folder)
    assert_one_line(
        run("build", "-m", tiny_ckpt, "-q", "f16", "--out", mnt),
        1,
        f"{folder / 'tiny-gemma4-F16.gguf'}: no space left on the device; free space or pass --out on a larger disk",
    )
    assert snapshot(folder) == before and verify(folder) == [] and hidden_leftovers(mnt) == []


def test_full_disk_inside_the_quantizer_says_the_disk_is_full(tiny_ckpt, disk):
    mnt = disk("40m")  # the BF16 intermediate (29.5 MB) fits, the Q8_0 file (16.3 MB) beside it does not
    folder = mnt / "tiny-gemma4" / "pi5"
    res = run("build", "-m", tiny_ckpt, "-q", "q8_0", "--out", mnt)
    assert_one_line(
        res,
        1,
        "llama.cpp could not quantize .tiny-gemma4-BF16.intermediate.gguf to Q8_0 (return code 1); "
        f"the disk holding {folder} has only 0.0 MB free, most likely full: free space or pass --out on a larger disk",
    )
    assert list(folder.iterdir()) == [] and hidden_leftovers(mnt) == []


# ---------------------------------------------------------------- the results store


def _fake_bench(calls):
    from edgekit.results import Record

    def bench(path, opts, points=None, on_records=lambda rs: None):
        calls.append(path)
        recs = [
            Record(
                artifact="a.gguf",
                model="tiny",
                format="gguf",
                quant="Q8_0",
                engine="llama.cpp",
                sha256="0" * 64,
                file_bytes=1,
                device="d",
                target="pi5",
                threads=2,
                ctx=16,
                n_prompt=4,
                n_gen=2,
                reps=1,
                load_ms=1.0,
                ttft_ms=1.0,
                ttft_ms_sd=0.0,
                pp_tps=1.0,
                pp_tps_sd=0.0,
                tg_tps=1.0,
                tg_tps_sd=0.0,
                peak_rss_bytes=1,
            )
        ]
        on_records(recs)  # as bench_sweep hands each child's records over
        return recs

    return bench


def test_an_unusable_store_fails_before_anything_is_measured(good_build, tmp_path, monkeypatch):
    import edgekit.measure.bench

    calls: list = []
    monkeypatch.setattr(edgekit.measure.bench, "bench_sweep", _fake_bench(calls))
    db = tmp_path / "a-folder.db"
    db.mkdir()
    assert_one_line(
        run("bench", good_build[1], "--db", db),
        1,
        f"{db}: cannot open the results store (unable to open database file); pass --db with a writable path",
    )
    assert calls == []


def test_a_store_that_fills_up_after_measuring_loses_no_record(good_build, disk, monkeypatch):
    import edgekit.measure.bench
    from edgekit.results import parse_json

    mnt = disk("1m")
    db = mnt / "r.db"
    calls: list = []
    fake = _fake_bench(calls)

    def measure_then_fill(path, opts, points, on_records):
        _fill(mnt)  # the disk fills while the runs go on
        return fake(path, opts, points, on_records)

    monkeypatch.setattr(edgekit.measure.bench, "bench_sweep", measure_then_fill)
    res = run("bench", good_build[1], "--db", db, "-o", "json")
    assert calls, (res.exit_code, res.exception, res.output)
    assert parse_json(res.stdout) == fake(None, None)  # printed whole (the array closed after the error)
    assert_one_line(
        res,
        1,
        f"{db}: cannot append to the results store (database or disk is full): the 1 record(s) "
        "above were printed but not stored; rerun with --db elsewhere",
    )


def _fill(mnt: Path) -> None:
    fd = os.open(mnt / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass  # ENOSPC: the disk is full
    finally:
        os.close(fd)


@pytest.mark.parametrize("dtype", ["bf16", "f32"])
def test_values_float16_cannot_hold_are_refused_in_an_f16_build(tmp_path, dtype):
    """Finite source weights over ±65504 would become Inf in an F16 file without a word."""
    from edgekit.dev.synth import synth

    ckpt = synth(tmp_path / "tiny-gemma4", preset="tiny", seed=4, dtype=dtype)
    _poke(next(ckpt.glob("*.safetensors")), TENSOR, 1e5)
    assert_one_line(
        run("build", "-m", ckpt, "-q", "f16", "--out", tmp_path / "out"),
        1,
        f"tensor {TENSOR}: 1 value(s) beyond float16's range (±65504) would become Inf in an F16 file; "
        "build the f32 recipe or a quantized one instead",
    )
    assert list((tmp_path / "out" / "tiny-gemma4" / "pi5").iterdir()) == []
    res = run("build", "-m", ckpt, "-q", "f32,q8_0", "--out", tmp_path / "out")  # what the line suggests works
    assert res.exit_code == 0, res.output
