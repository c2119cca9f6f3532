"""A Gemma 4 checkpoint on disk: config, tokenizer files and lazily read safetensors tensors.

Tensors are never loaded whole: a ``TensorRef`` knows its file, offset and dtype and hands out row
chunks read with ``os.pread``, so converting a 9 GB checkpoint keeps only one chunk in memory and
leaves no file-backed pages mapped into the process. (We parse the safetensors header ourselves
because safetensors' numpy frontend has no bfloat16, and its torch frontend would pull torch into
every build; the format is an 8-byte length, a JSON header and raw little-endian data.)
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .errors import CheckpointError, HubError, TokenizerError
from .gemma4 import DROPPED_PREFIXES, TEXT_PREFIX, Gemma4TextConfig
from .integrity import looks_like_path, missing_folder

# safetensors dtype → (numpy storage dtype, bytes per element). BF16 is stored as raw uint16.
ST_DTYPES = {"F32": (np.float32, 4), "F16": (np.float16, 2), "BF16": (np.uint16, 2)}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
HUB_PATTERNS = ["*.safetensors", "*.safetensors.index.json", "config.json", "generation_config.json",
                "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                "chat_template.jinja"]
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def bf16_to_f32(raw: np.ndarray) -> np.ndarray:
    return (raw.astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16(x: np.ndarray) -> np.ndarray:
    """Round-to-nearest-even float32 → bfloat16 bits (uint16)."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounding = ((bits >> 16) & 1) + 0x7FFF
    return ((bits + rounding) >> 16).astype(np.uint16)


