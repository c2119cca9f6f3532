"""Load an edgekit MLX artifact, with Gemma 4's per-layer embedding table kept out of RAM.

Gemma 4 E2B's per-layer embedding (PLE) table ``embed_tokens_per_layer`` is [262144, 8960]: 2.35 B
of its 4.6 B parameters. A forward pass reads only the rows of the tokens in flight (8,960 values a
token), yet stock ``mlx_lm.load`` makes the whole table resident, and MLX arrays are anonymous
memory: that is most of the ≈2.5 GB a stock 4-bit E2B peaks at.

The hook. edgekit's MLX converter writes the table alone into ``model-ple.safetensors``, in the
layout mlx-lm itself would save it (``.weight`` packed uint32 plus ``.scales``/``.biases`` when
quantized, or a plain float ``.weight``). ``load_mlx_model`` leaves that file on disk and replaces
mlx-lm's ``embed_tokens_per_layer`` module with ``DiskEmbedding``. mlx-lm's own
``Gemma4TextModel._get_per_layer_inputs`` still calls that module with the token ids, so the
module swap is the whole hook: ``DiskEmbedding`` reads the ids' rows from the file and makes the
same ``mx.dequantize`` call ``nn.QuantizedEmbedding`` makes on the same rows, hence the logits are
identical to the resident table's. (Nothing in mlx reads part of a file into an array, so the row
reads are ours.)

Rows are read with ``pread`` rather than through an ``mmap``: a mapping keeps every page it touched
in the process's RSS, and a row touches more than its 9.5 KB (whole 4 KB pages of its 280-byte
scales and biases, plus the kernel's fault-around), measured at ≈25 KB of RSS per distinct token on
the e2b preset, i.e. ≈50 MB for a 2048-token context of distinct tokens. ``pread`` copies exactly the
row; recently read rows stay in the page cache, which no process's RSS is charged for.

Because the file is named ``model*.safetensors`` and the config's ``quantization`` names its bits,
stock ``mlx_lm.load`` / ``mlx_lm.generate`` read the same artifact with the table resident.

Cost: the rows are read on the host, so each forward call waits for the previous sampled token
(mlx-lm otherwise overlaps sampling with the next step's graph building), and a 2048-token prefill
makes ≈6k small reads (milliseconds); on a CPU this is free, on Metal it is one sync per token.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...core.errors import ArtifactError, EngineMissingError
from ...model.dtypes import DTYPES
from ...model.safetensors_io import read_tensors

PLE_FILE = "model-ple.safetensors"
PLE_MODULE = "language_model.model.embed_tokens_per_layer"  # mlx-lm's path for the table


def require_mlx() -> Any:
    """mlx.core, or one line saying how to get it."""
    try:
        # deferred: mlx (the mlx extra) loads only when an MLX model is built or run
        import mlx.core as mx
        import mlx_lm  # noqa: F401
    except ImportError as e:
        raise EngineMissingError(
            f"MLX is not importable here ({e}); install edgekit[mlx] (mlx[cpu] on Linux, mlx on macOS)"
        ) from None
    return mx


@dataclass
class PleTable:
    """The PLE tensors of ``model-ple.safetensors``: where each lies in the file, read by rows."""

    path: Path
    parts: dict[str, tuple[int, tuple[int, int], str]]  # weight/scales/biases: offset, shape, dtype
    group_size: int | None
    bits: int | None
    _fd: int

    @property
    def quantized(self) -> bool:
        return "scales" in self.parts

    @property
    def shape(self) -> tuple[int, int]:
        """Rows and columns of the stored weight (columns packed in uint32 words when quantized)."""
        return self.parts["weight"][1]

    @property
    def dtype(self) -> str:
        """safetensors dtype of the float data (the scales when quantized): BF16, F16 or F32."""
        return self.parts["scales" if self.quantized else "weight"][2]

    def _row_bytes(self, part: str) -> int:
        _, (_, cols), dt = self.parts[part]
        return cols * DTYPES[dt].size

    @property
    def row_bytes(self) -> int:
        return sum(self._row_bytes(p) for p in self.parts)

    @property
    def nbytes(self) -> int:
        return self.row_bytes * self.shape[0]

    def read(self, part: str, ids: np.ndarray) -> np.ndarray:
        """Rows ``ids`` of ``part`` ("weight", "scales", "biases"), each distinct row read once."""
        offset, (_, _cols), dt = self.parts[part]
        rb = self._row_bytes(part)
        uniq, inverse = np.unique(np.asarray(ids, dtype=np.int64), return_inverse=True)
        out = np.empty((len(uniq), rb), dtype=np.uint8)
        for i, r in enumerate(uniq.tolist()):
            data = os.pread(self._fd, rb, offset + r * rb)
            if len(data) != rb:
                raise ArtifactError(f"{self.path}: ends inside PLE row {r}; rebuild the artifact with `edgekit build`")
            out[i] = np.frombuffer(data, dtype=np.uint8)
        return out.view(DTYPES[dt].storage)[inverse.reshape(-1)]

    def close(self) -> None:
        os.close(self._fd)


def open_ple(folder: Path, quant: dict[str, Any] | None) -> PleTable:
    """Open ``folder/model-ple.safetensors``; ``quant`` is the config's entry for the table (or None)."""
    path = Path(folder) / PLE_FILE
    refs = read_tensors(path, ArtifactError, fix="rebuild the artifact with `edgekit build`")
    parts: dict[str, tuple[int, tuple[int, int], str]] = {}
    for part in ("weight", "scales", "biases"):
        ref = refs.get(f"{PLE_MODULE}.{part}")
        if ref is None:
            continue
        if len(ref.shape) != 2:
            raise ArtifactError(f"{path}: PLE tensor {part} is corrupt; rebuild the artifact with `edgekit build`")
        parts[part] = (ref.offset, (ref.shape[0], ref.shape[1]), ref.dtype)
    if "weight" not in parts:
        raise ArtifactError(f"{path}: no {PLE_MODULE}.weight; rebuild the artifact with `edgekit build`")
    q = quant if isinstance(quant, dict) else None
    if ("scales" in parts) != (q is not None):
        raise ArtifactError(f"{path}: PLE table and config.json disagree on quantization; rebuild the artifact")
    group_size, bits = (q["group_size"], q["bits"]) if q else (None, None)
    return PleTable(path, parts, group_size, bits, os.open(path, os.O_RDONLY))


