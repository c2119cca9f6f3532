"""The source scan at the start of a build: one read of each checkpoint file, in order, where every
byte goes through sha256 (the manifest's per-file hash, the same as ``checkpoint.sha256_file``) and
every tensor's bytes are also checked for NaN/Inf by their exponent bits (all ones in F32, F16 and
BF16), so finding bad weights costs no second read of a 9 GB checkpoint. The converter never sees most
bytes: same-type tensors are copied file to file in the kernel, which is why the check sits on the
hashing pass instead.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import CheckpointError
from .manifest import folder_digest

# Bit patterns: an element is NaN or ±Inf exactly when all its exponent bits are set.
_EXPONENT = {"F32": ("uint32", 0x7F800000), "F16": ("uint16", 0x7C00), "BF16": ("uint16", 0x7F80)}
_BLOCK = 8 << 20


class NonFinite(CheckpointError):
    """Source weights hold NaN or Inf."""


def _read_exact(f: Any, n: int, path: Path) -> bytes:
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = f.readinto(view[got:])
        if not k:
            raise CheckpointError(
                f"{path.name}: file ended while being read (truncated or being replaced); fetch it again"
            )
        got += k
    return bytes(buf)


def _hash_and_scan(
    path: Path, refs: list[Any], found: dict[str, int], refuse: bool, stop: threading.Event | None
) -> str:
    h = hashlib.sha256()
    size = path.stat().st_size
    # (start, end, ref or None) regions in file order; a tensor overlapping an earlier one (a corrupt
    # header the reader let through) is scanned on its own below, its bytes already hashed.
    regions, pos, overlapping = [], 0, []
    for ref in sorted(refs, key=lambda r: r.offset):
        if ref.offset < pos:
            overlapping.append(ref)
            continue
        if ref.offset > pos:
            regions.append((pos, ref.offset, None))
        regions.append((ref.offset, ref.offset + ref.nbytes, ref))
        pos = ref.offset + ref.nbytes
    if size > pos:
        regions.append((pos, size, None))
    with open(path, "rb", buffering=0) as f:
        for start, end, ref in regions:
            bad = 0
            for at in range(start, end, _BLOCK):
                if stop is not None and stop.is_set():
                    return ""
                block = _read_exact(f, min(_BLOCK, end - at), path)
                h.update(block)
                if ref is not None:
                    bad += _count_nonfinite(block, ref.dtype)
            if bad:
                found[ref.name] = bad
                if refuse:
                    raise nonfinite_error(path.parent, found)
        if hasattr(os, "posix_fadvise"):  # one pass: leave the page cache as it was (see sha256_file)
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    for ref in overlapping:
        bad = sum(_count_nonfinite(c.tobytes(), ref.dtype) for c in ref.raw_chunks(_BLOCK))
        if bad:
            found[ref.name] = bad
            if refuse:
                raise nonfinite_error(path.parent, found)
    return h.hexdigest()


def _count_nonfinite(block: bytes, dtype: str) -> int:
    storage, mask = _EXPONENT[dtype]
    bits = np.frombuffer(block, dtype=storage)
    return int(np.count_nonzero((bits & mask) == mask))


def nonfinite_error(where: Path, found: dict[str, int]) -> NonFinite:
    name, n = next(iter(found.items()))
    more = f" ({len(found)} tensors in all)" if len(found) > 1 else ""
    return NonFinite(
        f"{where}: tensor {name} holds {n} NaN/Inf value(s){more}; the checkpoint is corrupt: fetch it "
        "again, or pass --allow-nonfinite to build it anyway"
    )


def source_fingerprint(
    ckpt: Any, stop: threading.Event | None = None, refuse_nonfinite: bool = True
) -> tuple[dict[str, Any], dict[str, int]]:
    """(fingerprint, non-finite counts): ``Checkpoint.fingerprint``'s per-file sha256s and total, and
    the number of NaN/Inf elements per text tensor that has any. With ``refuse_nonfinite`` the first
    such tensor raises NonFinite (once that tensor has been read)."""
    by_file: dict[Path, list[Any]] = {}
    for ref in ckpt.tensors.values():
        by_file.setdefault(Path(ref.path), []).append(ref)
    found: dict[str, int] = {}
    per_file = {p.name: _hash_and_scan(p, by_file.get(p, []), found, refuse_nonfinite, stop) for p in ckpt.files()}
    return {"sha256": folder_digest(per_file.items()), "files": per_file}, found
