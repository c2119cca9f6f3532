"""Gemma 4's vision and audio towers → a GGUF multimodal projector (mmproj) for llama.cpp's mtmd.

Written on gguf's writer like the text model. Names come from gguf's own MMPROJ tensor map after
the renames llama.cpp's reference converter makes (conversion/gemma.py: Gemma4VisionAudioModel);
data and types are the reference's, tensor for tensor (tests/test_mmproj.py compares the files),
with one difference: ``clip.use_gelu``. The reference never writes it, so mtmd runs the vision MLP
with gelu_quick while transformers uses the tanh GELU (gelu_pytorch_tanh): 1.3% relative error in
the soft tokens of a tiny model as converted, 1.1e-3 with the key (FACTS.md, "Multimodal").
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path

import gguf
import numpy as np

from ...core.errors import CheckpointError, ConfigError, ConversionError
from ...core.fsutil import atomic_path
from ...model.checkpoint import Checkpoint
from ...model.safetensors_io import TensorRef
from ...model.towers import (
    AUDIO_PREFIX,
    EMBED_AUDIO,
    MEL_BINS,
    VISION_PREFIX,
    Towers,
)

log = logging.getLogger(__name__)
GQT = gguf.GGMLQuantizationType
# Tower types a recipe may ask for (what llama.cpp's converter offers for an mmproj, F32 aside).
QTYPES: dict[str, GQT] = {"F32": GQT.F32, "F16": GQT.F16, "BF16": GQT.BF16, "Q8_0": GQT.Q8_0}
FILE_TYPES = {
    GQT.F32: gguf.LlamaFileType.ALL_F32,
    GQT.F16: gguf.LlamaFileType.MOSTLY_F16,
    GQT.BF16: gguf.LlamaFileType.MOSTLY_BF16,
    GQT.Q8_0: gguf.LlamaFileType.MOSTLY_Q8_0,
}
CLIP_SUFFIXES = (".weight", ".bias", ".input_max", ".input_min", ".output_max", ".output_min")
# llama.cpp's converter writes a Gemma 4 projector with this image_size: mtmd ignores it for gemma4v.
IMAGE_SIZE = 224


@functools.cache
def _tensor_map() -> gguf.TensorNameMap:
    return gguf.get_tensor_name_map(gguf.MODEL_ARCH.MMPROJ, 128)


def modality_of(name: str) -> str:
    return "audio" if name.startswith(AUDIO_PREFIX) or name == EMBED_AUDIO else "vision"


def gguf_name(name: str) -> str:
    """A checkpoint tower tensor's mmproj name (gguf's MMPROJ map, after llama.cpp's renames)."""
    n = name
    if modality_of(name) == "audio":
        n = n.replace(AUDIO_PREFIX, "conformer.").replace(".linear.", ".")
        if n.endswith("per_dim_scale"):
            n += ".weight"
    else:
        n = n.replace(VISION_PREFIX + "encoder.", "vision_model.model.").replace(".linear.weight", ".weight")
        if n.endswith("position_embedding_table"):
            n += ".weight"
    mapped = _tensor_map().get_name(n, try_suffixes=CLIP_SUFFIXES)
    if mapped is None:
        raise ConversionError(
            f"tower tensor {name} has no mmproj name; the checkpoint is not a Gemma 4 model this converter knows"
        )
    return mapped


def _softplus(x: np.ndarray) -> np.ndarray:
    # llama.cpp's graph multiplies by softplus(per_dim_scale); the converter stores it applied. Computed
    # in float64 and rounded once: torch's float32 softplus (the reference's) is off by 1 ulp on ≈20% of
    # values, the one place the two files' bytes differ beyond clip.use_gelu.
    return np.log1p(np.exp(x.astype(np.float64))).astype(np.float32)