def _to_mx(a: np.ndarray, dtype: str) -> Any:
    import mlx.core as mx  # deferred: mlx (the mlx extra) loads only when an MLX model is built or run

    if dtype == "BF16":
        return mx.array(a).view(mx.bfloat16)  # bf16 is stored as its raw 16 bits
    return mx.array(a)


def _make_disk_embedding() -> type:
    # deferred: mlx (the mlx extra) loads only when an MLX model is built or run
    import mlx.core as mx
    import mlx.nn as nn

    class DiskEmbedding(nn.Module):
        """Drop-in for mlx-lm's ``embed_tokens_per_layer``: the ids' rows, read from the artifact's file.

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
            idx = np.asarray(ids, dtype=np.int64)  # the ids must be on the host to read their rows
            flat = idx.reshape(-1)
            if flat.size and (flat.min() < 0 or flat.max() >= t.shape[0]):
                raise IndexError(f"token id out of range for a {t.shape[0]}-row PLE table")
            self.rows_read += flat.size

            def rows(part: str) -> Any:
                a = t.read(part, flat)
                x = _to_mx(a, t.parts[part][2]).reshape(*idx.shape, a.shape[-1])
                return x.astype(self.cast) if self.cast is not None and mx.issubdtype(x.dtype, mx.floating) else x

            if not t.quantized:
                return rows("weight")
            return mx.dequantize(
                rows("weight"),
                scales=rows("scales"),
                biases=rows("biases") if "biases" in t.parts else None,
                group_size=t.group_size,
                bits=t.bits,
                mode="affine",
            )

    return DiskEmbedding


def _text_model(model: Any) -> Any:
    return model.language_model.model


def load_mlx_model(
    path: str | Path, ple: str = "auto", dtype: Any = None, lazy: bool = False, tokenizer: bool = True
) -> tuple[Any, Any]:
    """(model, tokenizer) for an MLX artifact folder, stock mlx-lm or edgekit-built.

    ``ple``: "disk" keeps the PLE table in its file and reads the rows in flight (edgekit artifacts;
    "mmap" is an alias), "resident" loads it as stock mlx-lm does, "auto" is "disk" when the
    artifact has ``model-ple.safetensors``.
    ``dtype`` (e.g. ``mx.float32``) casts every float parameter, for parity checks.
    ``tokenizer=False`` returns (model, None): a runner feeding token ids saves the transformers
    tokenizer's memory (≈110 MB resident for Gemma's 262k vocabulary, measured on the e2b preset).
    """
    mx = require_mlx()
    # deferred: mlx (the mlx extra) loads only when an MLX model is built or run
    from mlx.utils import tree_map
    from mlx_lm.utils import load_config, load_model, load_tokenizer

    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise ArtifactError(
            f"{folder}: not an MLX artifact (no config.json); build one with `edgekit build --target m2`"
        )
    has_file = (folder / PLE_FILE).is_file()
    if ple not in ("auto", "disk", "mmap", "resident"):
        raise ValueError(f"ple must be auto, disk or resident, not {ple!r}")
    on_disk = ple in ("disk", "mmap") or (ple == "auto" and has_file)
    if on_disk and not has_file:
        raise ArtifactError(
            f"{folder}: no {PLE_FILE}; this artifact was not built by edgekit, load it with ple='resident'"
        )
    tok = None
    if tokenizer:
        # Before the weights: parsing a 262k-entry tokenizer.json briefly takes ≈150 MB more than the
        # tokenizer keeps, a transient that otherwise lands on top of the resident weights (e2b
        # 4-bit peak RSS measured 1.58 GB loading it after the model, 1.50 GB before).
        tok = load_tokenizer(folder, eos_token_ids=load_config(folder).get("eos_token_id"))
        gc.collect()
    try:
        # lazy: mx.load only records where each tensor lives; the PLE arrays are dropped unread below.
        model, config = load_model(folder, lazy=True)
    except (ValueError, FileNotFoundError, KeyError) as e:
        raise ArtifactError(
            f"{folder}: mlx-lm cannot load this artifact ({e}); rebuild it with `edgekit build`"
        ) from None
    if dtype is not None:
        model.update(
            tree_map(lambda v: v.astype(dtype) if mx.issubdtype(v.dtype, mx.floating) else v, model.parameters())
        )
    if on_disk:
        quant = config.get("quantization") or {}
        # The converter names the table explicitly (False when unquantized); else the default applies.
        entry = quant.get(PLE_MODULE, quant) if quant else None
        table = open_ple(folder, entry or None)
        text = _text_model(model)
        expected = (
            text.config.vocab_size_per_layer_input,
            text.config.num_hidden_layers * text.config.hidden_size_per_layer_input,
        )
        rows, cols = table.shape
        if table.quantized and table.bits:
            cols *= 32 // table.bits
        if (rows, cols) != expected:
            raise ArtifactError(
                f"{folder}: PLE table is {rows}x{cols}, config implies "
                f"{expected[0]}x{expected[1]}; rebuild the artifact"
            )
        text.embed_tokens_per_layer = _make_disk_embedding()(table, dtype)
    if not lazy:
        mx.eval(model.parameters())
    return model, tok


# The name the MLX runner imports.
load = load_mlx_model


def ple_table(model: Any) -> PleTable | None:
    """The on-disk PLE table of a model from ``load_mlx_model`` (None when resident)."""
    mod = _text_model(model).embed_tokens_per_layer
    return getattr(mod, "table", None)
