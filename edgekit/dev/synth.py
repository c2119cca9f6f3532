"""Synthetic Gemma 4 checkpoints with random weights, in Hugging Face layout.

``tiny`` keeps every Gemma 4 feature the converters must handle (PLE, KV sharing in the layout
llama.cpp requires, sliding + full layers with different head dims, double-wide MLP, softcap) at
row lengths that are multiples of 256 so K-quants stay K-quants. ``e2b`` is shape-true Gemma 4 E2B
(≈4.6 B parameters, 9.3 GB bf16): speed and memory do not depend on weight values, so it stands in
for the real weights in benchmarks. Tensors are generated chunk by chunk and streamed to disk.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import ConfigError
from ..core.fsutil import atomic_dir
from ..core.progress import progress_bar
from ..model.dtypes import SOURCE_DTYPES, from_f32
from ..model.gemma4 import DROPPED_PREFIXES, TEXT_PREFIX, Gemma4TextConfig
from ..model.safetensors_io import TensorSpec, shard, write_safetensors
from ..model.towers import AudioConfig, Towers, VisionConfig
from .synthetic_tokenizer import GEMMA4_MERGES, HEAD_MULTIMODAL, TAIL_SPECIALS, write_synthetic_tokenizer

log = logging.getLogger(__name__)

REFERENCE_CONFIG = {
    "hidden_size": 1536,
    "num_hidden_layers": 35,
    "num_attention_heads": 8,
    "num_key_value_heads": 1,
    "head_dim": 256,
    "global_head_dim": 512,
    "sliding_window": 512,
    "vocab_size": 262144,
    "vocab_size_per_layer_input": 262144,
    "hidden_size_per_layer_input": 256,
    "num_kv_shared_layers": 20,
    "use_double_wide_mlp": True,
    "intermediate_size": 6144,
    "final_logit_softcapping": 30.0,
}


def _layer_types(n: int) -> list[str]:
    # Gemma 4's 4 sliding : 1 full pattern; with n a multiple of 5 the last layer is full and the
    # last non-shared layer (n - shared - 1) is full with a sliding one before it, as llama.cpp needs.
    return ["full_attention" if i % 5 == 4 else "sliding_attention" for i in range(n)]


# A shape-true preset's tokenizer carries the real merge count too: llama.cpp holds every merge in
# memory (tens of MiB for Gemma 4), so the e2b memory figures depend on it.
PRESET_MERGES: dict[str, int] = {"e2b": GEMMA4_MERGES}

PRESETS: dict[str, dict[str, Any]] = {
    "e2b": dict(REFERENCE_CONFIG),
    # Mid-size (≈0.3 B parameters, 0.6 GB bf16): big enough that conversion cost is not start-up cost.
    "mid": {
        "hidden_size": 1024,
        "num_hidden_layers": 15,
        "num_attention_heads": 4,
        "num_key_value_heads": 1,
        "head_dim": 256,
        "global_head_dim": 512,
        "sliding_window": 128,
        "vocab_size": 32768,
        "vocab_size_per_layer_input": 32768,
        "hidden_size_per_layer_input": 256,
        "num_kv_shared_layers": 5,
        "use_double_wide_mlp": True,
        "intermediate_size": 2048,
        "final_logit_softcapping": 30.0,
    },
    "tiny": {
        "hidden_size": 256,
        "num_hidden_layers": 10,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 256,
        "global_head_dim": 512,
        "sliding_window": 32,
        "vocab_size": 1024,
        "vocab_size_per_layer_input": 1024,
        "hidden_size_per_layer_input": 256,
        "num_kv_shared_layers": 5,
        "use_double_wide_mlp": True,
        "intermediate_size": 512,
        "final_logit_softcapping": 30.0,
    },
    # tiny with a trainable 16,384-token vocabulary (tests/data/tiny-trained-16k): the PLE table is
    # vocab × layers × PLE dim, so PLE dim 32 (rows of 320), one query head and a 256-wide MLP keep
    # the bf16 checkpoint at 30.0 MB; every Gemma 4 feature stays (PLE, KV sharing, sliding + full
    # layers with head dims 256/512, double-wide MLP, softcap).
    "tiny-16k": {
        "hidden_size": 256,
        "num_hidden_layers": 10,
        "num_attention_heads": 1,
        "num_key_value_heads": 1,
        "head_dim": 256,
        "global_head_dim": 512,
        "sliding_window": 32,
        "vocab_size": 16384,
        "vocab_size_per_layer_input": 16384,
        "hidden_size_per_layer_input": 32,
        "num_kv_shared_layers": 5,
        "use_double_wide_mlp": True,
        "intermediate_size": 256,
        "final_logit_softcapping": 30.0,
    },
}


# Towers with E2B's structure (synth --towers): shape-true for e2b, narrow and shallow for tiny and mid.
# tiny's audio subsampling keeps 128 channels: transformers sizes its input projection from them.
TOWER_PRESETS: dict[str, tuple[VisionConfig, AudioConfig]] = {
    "e2b": (
        VisionConfig(
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=16,
            num_attention_heads=12,
            num_key_value_heads=12,
            head_dim=64,
        ),
        AudioConfig(hidden_size=1024, num_hidden_layers=12, num_attention_heads=8, output_proj_dims=1536),
    ),
    "mid": (
        VisionConfig(
            hidden_size=256,
            intermediate_size=1024,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=4,
            head_dim=64,
        ),
        AudioConfig(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, output_proj_dims=1024),
    ),
    "tiny": (
        VisionConfig(
            hidden_size=128,
            intermediate_size=256,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            head_dim=64,
            position_embedding_size=1024,
        ),
        AudioConfig(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, output_proj_dims=256),
    ),
}
TOKEN_KEYS = (
    "boi_token_id",
    "boa_token_id",
    "image_token_id",
    "audio_token_id",
    "eoi_token_id",
    "eoa_token_id",
    "video_token_id",
)  # in TAIL_SPECIALS' order


def multimodal_tokens(vocab_size: int) -> dict[int, str]:
    """id -> marker token: Gemma 4's ids when the vocabulary reaches them, else reserved head slots."""
    return dict(TAIL_SPECIALS) if max(TAIL_SPECIALS) < vocab_size else dict(HEAD_MULTIMODAL)


