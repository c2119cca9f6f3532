"""Eval texts and the token windows every artifact is scored on.

The default text ships with edgekit (data/heldout.txt): prose from the Python documentation and code
from four stdlib modules, © Python Software Foundation, PSF License Version 2 (data/PSF-LICENSE.txt),
made by scripts/make_eval_text.py. The trained tiny model never saw it (its training text is
data/train.txt). Windows follow llama-perplexity: the text is tokenized once with BOS in front, cut
into chunks of ``ctx`` tokens, each chunk's first token replaced by BOS, and only the second half of
each chunk is scored.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from ..core.errors import ConfigError
from ..core.fields import utf8_text

DATA = Path(__file__).resolve().parent / "data"
DEFAULT_TEXT = DATA / "heldout.txt"
TRAIN_TEXT = DATA / "train.txt"


def read_text(path: Path) -> str:
    """The file as UTF-8 text; a missing, empty or undecodable file is a one-line error."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the text ({e.strerror}); pass a readable UTF-8 file") from None
    text = utf8_text(raw, path, "convert it, e.g. `iconv -t utf-8 FILE`")
    if not text.strip():
        raise ConfigError(f"{path}: the text is empty; pass a file with text in it")
    return text


@dataclass(frozen=True)
class Text:
    name: str
    text: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()


def load_texts(paths: list[Path] | None) -> list[Text]:
    return [Text(Path(p).name, read_text(p)) for p in (paths or [DEFAULT_TEXT])]


def texts_digest(texts: list[Text]) -> str:
    """One sha256 for the texts in order (a single text's is its own sha256)."""
    if len(texts) == 1:
        return texts[0].sha256
    return hashlib.sha256("".join(t.sha256 + "\n" for t in texts).encode()).hexdigest()


# llama.cpp's tokenizer takes time superlinear in one call's text (the trained tiny GGUF: 1 MB 4.9 s,
# 4 MB 188 s; tokenizers 0.5 s and 5.9 s), and Ctrl-C waits until a C call returns: texts are
# tokenized in pieces of about this many characters.
PIECE_CHARS = 1 << 16
_CUT = re.compile(r"\n(?=[^\n])")


def text_pieces(text: str, size: int = PIECE_CHARS) -> Iterator[str]:
    """``text`` cut after newline runs into pieces of about ``size`` characters. Gemma's newline runs
    are added tokens, matched before BPE by both tokenizers, so the cut changes no token; a stretch
    with no newline stays whole."""
    start = 0
    while start < len(text):
        m = _CUT.search(text, start + size) if start + size < len(text) else None
        end = m.end() if m else len(text)
        yield text[start:end]
        start = end


def tokenize_text(tokenize: Callable[[str], list[int]], text: str, limit: Optional[int] = None) -> list[int]:
    """``tokenize`` over ``text`` piece by piece (``text_pieces``); with ``limit``, stop once at least
    ``limit`` ids are had (the text's head: --chunks needs no more)."""
    ids: list[int] = []
    for piece in text_pieces(text):
        ids += tokenize(piece)
        if limit is not None and len(ids) >= limit:
            break
    return ids


def head_limit(ctx: int, chunks: Optional[int]) -> Optional[int]:
    """Token ids of a text that decide its first ``chunks`` windows (and where they end): one window
    more than they hold. None: every window, the whole text."""
    return None if chunks is None else (chunks + 1) * ctx


def windows(ids: list[int], ctx: int, bos: int | None, max_chunks: int | None = None) -> np.ndarray:
    """[n_chunks, ctx] token windows of BOS + ids, as llama-perplexity cuts them."""
    seq = ([bos] if bos is not None else []) + list(ids)
    n = len(seq) // ctx
    if max_chunks is not None and max_chunks > 0:
        n = min(n, max_chunks)
    if n == 0:
        raise ConfigError(
            f"the text has {len(seq)} tokens, fewer than one window of --ctx {ctx}; "
            "pass a longer --text or a smaller --ctx"
        )
    out = np.array(seq[: n * ctx], dtype=np.int32).reshape(n, ctx)
    if bos is not None:
        out[:, 0] = bos
    return out


def first_scored(ctx: int) -> int:
    """Logits at positions first..ctx-2 are scored (they predict tokens first+1..ctx-1)."""
    return ctx // 2


def piece_bytes(pieces: list[str], control: set[int]) -> np.ndarray:
    """UTF-8 bytes each vocabulary piece stands for: ``<0xNN>`` byte-fallback tokens one, "▁" a space,
    control tokens (``<bos>``, ``<|turn>`` …, ids in ``control``) nothing, since they are not text."""
    out = np.zeros(len(pieces), dtype=np.int64)
    for i, p in enumerate(pieces):
        if i in control:
            continue
        if len(p) == 6 and p.startswith("<0x") and p.endswith(">"):
            out[i] = 1
        else:
            out[i] = len(p.replace("\u2581", " ").encode("utf-8"))
    return out
