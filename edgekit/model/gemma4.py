"""Gemma 4 text model facts: the config as a typed dataclass, read from a Hugging Face config.json.

A Gemma 4 checkpoint's config.json is either the multimodal layout (top level + ``text_config``) or a
plain ``gemma4_text`` config. Everything downstream (converters, synth, roofline) reads this dataclass,
never the raw dict, so a missing key fails here with a message instead of deep inside a converter.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..core.errors import CheckpointError
from ..core.fields import Fields

TEXT_PREFIX = "model.language_model."
# Multimodal towers a text deployment drops.
DROPPED_PREFIXES = ("model.vision_tower.", "model.audio_tower.", "model.embed_vision.", "model.embed_audio.")


@dataclass(frozen=True)
class Gemma4TextConfig:
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    global_head_dim: int
    intermediate_size: int
    vocab_size: int
    vocab_size_per_layer_input: int
    hidden_size_per_layer_input: int
    num_kv_shared_layers: int
    sliding_window: int
    layer_types: tuple[str, ...]
    rope_theta_sliding: float = 10_000.0
    rope_theta_full: float = 1_000_000.0
    partial_rotary_factor_full: float = 0.25
    partial_rotary_factor_sliding: float = 1.0
    use_double_wide_mlp: bool = False
    final_logit_softcapping: float | None = None
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 131072
    hidden_activation: str = "gelu_pytorch_tanh"
    tie_word_embeddings: bool = True
    bos_token_id: int = 2
    eos_token_id: int | list[int] = 1
    pad_token_id: int = 0
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    # --- derived facts -------------------------------------------------------------------------
    @property
    def first_kv_shared_layer(self) -> int:
        return self.num_hidden_layers - self.num_kv_shared_layers

    def is_sliding(self, layer: int) -> bool:
        return self.layer_types[layer] == "sliding_attention"

    def layer_head_dim(self, layer: int) -> int:
        return self.head_dim if self.is_sliding(layer) else self.global_head_dim

    def layer_ffn(self, layer: int) -> int:
        wide = self.use_double_wide_mlp and layer >= self.first_kv_shared_layer
        return self.intermediate_size * (2 if wide else 1)

    def has_kv(self, layer: int) -> bool:
        return layer < self.first_kv_shared_layer

    @property
    def ple_dim(self) -> int:
        return self.num_hidden_layers * self.hidden_size_per_layer_input

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """HF tensor name (without the language-model prefix) → shape, for every text tensor."""
        h, L = self.hidden_size, self.num_hidden_layers
        shapes: dict[str, tuple[int, ...]] = {
            "embed_tokens.weight": (self.vocab_size, h),
            "norm.weight": (h,),
        }
        if self.hidden_size_per_layer_input:
            shapes["embed_tokens_per_layer.weight"] = (self.vocab_size_per_layer_input, self.ple_dim)
            shapes["per_layer_model_projection.weight"] = (self.ple_dim, h)
            shapes["per_layer_projection_norm.weight"] = (self.hidden_size_per_layer_input,)
        for i in range(L):
            p, hd, ff = f"layers.{i}.", self.layer_head_dim(i), self.layer_ffn(i)
            shapes[p + "layer_scalar"] = (1,)
            shapes[p + "self_attn.q_proj.weight"] = (self.num_attention_heads * hd, h)
            shapes[p + "self_attn.q_norm.weight"] = (hd,)
            shapes[p + "self_attn.o_proj.weight"] = (h, self.num_attention_heads * hd)
            if self.has_kv(i):
                shapes[p + "self_attn.k_proj.weight"] = (self.num_key_value_heads * hd, h)
                shapes[p + "self_attn.v_proj.weight"] = (self.num_key_value_heads * hd, h)
                shapes[p + "self_attn.k_norm.weight"] = (hd,)
            shapes[p + "mlp.gate_proj.weight"] = (ff, h)
            shapes[p + "mlp.up_proj.weight"] = (ff, h)
            shapes[p + "mlp.down_proj.weight"] = (h, ff)
            for norm in (
                "input_layernorm",
                "post_attention_layernorm",
                "pre_feedforward_layernorm",
                "post_feedforward_layernorm",
            ):
                shapes[p + norm + ".weight"] = (h,)
            if self.hidden_size_per_layer_input:
                shapes[p + "per_layer_input_gate.weight"] = (self.hidden_size_per_layer_input, h)
                shapes[p + "per_layer_projection.weight"] = (h, self.hidden_size_per_layer_input)
                shapes[p + "post_per_layer_input_norm.weight"] = (h,)
        return shapes

    def n_params(self) -> int:
        total = 0
        for shape in self.expected_shapes().values():
            n = 1
            for d in shape:
                n *= d
            total += n
        return total

    # --- parsing -------------------------------------------------------------------------------
    @classmethod
    def from_hf(cls, config: Any, source: str = "config.json") -> Gemma4TextConfig:
        fix = "restore config.json from the original checkpoint"
        top = Fields(config, source, fix, CheckpointError)
        model_type = config.get("model_type")
        if model_type == "gemma4":
            text_cfg = top.table("text_config", {})
            if not text_cfg:
                raise CheckpointError(
                    f"{source}: model_type 'gemma4' but no text_config; re-export the checkpoint with transformers >= 5"
                )
            text = dict(text_cfg)
        elif model_type == "gemma4_text":
            text = dict(config)
        else:
            raise CheckpointError(
                f"{source}: model_type is {model_type!r}, not a Gemma 4 checkpoint (expected 'gemma4' or 'gemma4_text')"
            )
        required = [
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "head_dim",
            "intermediate_size",
            "vocab_size",
            "layer_types",
            "sliding_window",
        ]
        missing = [k for k in required if text.get(k) is None]
        if missing:
            raise CheckpointError(
                f"{source}: Gemma 4 text config lacks {', '.join(missing)}; the checkpoint's config.json is incomplete"
            )
        # Every value is type-checked here, at the boundary: a string where a number belongs would
        # otherwise surface as a numpy or struct error deep inside a converter.
        t = Fields(text, source, fix, CheckpointError, "text_config" if model_type == "gemma4" else "")
        n_layers = t.int("num_hidden_layers")
        layer_types = tuple(t.strs("layer_types", choices=("sliding_attention", "full_attention")))
        if len(layer_types) != n_layers:
            raise CheckpointError(f"{source}: layer_types has {len(layer_types)} entries for {n_layers} layers")
        global_head_dim = t.int("global_head_dim", None)
        if global_head_dim is None:
            # transformers 5.x drops global_head_dim on save but keeps it in per_layer_config.
            per_layer = t.sub("per_layer_config")
            for idx in per_layer.raw:
                lc, layer_cfg = per_layer.sub(idx), per_layer.raw[idx]
                if not str(idx).isdigit() or int(idx) >= n_layers:
                    raise CheckpointError(f"{source}: per_layer_config names layer {idx!r} of {n_layers}; {fix}")
                if layer_types[int(idx)] == "full_attention" and "head_dim" in layer_cfg:
                    global_head_dim = lc.int("head_dim")
                    break
        r = t.sub("rope_parameters")
        rope, full, sliding = r.raw, r.sub("full_attention"), r.sub("sliding_attention")
        eos = config.get("eos_token_id", text.get("eos_token_id", 1))
        if not (type(eos) is int or (type(eos) is list and eos and all(type(x) is int for x in eos))):
            raise top.fail("eos_token_id", "a token id or a list of token ids", eos)
        softcap = t.number("final_logit_softcapping", None, positive=False)
        cfg = cls(
            hidden_size=t.int("hidden_size"),
            num_hidden_layers=n_layers,
            num_attention_heads=t.int("num_attention_heads"),
            num_key_value_heads=t.int("num_key_value_heads"),
            head_dim=t.int("head_dim"),
            global_head_dim=global_head_dim or t.int("head_dim"),
            intermediate_size=t.int("intermediate_size"),
            vocab_size=t.int("vocab_size"),
            vocab_size_per_layer_input=t.int("vocab_size_per_layer_input", 0, minimum=0) or t.int("vocab_size"),
            hidden_size_per_layer_input=t.int("hidden_size_per_layer_input", 0, minimum=0),
            num_kv_shared_layers=t.int("num_kv_shared_layers", 0, minimum=0),
            sliding_window=t.int("sliding_window"),
            layer_types=layer_types,
            rope_theta_sliding=sliding.number("rope_theta", 10_000.0),
            rope_theta_full=full.number("rope_theta", 1_000_000.0),
            # Without rope_parameters, transformers' Gemma 4 default is proportional RoPE at 0.25.
            partial_rotary_factor_full=full.number("partial_rotary_factor", 1.0 if rope else 0.25, maximum=1.0),
            # transformers' "default" rope (the sliding layers' type in Gemma 4's configs) rotates all
            # head_dim dims whatever partial_rotary_factor says (compute_default_rope_parameters never
            # reads it; mlx-lm's default RoPE neither): honouring it gave a max logit error of 7.6 vs
            # 7e-3 on tiny. Only another rope_type makes the factor mean something.
            partial_rotary_factor_sliding=(
                1.0
                if sliding.str("rope_type", "default") == "default"
                else sliding.number("partial_rotary_factor", 1.0, maximum=1.0)
            ),
            use_double_wide_mlp=t.bool("use_double_wide_mlp", False),
            final_logit_softcapping=softcap,
            rms_norm_eps=t.number("rms_norm_eps", 1e-6),
            max_position_embeddings=t.int("max_position_embeddings", 131072),
            hidden_activation=t.str("hidden_activation", "gelu_pytorch_tanh"),
            tie_word_embeddings=top.bool("tie_word_embeddings", t.bool("tie_word_embeddings", True)),
            bos_token_id=t.int("bos_token_id", 2, minimum=0),
            eos_token_id=eos,
            pad_token_id=t.int("pad_token_id", 0, minimum=0),
            raw=config,
        )
        if cfg.num_kv_shared_layers >= n_layers:
            raise CheckpointError(
                f"{source}: num_kv_shared_layers {cfg.num_kv_shared_layers} leaves no layer with its "
                f"own KV cache ({n_layers} layers); {fix}"
            )
        if cfg.num_attention_heads % cfg.num_key_value_heads:
            raise CheckpointError(
                f"{source}: num_attention_heads {cfg.num_attention_heads} is not a multiple of "
                f"num_key_value_heads {cfg.num_key_value_heads}; {fix}"
            )
        return cfg