def processor_configs(towers: Towers, image_seq_length: int = 280) -> dict[str, dict[str, Any]]:
    """processor_config.json and preprocessor_config.json as transformers 5.x writes them for Gemma 4
    (the values are its defaults); llama.cpp's converter reads image_mean/image_std from them."""
    v = towers.vision
    image = {
        "image_processor_type": "Gemma4ImageProcessor",
        "do_resize": True,
        "resample": 3,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": False,
        "image_mean": [0.0, 0.0, 0.0],
        "image_std": [1.0, 1.0, 1.0],
        "do_convert_rgb": True,
        "patch_size": v.patch_size if v else 16,
        "pooling_kernel_size": v.pooling_kernel_size if v else 3,
        "max_soft_tokens": image_seq_length,
    }
    audio = {
        "feature_extractor_type": "Gemma4AudioFeatureExtractor",
        "feature_size": 128,
        "sampling_rate": 16000,
        "padding_value": 0.0,
        "return_attention_mask": True,
        "frame_length_ms": 20.0,
        "hop_length_ms": 10.0,
        "min_frequency": 0.0,
        "max_frequency": 8000.0,
        "mel_floor": 1e-3,
        "dither": 0.0,
        "input_scale_factor": 1.0,
        "preemphasis": 0.0,
        "preemphasis_htk_flavor": True,
        "fft_overdrive": False,
    }
    processor = {
        "processor_class": "Gemma4Processor",
        "image_seq_length": image_seq_length,
        "audio_seq_length": 750,
        "audio_ms_per_token": 40,
        "image_processor": image,
        "feature_extractor": audio,
    }
    return {
        "processor_config.json": processor,
        "preprocessor_config.json": {**image, "processor_class": "Gemma4Processor"},
    }


