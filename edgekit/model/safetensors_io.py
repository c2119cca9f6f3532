"""safetensors, read and written by edgekit: validated headers, lazy row reads, streamed and slab writes.

The format is an 8-byte little-endian header length, a JSON header (tensor name → dtype, shape,
data_offsets relative to the data start; optional ``__metadata__``) and raw little-endian data.
We parse it ourselves because safetensors' numpy frontend has no bfloat16 and its torch frontend
would pull torch into every build, and because its ``save_file`` wants every tensor in memory at
once (a shape-true E2B is 9 GB in bf16).

* ``read_tensors(path)``: the header, checked for shape (a dict of entries with a known dtype, a
  shape of naturals, two ordered offsets whose span matches the shape, inside the file, not
  overlapping), as ``TensorRef``s that read rows with ``os.pread`` (no mapping: no file-backed
  pages stay in the process). A bad header is one ``error_cls`` line, never a KeyError.
* ``write_safetensors(path, specs, chunks)``: header first, then each tensor streamed in order.
* ``SlabWriter``: header first, the file sized, then row slabs ``pwrite`` at their offsets in any
  order (the MLX PLE table, quantized slab by slab).
"""

from __future__ import annotations

import itertools
import json
import os
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..core.errors import CheckpointError, EdgekitError
from ..core.fsutil import atomic_path
from .dtypes import DTYPES, to_f32

MAX_HEADER = 100 << 20  # safetensors' own limit


