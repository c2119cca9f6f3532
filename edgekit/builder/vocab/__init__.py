"""Lean vocabulary: trim Gemma 4's 262,144-token vocabulary to the N tokens a deployment uses.

A checkpoint transform: ``Checkpoint`` + N + a corpus → a lean ``Checkpoint`` in a private folder
(tokenizer.json's vocab and merges renumbered, token ids in config.json / generation_config.json /
tokenizer_config.json remapped, embedding rows gathered), which the GGUF and MLX converters read as
they read any checkpoint. What is kept, in order (edgekit/vocab/select.py has the closure's why):

1. every added token of tokenizer.json except ``<unusedN>`` placeholders (specials, control, turn,
   tool-call and channel markers, multimodal sentinels, newline runs), every token
   tokenizer_config.json / special_tokens_map.json name, every literal ``<...>`` token of the chat
   template, every id config.json and generation_config.json hold (bos, eos lists, pad, image /
   audio / video ids), and the 256 byte-fallback tokens ``<0x00>``..``<0xFF>``;
2. the tokens the full tokenizer emits on the corpus, most frequent first (ties: lower id);
3. when the corpus is exhausted: the fill rule, every remaining token BPE can produce in ascending
   id (Gemma's ids run roughly by the tokenizer's own training frequency; on the shape-true E2B
   checkpoint, whose weights carry no text statistics, this is the rule that picks most of the
   kept ids: the default corpus's tokens first, then the private-use filler pieces in id order);

each with its merge closure, skipping a token whose closure no longer fits, until N are kept.

The default corpus is the training half of ``edgekit eval``'s shipped text (CPython's documentation
and stdlib code, PSF License: edgekit/eval/data/train.txt), never its held-out half, so a vocabulary
is not chosen on the text it is then scored on. It is English prose and Python: pass
``--vocab-corpus FILE`` with the text your deployment will see.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ...backends.format import BuildContext
from ...core.errors import ConfigError
from ...core.fsutil import atomic_path, output_error
from ...model.checkpoint import Checkpoint, sha256_file
from .lean import write_lean
from .select import Corpus, Selection, SourceTokenizer, corpus_from_bytes, default_corpus, load_corpus, select

log = logging.getLogger(__name__)

__all__ = [
    "Corpus",
    "Selection",
    "SourceTokenizer",
    "VocabTrims",
    "corpus_from_bytes",
    "default_corpus",
    "effective_vocab",
    "load_corpus",
    "no_op_trims",
    "select",
    "trim_checkpoint",
    "write_lean",
]


def lean_name(ckpt: Checkpoint, n: int) -> str:
    return f"{ckpt.name}-v{n}"


def trim_checkpoint(ckpt: Checkpoint, n: int, corpus: Corpus, dest: Path) -> tuple[Checkpoint, Selection]:
    """The lean checkpoint for ``n`` tokens counted on ``corpus``, written under ``dest``."""
    src = SourceTokenizer.read(ckpt.path)
    sel = select(src, n, corpus)
    return write_lean(ckpt, src, sel, Path(dest) / lean_name(ckpt, sel.size)), sel


@dataclass
class _Trim:
    selection: Selection
    ckpt: Checkpoint | None = None
    ctx: Any = None  # its formats.BuildContext (intermediates of its own)
    record: dict[str, Any] = field(default_factory=dict)


class VocabTrims:
    """The lean checkpoints one build needs, one per vocab size. Every selection is made (and every
    bad size or corpus raised) when this is created, before the build writes anything; a lean
    checkpoint is written on first use into a private folder inside the output folder, and
    ``close`` removes it (after the lean contexts' intermediates: the stack runs it last)."""

    def __init__(self, ckpt: Checkpoint, sizes: set[int], corpus_path: Path | None = None):
        self.ckpt = ckpt
        self.trims: dict[int, _Trim] = {}
        self._tmp: Path | None = None
        self._src: SourceTokenizer | None = None
        if not sizes:
            if corpus_path is not None:
                raise ConfigError(
                    "--vocab-corpus needs a vocabulary size to trim to; add --vocab N or pick a recipe with vocab = N"
                )
            return
        corpus = load_corpus(corpus_path)
        src = SourceTokenizer.read(ckpt.path)
        for n in sorted(sizes):
            sel = select(src, n, corpus)
            self.trims[n] = _Trim(sel)
            log.info(
                "vocab %d: %d must-keep, %d from the corpus (%s), %d by the fill rule; %d of %d merges",
                n,
                sel.n_must,
                sel.n_corpus,
                corpus.name,
                sel.n_fill,
                sel.merges,
                sel.source_merges,
            )
        self._src = src

    def source(self, n: int | None, ctx: Any) -> tuple[Checkpoint, Any]:
        """(checkpoint, build context) for a recipe trimmed to ``n`` (None: the full checkpoint and
        ``ctx``). Each lean checkpoint has its own context, so intermediates are never shared with
        the full one; its files go to ``ctx.out_dir``."""
        if n is None:
            return self.ckpt, ctx
        t = self.trims[n]
        if t.ckpt is None:
            folder = Path(ctx.out_dir)
            try:
                if self._tmp is None:
                    self._tmp = Path(tempfile.mkdtemp(prefix=".edgekit-vocab-", dir=folder))
                t.ckpt = write_lean(
                    self.ckpt, self._src, t.selection, self._tmp / lean_name(self.ckpt, t.selection.size)
                )
                t.record = self._write_map(folder, t)
                if all(x.ckpt is not None for x in self.trims.values()):
                    self._src = None  # the full tokenizer's tables (356 MiB for E2B's shape, measured) are done with
            except OSError as e:
                raise output_error(folder, e) from None
            t.ctx = BuildContext(target=ctx.target, out_dir=ctx.out_dir, stack=ctx.stack, calibration=ctx.calibration)
        return t.ckpt, t.ctx

    def _write_map(self, folder: Path, t: _Trim) -> dict[str, Any]:
        sel = t.selection
        name = f"{t.ckpt.name}.vocab-ids.npy"
        with atomic_path(Path(folder) / name) as tmp, open(tmp, "wb") as f:
            np.save(f, sel.kept.astype(np.int32 if sel.source_size < 2**31 else np.int64))
        return {
            "size": sel.size,
            "source_size": sel.source_size,
            "must_keep": sel.n_must,
            "from_corpus": sel.n_corpus,
            "by_fill_rule": sel.n_fill,
            "merges": sel.merges,
            "source_merges": sel.source_merges,
            "corpus": sel.corpus.name,
            "corpus_sha256": sel.corpus.sha256,
            "corpus_bytes": sel.corpus.nbytes,
            # new id -> original id, int32, ascending (numpy .npy)
            "id_map": name,
            "id_map_sha256": sha256_file(Path(folder) / name),
        }

    def annotate(self, artifact: Any, n: int | None) -> Any:
        """The artifact with its vocabulary recorded in ``extra["vocab"]`` (unchanged when full)."""
        if n is None:
            return artifact
        return replace(artifact, extra={**artifact.extra, "vocab": dict(self.trims[n].record)})

    def close(self) -> None:
        """Remove the private lean checkpoints (the build's stack calls this however it ends)."""
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None


def effective_vocab(recipes: list[Any], vocab: int | None) -> list[Any]:
    """Recipes with the build's ``--vocab`` applied (so the manifest records what was built)."""
    if vocab is None:
        return recipes
    if isinstance(vocab, bool) or not isinstance(vocab, int) or vocab <= 0:
        raise ConfigError(f"--vocab {vocab!r}: give a positive number of tokens, e.g. --vocab 65536")
    return [replace(r, vocab=vocab) for r in recipes]


def no_op_trims(recipes: list[Any], n_vocab: int) -> tuple[list[Any], dict[str, str]]:
    """A recipe's ``vocab = N`` is a cap: on a model whose vocabulary already has at most N tokens the
    trim would change nothing, so the recipe is left out (its full-vocabulary twin, when the profile
    has one, is the same build; an artifact named lean that trimmed nothing would claim what it did
    not do). Returns the recipes to build and, per recipe left out, why (the manifest records it).
    ``--vocab N`` (every recipe's vocab) is the same cap: at or above the vocabulary, build refuses it."""
    keep, skipped = [], {}
    for r in recipes:
        if r.vocab is not None and n_vocab <= r.vocab:
            skipped[r.name] = (
                f"vocab = {r.vocab} caps the vocabulary, and the model's has {n_vocab} tokens: nothing to trim"
            )
            log.warning(
                "recipe %s skipped: the model's vocabulary of %d tokens is already within its vocab = %d "
                "(nothing to trim; the manifest says so)",
                r.name,
                n_vocab,
                r.vocab,
            )
        else:
            keep.append(r)
    return keep, skipped