def hf_config(preset: str, softcap: bool = True, towers: bool = False) -> dict[str, Any]:
    text = dict(PRESETS[preset])
    n = text["num_hidden_layers"]
    text.update(
        {
            "model_type": "gemma4_text",
            "layer_types": _layer_types(n),
            "max_position_embeddings": 131072,
            "rms_norm_eps": 1e-6,
            "hidden_activation": "gelu_pytorch_tanh",
            "attention_k_eq_v": False,
            "num_global_key_value_heads": None,
            "pad_token_id": 0,
            "bos_token_id": 2,
            "eos_token_id": 1,
            "tie_word_embeddings": True,
            "rope_parameters": {
                "full_attention": {
                    "partial_rotary_factor": 0.25,
                    "rope_theta": 1_000_000.0,
                    "rope_type": "proportional",
                },
                "sliding_attention": {"rope_theta": 10_000.0, "rope_type": "default"},
            },
        }
    )
    if not softcap:
        text["final_logit_softcapping"] = None
    config: dict[str, Any] = {
        "architectures": ["Gemma4ForConditionalGeneration"],
        "model_type": "gemma4",
        "tie_word_embeddings": True,
        "vocab_size": text["vocab_size"],  # mlx-lm reads it at the top level
        "eos_token_id": [1, 106],
        "text_config": text,
        "_edgekit_synthetic": {"preset": preset},
    }
    if towers:
        if preset not in TOWER_PRESETS:
            raise ConfigError(f"preset {preset!r} has no towers; --towers works with {', '.join(TOWER_PRESETS)}")
        vision, audio = TOWER_PRESETS[preset]
        config["vision_config"], config["audio_config"] = vision.to_hf(), audio.to_hf()
        config.update(zip(TOKEN_KEYS, multimodal_tokens(text["vocab_size"]), strict=True))
        config["eoa_token_index"] = config["eoa_token_id"]  # transformers' Gemma4Config's name for it
    return config


def _std(name: str, shape: tuple[int, ...], cfg: Gemma4TextConfig) -> tuple[float, float]:
    """(mean, std) per tensor kind: norms near 1 (Gemma 4 norms multiply by the weight as is),
    linears 1/sqrt(fan_in), embeddings sized so logits span ≈15 like a trained model."""
    if name.endswith("layer_scalar"):
        return 1.0, 0.0  # llama.cpp scales the whole residual stream by it, every layer
    if name.endswith(("q_norm.weight", "k_norm.weight")):
        # Gemma 4 attends with scale 1.0 after QK-norm: unit norms give scores with std ≈ sqrt(head_dim),
        # a near-hard argmax that turns rounding noise into different attended keys. Trained models
        # learn small QK-norm weights; these keep scores at std ≈ 2.
        hd = shape[0]
        return float((2.0 / np.sqrt(hd)) ** 0.5), 0.02
    if len(shape) == 1:
        return 1.0, 0.1
    if name.endswith("embed_tokens.weight"):
        return 0.0, 1.5 / np.sqrt(cfg.hidden_size)
    if name.endswith("embed_tokens_per_layer.weight"):
        return 0.0, 1.0
    return 0.0, 1.0 / np.sqrt(shape[1])


def _tower_std(name: str, shape: tuple[int, ...]) -> tuple[float, float]:
    """(mean, std) for a tower tensor. Every one is random, norms and scalars included, so a converter
    that maps a tensor to the wrong place, or drops one, changes the soft tokens."""
    if name.endswith(("q_norm.weight", "k_norm.weight")):
        return float((2.0 / np.sqrt(shape[0])) ** 0.5), 0.02  # as for the text model: scores with std ≈ 2
    if name.endswith("per_dim_scale"):
        return 0.0, 0.5
    if name.endswith("position_embedding_table"):
        return 0.0, 0.5
    if name.endswith(".bias"):
        return 0.0, 0.1
    if len(shape) == 1:
        return 1.0, 0.1
    return 0.0, 1.0 / np.sqrt(int(np.prod(shape[1:])))


