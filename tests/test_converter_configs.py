"""Gemma 4 configs the E2B checkpoint does not exercise, converted and checked against the engines.

Two converter bugs were found by comparing with llama.cpp's own converter (otherwise byte-identical
tensor for tensor): with no per-layer embeddings and full-attention layers that rotate every dim,
edgekit omitted rope_freqs and llama.cpp refused the file; and a sliding-layer partial_rotary_factor
(which transformers' "default" rope ignores) scaled the sliding rope dimension (max logit error 7.6
vs 7e-3 on tiny). Each case synthesizes a tiny checkpoint with that config, builds F32 and compares
llama.cpp's logits with transformers' (fp32, ggml's GELU table emulated) as test_gguf_parity does.
"""

from __future__ import annotations

import numpy as np
import pytest
from reference import hf_model, llama_logits

N_TOKENS = 96  # three sliding windows of the tiny preset


def _synth(tmp_path, monkeypatch, name: str, text: dict, rope: dict):
    from edgekit.dev import synth as synth_mod

    monkeypatch.setitem(synth_mod.PRESETS, name, {**synth_mod.PRESETS["tiny"], **text})
    real = synth_mod.hf_config

    def hf_config(preset, softcap=True, towers=False):
        cfg = real(preset, softcap, towers)
        for kind, params in rope.items():
            cfg["text_config"]["rope_parameters"][kind].update(params)
        return cfg

    monkeypatch.setattr(synth_mod, "hf_config", hf_config)
    return synth_mod.synth(tmp_path / name, preset=name, seed=3)


def hf_logits(model, tokens):
    """As reference.hf_logits, with logits_to_keep as index tensor: transformers 5.23's Gemma 4 slices
    the per-layer inputs (None without PLE) when logits_to_keep is an int (TypeError there)."""
    import torch

    with torch.no_grad():
        return (
            model(torch.tensor([tokens]), use_cache=False, logits_to_keep=torch.arange(len(tokens)))
            .logits[0]
            .float()
            .numpy()
        )


def _parity(ckpt, tmp_path):
    from edgekit.builder.pipeline import build

    folder = build(str(ckpt), target="pi5", quants=["f32"], out=tmp_path / "dist")
    tokens = [2, *np.random.default_rng(4).integers(5, 1000, N_TOKENS - 1).tolist()]
    ours = llama_logits(folder / f"{ckpt.name}-F32.gguf", tokens)
    ref = hf_logits(hf_model(ckpt, emulate_ggml_gelu=True), tokens)
    span = float(ref.max() - ref.min())
    return float(np.abs(ours - ref).max()), span, folder


def test_no_ple_and_full_rotary_writes_rope_freqs_and_matches_transformers(tmp_path, monkeypatch):
    pytest.importorskip("llama_cpp")
    from edgekit.backends.gguf.header import read_gguf_header

    ckpt = _synth(
        tmp_path,
        monkeypatch,
        "tiny-nople",
        {"hidden_size_per_layer_input": 0},
        {"full_attention": {"partial_rotary_factor": 1.0}},
    )
    err, span, folder = _parity(ckpt, tmp_path)  # llama.cpp refused this file before the fix
    freqs = read_gguf_header(folder / "tiny-nople-F32.gguf").tensors["rope_freqs.weight"]
    assert freqs.shape == (256,)  # global_head_dim 512 / 2 factors, all 1 (every pair rotates)
    assert err <= 1e-3 * span, f"max |Δlogit| {err:.4g} over a range of {span:.3g}"


def test_sliding_partial_rotary_factor_is_ignored_as_transformers_does(tmp_path, monkeypatch):
    pytest.importorskip("llama_cpp")
    from edgekit.backends.gguf.header import read_gguf_header

    ckpt = _synth(tmp_path, monkeypatch, "tiny-slidepart", {}, {"sliding_attention": {"partial_rotary_factor": 0.5}})
    err, span, folder = _parity(ckpt, tmp_path)
    assert err <= 1e-3 * span, f"max |Δlogit| {err:.4g} over a range of {span:.3g}"
    scalars = read_gguf_header(folder / "tiny-slidepart-F32.gguf").scalars
    assert scalars["gemma4.rope.dimension_count_swa"] == 256  # head_dim: the factor is not applied
