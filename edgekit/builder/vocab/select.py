"""Which token ids a lean vocabulary keeps: the must-keep set, the corpus's tokens, the merge closure.

Gemma 4's tokenizer.json is a BPE model with byte fallback (the synthetic one in edgekit/tokenizer.py
has the same shape): ``Replace(" ", "▁")`` normalizer, a pre-tokenizer that splits nothing, so merges
run over whole runs of text between added tokens (llama.cpp's gemma4 pre-tokenizer cuts at newline
runs, which are added tokens here), ``<0x00>``..``<0xFF>`` byte tokens for characters outside the
vocabulary, and added tokens (specials, turn/tool/channel markers, multimodal sentinels, newline
runs) that are split out of the text before BPE runs.

Closure. BPE encodes a string by starting from its characters and repeatedly applying the adjacent
merge of lowest rank (leftmost first); transformers' tokenizers and llama.cpp do the same. If every
symbol that appears while the full tokenizer encodes a token's own string is kept, together with
the merges between kept symbols, the lean tokenizer takes the same steps (its applicable merges are
a subset of the full one's, and the one the full tokenizer picks is among them), so it ends at the
same token. So a token is kept only with its *derivation*: every intermediate symbol of encoding
its own string, recursively. Merges that produce or consume a dropped token are removed.
llama.cpp applies any listed merge even when its result is no token (and then falls back to
bytes), so removing them is required, not tidiness.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from ...core.errors import ConfigError, TokenizerError
from ...core.fields import utf8_text
from ...eval.text import TRAIN_TEXT

log = logging.getLogger(__name__)

BYTE_TOKENS = tuple(f"<0x{b:02X}>" for b in range(256))
# Reserved placeholders (Gemma's <unusedN>): no text, template or engine uses them.
UNUSED = re.compile(r"<unused\d+>")
# Literal <...> markers in a chat template (<|turn>, <turn|>, <|"|>, <start_of_image>, ...).
TEMPLATE_TOKEN = re.compile(r"<[^<>\s]{1,48}>")
# config.json / generation_config.json keys that hold token ids (ints or lists of ints).
ID_KEY_SUFFIXES = ("token_id", "token_ids", "token_index")


@dataclass(frozen=True)
class Corpus:
    """The text the kept tokens are counted on, and where it came from (recorded in the manifest)."""

    name: str
    text: str
    sha256: str
    nbytes: int


def corpus_from_bytes(name: str, raw: bytes) -> Corpus:
    text = utf8_text(
        raw, f"{name}: the vocabulary corpus", "convert it to UTF-8 (e.g. iconv -t UTF-8) or pass another file"
    )
    if not text.strip():
        raise ConfigError(
            f"{name}: the vocabulary corpus is empty; pass a UTF-8 text file with the kind of "
            "text the deployment will see"
        )
    return Corpus(name=name, text=text, sha256=hashlib.sha256(raw).hexdigest(), nbytes=len(raw))


DEFAULT_CORPUS_NAME = "builtin:edgekit/eval/data/train.txt (CPython docs and code, PSF License)"


def default_corpus() -> Corpus:
    return corpus_from_bytes(DEFAULT_CORPUS_NAME, TRAIN_TEXT.read_bytes())


def load_corpus(path: Path | None) -> Corpus:
    """The user's corpus file, or the default corpus (edgekit/vocab/__init__.py says which) when None."""
    if path is None:
        return default_corpus()
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(
            f"{path}: cannot read the vocabulary corpus ({e.strerror or e}); pass a readable UTF-8 text file"
        ) from None
    return corpus_from_bytes(str(path), raw)


def _read_json(path: Path, required: bool) -> dict[str, Any]:
    if not path.is_file():
        if required:
            raise TokenizerError(f"{path} is missing; copy it from the original Gemma 4 checkpoint")
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise TokenizerError(
            f"{path} is unreadable or corrupt ({type(e).__name__}); restore it from the original Gemma 4 checkpoint"
        ) from None
    if not isinstance(data, dict):
        raise TokenizerError(f"{path} is not a JSON object; restore it from the original Gemma 4 checkpoint")
    return data


