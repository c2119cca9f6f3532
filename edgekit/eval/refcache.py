"""The reference's log-probabilities, computed once per (reference, text, ctx) and kept compactly.

Per scored position: the reference's ``k`` most probable token ids and their log-probabilities, the
log-probability of the next token, the log-sum-exp of its logits and the log of the mass outside the
top k (``metrics.compact``): 8 k + 12 bytes a position whatever the vocabulary (8,204 at the default
k = 1024, run.DEFAULT_TOP_K), against llama.cpp's 512 KB for Gemma 4's 262,144 tokens at 16 bits. The windows' token ids are stored too, so an artifact is scored on exactly
the tokens the reference saw, and a device can evaluate from a cache made on a host.

The file (.npz) carries its key: the reference's sha256 and name, the texts' sha256, ctx, the number of
chunks, k, and the vocabulary's sha256. A cache whose key differs from the run's is an error naming
what differs, never silently reused; the default cache path is derived from the key, so a changed
reference or text simply gets a new file.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from ..core.errors import ArtifactError
from ..core.fsutil import atomic_path
from .metrics import RefRows

FORMAT = 2


@dataclass(frozen=True)
class CacheKey:
    reference: str          # the reference's name as given
    reference_sha256: str
    text_sha256: str
    ctx: int
    chunks: int             # windows requested (0: all the text has)
    top_k: int
    format: int = FORMAT

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps({k: v for k, v in asdict(self).items() if k != "reference"},
                                         sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class RefCache:
    key: CacheKey
    vocab_sha256: str
    windows: np.ndarray     # int32 [n_chunks, ctx]
    rows: RefRows           # n_chunks * (ctx - 1 - first) rows, window by window
    next_bytes: np.ndarray  # int32 per row: UTF-8 bytes of the next token's text, by the reference's vocabulary
    ref_stats: dict         # the reference's own PPL / bits per byte (for the printed table); with a
                            # lean artifact in a run, also its whole-text figures ("whole_text", wholetext.py)
    piece_hash: Optional[np.ndarray] = None   # uint64 per reference piece, to check a lean tokenizer (wholetext.py)

    def rows_of(self, i: int, per: int) -> tuple[RefRows, np.ndarray]:
        s = slice(i * per, (i + 1) * per)
        r = self.rows
        return r.slice(s), self.next_bytes[s]


def default_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "edgekit" / "eval"


def default_path(key: CacheKey) -> Path:
    return default_dir() / f"ref-{key.digest}.npz"


def save(cache: RefCache, path: Path) -> Path:
    meta = {"key": asdict(cache.key), "vocab_sha256": cache.vocab_sha256, "ref_stats": cache.ref_stats}
    r = cache.rows
    with atomic_path(Path(path)) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8), windows=cache.windows,
                     next_bytes=cache.next_bytes, **{k: getattr(r, k) for k in RefRows.FIELDS},
                     **({} if cache.piece_hash is None else {"piece_hash": cache.piece_hash}))
    return Path(path)


def load(path: Path, want: Optional[CacheKey] = None) -> RefCache:
    """Read a cache; with ``want``, a key that differs is an ArtifactError naming the field."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(bytes(z["meta"]).decode())
            key = CacheKey(**meta["key"])
            rows = RefRows(*(z[k] for k in RefRows.FIELDS))
            windows, next_bytes = z["windows"], z["next_bytes"]
            piece_hash = z["piece_hash"] if "piece_hash" in z.files else None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ArtifactError(f"{path}: not an edgekit eval reference cache ({e.__class__.__name__}); "
                            "delete it, eval writes a new one") from None
    if want is not None:
        check(key, want, path)
    return RefCache(key, meta["vocab_sha256"], windows, rows, next_bytes, meta.get("ref_stats") or {}, piece_hash)


def check(have: CacheKey, want: CacheKey, path: Path) -> None:
    names = {"reference_sha256": "reference", "text_sha256": "text", "ctx": "ctx", "chunks": "chunks",
             "top_k": "top-k", "format": "format"}
    for field, label in names.items():
        a, b = getattr(have, field), getattr(want, field)
        if a != b:
            shown = (lambda v: str(v)[:12]) if field.endswith("sha256") else str
            extra = f" ({have.reference} vs {want.reference})" if field == "reference_sha256" else ""
            raise ArtifactError(f"{path}: reference cache was made for {label} {shown(a)}, this run has "
                                f"{shown(b)}{extra}; pass the matching --reference/--text/--ctx, or another --ref-cache")
