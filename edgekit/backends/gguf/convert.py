"""Gemma 4 text → GGUF, on the ``gguf`` package's writer, one tensor streamed at a time.

The writer's state machine (header → KV → tensor info → data) needs every tensor's shape and type
up front, which the safetensors headers give without reading data. Each tensor's data is then
produced chunk by chunk (``_Streamed``) so a 9 GB checkpoint converts in a few hundred MB of RAM.
Names and metadata follow llama.cpp's gemma4 loader (src/models/gemma4.cpp); quantized artifacts
are made from the unquantized file by llama.cpp itself (quantize.py beside this file).
"""

from __future__ import annotations

import errno
import functools
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from ...core.errors import CheckpointError, ConversionError
from ...core.fsutil import atomic_path
from ...core.progress import progress_bar
from ...model.checkpoint import Checkpoint
from ...model.dtypes import DTYPES, from_f32, to_f16
from ...model.gemma4 import Gemma4TextConfig
from ...model.safetensors_io import TensorRef
from .vocab import add_vocab

log = logging.getLogger(__name__)

ARCH = gguf.MODEL_ARCH.GEMMA4
GQT = gguf.GGMLQuantizationType

# Unquantized storage types the converter writes itself (edgekit.model.dtypes names them).
FLOAT_TYPES: dict[str, GQT] = {n: GQT.__members__[d.gguf] for n, d in DTYPES.items() if d.float and d.gguf}
FILE_TYPES: dict[GQT, gguf.LlamaFileType] = {
    GQT.F32: gguf.LlamaFileType.ALL_F32,
    GQT.F16: gguf.LlamaFileType.MOSTLY_F16,
    GQT.BF16: gguf.LlamaFileType.MOSTLY_BF16,
}


@dataclass
class _Streamed:
    """Duck-types the ndarray GGUFWriter.write_tensor_data expects: ``nbytes`` and ``tofile``."""

    nbytes: int
    chunks: Callable[[], Iterator[np.ndarray]]
    advance: Callable[[int], None]
    copy_from: tuple[Path, int] | None = None  # (file, offset) when the bytes go over unchanged

    def tofile(self, f: Any) -> None:
        if self.copy_from and _copy_range(*self.copy_from, f, self.nbytes, self.advance):
            return
        written = 0
        for c in self.chunks():
            c = np.ascontiguousarray(c)
            f.write(c.data.cast("B"))
            written += c.nbytes
            self.advance(c.nbytes)
        if written != self.nbytes:
            raise ConversionError(f"internal: wrote {written} bytes for a {self.nbytes}-byte tensor")


def _copy_range(src: Path, offset: int, f: Any, nbytes: int, advance: Callable[[int], None]) -> bool:
    """Copy bytes file-to-file in the kernel (no user-space buffer; a reflink where the filesystem
    can). False when the platform or filesystem cannot, before anything was written."""
    if not hasattr(os, "copy_file_range"):
        return False
    f.flush()
    with open(src, "rb", buffering=0) as s:
        done = 0
        while done < nbytes:
            try:
                n = os.copy_file_range(s.fileno(), f.fileno(), min(nbytes - done, 1 << 30), offset + done)
            except OSError as e:
                if done == 0 and e.errno in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                    return False
                raise
            if n == 0:
                raise CheckpointError(
                    f"{src.name}: file ends inside a tensor; the download is truncated, fetch it again"
                )
            done += n
            advance(n)
    f.seek(0, os.SEEK_END)
    return True


@dataclass
class _Planned:
    name: str
    shape: tuple[int, ...]  # numpy order (rows, cols)
    qtype: GQT
    chunks: Callable[[], Iterator[np.ndarray]]
    copy_from: tuple[Path, int] | None = None

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * DTYPES[self.qtype.name].size


def _convert(ref: TensorRef, qtype: GQT, rows: int | None = None) -> Callable[[], Iterator[np.ndarray]]:
    """Chunks of ``ref`` (its first ``rows`` rows) in ``qtype``; a same-type copy moves bytes only."""
    same = FLOAT_TYPES[ref.dtype] == qtype

    def gen() -> Iterator[np.ndarray]:
        left = ref.n_rows if rows is None else rows
        for c in ref.raw_chunks() if same else ref.row_chunks():
            if left <= 0:
                break
            if ref.shape and c.shape[0] > left:
                c = c[:left]
            left -= c.shape[0] if ref.shape else 1
            # F16 refuses values it cannot hold (they would turn into Inf silently): dtypes.to_f16.
            yield c if same else to_f16(c, ref.name) if qtype == GQT.F16 else from_f32(c, qtype.name)

    return gen


@functools.cache
def _name_map(n_layers: int) -> gguf.TensorNameMap:
    return gguf.get_tensor_name_map(ARCH, n_layers)


def gguf_tensor_name(short: str, n_layers: int) -> str:
    tmap = _name_map(n_layers)
    hf = "model." + short
    if hf.endswith("layer_scalar"):
        hf += ".weight"  # llama.cpp stores the per-layer scalar as a weight tensor
    name = tmap.get_name(hf, try_suffixes=(".weight",))
    if name is None:
        raise ConversionError(f"tensor {short} has no GGUF name for gemma4; the checkpoint is not a Gemma 4 text model")
    return name