def _merge_pair(m: Any) -> tuple[str, str]:
    # tokenizers writes merges as [a, b] (>= 0.20) or "a b" (older files; no token holds a space,
    # the normalizer turned them into ▁).
    if isinstance(m, str):
        a, b = m.split(" ", 1)
        return a, b
    a, b = m
    return str(a), str(b)


def iter_ids(node: Any, key: str = "") -> Iterable[tuple[str, int]]:
    """Every (key, token id) in a config dict, at any depth (eos lists included)."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from iter_ids(v, k)
    elif key.endswith(ID_KEY_SUFFIXES):
        if isinstance(node, bool):
            return
        if isinstance(node, int):
            yield key, node
        elif isinstance(node, list):
            for v in node:
                if isinstance(v, int) and not isinstance(v, bool):
                    yield key, v


@dataclass
class SourceTokenizer:
    """A checkpoint's tokenizer files, read once: the BPE model and what names token ids."""

    path: Path
    data: dict[str, Any]  # tokenizer.json
    tokenizer_config: dict[str, Any]
    special_tokens_map: dict[str, Any]
    model_config: dict[str, Any]  # config.json
    generation_config: dict[str, Any]
    chat_template: str
    tokens: list[str] = field(default_factory=list)  # id -> text
    ids: dict[str, int] = field(default_factory=dict)  # text -> id
    merges: list[tuple[str, str]] = field(default_factory=list)
    ranks: dict[tuple[str, str], int] = field(default_factory=dict)
    producer: dict[str, tuple[str, str]] = field(default_factory=dict)  # token -> its lowest-rank merge
    added: dict[int, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def read(cls, ckpt_dir: Path) -> SourceTokenizer:
        d = Path(ckpt_dir)
        where = d / "tokenizer.json"
        data = _read_json(where, required=True)
        model = data.get("model")
        if not isinstance(model, dict) or model.get("type") != "BPE" or not model.get("byte_fallback"):
            raise TokenizerError(
                f"{where} is not a Gemma 4 tokenizer (needs a byte-fallback BPE model); a lean "
                "vocabulary is made from the tokenizer.json shipped with the Gemma 4 checkpoint"
            )
        tcfg = _read_json(d / "tokenizer_config.json", required=False)
        template = tcfg.get("chat_template") or ""
        if isinstance(template, list):  # [{"name": ..., "template": ...}, ...]
            template = "\n".join(str(t.get("template", "")) for t in template if isinstance(t, dict))
        if (d / "chat_template.jinja").is_file():
            template = f"{template}\n{(d / 'chat_template.jinja').read_text(encoding='utf-8', errors='replace')}"
        src = cls(
            path=d,
            data=data,
            tokenizer_config=tcfg,
            special_tokens_map=_read_json(d / "special_tokens_map.json", required=False),
            model_config=_read_json(d / "config.json", required=True),
            generation_config=_read_json(d / "generation_config.json", required=False),
            chat_template=str(template),
        )
        try:
            src._index()
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise TokenizerError(
                f"{where} is corrupt ({type(e).__name__}); restore the original Gemma 4 tokenizer.json"
            ) from None
        return src

    def _index(self) -> None:
        where = self.path / "tokenizer.json"
        by_id = {int(i): str(t) for t, i in self.data["model"]["vocab"].items()}
        for a in self.data.get("added_tokens", []):
            by_id[int(a["id"])] = str(a["content"])
            self.added[int(a["id"])] = a
        n = len(by_id)
        if set(by_id) != set(range(n)):
            raise TokenizerError(
                f"{where}: token ids are not 0..{n - 1} without gaps; restore the original Gemma 4 tokenizer.json"
            )
        self.tokens = [by_id[i] for i in range(n)]
        self.ids = {t: i for i, t in enumerate(self.tokens)}
        if len(self.ids) != n:
            raise TokenizerError(f"{where} has repeated token texts; restore the original Gemma 4 tokenizer.json")
        missing = [t for t in BYTE_TOKENS if t not in self.ids]
        if missing:
            raise TokenizerError(
                f"{where} lacks byte-fallback token {missing[0]} ({len(missing)} in all); a lean "
                "vocabulary needs all 256 to spell any text"
            )
        self.merges = [_merge_pair(m) for m in self.data["model"].get("merges", [])]
        for r, (a, b) in enumerate(self.merges):
            self.ranks.setdefault((a, b), r)
            self.producer.setdefault(a + b, (a, b))

    @property
    def size(self) -> int:
        return len(self.tokens)

    # ---- BPE --------------------------------------------------------------------------------------
    def derive(self, s: str) -> tuple[set[str], list[str]]:
        """(every symbol that appears, the final symbols) when BPE encodes ``s``: characters, then the
        lowest-rank adjacent merge, leftmost first, until none applies (as tokenizers' BPE and
        llama.cpp's do). Characters outside the vocabulary are in no merge (they become bytes)."""
        syms = list(s)
        seen = set(syms)
        ranks = self.ranks
        while len(syms) > 1:
            best, at = None, -1
            for i in range(len(syms) - 1):
                r = ranks.get((syms[i], syms[i + 1]))
                if r is not None and (best is None or r < best):
                    best, at = r, i
            if best is None:
                break
            syms[at : at + 2] = [syms[at] + syms[at + 1]]
            seen.add(syms[at])
        return seen, syms

    def reachable(self, tid: int) -> bool:
        """Whether BPE can ever produce this (non-added) token: a single character, or a merge's result."""
        t = self.tokens[tid]
        return len(t) == 1 or t in self.producer

    # ---- what must stay --------------------------------------------------------------------------
    def named_tokens(self) -> list[tuple[str, str]]:
        """(where, token text) for every token the tokenizer files and configs name."""
        out: list[tuple[str, str]] = []

        def texts(node: Any, where: str) -> None:
            if isinstance(node, str):
                out.append((where, node))
            elif isinstance(node, dict):
                if isinstance(node.get("content"), str):  # an AddedToken object
                    out.append((where, node["content"]))
                else:
                    for k, v in node.items():
                        texts(v, f"{where}.{k}")
            elif isinstance(node, list):
                for v in node:
                    texts(v, where)

        for name, cfg in (
            ("tokenizer_config.json", self.tokenizer_config),
            ("special_tokens_map.json", self.special_tokens_map),
        ):
            for k, v in cfg.items():
                if k.endswith("_token") or k.endswith("_tokens") or k == "model_specific_special_tokens":
                    texts(v, f"{name}:{k}")
            for i, a in (cfg.get("added_tokens_decoder") or {}).items():
                if isinstance(a, dict) and isinstance(a.get("content"), str):
                    out.append((f"{name}:added_tokens_decoder.{i}", a["content"]))
        unk = self.data["model"].get("unk_token")
        if unk:
            out.append(("tokenizer.json:model.unk_token", str(unk)))
        for m in TEMPLATE_TOKEN.findall(self.chat_template):
            if m in self.ids:
                out.append(("chat template", m))
        return out

    def named_ids(self) -> list[tuple[str, int]]:
        """(where, id) for every token id config.json and generation_config.json hold."""
        out = [(f"config.json:{k}", i) for k, i in iter_ids(self.model_config)]
        out += [(f"generation_config.json:{k}", i) for k, i in iter_ids(self.generation_config)]
        for where, i in out:
            if not 0 <= i < self.size:
                raise TokenizerError(
                    f"{where} is token id {i}, which the {self.size}-token tokenizer lacks; "
                    "restore config.json and tokenizer.json from the same checkpoint"
                )
        return out


@dataclass(frozen=True)
class Selection:
    """The kept ids (ascending: new id -> original id) and how each group got in."""

    kept: np.ndarray  # int64, ascending original ids; position = new id
    source_size: int
    n_must: int  # specials, control/template/multimodal tokens, bytes (with their closures)
    n_corpus: int  # tokens the corpus used, most frequent first (with their closures)
    n_fill: int  # by the fill rule, after the corpus ran out
    merges: int  # merges kept
    source_merges: int
    corpus: Corpus

    @property
    def size(self) -> int:
        return len(self.kept)


class _Closure:
    def __init__(self, src: SourceTokenizer, atomic: set[int]):
        self.src, self.atomic, self.memo = src, atomic, {}

    def __call__(self, tid: int) -> frozenset[int]:
        got = self.memo.get(tid)
        if got is not None:
            return got
        src = self.src
        text = src.tokens[tid]
        out = {tid}
        if tid not in self.atomic and len(text) > 1:
            seen, final = src.derive(text)
            for s in seen:
                sid = src.ids.get(s)
                if sid is not None and sid != tid:
                    out |= self(sid)  # s is a proper substring of text: the recursion ends
            if final != [text] and text in src.producer:
                # BPE does not rebuild this token from its own string, but a merge in context can:
                # keep the lowest-rank merge that makes it.
                a, b = src.producer[text]
                out |= self(src.ids[a]) | self(src.ids[b])
        self.memo[tid] = frozenset(out)
        return self.memo[tid]


def must_keep(src: SourceTokenizer) -> tuple[list[int], set[int]]:
    """(must-keep ids, atomic ids): atomic ones are matched whole (added tokens) or are bytes."""
    atomic = set(src.added) | {src.ids[t] for t in BYTE_TOKENS}
    must = [i for i in sorted(src.added) if not UNUSED.fullmatch(src.tokens[i])]
    for where, text in src.named_tokens():
        if text in src.ids:
            must.append(src.ids[text])
        elif text:  # the full build has the same inconsistency; the trim need not stop for it
            log.warning("%s names %r, which tokenizer.json lacks; nothing to keep for it", where, text)
    must += [i for _, i in src.named_ids()]
    must += [src.ids[t] for t in BYTE_TOKENS]
    return list(dict.fromkeys(must)), atomic


def corpus_counts(src: SourceTokenizer, corpus: Corpus) -> np.ndarray:
    """How often the full tokenizer emits each id on the corpus (no bos: it is kept anyway)."""

    tok = Tokenizer.from_file(str(src.path / "tokenizer.json"))
    # Cut after newline runs (added tokens, so the cut changes no token) to keep each piece small.
    pieces = [p for p in re.split(r"(?<=\n)(?=[^\n])", corpus.text) if p]
    counts = np.zeros(src.size, dtype=np.int64)
    for k in range(0, len(pieces), 4096):
        for enc in tok.encode_batch(pieces[k : k + 4096], add_special_tokens=False):
            if enc.ids:
                counts += np.bincount(np.asarray(enc.ids, dtype=np.int64), minlength=src.size)
    return counts


def select(src: SourceTokenizer, n: int, corpus: Corpus) -> Selection:
    """Keep ``n`` ids: the must-keep set, then the corpus's tokens by frequency (ties: lower id), then
    the fill rule (reachable tokens in ascending id), each with its closure, skipping any whose
    closure no longer fits. Raises ConfigError for an ``n`` outside [minimum, vocabulary size]."""
    V = src.size
    must, atomic = must_keep(src)
    closure = _Closure(src, atomic)
    base: set[int] = set()
    for i in must:
        base |= closure(i)
    if n > V:
        raise ConfigError(
            f"vocab {n} is larger than the model's vocabulary of {V} tokens; use at most {V}, "
            "or leave vocab unset for the full vocabulary"
        )
    if n < len(base):
        raise _too_small(n, len(base), cheapest_merge(src, closure, base))
    counts = corpus_counts(src, corpus)
    if n == V:
        keep = np.arange(V, dtype=np.int64)
        n_corpus = int((counts > 0).sum() - np.isin(np.flatnonzero(counts), list(base)).sum())
        return Selection(
            keep, V, len(base), n_corpus, V - len(base) - n_corpus, len(src.merges), len(src.merges), corpus
        )
    kept, groups = _fill(src, closure, atomic, counts, set(base), n)
    n_must = len(base)
    if not kept_merges(src, kept) and src.merges:
        # Too few slots were left for any merge (single characters filled them): llama.cpp's gemma4
        # tokenizer refuses a vocabulary without one, so the cheapest merge is kept with the must-keep set.
        extra = cheapest_merge(src, closure, base)
        if extra is not None:
            if n < len(base) + len(extra):
                raise _too_small(n, len(base), extra)
            kept, groups = _fill(src, closure, atomic, counts, base | extra, n)
            n_must += len(extra)
    keep = np.array(sorted(kept), dtype=np.int64)
    merges = len(kept_merges(src, kept))
    if len(keep) < n:
        log.warning(
            "vocab %d: only %d tokens can be kept (the others are <unusedN> placeholders or no merge "
            "makes them); the lean vocabulary has %d",
            n,
            len(keep),
            len(keep),
        )
    return Selection(keep, V, n_must, groups["corpus"], groups["fill"], merges, len(src.merges), corpus)


def _fill(
    src: SourceTokenizer, closure: _Closure, atomic: set[int], counts: np.ndarray, kept: set[int], n: int
) -> tuple[set[int], dict[str, int]]:
    """``kept`` grown to ``n``: the corpus's tokens by frequency, then the fill rule, each with its closure."""
    V = src.size
    used = np.flatnonzero(counts)
    by_freq = used[np.lexsort((used, -counts[used]))]
    groups = {"corpus": 0, "fill": 0}

    def take(candidates: Iterable[int], group: str) -> bool:
        for i in candidates:
            i = int(i)
            if i in kept:
                continue
            add = closure(i) - kept
            if len(kept) + len(add) <= n:
                kept.update(add)
                groups[group] += len(add)
            if len(kept) == n:
                return True
        return False

    if not take(by_freq, "corpus"):
        fill = (i for i in range(V) if i not in atomic and not UNUSED.fullmatch(src.tokens[i]) and src.reachable(i))
        take(fill, "fill")
    return kept, groups


def cheapest_merge(src: SourceTokenizer, closure: _Closure, kept: set[int]) -> set[int] | None:
    """The fewest ids (closures included) that bring one BPE merge into ``kept``; None when it already
    has one or the tokenizer has none."""
    if kept_merges(src, kept) or not src.merges:
        return None
    best: set[int] | None = None
    for a, b in src.merges:
        ids = [src.ids.get(t) for t in (a, b, a + b)]
        if None in ids:
            continue
        add = set().union(*(closure(i) for i in ids)) - kept
        if best is None or len(add) < len(best):
            best = add
            if len(best) <= 1:  # the least possible: a merge of two kept tokens, its result added
                break
    return best


def _too_small(n: int, n_must: int, merge: set[int] | None) -> ConfigError:
    minimum = n_must + len(merge or ())
    why = f", and {len(merge)} for one BPE merge, which llama.cpp's tokenizer needs" if merge else ""
    return ConfigError(
        f"vocab {n} is smaller than the {minimum} tokens every Gemma 4 deployment keeps "
        f"(special, control, template and multimodal tokens, 256 byte-fallback tokens{why}); "
        f"use at least {minimum}"
    )


def kept_merges(src: SourceTokenizer, kept: set[int]) -> list[Any]:
    """The merges (as tokenizer.json writes them, in rank order) whose two parts and result are kept."""
    ids = src.ids
    raw = src.data["model"].get("merges", [])
    return [
        m
        for m, (a, b) in zip(raw, src.merges, strict=True)
        if ids.get(a, -1) in kept and ids.get(b, -1) in kept and ids.get(a + b, -1) in kept
    ]
