"""`edgekit build` end to end through the CLI: the manifest, and every kind of bad input.

Each failure must be one line on stderr, a non-zero exit, and nothing left that looks finished.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from edgekit.cli import app
from edgekit.model.checkpoint import sha256_file

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args))


def leftovers(root) -> list[str]:
    """Files a user could mistake for output: anything but folders."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []


@pytest.fixture()
def ckpt_copy(tiny_ckpt, tmp_path):
    dst = tmp_path / "tiny-gemma4"
    shutil.copytree(tiny_ckpt, dst)
    return dst


def test_build_writes_manifest_last_with_hashes(tiny_ckpt, tmp_path):
    res = run("build", "--model", str(tiny_ckpt), "--target", "pi5", "--quant", "q8_0,q4_0", "--out", str(tmp_path))
    assert res.exit_code == 0, res.output
    folder = tmp_path / "tiny-gemma4" / "pi5"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert [a["quant"] for a in manifest["artifacts"]] == ["Q8_0", "Q4_0"]
    for a in manifest["artifacts"]:
        p = folder / a["file"]
        assert a["format"] == "gguf" and a["bytes"] == p.stat().st_size and a["sha256"] == sha256_file(p)
        assert a["sha256"][:12] in res.stdout and a["file"] in res.stdout
    assert manifest["target"] == "pi5" and manifest["recipes"]["q4_0"]["ftype"] == "MOSTLY_Q4_0"
    assert manifest["source"]["files"]["config.json"] == sha256_file(tiny_ckpt / "config.json")
    assert {"edgekit", "gguf", "llama-cpp-python"} <= set(manifest["versions"])
    # Only the artifacts and the manifest: the intermediate unquantized file is gone.
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["manifest.json", "tiny-gemma4-Q8_0.gguf", "tiny-gemma4-Q4_0.gguf"]
    )


def test_default_quants_come_from_the_target(tiny_ckpt, tmp_path, caplog):
    from edgekit.profiles.targets import TARGETS

    caplog.set_level("WARNING", logger="edgekit")
    res = run("build", "-m", str(tiny_ckpt), "--target", "pi5", "--out", str(tmp_path))
    assert res.exit_code == 0, res.output
    folder = tmp_path / "tiny-gemma4" / "pi5"
    manifest = json.loads((folder / "manifest.json").read_text())
    quants = list(TARGETS.get("pi5").quants)
    # pi5 builds the lean vocabulary second; its vocab = 65536 is a cap the tiny model's 1,024 tokens are
    # already within, so that recipe is skipped (one warning, a manifest entry, no v65536 file); the first
    # artifact built, the recommended one, is the full-vocabulary iq4_xs-edge.
    assert quants[:2] == ["iq4_xs-edge", "iq4_xs-edge-lean"]
    assert [a["recipe"] for a in manifest["artifacts"]] == [q for q in quants if q != "iq4_xs-edge-lean"]
    assert manifest["skipped"] == {
        "iq4_xs-edge-lean": "vocab = 65536 caps the vocabulary, and the model's has 1024 tokens: nothing to trim"
    }
    assert [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()] == [
        "recipe iq4_xs-edge-lean skipped: the model's vocabulary of 1024 tokens is already within its vocab = 65536 "
        "(nothing to trim; the manifest says so)"
    ]
    assert not [p for p in folder.iterdir() if "-v65536" in p.name]


def test_missing_config(ckpt_copy, tmp_path):
    (ckpt_copy / "config.json").unlink()
    res = run("build", "-m", str(ckpt_copy), "-q", "q8_0", "--out", str(tmp_path / "out"))
    assert res.exit_code == 1
    assert res.stderr == (
        f"edgekit: error: {ckpt_copy}: no config.json; a Hugging Face checkpoint folder "
        "has config.json beside its .safetensors\n"
    )
    assert leftovers(tmp_path / "out") == []


def test_not_gemma4(ckpt_copy, tmp_path):
    cfg = json.loads((ckpt_copy / "config.json").read_text())
    cfg["model_type"] = "llama"
    (ckpt_copy / "config.json").write_text(json.dumps(cfg))
    res = run("build", "-m", str(ckpt_copy), "-q", "q8_0", "--out", str(tmp_path / "out"))
    assert res.exit_code == 1
    assert res.stderr == (
        f"edgekit: error: {ckpt_copy / 'config.json'}: model_type is 'llama', not a Gemma 4 "
        "checkpoint (expected 'gemma4' or 'gemma4_text')\n"
    )


