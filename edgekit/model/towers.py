"""Gemma 4's vision and audio towers: their configs as typed data and their tensors' names and shapes.

Names and shapes follow transformers 5.x (``Gemma4VisionModel``, ``Gemma4AudioModel`` and the
``embed_vision`` / ``embed_audio`` projections into the text width), as a Gemma 4 checkpoint stores
them under ``model.vision_tower.`` / ``model.audio_tower.``; tests/test_towers.py checks them against
transformers' own modules. synth writes these tensors, the mmproj converter reads them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..core.errors import CheckpointError
from ..core.fields import Fields

VISION_PREFIX = "model.vision_tower."
AUDIO_PREFIX = "model.audio_tower."
EMBED_VISION = "model.embed_vision.embedding_projection.weight"
EMBED_AUDIO = "model.embed_audio.embedding_projection.weight"
CLIP_BOUNDS = ("input_min", "input_max", "output_min", "output_max")
MEL_BINS = 128  # Gemma4AudioFeatureExtractor's feature size (the subsampling convs assume it)
MODALITIES = ("vision", "audio")
TOWER_TYPES = ("F32", "F16", "BF16", "Q8_0")  # a projector tower's storage types (recipes' towers table)


def _clipped(prefix: str, out: int, inp: int, clipped: bool) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {prefix + ".linear.weight": (out, inp)}
    if clipped:  # 0-d buffers in the checkpoint (transformers' Gemma4ClippableLinear)
        shapes.update({f"{prefix}.{b}": () for b in CLIP_BOUNDS})
    return shapes


@dataclass(frozen=True)
class VisionConfig:
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    patch_size: int = 16
    pooling_kernel_size: int = 3
    position_embedding_size: int = 10240
    use_clipped_linears: bool = True
    standardize: bool = False
    rms_norm_eps: float = 1e-6
    hidden_activation: str = "gelu_pytorch_tanh"

    def shapes(self, text_hidden: int) -> dict[str, tuple[int, ...]]:
        h, p, c = self.hidden_size, VISION_PREFIX, self.use_clipped_linears
        q, kv = self.num_attention_heads * self.head_dim, self.num_key_value_heads * self.head_dim
        s: dict[str, tuple[int, ...]] = {
            p + "patch_embedder.input_proj.weight": (h, 3 * self.patch_size**2),
            p + "patch_embedder.position_embedding_table": (2, self.position_embedding_size, h),
        }
        for i in range(self.num_hidden_layers):
            b = f"{p}encoder.layers.{i}."
            for name, out, inp in (("q_proj", q, h), ("k_proj", kv, h), ("v_proj", kv, h), ("o_proj", h, q)):
                s.update(_clipped(b + "self_attn." + name, out, inp, c))
            s[b + "self_attn.q_norm.weight"] = (self.head_dim,)
            s[b + "self_attn.k_norm.weight"] = (self.head_dim,)
            for name, out, inp in (
                ("gate_proj", self.intermediate_size, h),
                ("up_proj", self.intermediate_size, h),
                ("down_proj", h, self.intermediate_size),
            ):
                s.update(_clipped(b + "mlp." + name, out, inp, c))
            for norm in (
                "input_layernorm",
                "post_attention_layernorm",
                "pre_feedforward_layernorm",
                "post_feedforward_layernorm",
            ):
                s[b + norm + ".weight"] = (h,)
        if self.standardize:
            s[p + "std_bias"] = (h,)
            s[p + "std_scale"] = (h,)
        s[EMBED_VISION] = (text_hidden, h)
        return s

    def to_hf(self) -> dict[str, Any]:
        return {
            "model_type": "gemma4_vision",
            **{k: getattr(self, k) for k in self.__dataclass_fields__},
            "global_head_dim": self.head_dim,
        }


@dataclass(frozen=True)
class AudioConfig:
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    output_proj_dims: int
    subsampling_conv_channels: tuple[int, int] = (128, 32)
    conv_kernel_size: int = 5
    attention_chunk_size: int = 12
    attention_context_left: int = 13
    attention_context_right: int = 0
    attention_logit_cap: float = 50.0
    residual_weight: float = 0.5
    use_clipped_linears: bool = True
    rms_norm_eps: float = 1e-6
    hidden_act: str = "silu"

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def shapes(self, text_hidden: int) -> dict[str, tuple[int, ...]]:
        h, p, c = self.hidden_size, AUDIO_PREFIX, self.use_clipped_linears
        c0, c1 = self.subsampling_conv_channels
        sub = p + "subsample_conv_projection."
        s: dict[str, tuple[int, ...]] = {
            sub + "layer0.conv.weight": (c0, 1, 3, 3),
            sub + "layer0.norm.weight": (c0,),
            sub + "layer1.conv.weight": (c1, c0, 3, 3),
            sub + "layer1.norm.weight": (c1,),
            # transformers sizes it (c0 // 4) * c1: the 128 mel bins halved twice, times c1 channels.
            sub + "input_proj_linear.weight": (h, (c0 // 4) * c1),
        }
        for i in range(self.num_hidden_layers):
            b = f"{p}layers.{i}."
            for ff in ("feed_forward1", "feed_forward2"):
                s.update(_clipped(f"{b}{ff}.ffw_layer_1", 4 * h, h, c))
                s.update(_clipped(f"{b}{ff}.ffw_layer_2", h, 4 * h, c))
                s[f"{b}{ff}.pre_layer_norm.weight"] = (h,)
                s[f"{b}{ff}.post_layer_norm.weight"] = (h,)
            s[b + "self_attn.per_dim_scale"] = (self.head_dim,)
            for name in ("q_proj", "k_proj", "v_proj", "post"):
                s.update(_clipped(b + "self_attn." + name, h, h, c))
            s[b + "self_attn.relative_k_proj.weight"] = (h, h)
            s.update(_clipped(b + "lconv1d.linear_start", 2 * h, h, c))
            s.update(_clipped(b + "lconv1d.linear_end", h, h, c))
            s[b + "lconv1d.depthwise_conv1d.weight"] = (h, 1, self.conv_kernel_size)
            s[b + "lconv1d.pre_layer_norm.weight"] = (h,)
            s[b + "lconv1d.conv_norm.weight"] = (h,)
            for norm in ("norm_pre_attn", "norm_post_attn", "norm_out"):
                s[b + norm + ".weight"] = (h,)
        s[p + "output_proj.weight"] = (self.output_proj_dims, h)
        s[p + "output_proj.bias"] = (self.output_proj_dims,)
        s[EMBED_AUDIO] = (text_hidden, self.output_proj_dims)
        return s

    def to_hf(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["subsampling_conv_channels"] = list(self.subsampling_conv_channels)
        return {"model_type": "gemma4_audio", **d}


@dataclass(frozen=True)
class Towers:
    """The towers a checkpoint has (None: absent) and the special token ids that frame their soft tokens."""

    vision: VisionConfig | None
    audio: AudioConfig | None
    token_ids: dict[str, int]

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(m for m in MODALITIES if getattr(self, m) is not None)

    def shapes(self, text_hidden: int, modalities: tuple[str, ...] = MODALITIES) -> dict[str, tuple[int, ...]]:
        s: dict[str, tuple[int, ...]] = {}
        for m in modalities:
            tower = getattr(self, m)
            if tower is not None:
                s.update(tower.shapes(text_hidden))
        return s

    @classmethod
    def from_hf(cls, config: dict[str, Any], source: str = "config.json") -> Towers:
        fix = "restore config.json from the original checkpoint"
        top = Fields(config, source, fix, CheckpointError)
        vision = audio = None
        if config.get("vision_config"):
            v = Fields(config["vision_config"], source, fix, CheckpointError, "vision_config")
            vision = VisionConfig(
                hidden_size=v.int("hidden_size"),
                intermediate_size=v.int("intermediate_size"),
                num_hidden_layers=v.int("num_hidden_layers"),
                num_attention_heads=v.int("num_attention_heads"),
                num_key_value_heads=v.int("num_key_value_heads", v.int("num_attention_heads")),
                head_dim=v.int("head_dim"),
                patch_size=v.int("patch_size", 16),
                pooling_kernel_size=v.int("pooling_kernel_size", 3),
                position_embedding_size=v.int("position_embedding_size", 10240),
                use_clipped_linears=v.bool("use_clipped_linears", False),
                standardize=v.bool("standardize", False),
                rms_norm_eps=v.number("rms_norm_eps", 1e-6),
                hidden_activation=v.str("hidden_activation", "gelu_pytorch_tanh"),
            )
        if config.get("audio_config"):
            a = Fields(config["audio_config"], source, fix, CheckpointError, "audio_config")
            ch = config["audio_config"].get("subsampling_conv_channels", [128, 32])
            if not (isinstance(ch, list) and len(ch) == 2 and all(type(x) is int and x > 0 for x in ch)):
                raise a.fail("subsampling_conv_channels", "two channel counts", ch)
            audio = AudioConfig(
                hidden_size=a.int("hidden_size"),
                num_hidden_layers=a.int("num_hidden_layers"),
                num_attention_heads=a.int("num_attention_heads"),
                output_proj_dims=a.int("output_proj_dims"),
                subsampling_conv_channels=(ch[0], ch[1]),
                conv_kernel_size=a.int("conv_kernel_size", 5),
                attention_chunk_size=a.int("attention_chunk_size", 12),
                attention_context_left=a.int("attention_context_left", 13),
                attention_context_right=a.int("attention_context_right", 0, minimum=0),
                attention_logit_cap=a.number("attention_logit_cap", 50.0),
                residual_weight=a.number("residual_weight", 0.5),
                use_clipped_linears=a.bool("use_clipped_linears", True),
                rms_norm_eps=a.number("rms_norm_eps", 1e-6),
                hidden_act=a.str("hidden_act", "silu"),
            )
        defaults = {
            "boi_token_id": 255999,
            "eoi_token_id": 258882,
            "image_token_id": 258880,
            "boa_token_id": 256000,
            "eoa_token_id": 258883,
            "audio_token_id": 258881,
        }
        ids = {}
        for k, d in defaults.items():
            # transformers' Gemma4Config names the end-of-audio id eoa_token_index; the published config eoa_token_id.
            key = "eoa_token_index" if k == "eoa_token_id" and "eoa_token_index" in config else k
            ids[k] = top.int(key, d, minimum=0)
        return cls(vision=vision, audio=audio, token_ids=ids)
