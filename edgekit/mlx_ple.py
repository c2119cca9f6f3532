"""Load an edgekit MLX artifact, with Gemma 4's per-layer embedding table kept out of RAM.

Gemma 4 E2B's per-layer embedding (PLE) table ``embed_tokens_per_layer`` is [262144, 8960]: 2.35 B
of its 4.6 B parameters. A forward pass reads only the rows of the tokens in flight (8,960 values a
token), yet stock ``mlx_lm.load`` makes the whole table resident, and MLX arrays are anonymous
memory: that is most of the ≈2.5 GB a stock 4-bit E2B peaks at.

The hook. edgekit's MLX converter writes the table alone into ``model-ple.safetensors``, in the
layout mlx-lm itself would save it (``.weight`` packed uint32 plus ``.scales``/``.biases`` when
quantized, or a plain float ``.weight``). ``load_mlx_model`` maps that file read-only (file-backed
pages, which the kernel can drop and never copies) and replaces mlx-lm's
``embed_tokens_per_layer`` module with :class:`MappedEmbedding`. mlx-lm's own
``Gemma4TextModel._get_per_layer_inputs`` still calls that module with the token ids, so the
module swap is the whole hook: ``MappedEmbedding`` gathers the ids' rows from the map and makes the
same ``mx.dequantize`` call ``nn.QuantizedEmbedding`` makes on the same rows, hence the logits are
identical to the resident table's. (Nothing in mlx can read part of a file into an array, so the
gather is numpy on an ``mmap``; that is the one piece written here.)

Because the file is named ``model*.safetensors`` and the config's ``quantization`` names its bits,
stock ``mlx_lm.load`` / ``mlx_lm.generate`` read the same artifact with the table resident.

Cost: the gather needs the ids on the host, so each forward call waits for the previous sampled
token (mlx-lm otherwise overlaps sampling with the next step's graph building); on a CPU this is
free, on Metal it is one sync per token.
"""

from __future__ import annotations

import json
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ArtifactError, EngineMissingError

PLE_FILE = "model-ple.safetensors"
PLE_MODULE = "language_model.model.embed_tokens_per_layer"   # mlx-lm's path for the table
_NP = {"U32": np.uint32, "BF16": np.uint16, "F16": np.float16, "F32": np.float32}


def require_mlx() -> Any:
    """mlx.core, or one line saying how to get it."""
    try:
        import mlx.core as mx
        import mlx_lm  # noqa: F401
    except ImportError as e:
        raise EngineMissingError(f"MLX is not importable here ({e}); install edgekit[mlx] "
                                 "(mlx[cpu] on Linux, mlx on macOS)") from None
    return mx


@dataclass
class PleTable:
    """The PLE tensors of ``model-ple.safetensors`` as read-only numpy views of one mmap."""

    path: Path
    weight: np.ndarray                 # [vocab, cols] (packed uint32 when quantized)
    scales: np.ndarray | None
    biases: np.ndarray | None
    dtype: str                         # safetensors dtype of the float data: BF16, F16, F32
    group_size: int | None
    bits: int | None
    _map: mmap.mmap

    @property
    def quantized(self) -> bool:
        return self.scales is not None

    @property
    def row_bytes(self) -> int:
        n = self.weight.strides[0]
        if self.scales is not None:
            n += self.scales.strides[0] + (self.biases.strides[0] if self.biases is not None else 0)
        return n

    @property
    def nbytes(self) -> int:
        return self.row_bytes * self.weight.shape[0]

    def close(self) -> None:
        self._map.close()


def _read_header(path: Path) -> tuple[dict[str, Any], int]:
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > 100 << 20:
                raise ValueError("impossible header length")
            return json.loads(f.read(n)), 8 + n
    except (OSError, ValueError, struct.error) as e:
        raise ArtifactError(f"{path}: unreadable PLE table ({e}); rebuild the artifact with `edgekit build`") from None


