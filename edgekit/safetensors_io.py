"""A streaming safetensors writer: header first, then each tensor produced in row chunks.

safetensors' own ``save_file`` wants every tensor in memory at once; a shape-true E2B is 9 GB in
bf16, so the synthetic checkpoint writer needs to stream. Files are written to a temp name and
renamed, so an interrupted write never leaves a finished-looking shard.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from .checkpoint import ST_DTYPES
from .fsutil import atomic_path


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str  # F32 | F16 | BF16

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * ST_DTYPES[self.dtype][1]


def write_safetensors(path: Path, specs: list[TensorSpec],
                      chunks: Callable[[TensorSpec], Iterable[np.ndarray]],
                      metadata: dict[str, str] | None = None) -> None:
    """Write ``specs`` in order; ``chunks(spec)`` yields the tensor's bytes as arrays of its storage dtype."""
    header: dict[str, object] = {"__metadata__": metadata or {"format": "pt"}}
    offset = 0
    for s in specs:
        header[s.name] = {"dtype": s.dtype, "shape": list(s.shape), "data_offsets": [offset, offset + s.nbytes]}
        offset += s.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # keep the data 8-byte aligned, as safetensors does
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for s in specs:
            written = 0
            for arr in chunks(s):
                data = np.ascontiguousarray(arr, dtype=ST_DTYPES[s.dtype][0])
                f.write(data.tobytes())
                written += data.nbytes
            if written != s.nbytes:
                raise ValueError(f"{s.name}: wrote {written} bytes, expected {s.nbytes}")


def shard(specs: list[TensorSpec], max_bytes: int) -> Iterator[list[TensorSpec]]:
    """Group tensors into shards of at most ``max_bytes`` (a tensor larger than that gets its own)."""
    cur: list[TensorSpec] = []
    size = 0
    for s in specs:
        if cur and size + s.nbytes > max_bytes:
            yield cur
            cur, size = [], 0
        cur.append(s)
        size += s.nbytes
    if cur:
        yield cur
