"""The one table of element types edgekit meets: safetensors names, numpy storage, bytes, GGUF and MLX.

bfloat16 has no numpy type, so BF16 data is stored and moved as its raw 16 bits (uint16) and
converted here. "Lossless" is the one rule both converters follow for the unquantized copy they
work from: the source's own float type when every matrix shares it, else F32.

How to add a type: one ``DType`` row; a converter that cannot write it says so in its recipe check.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from ..core.errors import ConversionError


@dataclass(frozen=True)
class DType:
    name: str  # safetensors name: F32, F16, BF16, U32
    storage: type  # numpy type the bytes are read as (BF16: uint16 bits)
    size: int  # bytes per element
    mlx: Optional[str]  # mlx.core attribute, e.g. "bfloat16"
    gguf: Optional[str]  # gguf.GGMLQuantizationType member for the unquantized storage
    float: bool = True


DTYPES: dict[str, DType] = {
    d.name: d
    for d in (
        DType("F32", np.float32, 4, "float32", "F32"),
        DType("F16", np.float16, 2, "float16", "F16"),
        DType("BF16", np.uint16, 2, "bfloat16", "BF16"),
        DType("U32", np.uint32, 4, "uint32", None, float=False),  # MLX's packed quantized weights
    )
}
# The float types a checkpoint may hold (what edgekit converts from).
SOURCE_DTYPES = ("F32", "F16", "BF16")
# Spellings recipes and the CLI accept for a float type.
FLOAT_ALIASES = {
    "bf16": "BF16",
    "bfloat16": "BF16",
    "f16": "F16",
    "float16": "F16",
    "fp16": "F16",
    "f32": "F32",
    "float32": "F32",
    "fp32": "F32",
}


def float_dtype(name: str) -> Optional[DType]:
    """The float DType ``name`` spells (bf16, bfloat16, F16, ...), or None."""
    key = FLOAT_ALIASES.get(str(name).strip().lower())
    return DTYPES[key] if key else None


def lossless(dtypes: Iterable[str]) -> str:
    """The unquantized type that holds every matrix of a checkpoint exactly: its own type when all
    matrices share one, else F32."""
    found = set(dtypes)
    return found.pop() if len(found) == 1 and next(iter(found)) in SOURCE_DTYPES else "F32"


def bf16_to_f32(raw: np.ndarray) -> np.ndarray:
    return (raw.astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16(x: np.ndarray) -> np.ndarray:
    """Round-to-nearest-even float32 → bfloat16 bits (uint16)."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounding = ((bits >> 16) & 1) + 0x7FFF
    return ((bits + rounding) >> 16).astype(np.uint16)


def to_f32(raw: np.ndarray, dtype: str) -> np.ndarray:
    """Stored elements of ``dtype`` as float32."""
    return bf16_to_f32(raw) if dtype == "BF16" else raw.astype(np.float32)


def from_f32(x: np.ndarray, dtype: str) -> np.ndarray:
    """float32 values as the storage of ``dtype`` (BF16: rounded bits)."""
    return f32_to_bf16(x) if dtype == "BF16" else np.asarray(x).astype(DTYPES[dtype].storage)


def to_f16(chunk: Any, tensor: str) -> Any:
    """``chunk`` (finite float32) as float16, refusing values float16 cannot hold: they would turn
    into Inf in the artifact silently (bf16 and f32 sources reach ±3.4e38, float16 ±65504)."""
    with np.errstate(over="ignore"):  # counted and reported below instead of a RuntimeWarning
        out = chunk.astype(np.float16)
    bad = int(np.count_nonzero(~np.isfinite(out)))
    if bad and np.isfinite(chunk).all():
        raise ConversionError(
            f"tensor {tensor}: {bad} value(s) beyond float16's range (±65504) would become Inf "
            "in an F16 file; build the f32 recipe or a quantized one instead"
        )
    return out