def open_ple(folder: Path, quant: dict[str, Any] | None) -> PleTable:
    """Map ``folder/model-ple.safetensors``; ``quant`` is the config's entry for the table (or None)."""
    path = Path(folder) / PLE_FILE
    header, base = _read_header(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    # Token ids hit rows all over the table: readahead would only pull in pages nobody asked for.
    if hasattr(mm, "madvise") and hasattr(mmap, "MADV_RANDOM"):
        mm.madvise(mmap.MADV_RANDOM)

    def view(suffix: str) -> tuple[np.ndarray, str] | tuple[None, None]:
        info = header.get(f"{PLE_MODULE}.{suffix}")
        if info is None:
            return None, None
        begin, end = info["data_offsets"]
        if info["dtype"] not in _NP or base + end > size:
            mm.close()
            raise ArtifactError(f"{path}: PLE tensor {suffix} is corrupt; rebuild the artifact with `edgekit build`")
        shape = tuple(info["shape"])
        arr = np.frombuffer(mm, dtype=_NP[info["dtype"]], count=int(np.prod(shape)), offset=base + begin)
        return arr.reshape(shape), info["dtype"]

    weight, wdt = view("weight")
    scales, sdt = view("scales")
    biases, _ = view("biases")
    if weight is None:
        mm.close()
        raise ArtifactError(f"{path}: no {PLE_MODULE}.weight; rebuild the artifact with `edgekit build`")
    q = quant if isinstance(quant, dict) else None
    if (scales is None) != (q is None):
        mm.close()
        raise ArtifactError(f"{path}: PLE table and config.json disagree on quantization; rebuild the artifact")
    return PleTable(path, weight, scales, biases, sdt or wdt, q and q["group_size"], q and q["bits"], mm)


def _to_mx(a: np.ndarray, dtype: str) -> Any:
    import mlx.core as mx

    if dtype == "BF16":
        return mx.array(a).view(mx.bfloat16)   # bf16 is stored as its raw 16 bits
    return mx.array(a)


def _make_mapped_embedding() -> type:
    import mlx.core as mx
    import mlx.nn as nn

    class MappedEmbedding(nn.Module):
        """Drop-in for mlx-lm's ``embed_tokens_per_layer``: rows gathered from the mapped file.

        It holds no mx parameters, so the table never enters ``model.parameters()`` (nor MLX's
        allocator). ``dtype`` casts the gathered floats the way a model-wide ``astype`` would have
        cast the resident table; ``rows_read`` counts gathered rows for benchmarks.
        """

        def __init__(self, table: PleTable, dtype: Any = None):
            super().__init__()
            self.table = table
            self.cast = dtype
            self.rows_read = 0

        def __call__(self, ids: Any) -> Any:
            t = self.table
            idx = np.asarray(ids, dtype=np.int64)   # the ids must be on the host to gather
            flat = idx.reshape(-1)
            if flat.size and (flat.min() < 0 or flat.max() >= t.weight.shape[0]):
                raise IndexError(f"token id out of range for a {t.weight.shape[0]}-row PLE table")
            self.rows_read += flat.size
            lead = idx.shape

            def rows(a: np.ndarray, dtype: str) -> Any:
                x = _to_mx(a[flat], dtype).reshape(*lead, a.shape[-1])
                return x.astype(self.cast) if self.cast is not None and x.dtype != self.cast else x

            if not t.quantized:
                return rows(t.weight, t.dtype)
            return mx.dequantize(
                mx.array(t.weight[flat]).reshape(*lead, t.weight.shape[-1]),
                scales=rows(t.scales, t.dtype),
                biases=rows(t.biases, t.dtype) if t.biases is not None else None,
                group_size=t.group_size, bits=t.bits, mode="affine",
            )

    return MappedEmbedding


def _text_model(model: Any) -> Any:
    return model.language_model.model


def load_mlx_model(path: str | Path, ple: str = "auto", dtype: Any = None, lazy: bool = False) -> tuple[Any, Any]:
    """(model, tokenizer) for an MLX artifact folder, stock mlx-lm or edgekit-built.

    ``ple``: "mmap" keeps the PLE table in its mapped file (edgekit artifacts), "resident" loads it
    as stock mlx-lm does, "auto" maps it when the artifact has ``model-ple.safetensors``.
    ``dtype`` (e.g. ``mx.float32``) casts every float parameter, for parity checks.
    """
    mx = require_mlx()
    from mlx.utils import tree_map
    from mlx_lm.utils import load_model, load_tokenizer

    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise ArtifactError(f"{folder}: not an MLX artifact (no config.json); build one with `edgekit build --target m2`")
    has_file = (folder / PLE_FILE).is_file()
    if ple not in ("auto", "mmap", "resident"):
        raise ValueError(f"ple must be auto, mmap or resident, not {ple!r}")
    mapped = ple == "mmap" or (ple == "auto" and has_file)
    if mapped and not has_file:
        raise ArtifactError(f"{folder}: no {PLE_FILE}; this artifact was not built by edgekit, load it with ple='resident'")
    try:
        # lazy: mx.load only records where each tensor lives; the PLE arrays are dropped unread below.
        model, config = load_model(folder, lazy=True)
    except (ValueError, FileNotFoundError, KeyError) as e:
        raise ArtifactError(f"{folder}: mlx-lm cannot load this artifact ({e}); rebuild it with `edgekit build`") from None
    if dtype is not None:
        model.update(tree_map(lambda v: v.astype(dtype) if mx.issubdtype(v.dtype, mx.floating) else v,
                              model.parameters()))
    if mapped:
        quant = config.get("quantization") or {}
        # The converter names the table explicitly (False when unquantized); else the default applies.
        entry = quant.get(PLE_MODULE, quant) if quant else None
        table = open_ple(folder, entry or None)
        text = _text_model(model)
        expected = (text.config.vocab_size_per_layer_input,
                    text.config.num_hidden_layers * text.config.hidden_size_per_layer_input)
        cols = table.weight.shape[1] * (32 // table.bits if table.quantized else 1)
        if (table.weight.shape[0], cols) != expected:
            raise ArtifactError(f"{folder}: PLE table is {table.weight.shape[0]}x{cols}, config implies "
                                f"{expected[0]}x{expected[1]}; rebuild the artifact")
        text.embed_tokens_per_layer = _make_mapped_embedding()(table, dtype)
    if not lazy:
        mx.eval(model.parameters())
    tokenizer = load_tokenizer(folder, eos_token_ids=config.get("eos_token_id"))
    return model, tokenizer


# The name the MLX runner imports.
load = load_mlx_model


def mapped_table(model: Any) -> PleTable | None:
    """The mapped PLE table of a model from ``load_mlx_model`` (None when resident)."""
    mod = _text_model(model).embed_tokens_per_layer
    return getattr(mod, "table", None)
