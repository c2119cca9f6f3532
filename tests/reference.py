"""Numerical references for parity tests: transformers' Gemma 4 in fp32, and llama.cpp logits.

ggml's CPU GELU goes through an fp16 lookup table (GGML_GELU_FP16 in ggml-cpu/vec.h): the input is
rounded to fp16, the table holds fp16(gelu(x)), and |x| ≥ 10 bypasses the table. ``ggml_gelu`` does
that same computation in torch so the reference matches what llama.cpp computes rather than widening
the tolerance to cover it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def gelu_tanh(x):
    import torch

    return 0.5 * x * (1.0 + torch.tanh(0.7978845608028654 * (x + 0.044715 * x**3)))


def ggml_gelu(x):
    import torch

    x16 = x.to(torch.float16).to(torch.float32)
    table = gelu_tanh(x16).to(torch.float16).to(torch.float32)
    return torch.where(x <= -10.0, torch.zeros_like(x), torch.where(x >= 10.0, x, table))


def hf_model(ckpt_dir: Path, emulate_ggml_gelu: bool = True):
    """Gemma4ForCausalLM in fp32 with the checkpoint's text weights (multimodal towers dropped)."""
    import torch
    from safetensors.torch import load_file
    from transformers import Gemma4ForCausalLM, Gemma4TextConfig

    raw = json.loads((Path(ckpt_dir) / "config.json").read_text())
    text = {k: v for k, v in raw["text_config"].items() if k != "model_type"}
    cfg = Gemma4TextConfig(**text)
    model = Gemma4ForCausalLM(cfg).to(torch.float32).eval()
    state = {}
    for f in sorted(Path(ckpt_dir).glob("*.safetensors")):
        for k, v in load_file(f).items():
            if k.startswith("model.language_model."):
                state["model." + k[len("model.language_model.") :]] = v.to(torch.float32)
    state["lm_head.weight"] = state["model.embed_tokens.weight"]
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected, unexpected
    assert not [m for m in missing if not m.endswith("rotary_emb.inv_freq")], missing
    if emulate_ggml_gelu:

        class GgmlGelu(torch.nn.Module):
            def forward(self, x):
                return ggml_gelu(x)

        for layer in model.model.layers:
            layer.mlp.act_fn = GgmlGelu()
            if hasattr(layer, "act_fn"):  # the per-layer-embedding gate's GELU
                layer.act_fn = GgmlGelu()
    return model


def hf_logits(model, tokens: list[int]) -> np.ndarray:
    import torch

    with torch.no_grad():
        out = model(torch.tensor([tokens]), use_cache=False)
    return out.logits[0].float().numpy()


def llama_logits(gguf_path: Path, tokens: list[int], f32_cache: bool = True, n_ctx: int = 512) -> np.ndarray:
    """Logits at every position from llama.cpp (llama-cpp-python), one batch, 2 threads."""
    import llama_cpp

    kw = dict(type_k=0, type_v=0) if f32_cache else {}
    llm = llama_cpp.Llama(
        str(gguf_path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, n_threads=2, logits_all=True, verbose=False, **kw
    )
    try:
        llm.eval(tokens)
        return np.array(llm.scores[: len(tokens)], dtype=np.float32)
    finally:
        llm.close()


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def mean_kl(ref: np.ndarray, other: np.ndarray) -> float:
    """Mean over positions of KL(ref ‖ other) in nats."""
    lp, lq = log_softmax(ref.astype(np.float64)), log_softmax(other.astype(np.float64))
    return float((np.exp(lp) * (lp - lq)).sum(-1).mean())
