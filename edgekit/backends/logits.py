"""What eval reads from an engine (the ``LogitsSource`` protocol): a vocabulary, a tokenizer, and the
logits of every scored position of a window. Each backend has one (gguf/logits.py, mlx/logits.py);
eval's reference (transformers on a checkpoint) is one too (edgekit.eval.engines.HfSource).

Two sources with different vocabularies cannot be compared, so each gives every token's piece and its
control ids (``Vocab``). ``tokenize`` is the model's own tokenizer on one piece of text, without BOS and
with special-token text as text; eval cuts long texts into pieces first (edgekit.eval.text).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Protocol

import numpy as np

from ..core.errors import ArtifactError
from .runner import RunOptions


@dataclass(frozen=True)
class Vocab:
    pieces: list[str]
    control: frozenset[int]
    bos: Optional[int]

    @property
    def sha256(self) -> str:
        """Over the pieces by id. Not the control flags: edgekit's GGUF writer marks the tool-call and
        channel markers as text (a chat parser must see them), tokenizer.json as special."""
        h = hashlib.sha256()
        for i, p in enumerate(self.pieces):
            h.update(f"{i}\t{p}\n".encode("utf-8", "surrogatepass"))
        return h.hexdigest()


class LogitsSource(Protocol):
    label: str  # what a record and an error name it by (the artifact's file or folder name)

    def vocab(self) -> Vocab: ...

    def tokenize(self, text: str) -> list[int]:
        """The model's tokenizer on one piece of text: no BOS, special-token text tokenized as text."""

    def logits(self, window: Sequence[int], first: int) -> np.ndarray:
        """Logits [len(window) - first, n_vocab] (float32) of positions first.. of the window."""

    def close(self) -> None: ...


class MakeLogitsSource(Protocol):
    def __call__(self, path: Path, opts: RunOptions) -> LogitsSource:
        """Load ``path`` for scoring: ``opts.ctx`` is the window, ``opts.knobs`` the engine's typed knobs."""


def tokenizer_json_vocab(folder: Path, bos: Optional[int]) -> Vocab:
    """Vocabulary of a tokenizer.json (a checkpoint's or an MLX artifact's)."""
    path = Path(folder) / "tokenizer.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ArtifactError(
            f"{path}: unreadable tokenizer ({e.__class__.__name__}); copy it from the checkpoint"
        ) from None
    by_id = {int(i): t for t, i in data["model"]["vocab"].items()}
    control = set()
    for a in data.get("added_tokens", []):
        by_id[int(a["id"])] = a["content"]
        if a.get("special"):
            control.add(int(a["id"]))
    n = max(by_id) + 1
    return Vocab([by_id.get(i, "") for i in range(n)], frozenset(control), bos)


def fit_vocab(v: Vocab, n_vocab: int, label: str) -> Vocab:
    """A tokenizer with fewer pieces than the embedding has rows is padded (rows no text reaches)."""
    if len(v.pieces) > n_vocab:
        raise ArtifactError(
            f"{label}: tokenizer has {len(v.pieces)} tokens but the model only {n_vocab} rows; "
            "the tokenizer does not belong to these weights"
        )
    return Vocab(v.pieces + [""] * (n_vocab - len(v.pieces)), v.control, v.bos)


class TokenizerJson:
    """``tokenize`` with a folder's tokenizer.json (Hugging Face tokenizers), made on first use."""

    folder: Path
    _tok: Any = None

    def tokenize(self, text: str) -> list[int]:
        from tokenizers import Tokenizer  # deferred: tokenizers loads only when a folder's tokenizer is used

        if self._tok is None:
            self._tok = Tokenizer.from_file(str(self.folder / "tokenizer.json"))
        return list(self._tok.encode(text, add_special_tokens=False).ids)