def _clip_bound(name: str, rng: np.random.Generator) -> np.ndarray:
    # Bounds that clip the tails of unit-scale activations (|x| beyond 2-4): they matter, and a swapped
    # or dropped bound shows in the output.
    sign = -1.0 if name.endswith("_min") else 1.0
    return np.array(sign * rng.uniform(2.0, 4.0), dtype=np.float32)


def _chunks(spec: TensorSpec, cfg: Gemma4TextConfig, seed: int, index: int) -> Iterator[np.ndarray]:
    if spec.name.startswith(DROPPED_PREFIXES) and not spec.shape:
        yield from_f32(_clip_bound(spec.name, np.random.Generator(np.random.PCG64([seed, index]))), spec.dtype)
        return
    tower = spec.name.startswith(DROPPED_PREFIXES)
    mean, std = _tower_std(spec.name, spec.shape) if tower else _std(spec.name, spec.shape, cfg)
    rng = np.random.Generator(np.random.PCG64([seed, index]))
    rows = spec.shape[0]
    cols = int(np.prod(spec.shape[1:], dtype=np.int64)) if len(spec.shape) > 1 else 1
    per = max(1, (32 << 20) // (cols * 4))
    for r0 in range(0, rows, per):
        n = min(per, rows - r0)
        x = rng.standard_normal((n, cols), dtype=np.float32)
        x *= std
        x += mean
        yield from_f32(x, spec.dtype)


def synth(
    out: Path,
    preset: str = "tiny",
    seed: int = 0,
    dtype: str = "BF16",
    softcap: bool = True,
    extra_towers: bool = True,
    shard_bytes: int = 2 << 30,
    towers: bool = False,
) -> Path:
    """Write a random-weight Gemma 4 checkpoint to ``out`` (replacing it atomically); return ``out``.
    ``towers`` adds vision and audio towers (TOWER_PRESETS), their token ids and processor configs."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    if dtype.upper() not in SOURCE_DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}; choose bf16, f16 or f32")
    dtype = dtype.upper()
    config = hf_config(preset, softcap, towers)
    cfg = Gemma4TextConfig.from_hf(config)
    specs = [TensorSpec(TEXT_PREFIX + n, s, dtype) for n, s in cfg.expected_shapes().items()]
    if towers:
        specs += [TensorSpec(n, s, dtype) for n, s in Towers.from_hf(config).shapes(cfg.hidden_size).items()]
    elif extra_towers:
        specs += [
            TensorSpec("model.vision_tower.patch_embedder.input_proj.weight", (64, 48), dtype),
            TensorSpec("model.audio_tower.output_proj.weight", (64, 64), dtype),
        ]
    index_of = {s.name: i for i, s in enumerate(specs)}
    total = sum(s.nbytes for s in specs)
    out = Path(out)
    with atomic_dir(out) as tmp, progress_bar(f"synth {preset}", total) as advance:
        groups = list(shard(specs, shard_bytes))
        weight_map: dict[str, str] = {}
        for k, group in enumerate(groups, 1):
            fname = f"model-{k:05d}-of-{len(groups):05d}.safetensors"

            def chunks(spec: TensorSpec) -> Iterator[np.ndarray]:
                for c in _chunks(spec, cfg, seed, index_of[spec.name]):
                    advance(c.nbytes)
                    yield c

            write_safetensors(tmp / fname, group, chunks)
            weight_map.update({s.name: fname for s in group})
        (tmp / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1)
        )
        (tmp / "config.json").write_text(json.dumps(config, indent=1))
        (tmp / "generation_config.json").write_text(
            json.dumps({"bos_token_id": 2, "eos_token_id": [1, 106], "pad_token_id": 0}, indent=1)
        )
        write_synthetic_tokenizer(
            tmp,
            cfg.vocab_size,
            n_merges=PRESET_MERGES.get(preset),
            multimodal=multimodal_tokens(cfg.vocab_size) if towers else None,
        )
        if towers:
            for fname, body in processor_configs(Towers.from_hf(config)).items():
                (tmp / fname).write_text(json.dumps(body, indent=1))
    log.info("wrote %s preset to %s (%.2f GB)", preset, out, total / 1e9)
    return out
