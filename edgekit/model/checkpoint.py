"""A folder or hub id → a Checkpoint: Gemma 4 config, tokenizer check, its text tensors (lazy).

Tensors are never loaded whole: each is a ``safetensors_io.TensorRef`` (file, offset, dtype) that
hands out row chunks read with ``os.pread``, so converting a 9 GB checkpoint keeps only one chunk in
memory. Reading and validating safetensors headers lives in ``safetensors_io``; this module only
resolves the folder, checks config, index and tokenizer, and maps tensor names.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huggingface_hub import snapshot_download
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

from ..core.errors import CheckpointError, HubError, TokenizerError
from ..core.paths import looks_like_path, missing_folder
from .dtypes import SOURCE_DTYPES
from .gemma4 import DROPPED_PREFIXES, TEXT_PREFIX, Gemma4TextConfig
from .safetensors_io import TensorRef, read_tensors

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
HUB_PATTERNS = [
    "*.safetensors",
    "*.safetensors.index.json",
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "chat_template.jinja",
]
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass
class Checkpoint:
    path: Path
    config: Gemma4TextConfig
    tensors: dict[str, TensorRef]  # text tensors, keyed by name without the language-model prefix
    dropped: list[str]  # multimodal tensors skipped for text deployment
    tower_tensors: dict[str, TensorRef] = field(default_factory=dict)  # those, by full name (the mmproj reads them)

    @property
    def name(self) -> str:
        return self.path.name

    def tensor(self, name: str) -> TensorRef:
        return self.tensors[name]

    def files(self) -> list[Path]:
        return sorted(p for p in self.path.iterdir() if p.is_file() and not p.name.startswith("."))

    def source_dtypes(self) -> set[str]:
        """The dtypes of the checkpoint's matrices (norms and scalars aside)."""
        return {r.dtype for r in self.tensors.values() if len(r.shape) > 1}

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
        if looks_like_path(text):  # e.g. ck2/tinny beside an existing ck2/: say the folder is missing first
            raise missing_folder(text, e.message.removeprefix(f"{text}: ")) from None
        raise


def _snapshot(text: str) -> Path:
    model = text
    try:
        return Path(snapshot_download(text, allow_patterns=HUB_PATTERNS))
    except LocalEntryNotFoundError:
        raise HubError(
            f"{model}: the hub cannot be reached and the model is not in the local cache; download it where you are "
            "online, or pass a local directory"
        ) from None
    except HfHubHTTPError as e:
        raise HubError(
            f"{model}: the hub refused ({e.__class__.__name__}); check the id, and for gated models run `hf auth login`"
        ) from None
    except OSError as e:
        raise HubError(
            f"{model}: the hub cannot be reached ({e.__class__.__name__}); pass a local directory when offline"
        ) from None


def _kind(p: Path) -> str:
    try:
        mode = os.stat(p).st_mode
    except OSError as e:
        return e.strerror or "unreadable"
    return next(
        (
            what
            for test, what in (
                (stat.S_ISFIFO, "a FIFO"),
                (stat.S_ISDIR, "a folder"),
                (stat.S_ISSOCK, "a socket"),
                (stat.S_ISCHR, "a character device"),
                (stat.S_ISBLK, "a block device"),
            )
            if test(mode)
        ),
        "not a file",
    )


def load_checkpoint(model: str | os.PathLike[str]) -> Checkpoint:
    path = resolve(model)
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise CheckpointError(
            f"{path}: no config.json; a Hugging Face checkpoint folder has config.json beside its .safetensors"
        )
    try:
        raw = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(
            f"{cfg_path}: unreadable JSON ({e}); restore the file from the original checkpoint"
        ) from None
    config = Gemma4TextConfig.from_hf(raw, str(cfg_path))
    if not (path / "tokenizer.json").is_file():
        raise TokenizerError(f"{path}: no tokenizer.json; copy the tokenizer files from the original checkpoint")

    shards = sorted(path.glob("*.safetensors"))
    if not shards:
        raise CheckpointError(f"{path}: no .safetensors files; edgekit reads safetensors checkpoints")
    for shard in shards:  # a FIFO or device would block the first read forever (a symlink to a file is fine)
        if not shard.is_file():
            raise CheckpointError(
                f"{shard}: not a regular file ({_kind(shard)}); a safetensors shard must be a file, fetch it again"
            )
    index_path = path / "model.safetensors.index.json"
    if index_path.is_file():
        try:
            weight_map = json.loads(index_path.read_text())["weight_map"]
        except (OSError, ValueError, KeyError):
            raise CheckpointError(f"{index_path}: unreadable index; restore it from the original checkpoint") from None
        missing = sorted({f for f in weight_map.values() if not (path / f).exists()})
        if missing:
            raise CheckpointError(f"{path}: shard {missing[0]} named by the index is missing; fetch it again")
    tensors: dict[str, TensorRef] = {}
    dropped: list[str] = []
    towers: dict[str, TensorRef] = {}
    for shard in shards:
        for name, ref in read_tensors(shard, CheckpointError, SOURCE_DTYPES).items():
            if name.startswith(DROPPED_PREFIXES):
                dropped.append(name)
                towers[name] = ref
                continue
            short = name
            for prefix in (TEXT_PREFIX, "model."):
                if short.startswith(prefix):
                    short = short[len(prefix) :]
                    break
            if short == "lm_head.weight" and config.tie_word_embeddings:
                continue
            tensors[short] = ref
    expected = config.expected_shapes()
    absent = [n for n in expected if n not in tensors]
    if absent:
        raise CheckpointError(
            f"{path}: tensor {absent[0]} missing ({len(absent)} in all); the checkpoint is incomplete"
        )
    for name, shape in expected.items():
        if tensors[name].shape != shape:
            raise CheckpointError(
                f"{path}: tensor {name} has shape {tensors[name].shape}, config implies {shape}; config and weights "
                "disagree"
            )
    return Checkpoint(path=path, config=config, tensors=tensors, dropped=dropped, tower_tensors=towers)
