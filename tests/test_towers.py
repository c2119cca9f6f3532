"""synth --towers: E2B-structured vision and audio towers that transformers loads, every tensor random."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgekit.dev.synth import TOWER_PRESETS, hf_config, synth
from edgekit.model.checkpoint import load_checkpoint
from edgekit.model.towers import CLIP_BOUNDS, Towers


@pytest.fixture(scope="module")
def mm_ckpt(tmp_path_factory):
    return synth(tmp_path_factory.mktemp("mm") / "tiny-mm", preset="tiny", seed=0, towers=True)


def _hf_model(config: dict):
    from transformers import Gemma4Config, Gemma4ForConditionalGeneration

    cfg = Gemma4Config(**{k: v for k, v in config.items() if not k.startswith("_")})
    return Gemma4ForConditionalGeneration(cfg)


@pytest.mark.parametrize("preset", ["tiny", "mid", "e2b"])
def test_tower_shapes_are_transformers(preset):
    """Every tower tensor transformers' Gemma4ForConditionalGeneration has, with its shape, and no other
    (mid and e2b on the meta device: shapes only, no memory)."""
    import torch

    config = hf_config(preset, towers=True)
    if preset != "tiny":
        with torch.device("meta"):
            model = _hf_model(config)
    else:
        model = _hf_model(config)
    theirs = {
        k: tuple(v.shape)
        for k, v in model.state_dict().items()
        if not k.startswith(("model.language_model.", "lm_head."))
    }
    ours = Towers.from_hf(config).shapes(config["text_config"]["hidden_size"])
    assert ours == theirs


def test_transformers_loads_the_checkpoint_strictly(mm_ckpt):
    import torch
    from safetensors.torch import load_file

    model = _hf_model(json.loads((mm_ckpt / "config.json").read_text()))
    state = {k: v for f in mm_ckpt.glob("*.safetensors") for k, v in load_file(f).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert unexpected == [] and missing == ["lm_head.weight"]  # tied to embed_tokens
    assert all(torch.isfinite(v.float()).all() for v in state.values())


def test_every_tower_tensor_is_random(mm_ckpt):
    """Norms, scalars and clip bounds too: a converter that drops or swaps one changes the output."""
    ckpt = load_checkpoint(mm_ckpt)
    values = {n: r.load().astype(np.float32) for n, r in ckpt.tower_tensors.items()}
    spread = [n for n, v in values.items() if v.size > 1 and float(v.std()) == 0.0]
    assert spread == []
    bounds = {n: float(v.reshape(-1)[0]) for n, v in values.items() if n.rsplit(".", 1)[-1] in CLIP_BOUNDS}
    # Drawn per tensor: 136 bounds on tiny take 105 distinct values (bf16 has 64 steps in [2, 4) per sign).
    assert len(bounds) == 136 and len(set(bounds.values())) >= 100
    assert all((v < 0) == n.endswith("_min") for n, v in bounds.items())
    assert all(2.0 <= abs(v) <= 4.0 for v in bounds.values())  # they clip the tails of unit activations


def test_text_part_is_unchanged_by_towers(mm_ckpt, tiny_ckpt):
    """Towers come after the text tensors, so the text weights are byte for byte the text-only checkpoint's."""
    with_towers, text_only = load_checkpoint(mm_ckpt), load_checkpoint(tiny_ckpt)
    assert with_towers.tensors.keys() == text_only.tensors.keys()
    for name, ref in text_only.tensors.items():
        assert np.array_equal(ref.load(), with_towers.tensors[name].load()), name
    assert "vision_config" not in json.loads((tiny_ckpt / "config.json").read_text())
    assert not (tiny_ckpt / "processor_config.json").exists()


def test_marker_tokens_are_single_specials_at_the_config_ids(mm_ckpt):
    from tokenizers import Tokenizer

    config = json.loads((mm_ckpt / "config.json").read_text())
    tok = Tokenizer.from_file(str(mm_ckpt / "tokenizer.json"))
    for key, text in (
        ("boi_token_id", "<|image>"),
        ("eoi_token_id", "<image|>"),
        ("image_token_id", "<|image|>"),
        ("boa_token_id", "<|audio>"),
        ("eoa_token_id", "<audio|>"),
        ("audio_token_id", "<|audio|>"),
    ):
        assert tok.encode(text, add_special_tokens=False).ids == [config[key]], key
    assert config["eoa_token_index"] == config["eoa_token_id"]


def test_transformers_processors_read_the_configs(mm_ckpt):
    from transformers import AutoFeatureExtractor, AutoImageProcessor

    ip = AutoImageProcessor.from_pretrained(mm_ckpt)
    fe = AutoFeatureExtractor.from_pretrained(mm_ckpt)
    assert (ip.patch_size, ip.pooling_kernel_size, ip.max_soft_tokens, ip.do_normalize) == (16, 3, 280, False)
    assert (fe.sampling_rate, fe.feature_size) == (16000, 128)


def test_presets_keep_e2b_structure():
    e2b_v, e2b_a = TOWER_PRESETS["e2b"]
    assert (e2b_v.hidden_size, e2b_v.num_hidden_layers, e2b_a.hidden_size, e2b_a.num_hidden_layers) == (
        768,
        16,
        1024,
        12,
    )
    n = sum(int(np.prod(s)) for s in Towers(e2b_v, e2b_a, {}).shapes(1536).values())
    # FACTS.md: vision 167.4 M + embed_vision 1.2 M, audio 304.8 M + embed_audio 2.4 M.
    assert abs(n / 1e6 - (167.4 + 1.2 + 304.8 + 2.4)) < 1.0


def test_towers_and_train_are_refused_together(tmp_path):
    from typer.testing import CliRunner

    from edgekit.cli import app

    r = CliRunner().invoke(app, ["synth", "--out", str(tmp_path / "x"), "--towers", "--train", str(tmp_path / "t.txt")])
    assert r.exit_code != 0 and "--towers" in r.output and "Traceback" not in r.output