def tensor_data(name: str, ref: TensorRef) -> np.ndarray:
    """A tower tensor as float32 in the layout mtmd reads."""
    x = ref.load().astype(np.float32).reshape(ref.shape)
    if x.ndim == 0:
        return x.reshape(1)  # 0-d clip bounds become 1-element tensors
    if name.endswith("per_dim_scale"):
        return _softplus(x)
    if name.endswith("lconv1d.depthwise_conv1d.weight"):
        return x.reshape(x.shape[0], x.shape[2])  # [C, 1, K] → [C, K]
    if name.endswith("patch_embedder.input_proj.weight"):
        n, k = x.shape  # [n, 16*16*3] in HWC order → [n, 3, 16, 16] as ggml's conv reads it
        p = round((k // 3) ** 0.5)
        return np.ascontiguousarray(x.reshape(n, p, p, 3).transpose(0, 3, 1, 2))
    return x


def tensor_type(name: str, new_name: str, ndim: int, want: GQT) -> GQT:
    """The type llama.cpp's converter gives a tensor when the tower's type is ``want``."""
    if ndim <= 1 or new_name.endswith("_norm.weight") or not new_name.endswith(".weight"):
        return GQT.F32  # norms, biases, scalars, clip bounds
    if "position_embedding_table" in name:
        return GQT.F32  # mtmd adds it to F32 activations by row lookup
    if modality_of(name) == "audio" and (".conv" in name or "_conv" in name):
        # The subsampling convs, their input projection and the depthwise conv: ggml's conv kernels
        # take F32 (the reference's rule, which the projection matches by name too).
        return GQT.F32
    if new_name.endswith(".patch_embd.weight"):
        return GQT.F16 if want == GQT.F16 else GQT.F32  # ggml's im2col path: F16 or F32 only
    return want


def encode(data: np.ndarray, qtype: GQT) -> tuple[np.ndarray, GQT]:
    """``data`` in ``qtype`` (a row length Q8_0 cannot block falls back to F16, as in llama.cpp's converter)."""
    try:
        return gguf.quants.quantize(data, qtype), qtype
    except gguf.QuantError:
        return gguf.quants.quantize(data, GQT.F16), GQT.F16


def _ftype(types: dict[str, GQT]) -> gguf.LlamaFileType:
    # general.file_type names the towers' type; when they differ, the first modality's (vision).
    return FILE_TYPES[next(iter(types.values()))]


def write_metadata(
    w: gguf.GGUFWriter,
    towers: Towers,
    modalities: tuple[str, ...],
    text_hidden: int,
    name: str,
    ftype: gguf.LlamaFileType,
) -> None:
    v, a = towers.vision, towers.audio
    w.add_type(gguf.GGUFType.MMPROJ)
    w.add_name(name)
    w.add_file_type(int(ftype))
    if "vision" in modalities:
        assert v is not None
        w.add_clip_has_vision_encoder(True)
        w.add_vision_projection_dim(text_hidden)
        w.add_vision_image_size(IMAGE_SIZE)
        w.add_vision_patch_size(v.patch_size)
        w.add_vision_embedding_length(v.hidden_size)
        w.add_vision_feed_forward_length(v.intermediate_size)
        w.add_vision_block_count(v.num_hidden_layers)
        w.add_vision_head_count(v.num_attention_heads)
        w.add_vision_image_mean([0.0, 0.0, 0.0])  # Gemma 4 does not normalise; the graph maps to 2x - 1 itself
        w.add_vision_image_std([1.0, 1.0, 1.0])
    if "audio" in modalities:
        assert a is not None
        w.add_clip_has_audio_encoder(True)
        w.add_audio_projection_dim(text_hidden)
        w.add_audio_embedding_length(a.hidden_size)
        w.add_audio_feed_forward_length(4 * a.hidden_size)
        w.add_audio_block_count(a.num_hidden_layers)
        w.add_audio_head_count(a.num_attention_heads)
    if "vision" in modalities:
        assert v is not None
        w.add_clip_vision_projector_type(gguf.VisionProjectorType.GEMMA4V)
        w.add_vision_attention_layernorm_eps(v.rms_norm_eps)
        # The key llama.cpp's converter omits: without it mtmd uses gelu_quick (see the module's note).
        w.add_vision_use_gelu(v.hidden_activation.startswith("gelu"))
    if "audio" in modalities:
        assert a is not None
        w.add_clip_audio_projector_type(gguf.VisionProjectorType.GEMMA4A)
        w.add_audio_num_mel_bins(MEL_BINS)
        w.add_audio_attention_layernorm_eps(a.rms_norm_eps)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)


def write_mmproj(
    ckpt: Checkpoint,
    out: Path,
    modalities: tuple[str, ...],
    types: dict[str, str],
    name: str | None = None,
    advance: Callable[[int], None] = lambda n: None,
) -> Path:
    """Write the projector for ``modalities`` of ``ckpt`` at ``out`` (atomically); return ``out``."""
    towers = Towers.from_hf(ckpt.config.raw)
    missing = [m for m in modalities if getattr(towers, m) is None]
    if missing:
        raise ConfigError(
            f"{ckpt.path}: no {missing[0]} tower in config.json; build without --modalities "
            f"{missing[0]} (the checkpoint has: {', '.join(towers.modalities) or 'text only'})"
        )
    expected = towers.shapes(ckpt.config.hidden_size, modalities)
    absent = [n for n in expected if n not in ckpt.tower_tensors]
    if absent:
        raise CheckpointError(
            f"{ckpt.path}: tower tensor {absent[0]} missing ({len(absent)} in all); the checkpoint is incomplete"
        )
    for n, shape in expected.items():
        if ckpt.tower_tensors[n].shape != shape:
            raise CheckpointError(
                f"{ckpt.path}: tensor {n} has shape {ckpt.tower_tensors[n].shape}, config implies {shape}; config and "
                "weights disagree"
            )
    want = {m: QTYPES[types.get(m, "F16")] for m in modalities}
    out = Path(out)
    with atomic_path(out) as tmp:
        w = gguf.GGUFWriter(tmp, "clip")
        try:
            write_metadata(w, towers, modalities, ckpt.config.hidden_size, name or ckpt.name, _ftype(want))
            # The reference's order: tensors sorted by checkpoint name.
            for n in sorted(expected):
                new = gguf_name(n)
                data = tensor_data(n, ckpt.tower_tensors[n])
                qtype = tensor_type(n, new, data.ndim, want[modality_of(n)])
                enc, qtype = encode(data, qtype)
                w.add_tensor(new, enc, raw_dtype=qtype)
                advance(enc.nbytes)
            w.write_header_to_file()
            w.write_kv_data_to_file()
            w.write_tensors_to_file()
        finally:
            w.close()
    log.info(
        "wrote %s (%s, %.1f MB)",
        out.name,
        ", ".join(f"{m} {want[m].name}" for m in modalities),
        out.stat().st_size / 1e6,
    )
    return out
