"""Bits per byte of the whole text: the figure that compares models whose tokenizers differ (a lean vocabulary).

KL divergence, "same top" and Δp compare two distributions over the same tokens after the same tokens.
A lean artifact predicts over other ids (N of the reference's, renumbered) after another tokenization of
the same text (a dropped token becomes several kept ones), so none of them is defined between it and
the full reference: its record leaves them empty and says why (``NOT_COMPARABLE``). What stays
comparable is the probability each model gives the text itself:

    bits per byte = −log₂ P(text | BOS) / (UTF-8 bytes of the text),   tokens per byte = tokens / bytes,

each side tokenizing the same text with its own tokenizer and predicting every one of its tokens exactly
once. Windows of ``ctx`` tokens each start with BOS (llama-perplexity's rule); the first window scores
all its positions, and each later one starts ``ctx − 1 − ctx//2`` tokens after the one before and scores
its second half (the strided scheme of transformers' perplexity guide, with llama-perplexity's
half-window of context): no token is scored twice or skipped, and every one has at least ``ctx//2``
tokens before it except those of the first half window. Both sides divide by the same number, the
text's UTF-8 bytes, so the difference of two figures is the difference of log-probabilities of the
same bytes.

With ``--chunks N`` the scored text is the prefix of each text that the reference's first N windows
cover, cut at a character boundary and recorded as a character count, so an artifact (on a device,
from a cached reference) scores exactly that prefix, whole, with its own tokenizer.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..core.errors import ArtifactError, ConfigError
from .metrics import log_softmax
from .text import first_scored, piece_bytes, tokenize_text

SCHEME = 1
NOT_COMPARABLE = (
    "KL, same top and RMS Δp are not defined across tokenizers (the lean artifact predicts over "
    "other ids after another tokenization of the text): compare bits per byte, which counts the "
    "same bytes on both sides"
)


def spans(n_seq: int, ctx: int) -> list[tuple[int, int, int]]:
    """(start, end, first) per window over a sequence of ``n_seq`` tokens (BOS first): the window is
    seq[start:end] with BOS at position 0, and its logits at positions first..end-start-2 predict
    seq[start+first+1:end]. Together they predict seq[1:] once each."""
    per, half = ctx - 1 - first_scored(ctx), first_scored(ctx)
    out = [(0, min(ctx, n_seq), 0)]
    while out[-1][1] < n_seq:
        s = len(out) * per
        out.append((s, min(s + ctx, n_seq), half))
    return out


def covered(n_ids: int, ctx: int, chunks: Optional[int]) -> int:
    """How many of a text's ``n_ids`` tokens (BOS not counted) the first ``chunks`` windows predict."""
    sp = spans(n_ids + 1, ctx)
    if chunks is None or chunks <= 0 or chunks >= len(sp):
        return n_ids
    return sp[chunks - 1][1] - 1


def text_nll(logits_of: Any, ids: Sequence[int], ctx: int, bos: Optional[int], label: str) -> float:
    """−ln P(ids | BOS) in nats, every token predicted once (``logits_of(window, first)``: a Source's logits)."""
    if bos is None:
        raise ArtifactError(
            f"{label}: has no BOS token; bits per byte over the whole text needs one to predict the first token from"
        )
    seq = np.array([bos, *ids], dtype=np.int64)
    nll = 0.0
    for start, end, first in spans(len(seq), ctx):
        win = seq[start:end].copy()
        win[0] = bos
        nxt = win[first + 1 :]
        if len(nxt) == 0:
            continue
        logp, _ = log_softmax(logits_of(win, first)[: len(nxt)])
        nll -= float(logp[np.arange(len(nxt)), nxt].sum())
    return nll


@dataclass(frozen=True)
class WholeText:
    """One model's figures over the scored text (every text, each cut to its prefix)."""

    nll: float  # nats, summed over every token
    tokens: int
    nbytes: int  # UTF-8 bytes of the scored text: the same on both sides
    windows: int

    @property
    def bits_per_byte(self) -> float:
        return self.nll / np.log(2) / self.nbytes

    @property
    def tokens_per_byte(self) -> float:
        return self.tokens / self.nbytes

    @property
    def ppl(self) -> float:
        """Per token of this model's own tokenization: not comparable across tokenizers."""
        return float(np.exp(self.nll / self.tokens))

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "scheme": SCHEME}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> WholeText:
        return cls(float(d["nll"]), int(d["tokens"]), int(d["nbytes"]), int(d["windows"]))


def measure(src: Any, texts: list[str], ctx: int, bos: Optional[int]) -> WholeText:
    """A Source's figures over ``texts``, each tokenized whole with the source's own tokenizer."""
    nll, tokens, nbytes, windows = 0.0, 0, 0, 0
    for t in texts:
        ids = tokenize_text(src.tokenize, t)
        nll += text_nll(src.logits, ids, ctx, bos, src.label)
        tokens, nbytes, windows = (
            tokens + len(ids),
            nbytes + len(t.encode("utf-8")),
            windows + len(spans(len(ids) + 1, ctx)),
        )
    if nbytes == 0:
        raise ConfigError("the scored text is empty; pass a longer --text or more --chunks")
    return WholeText(nll, tokens, nbytes, windows)


def prefix_chars(
    text: str, ids: Sequence[int], pieces: list[str], control: set[int], ctx: int, chunks: Optional[int]
) -> int:
    """Characters of ``text`` the reference's first ``chunks`` windows cover (its tokens ``ids``), cut
    back to a whole character when the last token covered ends inside one (byte-fallback tokens)."""
    n = covered(len(ids), ctx, chunks)
    if n == len(ids):
        return len(text)
    nb = int(piece_bytes(pieces, control)[np.asarray(ids[:n], dtype=np.int64)].sum())
    return len(text.encode("utf-8")[:nb].decode("utf-8", errors="ignore"))


# ---- a lean artifact's tokenizer is the reference's, restricted to the kept ids ------------------


def piece_hashes(pieces: list[str]) -> np.ndarray:
    """8 bytes of BLAKE2b per piece (2 MiB for Gemma 4's 262,144): what the reference cache keeps so a
    lean tokenizer can be checked against the reference's without the reference's files."""
    return np.array(
        [
            int.from_bytes(hashlib.blake2b(p.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")
            for p in pieces
        ],
        dtype=np.uint64,
    )


def load_id_map(path: Path) -> np.ndarray:
    """The kept-id map (new id → original id) at ``path`` (manifest.id_map_file has checked it)."""
    try:
        ids = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ArtifactError(f"{path}: unreadable id map ({e.__class__.__name__}); build again") from None
    return ids.astype(np.int64)


def check_trim(pieces: list[str], id_map: np.ndarray, ref_hashes: np.ndarray, label: str, ref_name: str) -> None:
    """Refuse a lean artifact that is not a trim of the reference's vocabulary: every kept piece must be
    the reference's piece at its original id."""
    n = len(id_map)
    ok = (
        len(pieces) >= n
        and all(p == "" for p in pieces[n:])
        and int(id_map.max(initial=-1)) < len(ref_hashes)
        and np.array_equal(piece_hashes(pieces[:n]), ref_hashes[id_map])
    )
    if not ok:
        raise ArtifactError(
            f"{label}: its lean vocabulary ({n} tokens) is not the reference {ref_name}'s restricted "
            "to the kept ids of its id map; evaluate against the checkpoint it was trimmed from"
        )
