"""Where eval's logits come from: one source per engine, all with the same four calls.

* ``gguf``: llama.cpp through edgekit's runner (its ``logits_all`` batch call), with the target's
  runtime knobs (KV-cache type, flash attention, ubatch …), so the quality measured is the
  deployment's;
* ``mlx``: mlx-lm's model call through edgekit's MLX runner;
* ``hf``: transformers' Gemma 4 (torch, fp32 or bf16) on a Hugging Face checkpoint folder, the reference.

Each gives its vocabulary (every token's piece and the control ids: two sources with different
vocabularies cannot be compared), tokenizes text with its own tokenizer, and returns the logits of the
scored positions of one window.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Protocol

import numpy as np

from ..core.errors import ArtifactError, ConfigError


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


class Source(Protocol):
    label: str

    def vocab(self) -> Vocab: ...

    def tokenize(self, text: str) -> list[int]: ...

    def logits(self, window: Sequence[int], first: int) -> np.ndarray:
        """Logits [len(window) - first, n_vocab] (float32) of positions first.. of the window."""

    def close(self) -> None: ...


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


class _TokenizersMixin:
    folder: Path
    _tok: Any = None

    def tokenize(self, text: str) -> list[int]:
        from tokenizers import Tokenizer

        from .text import tokenize_text

        if self._tok is None:
            self._tok = Tokenizer.from_file(str(self.folder / "tokenizer.json"))
        return tokenize_text(lambda piece: list(self._tok.encode(piece, add_special_tokens=False).ids), text)


def _bos_of(folder: Path) -> Optional[int]:
    cfg = json.loads((folder / "config.json").read_text())
    bos = cfg.get("bos_token_id", (cfg.get("text_config") or {}).get("bos_token_id"))
    return int(bos) if isinstance(bos, int) else None


class GgufSource:
    def __init__(self, path: Path, threads: int, ctx: int, runtime: dict[str, Any]):
        from ..backends.gguf.runner import LlamaCppRunner
        from ..backends.runner import RunOptions

        self.label, self.runner = path.name, LlamaCppRunner()
        # One batch holds a whole window (llama-perplexity: n_batch = n_ctx); ubatch is the runtime's.
        self.runner.load(path, RunOptions(threads=threads, ctx=ctx, knobs={**runtime, "n_batch": ctx}))

    def vocab(self) -> Vocab:
        pieces, control = self.runner.vocab_pieces()
        return Vocab(pieces, frozenset(control), self.runner.bos())

    def tokenize(self, text: str) -> list[int]:
        from .text import tokenize_text

        return tokenize_text(self.runner.tokenize, text)

    def logits(self, window: Sequence[int], first: int) -> np.ndarray:
        return self.runner.logits_all(window, first)

    def close(self) -> None:
        self.runner.close()


class MlxSource(_TokenizersMixin):
    def __init__(self, path: Path, ctx: int, runtime: dict[str, Any]):
        from ..backends.mlx.runner import MlxRunner
        from ..backends.runner import RunOptions

        self.label, self.folder, self.runner = path.name, Path(path), MlxRunner()
        rt = {k: v for k, v in runtime.items() if k != "kv_fill"}  # kv_fill would fake the context
        self.runner.load(path, RunOptions(threads=1, ctx=ctx, knobs={**rt, "n_batch": ctx}))

    def vocab(self) -> Vocab:
        v = tokenizer_json_vocab(self.folder, self.runner.bos())
        return _fit(v, self.runner.n_vocab(), self.label)

    def logits(self, window: Sequence[int], first: int) -> np.ndarray:
        return self.runner.logits_all(window, first)

    def close(self) -> None:
        self.runner.close()


class HfSource(_TokenizersMixin):
    """transformers' Gemma4ForCausalLM on a checkpoint folder."""

    def __init__(self, folder: Path, dtype: str = "float32", threads: int = 2):
        from ..dev.hf_model import DTYPES, load_torch_model

        if dtype not in DTYPES:
            raise ConfigError(f"--reference-dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
        import torch

        torch.set_num_threads(threads)
        self.label, self.folder = Path(folder).name, Path(folder)
        self.model = load_torch_model(folder, dtype)
        self.n_vocab = int(self.model.config.vocab_size)

    def vocab(self) -> Vocab:
        return _fit(tokenizer_json_vocab(self.folder, _bos_of(self.folder)), self.n_vocab, self.label)

    def logits(self, window: Sequence[int], first: int) -> np.ndarray:
        import torch

        with torch.no_grad():
            out = self.model(torch.tensor([list(window)], dtype=torch.long), use_cache=False).logits
        return out[0, first:].float().numpy()

    def close(self) -> None:
        self.model = None


def _fit(v: Vocab, n_vocab: int, label: str) -> Vocab:
    """A tokenizer with fewer pieces than the embedding has rows is padded (rows no text reaches)."""
    if len(v.pieces) > n_vocab:
        raise ArtifactError(
            f"{label}: tokenizer has {len(v.pieces)} tokens but the model only {n_vocab} rows; "
            "the tokenizer does not belong to these weights"
        )
    return Vocab(v.pieces + [""] * (n_vocab - len(v.pieces)), v.control, v.bos)