def rope_freqs(cfg: Gemma4TextConfig) -> np.ndarray:
    """Frequency factors for the full-attention layers' "proportional" partial RoPE.

    ggml's NEOX rope rotates the first n_rot dims; Gemma 4 rotates a fraction of each half. A factor
    of 1 keeps a pair's frequency, 1e30 makes its angle 0 (unrotated), which is the same map.
    """
    half = cfg.global_head_dim // 2
    n_rot = int(cfg.global_head_dim * cfg.partial_rotary_factor_full / 2)
    return np.array([1.0] * n_rot + [1e30] * (half - n_rot), dtype=np.float32)


def write_metadata(w: gguf.GGUFWriter, cfg: Gemma4TextConfig, name: str, file_type: gguf.LlamaFileType) -> None:
    L = cfg.num_hidden_layers
    w.add_name(name)
    w.add_type("model")
    w.add_file_type(int(file_type))
    w.add_block_count(L)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    ff = [cfg.layer_ffn(i) for i in range(L)]
    w.add_feed_forward_length(ff if len(set(ff)) > 1 else ff[0])
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_key_length(cfg.global_head_dim)
    w.add_value_length(cfg.global_head_dim)
    w.add_key_length_swa(cfg.head_dim)
    w.add_value_length_swa(cfg.head_dim)
    w.add_rope_freq_base(cfg.rope_theta_full)
    w.add_rope_freq_base_swa(cfg.rope_theta_sliding)
    # Full layers rope all dims (rope_freqs switches the unrotated ones off); sliding ones a fraction.
    w.add_rope_dimension_count(cfg.global_head_dim)
    w.add_rope_dimension_count_swa(int(cfg.head_dim * cfg.partial_rotary_factor_sliding))  # 1.0 for "default" rope
    w.add_sliding_window(cfg.sliding_window)
    w.add_sliding_window_pattern([cfg.is_sliding(i) for i in range(L)])
    w.add_shared_kv_layers(cfg.num_kv_shared_layers)
    w.add_embedding_length_per_layer_input(cfg.hidden_size_per_layer_input)
    # llama.cpp applies a softcap of 30 when the key is absent, so "none" must be written as 0.
    w.add_final_logit_softcapping(float(cfg.final_logit_softcapping or 0.0))


def plan_tensors(ckpt: Checkpoint, qtype: GQT, n_vocab: int) -> list[_Planned]:
    cfg = ckpt.config
    plans: list[_Planned] = []
    if cfg.vocab_size < n_vocab:
        raise ConversionError(
            f"{ckpt.path}: tokenizer has {n_vocab} tokens but embed_tokens only {cfg.vocab_size} rows; tokenizer and "
            "weights do not belong together"
        )
    for short, ref in ckpt.tensors.items():
        name = gguf_tensor_name(short, cfg.num_hidden_layers)
        rows = None
        shape = ref.shape
        if short == "embed_tokens.weight" and n_vocab < ref.shape[0]:
            # Rows past the tokenizer's vocabulary are padding no token can reach.
            rows, shape = n_vocab, (n_vocab, ref.shape[1])
        t = qtype if len(shape) > 1 else GQT.F32  # norms and scalars stay F32, as llama.cpp expects
        same = FLOAT_TYPES[ref.dtype] == t  # a prefix of rows is a prefix of bytes: copy it as is
        plans.append(_Planned(name, shape, t, _convert(ref, t, rows), (ref.path, ref.offset) if same else None))
    # Always, as llama.cpp's converter writes it: its gemma4 loader requires the tensor ("tensor
    # 'rope_freqs.weight' not found" otherwise), even when the full layers rotate every dim (all 1s).
    freqs = rope_freqs(cfg)
    plans.append(_Planned("rope_freqs.weight", freqs.shape, GQT.F32, lambda: iter([freqs])))
    return plans


def convert(ckpt: Checkpoint, out: Path, dtype: str = "F16", name: str | None = None) -> Path:
    """Write ``ckpt`` as an unquantized GGUF (F32, F16 or BF16) at ``out``, atomically."""
    qtype = FLOAT_TYPES[dtype.upper()]
    out = Path(out)
    with atomic_path(out) as tmp:
        w = gguf.GGUFWriter(tmp, gguf.MODEL_ARCH_NAMES[ARCH])
        try:
            write_metadata(w, ckpt.config, name or ckpt.name, FILE_TYPES[qtype])
            n_vocab = add_vocab(w, ckpt.path, ckpt.config.vocab_size)
            plans = plan_tensors(ckpt, qtype, n_vocab)
            for p in plans:
                w.add_tensor_info(p.name, p.shape, np.dtype(DTYPES[p.qtype.name].storage), p.nbytes, raw_dtype=p.qtype)
            w.write_header_to_file()
            w.write_kv_data_to_file()
            w.write_ti_data_to_file()
            with progress_bar(f"gguf {dtype}", sum(p.nbytes for p in plans)) as advance:
                for p in plans:
                    w.write_tensor_data(_Streamed(p.nbytes, p.chunks, advance, p.copy_from))  # type: ignore[arg-type]
        finally:
            w.close()
    log.info("wrote %s (%s, %.1f MB)", out.name, dtype, out.stat().st_size / 1e6)
    return out