def test_truncated_safetensors(ckpt_copy, tmp_path):
    shard = next(ckpt_copy.glob("*.safetensors"))
    size = shard.stat().st_size
    with open(shard, "r+b") as f:
        f.truncate(size - 1000)
    res = run("build", "-m", str(ckpt_copy), "-q", "q8_0", "--out", str(tmp_path / "out"))
    assert res.exit_code == 1
    line = res.stderr.strip()
    assert "\n" not in line and line.startswith(f"edgekit: error: {shard.name}: truncated ({size - 1000} bytes")
    assert line.endswith("fetch the file again")
    assert leftovers(tmp_path / "out") == []


def test_missing_tokenizer(ckpt_copy, tmp_path):
    (ckpt_copy / "tokenizer.json").unlink()
    res = run("build", "-m", str(ckpt_copy), "-q", "q8_0", "--out", str(tmp_path / "out"))
    assert res.exit_code == 1
    assert res.stderr == (
        f"edgekit: error: {ckpt_copy}: no tokenizer.json; copy the tokenizer files from the original checkpoint\n"
    )


def test_unknown_target_and_recipe(tiny_ckpt, tmp_path):
    res = run("build", "-m", str(tiny_ckpt), "--target", "pi4", "--out", str(tmp_path))
    assert res.exit_code == 1 and res.stderr.startswith("edgekit: error: unknown target 'pi4'; choose one of: ")
    # q3_k is llama.cpp's type now (every llama-quantize name is a recipe): an unknown name is one no type has
    res = run("build", "-m", str(tiny_ckpt), "-q", "q9_k", "--out", str(tmp_path))
    assert res.exit_code == 1 and res.stderr.startswith("edgekit: error: unknown recipe 'q9_k'; choose one of: ")


def test_hub_id_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    res = run("build", "-m", "google/gemma-4-E2B-it", "-q", "q8_0", "--out", str(tmp_path / "out"))
    assert res.exit_code == 1
    assert res.stderr == (
        "edgekit: error: google/gemma-4-E2B-it: the hub cannot be reached and the model is not "
        "in the local cache; download it where you are online, or pass a local directory\n"
    )


def test_unwritable_output(tiny_ckpt, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    res = run("build", "-m", str(tiny_ckpt), "-q", "q8_0", "--out", str(blocker / "out"))
    assert res.exit_code == 1
    assert res.stderr.startswith(f"edgekit: error: {blocker / 'out'}") and res.stderr.count("\n") == 1
    assert "pass --out" in res.stderr


def test_full_disk(tiny_ckpt, tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)]).returncode:
        pytest.skip("needs root to mount a 2 MB tmpfs")
    try:
        res = run("build", "-m", str(tiny_ckpt), "-q", "q8_0", "--out", str(mnt))
        assert res.exit_code == 1
        assert res.stderr.endswith("no space left on the device; free space or pass --out on a larger disk\n")
        assert leftovers(mnt) == []
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_ctrl_c_mid_build_leaves_nothing_finished(tiny_ckpt, tmp_path, monkeypatch):
    from edgekit.backends.gguf import convert as gguf_format

    out = tmp_path / "out"
    assert run("build", "-m", str(tiny_ckpt), "-q", "q8_0", "--out", str(out)).exit_code == 0
    folder = out / "tiny-gemma4" / "pi5"
    assert (folder / "manifest.json").is_file()

    calls = {"n": 0}
    real = gguf_format._Streamed.tofile

    def interrupted(self, f):
        calls["n"] += 1
        if calls["n"] == 40:  # part-way through the tensor stream
            raise KeyboardInterrupt
        return real(self, f)

    monkeypatch.setattr(gguf_format._Streamed, "tofile", interrupted)
    res = run("build", "-m", str(tiny_ckpt), "-q", "q8_0,q4_0", "--out", str(out))
    assert calls["n"] == 40
    assert res.exit_code == 130
    assert res.stderr == "edgekit: interrupted; partial files were removed\n"
    # The new build wrote only into its private stage: the earlier build, manifest included, is whole
    # (every entry still verifies), and no temp file or stage folder stays.
    from edgekit.builder.manifest import verify

    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "tiny-gemma4-Q8_0.gguf"]
    assert verify(folder) == []


