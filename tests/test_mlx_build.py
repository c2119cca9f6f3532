"""The MLX build path's edges: config normalisation, recipe overrides, bad input, Apple targets."""

from __future__ import annotations

import dataclasses
import errno
import json
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from edgekit.cli import app

runner = CliRunner()


def leftovers(root) -> list[str]:
    """Files a user could mistake for output: anything but folders."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []


def linked_copy(src, dst):
    """A checkpoint folder whose weights are symlinks and whose small files are copies we may edit."""
    dst.mkdir()
    for p in src.iterdir():
        if p.suffix == ".safetensors":
            (dst / p.name).symlink_to(p)
        else:
            (dst / p.name).write_bytes(p.read_bytes())
    return dst


def test_config_as_transformers_saves_it_loads_in_stock_mlx_lm(tiny_ckpt, tmp_path):
    """transformers 5.x writes no top-level vocab_size nor global_head_dim (it keeps per_layer_config),
    and a config may omit keys whose transformers default differs from mlx-lm's (softcap: None vs 30).
    The artifact must load in stock mlx_lm.load and compute what transformers computes."""
    mx = pytest.importorskip("mlx.core", reason="needs edgekit[mlx]")
    import mlx_lm
    from mlx.utils import tree_map
    from reference import hf_logits, hf_model

    from edgekit.backends.mlx.convert import convert
    from edgekit.model.checkpoint import load_checkpoint
    from edgekit.profiles.recipes import RECIPES

    ckpt = linked_copy(tiny_ckpt, tmp_path / "hf-saved")
    cfg = json.loads((ckpt / "config.json").read_text())
    text = cfg["text_config"]
    cfg.pop("vocab_size")
    gdim = text.pop("global_head_dim")
    text["per_layer_config"] = {
        str(i): {"head_dim": gdim} for i, t in enumerate(text["layer_types"]) if t == "full_attention"
    }
    text.pop("final_logit_softcapping")
    (ckpt / "config.json").write_text(json.dumps(cfg))

    out = convert(load_checkpoint(ckpt), RECIPES.get("mlx-bf16"), tmp_path / "mlx")
    written = json.loads((out / "config.json").read_text())
    assert written["vocab_size"] == text["vocab_size"] and written["text_config"]["global_head_dim"] == gdim
    assert written["text_config"]["final_logit_softcapping"] is None

    model, _ = mlx_lm.load(str(out))
    model.update(tree_map(lambda v: v.astype(mx.float32), model.parameters()))
    tokens = [2, *np.random.default_rng(5).integers(5, 1000, 47).tolist()]
    ours = np.array(model(mx.array([tokens]))[0])
    ref = hf_logits(hf_model(ckpt, emulate_ggml_gelu=False), tokens)
    # Same 1e-5-of-range bound as test_mlx.py's parity test; mlx-lm's default softcap of 30 would
    # squash the ≈16-wide logits by ≈1 and fail this by 1e4x.
    assert np.abs(ours - ref).max() <= 1e-5 * float(ref.max() - ref.min())


def test_override_keeps_a_tensor_unquantized(tiny_ckpt, tmp_path):
    mx = pytest.importorskip("mlx.core", reason="needs edgekit[mlx]")
    import mlx_lm

    from edgekit.backends.mlx.convert import convert
    from edgekit.model.checkpoint import load_checkpoint
    from edgekit.profiles.recipes import RECIPES

    recipe = dataclasses.replace(
        RECIPES.get("mlx-4bit"),
        overrides={"embed_tokens$": "bf16", "embed_tokens_per_layer$": "bf16", "down_proj": "8"},
    )
    out = convert(load_checkpoint(tiny_ckpt), recipe, tmp_path / "mixed")
    names = set(mx.load(str(out / "model.safetensors")))
    q = json.loads((out / "config.json").read_text())["quantization"]
    assert "language_model.model.embed_tokens.weight" in names
    assert "language_model.model.embed_tokens.scales" not in names
    assert q["language_model.model.embed_tokens"] is False
    assert q["language_model.model.layers.0.mlp.down_proj"]["bits"] == 8
    assert "language_model.model.layers.0.mlp.up_proj" not in q and q["bits"] == 4  # the recipe default
    model, _ = mlx_lm.load(str(out))
    assert model.language_model.model.layers[0].mlp.down_proj.bits == 8
    assert model.language_model.model.layers[0].mlp.up_proj.bits == 4
    assert np.isfinite(np.array(model(mx.array([[2, 10, 11]])).astype(mx.float32))).all()


def test_bad_override_is_one_line(tiny_ckpt, tmp_path):
    pytest.importorskip("mlx.core", reason="needs edgekit[mlx]")
    from edgekit.backends.mlx.convert import convert
    from edgekit.core.errors import ConfigError
    from edgekit.model.checkpoint import load_checkpoint
    from edgekit.profiles.recipes import RECIPES

    recipe = dataclasses.replace(RECIPES.get("mlx-4bit"), overrides={"embed_tokens$": "q4_k"})
    with pytest.raises(ConfigError, match=r"^mlx recipe override 'q4_k': use bits .* or bf16 / f16 / f32$"):
        convert(load_checkpoint(tiny_ckpt), recipe, tmp_path / "x")
    assert leftovers(tmp_path) == []


def test_not_gemma4_for_mlx(tiny_ckpt, tmp_path):
    ckpt = linked_copy(tiny_ckpt, tmp_path / "llama")
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["model_type"] = "llama"
    (ckpt / "config.json").write_text(json.dumps(cfg))
    res = runner.invoke(
        app, ["build", "-m", str(ckpt), "--target", "m2", "-q", "mlx-4bit", "--out", str(tmp_path / "out")]
    )
    assert res.exit_code == 1
    assert res.stderr.count("\n") == 1 and "not a Gemma 4 checkpoint" in res.stderr
    assert leftovers(tmp_path / "out") == []


def test_failure_mid_conversion_leaves_nothing(tiny_ckpt, tmp_path, monkeypatch):
    pytest.importorskip("mlx.core", reason="needs edgekit[mlx]")
    from edgekit.backends.mlx import convert as fmt

    def full_disk(*a, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fmt, "_write_ple", full_disk)  # after the main weights are written
    res = runner.invoke(
        app, ["build", "-m", str(tiny_ckpt), "--target", "m2", "-q", "mlx-4bit", "--out", str(tmp_path)]
    )
    assert res.exit_code == 1
    assert res.stderr.endswith("no space left on the device; free space or pass --out on a larger disk\n")
    assert res.stderr.count("\n") == 1
    assert leftovers(tmp_path) == []


def test_missing_mlx_is_one_line(tiny_ckpt, tmp_path, monkeypatch):
    from edgekit.backends.mlx.ple import load_mlx_model
    from edgekit.core.errors import EngineMissingError

    for mod in ("mlx", "mlx.core", "mlx.nn", "mlx_lm"):
        monkeypatch.setitem(sys.modules, mod, None)  # `import mlx.core` now raises ImportError
    res = runner.invoke(
        app, ["build", "-m", str(tiny_ckpt), "--target", "m2", "-q", "mlx-4bit", "--out", str(tmp_path)]
    )
    assert res.exit_code == 1
    assert res.stderr.startswith("edgekit: error: MLX is not importable here")
    assert res.stderr.endswith("install edgekit[mlx] (mlx[cpu] on Linux, mlx on macOS)\n")
    assert res.stderr.count("\n") == 1
    assert leftovers(tmp_path) == []
    with pytest.raises(EngineMissingError):
        load_mlx_model(tmp_path)


def test_apple_targets():
    from edgekit.profiles.recipes import RECIPES
    from edgekit.profiles.targets import TARGETS

    apple = [TARGETS.get(n) for n in TARGETS if n[:2] in ("m1", "m2", "m3", "m4")]
    for gen in ("m1", "m2", "m3", "m4"):
        base, pro, top = (TARGETS.get(n) for n in (gen, f"{gen}-pro", f"{gen}-max"))
        assert base.bandwidth_gbs < pro.bandwidth_gbs < top.bandwidth_gbs
    for t in apple:
        assert t.engine == "mlx" and "llama.cpp" in t.alternatives
        formats = [RECIPES.get(q).format for q in t.quants]
        assert formats[0] == "mlx" and "gguf" in formats  # the default, and the llama.cpp alternative
        assert t.memory_budget_gb == TARGETS.get("pi5").memory_budget_gb
        assert t.runtime["ple"] == "disk"
