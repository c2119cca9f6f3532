"""The reference's log-probabilities, computed once per (reference, text, ctx) and kept compactly.

Per scored position: the reference's ``k`` most probable token ids and their log-probabilities, the
log-probability of the next token, the log-sum-exp of its logits and the log of the mass outside the
top k (``metrics.compact``): 8 k + 12 bytes a position whatever the vocabulary (8,204 at the default
k = 1024, run.DEFAULT_TOP_K), against llama.cpp's 512 KB for Gemma 4's 262,144 tokens at 16 bits. The
windows' token ids are stored too, so an artifact is scored on exactly the tokens the reference saw, and
a device can evaluate from a cache made on a host.

The file (.npz) carries its key: the reference's sha256 and name, the texts' sha256, ctx, the number of
chunks, k, and the vocabulary's sha256. A cache whose key differs from the run's is an error naming
what differs, never silently reused; the default cache path is derived from the key, so a changed
reference or text simply gets a new file. Its meta also holds a sha256 over the key, the stats and
every array's dtype, shape and bytes: a truncated, bit-flipped or edited cache (one that still opens as
an .npz) is a ``CacheCorrupt`` error, never scored against (run.py computes it again).
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from ..core.errors import ArtifactError
from ..core.fsutil import atomic_path
from .metrics import RefRows

# 3: meta holds "sha256" over the key, stats and arrays (2 had none: a tampered cache was used).
FORMAT = 3


class CacheCorrupt(ArtifactError):
    """The file is not a whole, unchanged cache eval wrote (unreadable, truncated, or edited)."""


@dataclass(frozen=True)
class CacheKey:
    reference: str  # the reference's name as given
    reference_sha256: str
    text_sha256: str
    ctx: int
    chunks: int  # windows requested (0: all the text has)
    top_k: int
    format: int = FORMAT

    @property
    def digest(self) -> str:
        return hashlib.sha256(
            json.dumps({k: v for k, v in asdict(self).items() if k != "reference"}, sort_keys=True).encode()
        ).hexdigest()[:16]


@dataclass
class RefCache:
    key: CacheKey
    vocab_sha256: str
    windows: np.ndarray  # int32 [n_chunks, ctx]
    rows: RefRows  # n_chunks * (ctx - 1 - first) rows, window by window
    next_bytes: np.ndarray  # int32 per row: UTF-8 bytes of the next token's text, by the reference's vocabulary
    ref_stats: dict  # the reference's own PPL / bits per byte (for the printed table); with a
    # lean artifact in a run, also its whole-text figures ("whole_text", wholetext.py)
    piece_hash: Optional[np.ndarray] = None  # uint64 per reference piece, to check a lean tokenizer (wholetext.py)

    def rows_of(self, i: int, per: int) -> tuple[RefRows, np.ndarray]:
        s = slice(i * per, (i + 1) * per)
        r = self.rows
        return r.slice(s), self.next_bytes[s]


def default_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "edgekit" / "eval"


def default_path(key: CacheKey) -> Path:
    return default_dir() / f"ref-{key.digest}.npz"


def _arrays(cache: RefCache) -> dict[str, np.ndarray]:
    r = cache.rows
    return {
        "windows": cache.windows,
        "next_bytes": cache.next_bytes,
        **{k: getattr(r, k) for k in RefRows.FIELDS},
        **({} if cache.piece_hash is None else {"piece_hash": cache.piece_hash}),
    }


def checksum(meta: dict, arrays: dict[str, np.ndarray]) -> str:
    """sha256 over the meta (key, vocabulary, stats; its own "sha256" left out) and each array's name,
    dtype, shape and bytes, in name order."""
    h = hashlib.sha256(json.dumps({k: v for k, v in meta.items() if k != "sha256"}, sort_keys=True).encode())
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"\n{name}:{a.dtype.str}:{a.shape}\n".encode())
        h.update(a.data)
    return h.hexdigest()


def save(cache: RefCache, path: Path) -> Path:
    meta = {"key": asdict(cache.key), "vocab_sha256": cache.vocab_sha256, "ref_stats": cache.ref_stats}
    arrays = _arrays(cache)
    meta["sha256"] = checksum(meta, arrays)
    with atomic_path(Path(path), option="--ref-cache") as tmp, open(tmp, "wb") as f:
        np.savez(f, meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8), **arrays)
    return Path(path)


def load(path: Path, want: Optional[CacheKey] = None) -> RefCache:
    """Read a cache; with ``want``, a key that differs is an ArtifactError naming the field."""
    path = Path(path)
    if path.exists() and not path.is_file():
        raise ArtifactError(
            f"{path}: a folder stands where the reference cache goes; pass --ref-cache with a file path"
        )
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(bytes(z["meta"]).decode())
            key = CacheKey(**meta["key"])
            arrays = {k: z[k] for k in z.files if k != "meta"}
        rows = RefRows(*(arrays[k] for k in RefRows.FIELDS))
        windows, next_bytes, piece_hash = arrays["windows"], arrays["next_bytes"], arrays.get("piece_hash")
        vocab_sha256, ref_stats = meta["vocab_sha256"], meta.get("ref_stats") or {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        # A truncated file fails in the zip directory (BadZipFile), a flipped bit in a member's CRC.
        raise CacheCorrupt(f"{path}: not a whole edgekit eval reference cache ({e.__class__.__name__})") from None
    if key.format != FORMAT:
        raise CacheCorrupt(f"{path}: a reference cache of format {key.format}, this edgekit reads {FORMAT}")
    if meta.get("sha256") != checksum(meta, arrays):
        raise CacheCorrupt(f"{path}: does not match the sha256 eval stored in it (changed after it was written)")
    if want is not None:
        check(key, want, path)
    return RefCache(key, vocab_sha256, windows, rows, next_bytes, ref_stats, piece_hash)


def check(have: CacheKey, want: CacheKey, path: Path) -> None:
    names = {
        "reference_sha256": "reference",
        "text_sha256": "text",
        "ctx": "ctx",
        "chunks": "chunks",
        "top_k": "top-k",
        "format": "format",
    }
    for field, label in names.items():
        a, b = getattr(have, field), getattr(want, field)
        if a != b:
            shown = (lambda v: str(v)[:12]) if field.endswith("sha256") else str
            extra = f" ({have.reference} vs {want.reference})" if field == "reference_sha256" else ""
            raise ArtifactError(
                f"{path}: reference cache was made for {label} {shown(a)}, this run has "
                f"{shown(b)}{extra}; pass the matching --reference/--text/--ctx, or another --ref-cache"
            )