@pytest.mark.parametrize(
    "quant, engine, says",
    [
        ("q8_0", ("llama_cpp",), "llama-cpp-python is not installed; run `make setup` or pip install edgekit[runtime]"),
        ("mlx-4bit", ("mlx", "mlx.core", "mlx.nn", "mlx_lm"), "MLX is not importable here"),
    ],
    ids=["llama.cpp", "mlx"],
)
def test_missing_engine_leaves_the_earlier_build_untouched(tiny_ckpt, tmp_path, monkeypatch, quant, engine, says):
    """A build that cannot start (its engine is missing) must not take the earlier build's manifest with it."""
    out = tmp_path / "out"
    assert run("build", "-m", str(tiny_ckpt), "-q", "f16", "--out", str(out)).exit_code == 0
    folder = out / "tiny-gemma4" / "pi5"
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    for mod in engine:
        monkeypatch.setitem(sys.modules, mod, None)  # `import <engine>` now raises ImportError
    res = run("build", "-m", str(tiny_ckpt), "-q", quant, "--out", str(out))
    assert res.exit_code == 1
    assert res.stderr.startswith(f"edgekit: error: {says}") and res.stderr.count("\n") == 1
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_overrides_llama_cpp_does_not_apply_are_reported(tiny_ckpt, tmp_path, monkeypatch, caplog):
    """llama.cpp silently keeps its own type for some tensors (it never quantizes per_layer_model_proj):
    a recipe override that changed nothing, or matches nothing, is named in a warning."""
    import dataclasses
    import logging

    import gguf

    from edgekit.builder.pipeline import build
    from edgekit.profiles.recipes import RECIPES

    recipe = dataclasses.replace(
        RECIPES.get("q4_0"),
        name="q4_0-x",
        overrides={"^per_layer_model_proj\\.weight$": "q8_0", "ffn_up": "q8_0", "^no_such_tensor$": "q8_0"},
    )
    monkeypatch.setitem(RECIPES._items, "q4_0-x", recipe)
    with caplog.at_level(logging.WARNING, logger="edgekit.backends.gguf.quantize"):
        folder = build(str(tiny_ckpt), target="pi5", quants=["q4_0-x"], out=tmp_path)
    assert [r.getMessage() for r in caplog.records if r.name == "edgekit.backends.gguf.quantize"] == [
        "recipe q4_0-x: override ^per_layer_model_proj\\.weight$ = q8_0 had no effect on per_layer_model_proj.weight "
        "(llama.cpp keeps its own type for some tensors, e.g. per_layer_model_proj, and falls back where a row "
        "does not fit the type)",
        "recipe q4_0-x: override ^no_such_tensor$ = q8_0 matches no tensor; check the pattern against the GGUF "
        "tensor names (`gguf-dump`)",
    ]
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(next(folder.glob("*.gguf"))).tensors}
    assert {types[n] for n in types if "ffn_up" in n} == {"Q8_0"} and types["blk.0.ffn_gate.weight"] == "Q4_0"


def test_a_recipe_key_its_format_does_not_read_is_an_error(tmp_path):
    from edgekit.core.errors import ConfigError
    from edgekit.profiles.recipes import load_recipe

    p = tmp_path / "mlx-3bit.toml"
    p.write_text('format = "mlx"\nquant = "3bit-g64"\nbits = 3\ngroup_sise = 64\n')
    with pytest.raises(ConfigError) as e:
        load_recipe(p)
    assert str(e.value) == (
        f"{p}: unknown key 'group_sise' for a mlx recipe; known keys: bits, description, "
        "dtype, format, group_size, name, overrides, quant, towers, vocab"
    )
    p.write_text('format = "gguf"\nquant = "Q4_0"\nftype = "MOSTLY_Q4_0"\nbits = 4\n')
    with pytest.raises(ConfigError, match="unknown key 'bits' for a gguf recipe"):
        load_recipe(p)
    p.write_text('format = "onnx"\nquant = "x"\n')
    with pytest.raises(ConfigError) as e:
        load_recipe(p)
    assert str(e.value) == f"{p}: format 'onnx'; a recipe's format is one of: gguf, mlx"