@dataclass(frozen=True)
class TensorRef:
    name: str           # name as stored in the checkpoint
    shape: tuple[int, ...]
    dtype: str          # safetensors dtype: F32, F16, BF16
    path: Path
    offset: int         # absolute byte offset in ``path``
    nbytes: int

    @property
    def n_rows(self) -> int:
        return self.shape[0] if self.shape else 1

    @property
    def row_bytes(self) -> int:
        return self.nbytes // max(self.n_rows, 1)

    def _read(self, start: int, nbytes: int) -> np.ndarray:
        storage, _ = ST_DTYPES[self.dtype]
        buf = bytearray(nbytes)
        view = memoryview(buf)
        with open(self.path, "rb", buffering=0) as f:
            got = 0
            while got < nbytes:
                n = os.preadv(f.fileno(), [view[got:]], self.offset + start + got)
                if n == 0:
                    raise CheckpointError(f"{self.path.name}: file ends inside tensor {self.name}; the download is truncated, fetch it again")
                got += n
        return np.frombuffer(buf, dtype=storage)

    def row_chunks(self, max_bytes: int = 64 << 20) -> Iterator[np.ndarray]:
        """Yield float32 arrays of whole rows, each at most ~max_bytes in the source dtype."""
        rows_per = max(1, max_bytes // max(self.row_bytes, 1))
        cols = self.shape[1:] or ()
        for r0 in range(0, self.n_rows, rows_per):
            r1 = min(self.n_rows, r0 + rows_per)
            raw = self._read(r0 * self.row_bytes, (r1 - r0) * self.row_bytes)
            arr = bf16_to_f32(raw) if self.dtype == "BF16" else raw.astype(np.float32)
            yield arr.reshape((r1 - r0, *cols)) if self.shape else arr

    def raw_chunks(self, max_bytes: int = 64 << 20) -> Iterator[np.ndarray]:
        """Yield the stored bytes unconverted (for same-dtype copies)."""
        rows_per = max(1, max_bytes // max(self.row_bytes, 1))
        for r0 in range(0, self.n_rows, rows_per):
            r1 = min(self.n_rows, r0 + rows_per)
            raw = self._read(r0 * self.row_bytes, (r1 - r0) * self.row_bytes)
            yield raw.reshape((r1 - r0, *self.shape[1:])) if self.shape else raw

    def load(self) -> np.ndarray:
        """The whole tensor as float32 (small tensors only: norms, scalars, tests)."""
        return np.concatenate(list(self.row_chunks()), axis=0) if self.shape else next(self.row_chunks())


def safetensors_header(path: Path) -> tuple[dict[str, Any], int]:
    """A safetensors file's JSON header (without ``__metadata__``) and the offset its data starts at.
    Raises ValueError when the file is too short or the header is malformed, OSError when unreadable."""
    size = Path(path).stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError("too short to be safetensors")
        (n,) = struct.unpack("<Q", head)
        if n > min(size - 8, 100 << 20):
            raise ValueError(f"header length {n} is impossible")
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return header, 8 + n


def read_safetensors_header(path: Path) -> dict[str, TensorRef]:
    try:
        header, base = safetensors_header(path)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path.name}: cannot read safetensors header ({e}); the file is truncated or corrupt") from None
    size = path.stat().st_size
    refs: dict[str, TensorRef] = {}
    for name, info in header.items():
        dtype = info.get("dtype")
        if dtype not in ST_DTYPES:
            raise CheckpointError(f"{path.name}: tensor {name} has dtype {dtype}; edgekit reads F32, F16 and BF16 checkpoints")
        begin, end = info["data_offsets"]
        shape = tuple(int(d) for d in info["shape"])
        expected = int(np.prod(shape, dtype=np.int64)) * ST_DTYPES[dtype][1]
        if end - begin != expected:
            raise CheckpointError(f"{path.name}: tensor {name} has {end - begin} bytes for shape {shape}; the file is corrupt")
        if base + end > size:
            raise CheckpointError(
                f"{path.name}: truncated ({size} bytes, tensor {name} ends at {base + end}); fetch the file again"
            )
        refs[name] = TensorRef(name, shape, dtype, path, base + begin, end - begin)
    return refs


@dataclass
class Checkpoint:
    path: Path
    config: Gemma4TextConfig
    tensors: dict[str, TensorRef]   # text tensors, keyed by name without the language-model prefix
    dropped: list[str]              # multimodal tensors skipped for text deployment

    @property
    def name(self) -> str:
        return self.path.name

    def tensor(self, name: str) -> TensorRef:
        return self.tensors[name]

    def files(self) -> list[Path]:
        return sorted(p for p in self.path.iterdir() if p.is_file() and not p.name.startswith("."))

    def fingerprint(self, stop: threading.Event | None = None) -> dict[str, Any]:
        """sha256 of every file in the checkpoint (what a hub lists as each file's LFS oid), and of the lot.
        ``stop`` abandons the hashing early (the result is then incomplete and must not be used)."""
        per_file = {p.name: sha256_file(p, stop=stop) for p in self.files()}
        total = hashlib.sha256("".join(f"{k}:{v}\n" for k, v in sorted(per_file.items())).encode()).hexdigest()
        return {"sha256": total, "files": per_file}


def sha256_file(path: Path, chunk: int = 8 << 20, stop: threading.Event | None = None) -> str:
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while (block := f.read(chunk)) and not (stop and stop.is_set()):
            h.update(block)
        # Hashing is one pass: leave the page cache as it was. Large buffered reads fill it with large
        # folios, and llama.cpp then maps whole folios around each lazily read PLE row: measured +123 MiB
        # resident for E2B when a bench followed a sha256 check of the same file.
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    return h.hexdigest()


def resolve(model: str | os.PathLike[str]) -> Path:
    """A local directory, or a hub id fetched with huggingface_hub (weights, config, tokenizer only)."""
    p = Path(model).expanduser()
    if p.is_dir():
        return p
    if p.exists():
        raise CheckpointError(f"{model}: not a directory; pass the checkpoint's folder (the one holding config.json)")
    text = str(model)
    if not _HUB_ID.match(text) or text.startswith((".", "/")):
        raise missing_folder(text, None)
    try:
        return _snapshot(text)
    except HubError as e:
        if looks_like_path(text):   # e.g. ck2/tinny beside an existing ck2/: say the folder is missing first
            raise missing_folder(text, e.message.removeprefix(f"{text}: ")) from None
        raise


def _snapshot(text: str) -> Path:
    model = text
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency
        raise HubError(f"{model}: huggingface_hub is not installed; pip install huggingface_hub, or pass a local directory") from None
    try:
        return Path(snapshot_download(text, allow_patterns=HUB_PATTERNS))
    except LocalEntryNotFoundError:
        raise HubError(f"{model}: the hub cannot be reached and the model is not in the local cache; download it where you are online, or pass a local directory") from None
    except HfHubHTTPError as e:
        raise HubError(f"{model}: the hub refused ({e.__class__.__name__}); check the id, and for gated models run `hf auth login`") from None
    except OSError as e:
        raise HubError(f"{model}: the hub cannot be reached ({e.__class__.__name__}); pass a local directory when offline") from None


def load_checkpoint(model: str | os.PathLike[str]) -> Checkpoint:
    path = resolve(model)
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise CheckpointError(f"{path}: no config.json; a Hugging Face checkpoint folder has config.json beside its .safetensors")
    try:
        raw = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{cfg_path}: unreadable JSON ({e}); restore the file from the original checkpoint") from None
    config = Gemma4TextConfig.from_hf(raw, str(cfg_path))
    if not (path / "tokenizer.json").is_file():
        raise TokenizerError(f"{path}: no tokenizer.json; copy the tokenizer files from the original checkpoint")

    shards = sorted(path.glob("*.safetensors"))
    if not shards:
        raise CheckpointError(f"{path}: no .safetensors files; edgekit reads safetensors checkpoints")
    index_path = path / "model.safetensors.index.json"
    if index_path.is_file():
        try:
            weight_map = json.loads(index_path.read_text())["weight_map"]
        except (OSError, ValueError, KeyError):
            raise CheckpointError(f"{index_path}: unreadable index; restore it from the original checkpoint") from None
        missing = sorted({f for f in weight_map.values() if not (path / f).is_file()})
        if missing:
            raise CheckpointError(f"{path}: shard {missing[0]} named by the index is missing; fetch it again")
    tensors: dict[str, TensorRef] = {}
    dropped: list[str] = []
    for shard in shards:
        for name, ref in read_safetensors_header(shard).items():
            if name.startswith(DROPPED_PREFIXES):
                dropped.append(name)
                continue
            short = name
            for prefix in (TEXT_PREFIX, "model."):
                if short.startswith(prefix):
                    short = short[len(prefix):]
                    break
            if short == "lm_head.weight" and config.tie_word_embeddings:
                continue
            tensors[short] = ref
    expected = config.expected_shapes()
    absent = [n for n in expected if n not in tensors]
    if absent:
        raise CheckpointError(f"{path}: tensor {absent[0]} missing ({len(absent)} in all); the checkpoint is incomplete")
    for name, shape in expected.items():
        if tensors[name].shape != shape:
            raise CheckpointError(f"{path}: tensor {name} has shape {tensors[name].shape}, config implies {shape}; config and weights disagree")
    return Checkpoint(path=path, config=config, tensors=tensors, dropped=dropped)