@dataclass(frozen=True)
class TensorRef:
    name: str  # name as stored in the file
    shape: tuple[int, ...]
    dtype: str  # safetensors dtype
    path: Path
    offset: int  # absolute byte offset in ``path``
    nbytes: int

    @property
    def n_rows(self) -> int:
        return self.shape[0] if self.shape else 1

    @property
    def row_bytes(self) -> int:
        return self.nbytes // max(self.n_rows, 1)

    def read_bytes(self, start: int, nbytes: int) -> np.ndarray:
        """``nbytes`` of the tensor from byte ``start``, as its storage dtype."""
        buf = bytearray(nbytes)
        view = memoryview(buf)
        with open(self.path, "rb", buffering=0) as f:
            got = 0
            while got < nbytes:
                n = os.preadv(f.fileno(), [view[got:]], self.offset + start + got)
                if n == 0:
                    raise CheckpointError(
                        f"{self.path.name}: file ends inside tensor {self.name}; the download is truncated, fetch it "
                        "again"
                    )
                got += n
        return np.frombuffer(buf, dtype=DTYPES[self.dtype].storage)

    def raw_chunks(self, max_bytes: int = 64 << 20) -> Iterator[np.ndarray]:
        """Whole rows in the stored dtype, each chunk at most ~max_bytes (for same-dtype copies)."""
        rows_per = max(1, max_bytes // max(self.row_bytes, 1))
        for r0 in range(0, self.n_rows, rows_per):
            r1 = min(self.n_rows, r0 + rows_per)
            raw = self.read_bytes(r0 * self.row_bytes, (r1 - r0) * self.row_bytes)
            yield raw.reshape((r1 - r0, *self.shape[1:])) if self.shape else raw

    def row_chunks(self, max_bytes: int = 64 << 20) -> Iterator[np.ndarray]:
        """Whole rows as float32, each chunk at most ~max_bytes in the source dtype."""
        for raw in self.raw_chunks(max_bytes):
            yield to_f32(raw, self.dtype)

    def load(self) -> np.ndarray:
        """The whole tensor as float32 (small tensors only: norms, scalars, tests)."""
        return np.concatenate(list(self.row_chunks()), axis=0) if self.shape else next(self.row_chunks())


def _natural(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def read_header(path: Path) -> tuple[dict[str, Any], dict[str, Any], int]:
    """(entries, metadata, data start) of a safetensors file, the JSON only checked to be an object.
    ValueError names what is wrong; OSError when unreadable."""
    size = Path(path).stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError("too short to be safetensors")
        (n,) = struct.unpack("<Q", head)
        if n > min(size - 8, MAX_HEADER):
            raise ValueError(f"header length {n} is impossible for a {size}-byte file")
        try:
            header = json.loads(f.read(n))
        except UnicodeDecodeError:
            raise ValueError("header is not UTF-8 JSON") from None
    if not isinstance(header, dict):
        raise ValueError(f"header is a JSON {type(header).__name__}, not an object")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict):
        raise ValueError("__metadata__ is not an object")
    return header, meta, 8 + n


def read_tensors(
    path: Path,
    error_cls: type[EdgekitError] = CheckpointError,
    dtypes: Iterable[str] = tuple(DTYPES),
    fix: str = "fetch the file again",
) -> dict[str, TensorRef]:
    """Every tensor of ``path`` as a TensorRef, the header checked; ``error_cls`` with one line (ending
    in ``fix``) for a file whose header is malformed, of the wrong shape or points outside the data."""
    path = Path(path)
    try:
        header, _, base = read_header(path)
        size = path.stat().st_size
    except (OSError, ValueError) as e:
        raise error_cls(
            f"{path.name}: cannot read safetensors header ({e}); the file is truncated or corrupt, {fix}"
        ) from None
    allowed = tuple(dtypes)
    refs: dict[str, TensorRef] = {}
    spans = []
    for name, info in header.items():

        def bad(why: str, name: str = name) -> EdgekitError:
            return error_cls(f"{path.name}: tensor {name} {why}; the file is corrupt, {fix}")

        if not isinstance(info, dict):
            raise bad("has no dtype/shape/data_offsets entry")
        dtype, shape, offs = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if dtype not in allowed:
            if isinstance(dtype, str):
                kinds = " and".join(", ".join(allowed).rsplit(",", 1))
                raise error_cls(f"{path.name}: tensor {name} has dtype {dtype}; edgekit reads {kinds} tensors here")
            raise bad("has no dtype")
        if not isinstance(shape, list) or not all(_natural(d) for d in shape):
            raise bad(f"has shape {shape!r}, not a list of sizes")
        if not isinstance(offs, list) or len(offs) != 2 or not all(_natural(o) for o in offs) or offs[0] > offs[1]:
            raise bad(f"has data_offsets {offs!r}, not two ordered byte offsets")
        begin, end = offs
        expected = int(np.prod(shape, dtype=np.int64)) * DTYPES[dtype].size
        if end - begin != expected:
            raise bad(f"has {end - begin} bytes for shape {tuple(shape)}")
        if base + end > size:
            raise error_cls(f"{path.name}: truncated ({size} bytes, tensor {name} ends at {base + end}); {fix}")
        refs[name] = TensorRef(name, tuple(shape), dtype, path, base + begin, end - begin)
        spans.append((begin, end, name))
    spans.sort()
    for (_, e0, n0), (b1, e1, n1) in itertools.pairwise(spans):
        if b1 < e0 and b1 != e1:  # empty tensors may share an offset
            raise error_cls(f"{path.name}: tensors {n0} and {n1} overlap in the file; the file is corrupt, {fix}")
    return refs


# ---------------------------------------------------------------- writing


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str  # a DTYPES name

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * DTYPES[self.dtype].size


def _header_blob(specs: Iterable[TensorSpec], metadata: dict[str, str]) -> tuple[bytes, dict[str, int]]:
    header: dict[str, object] = {"__metadata__": metadata}
    offsets, offset = {}, 0
    for s in specs:
        header[s.name] = {"dtype": s.dtype, "shape": list(s.shape), "data_offsets": [offset, offset + s.nbytes]}
        offsets[s.name] = offset
        offset += s.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # keep the data 8-byte aligned, as safetensors does
    return struct.pack("<Q", len(blob)) + blob, offsets


def write_safetensors(
    path: Path,
    specs: list[TensorSpec],
    chunks: Callable[[TensorSpec], Iterable[np.ndarray]],
    metadata: Optional[dict[str, str]] = None,
) -> None:
    """Write ``specs`` in order (atomically); ``chunks(spec)`` yields the tensor as arrays of its storage dtype."""
    blob, _ = _header_blob(specs, metadata or {"format": "pt"})
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(blob)
        for s in specs:
            written = 0
            for arr in chunks(s):
                data = np.ascontiguousarray(arr, dtype=DTYPES[s.dtype].storage)
                f.write(data.tobytes())
                written += data.nbytes
            if written != s.nbytes:
                raise ValueError(f"{s.name}: wrote {written} bytes, expected {s.nbytes}")


class SlabWriter:
    """One safetensors file written slab by slab: the header and the file's size first, then rows of
    each tensor ``pwrite`` at their offsets. The caller owns atomicity (it writes into a temp folder)
    and closes it (``contextlib.closing``)."""

    def __init__(self, path: Path, specs: list[TensorSpec], metadata: Optional[dict[str, str]] = None):
        blob, offsets = _header_blob(specs, metadata or {"format": "mlx"})
        self.specs = {s.name: s for s in specs}
        self.base = len(blob)
        self.offsets = offsets
        self.size = self.base + sum(s.nbytes for s in specs)
        self.f = open(path, "wb")  # noqa: SIM115 (the writer owns it; close() closes it)
        self.f.write(blob)
        self.f.truncate(self.size)

    def write_rows(self, name: str, row0: int, rows: np.ndarray) -> None:
        s = self.specs[name]
        row_bytes = s.nbytes // max(s.shape[0], 1)
        data = np.ascontiguousarray(rows, dtype=DTYPES[s.dtype].storage).tobytes()
        if row0 * row_bytes + len(data) > s.nbytes:
            raise ValueError(f"{name}: rows {row0}+ run past the tensor")
        os.pwrite(self.f.fileno(), data, self.base + self.offsets[name] + row0 * row_bytes)

    def close(self) -> None:
        self.f.close()


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
