"""evaluate(paths, options): score every artifact against a reference on the same token windows.

The reference (a Hugging Face checkpoint run by transformers, an unquantized artifact, or a cache file
eval wrote) is run once per (reference, text, ctx, chunks, top-k) and its compact log-probabilities
are cached (refcache.py); each artifact then runs every window with its engine and the target's
runtime knobs, and its logits are scored against the cache (metrics.py). A lean artifact (its manifest
names a kept-id map) has another tokenizer by design: it is scored on bits and tokens per byte of the
whole text beside the reference's, as is every other artifact of a run that has one (wholetext.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..backends.engines import ENGINES
from ..backends.logits import LogitsSource as Source
from ..backends.logits import Vocab
from ..builder.manifest import id_map_file
from ..core.errors import ArtifactError, ConfigError, EdgekitError
from ..model.checkpoint import load_checkpoint
from ..model.safetensors_io import read_header
from ..profiles.resolve import SCORE, Overrides, ResolvedArtifact, resolve, resolve_threads
from ..results import QualityRecord, provenance
from . import refcache, wholetext
from .engines import HfSource
from .metrics import RefRows, compact, concat, kl_stats, score, tail_mass
from .reference import check_quant, check_reference, reference_identity
from .text import Text, first_scored, head_limit, load_texts, piece_bytes, texts_digest, tokenize_text, windows

log = logging.getLogger(__name__)

# Reference log-probabilities kept per position. KL over the top k plus a tail bin is a lower bound, low by
# about the reference's mass outside the top k; at 1024 it matches llama-perplexity's KL (Δ −2e-8 on the
# trained tiny model, where 64 read 24% low) for 8,204 bytes a position (docs/eval.md has k = 64 ... 1024).
# Every record carries the reference's mean mass outside the top k, so a run where it is large says so.
DEFAULT_TOP_K = 1024


@dataclass
class EvalOptions:
    reference: str
    texts: Optional[list[Path]] = None  # default: edgekit's held-out text
    ctx: int = 512
    chunks: Optional[int] = None  # windows per text (default: all the text has)
    top_k: int = DEFAULT_TOP_K
    threads: Optional[int] = None
    target: Optional[str] = None  # default: the manifest's
    runtime: dict[str, Any] = field(default_factory=dict)  # knobs over the target's [runtime]
    reference_dtype: str = "float32"
    ref_cache: Optional[Path] = None  # default: ~/.cache/edgekit/eval/ref-<key>.npz
    device: Optional[str] = None
    force_reference: bool = False  # use a quantized or another checkpoint's reference anyway


def _threads(opts: EvalOptions) -> int:
    """The reference checkpoint's threads (an artifact's come with its settings): the resolver's rule."""
    return resolve_threads(opts.threads, None, SCORE)


def _resolve(path: Path, opts: EvalOptions) -> list[ResolvedArtifact]:
    """The artifacts PATH names, settled for scoring: the engine's knobs as bench applies them (its defaults,
    the target's [runtime], then --set, each engine taking the --set knobs it has), on --ctx windows."""
    return resolve(path, target=opts.target, overrides=Overrides(opts.threads, opts.ctx, dict(opts.runtime)), use=SCORE)


def _is_hf_checkpoint(p: Path) -> bool:
    shard = next(iter(sorted(p.glob("*.safetensors"))), None)
    if not (p / "config.json").is_file() or shard is None:
        return False
    if not shard.is_file():
        return True  # a FIFO would block read_header; load_checkpoint refuses it in one line
    try:
        names = read_header(shard)[0]
    except (OSError, ValueError):
        return False
    return any(n.startswith(("model.language_model.", "model.layers.")) for n in names)


@dataclass
class _Ref:
    name: str
    sha256: str
    runtime: dict[str, Any]
    open: Optional[Callable[[], Source]]  # None: a cache file (nothing to run)
    cache_file: Optional[Path] = None
    identity: dict[str, Any] = field(default_factory=dict)  # reference.py: its weights and quant


def _open(ra: ResolvedArtifact) -> Source:
    return ra.engine.logits(ra.path, ra.settings.run_options())


def resolve_reference(opts: EvalOptions) -> _Ref:
    p = Path(opts.reference).expanduser()
    if p.is_file() and p.suffix == ".npz":
        return _Ref(p.name, "", {}, None, cache_file=p)
    if p.is_dir() and _is_hf_checkpoint(p):
        ckpt = load_checkpoint(p)
        fp = ckpt.fingerprint()
        return _Ref(
            p.name,
            fp["sha256"],
            {"dtype": opts.reference_dtype},
            lambda: HfSource(p, opts.reference_dtype, _threads(opts)),
            identity=reference_identity(fp, None),
        )
    if not p.exists():
        raise ConfigError(
            f"--reference {opts.reference}: no such file or folder; pass a Hugging Face checkpoint "
            "folder, an unquantized .gguf / MLX folder, or a reference cache (.npz)"
        )
    refs = _resolve(p, opts)
    if len(refs) != 1:
        raise ConfigError(f"--reference {opts.reference}: names {len(refs)} artifacts; pass one file or folder")
    ra = refs[0]
    # An artifact reference runs under the artifacts' runtime, so the KL isolates the weights.
    return _Ref(
        ra.artifact.file,
        ra.sha256,
        ra.settings.knobs,
        lambda: _open(ra),
        identity=reference_identity(_manifest_source(ra), ra.artifact.quant),
    )


def _manifest_source(ra: ResolvedArtifact) -> Optional[dict[str, Any]]:
    """The source the manifest listing ``ra`` records (None for a file no manifest lists)."""
    return ra.manifest.source if ra.manifest else None


def _read_own_cache(path: Path, key: refcache.CacheKey) -> Optional[refcache.RefCache]:
    """The cache at ``path`` for ``key``; None when there is none, or when it is not whole (truncated,
    bit-flipped, edited, an older format): then one warning line, and the reference is computed again
    and the file replaced. A whole cache made for another key stays an error (refcache.check)."""
    if not path.exists():
        return None
    try:
        cache = refcache.load(path, want=key)
    except refcache.CacheCorrupt as e:
        log.warning("%s; computing the reference again", e)
        return None
    log.info("reference cache %s", path)
    return cache


def _save(cache: refcache.RefCache, path: Path) -> None:
    """Keep the cache; a disk that cannot take it costs the next run the reference pass, not this run's results."""
    try:
        refcache.save(cache, path)
    except EdgekitError as e:
        log.warning("reference cache not kept: %s", e)


def _key(ref: _Ref, text_sha: str, opts: EvalOptions) -> refcache.CacheKey:
    ref_sha = ref.sha256
    if ref.runtime:
        ref_sha = hashlib.sha256((ref_sha + json.dumps(ref.runtime, sort_keys=True)).encode()).hexdigest()
    return refcache.CacheKey(ref.name, ref_sha, text_sha, opts.ctx, opts.chunks or 0, opts.top_k)


def _whole_text(src: Source, vocab: Vocab, texts: list[Text], opts: EvalOptions) -> tuple[dict[str, Any], np.ndarray]:
    """The reference's whole-text figures (and where each text is cut for --chunks), and its piece hashes."""
    cuts = [
        wholetext.prefix_chars(
            t.text,
            tokenize_text(src.tokenize, t.text, head_limit(opts.ctx, opts.chunks)),
            vocab.pieces,
            set(vocab.control),
            opts.ctx,
            opts.chunks,
        )
        for t in texts
    ]
    w = wholetext.measure(src, [t.text[:c] for t, c in zip(texts, cuts, strict=True)], opts.ctx, vocab.bos)
    log.info(
        "reference %s: %.4f bits/byte, %.4f tokens/byte over %d bytes of text",
        src.label,
        w.bits_per_byte,
        w.tokens_per_byte,
        w.nbytes,
    )
    return {**w.to_json(), "prefix_chars": cuts}, wholetext.piece_hashes(vocab.pieces)


def _has_whole_text(cache: refcache.RefCache) -> bool:
    wt = cache.ref_stats.get("whole_text")
    return cache.piece_hash is not None and isinstance(wt, dict) and wt.get("scheme") == wholetext.SCHEME


def _check_identity(name: str, identity: dict[str, Any], planned: list[ResolvedArtifact], opts: EvalOptions) -> None:
    """Before the reference runs: refuse it for a quantized one, or for weights other than the artifacts'."""
    check_quant(name, identity, opts.force_reference)
    for ra in planned:
        check_reference(name, identity, ra.artifact.file, _manifest_source(ra), opts.force_reference)


def _check_options(opts: EvalOptions) -> None:
    """eval's own bounds, before any file is read (threads are the resolver's)."""
    if opts.ctx < 4:
        raise ConfigError(f"--ctx {opts.ctx}: too short to score anything; use at least 4 (llama-perplexity: 128+)")
    if opts.top_k < 1:
        raise ConfigError(f"--top-k {opts.top_k}: must be at least 1")
    if opts.chunks is not None and opts.chunks < 1:
        raise ConfigError(
            f"--chunks {opts.chunks}: must be at least 1; leave it out to score every window the text has"
        )
    _threads(opts)


def reference_cache(
    opts: EvalOptions, whole_text: bool = False, planned: list[ResolvedArtifact] = ()
) -> refcache.RefCache:
    """The reference's cache for this run: read when present (its key checked), else computed and saved.
    ``whole_text``: it must also hold the reference's whole-text figures (a lean artifact is in the run);
    a cache without them gets them added. ``planned``: the artifacts it will judge (reference.py)."""
    _check_options(opts)
    texts = load_texts(opts.texts)
    text_sha = texts_digest(texts)
    ref = resolve_reference(opts)
    if ref.open is None:  # a cache file given as the reference: its own key, checked against the run
        try:
            have = refcache.load(ref.cache_file)
        except refcache.CacheCorrupt as e:  # nothing here to compute it again from
            raise ArtifactError(f"{e}; make it again where the reference runs, or pass the reference itself") from None
        want = refcache.CacheKey(
            have.key.reference, have.key.reference_sha256, text_sha, opts.ctx, opts.chunks or 0, opts.top_k
        )
        refcache.check(have.key, want, ref.cache_file)
        _check_identity(have.key.reference, have.ref_stats.get("identity") or {}, list(planned), opts)
        if whole_text and not _has_whole_text(have):
            raise ArtifactError(
                f"{ref.cache_file}: this reference cache has no whole-text bits per byte, which a "
                "lean artifact is compared on; make it where the reference runs, with a lean "
                "artifact in that eval, or pass the reference itself"
            )
        return have
    _check_identity(ref.name, ref.identity, list(planned), opts)
    key = _key(ref, text_sha, opts)
    path = opts.ref_cache or refcache.default_path(key)
    cache = _read_own_cache(Path(path), key)
    if cache is not None:
        if whole_text and not _has_whole_text(cache):
            src = ref.open()
            try:
                cache.ref_stats["whole_text"], cache.piece_hash = _whole_text(src, src.vocab(), texts, opts)
            finally:
                src.close()
            _save(cache, path)
        return cache
    t0 = time.perf_counter()
    src = ref.open()
    extra: dict[str, Any] = {}
    hashes = None
    try:
        vocab = src.vocab()
        if whole_text:
            extra["whole_text"], hashes = _whole_text(src, vocab, texts, opts)
        first = first_scored(opts.ctx)
        nbytes = piece_bytes(vocab.pieces, set(vocab.control))
        wins, rows, nll, nb = [], [], [], []
        for t in texts:
            w = windows(
                tokenize_text(src.tokenize, t.text, head_limit(opts.ctx, opts.chunks)), opts.ctx, vocab.bos, opts.chunks
            )
            for win in w:
                nxt = win[first + 1 :].astype(np.int64)
                r = compact(src.logits(win, first)[: len(nxt)], nxt, opts.top_k)
                rows.append(r)
                nll.append(-r.next_logp.astype(np.float64))
                nb.append(nbytes[nxt].astype(np.int32))
            wins.append(w)
    finally:
        src.close()
    all_nll, all_nb = np.concatenate(nll), np.concatenate(nb)
    stats = {
        "ppl": float(np.exp(all_nll.mean())),
        "bits_per_byte": float(all_nll.sum() / np.log(2) / max(int(all_nb.sum()), 1)),
        "seconds": round(time.perf_counter() - t0, 2),
        "n_vocab": len(vocab.pieces),
        "tail_mass": tail_mass(RefRows.concat(rows)),
        "identity": ref.identity,
        **extra,
    }
    cache = refcache.RefCache(key, vocab.sha256, np.concatenate(wins), RefRows.concat(rows), all_nb, stats, hashes)
    _save(cache, path)
    log.info(
        "reference %s: PPL %.4f over %d windows in %.1f s; cached in %s",
        ref.name,
        stats["ppl"],
        len(cache.windows),
        stats["seconds"],
        path,
    )
    return cache


def _check_vocab(vocab: Vocab, cache: refcache.RefCache, label: str) -> None:
    if vocab.sha256 != cache.vocab_sha256:
        n_ref = cache.ref_stats.get("n_vocab", "?")
        hint = (
            "; a lean artifact is evaluated from its build folder, whose manifest names its kept-id map"
            if isinstance(n_ref, int) and len(vocab.pieces) < n_ref
            else ""
        )
        raise ArtifactError(
            f"{label}: its tokenizer ({len(vocab.pieces)} tokens, sha256 {vocab.sha256[:12]}) differs "
            f"from the reference {cache.key.reference}'s ({n_ref} tokens, sha256 "
            f"{cache.vocab_sha256[:12]}); evaluate against a reference of the same checkpoint{hint}"
        )


def scored_texts(cache: refcache.RefCache, opts: EvalOptions) -> list[str]:
    """The texts as the whole-text figures score them: each cut where the reference's cache says."""
    cuts = cache.ref_stats["whole_text"]["prefix_chars"]
    return [t.text[:c] for t, c in zip(load_texts(opts.texts), cuts, strict=True)]


def _kl_pass(src: Source, cache: refcache.RefCache, opts: EvalOptions):
    first = first_scored(opts.ctx)
    per = opts.ctx - 1 - first
    parts = []
    for i, win in enumerate(cache.windows):
        nxt = win[first + 1 :].astype(np.int64)
        rows, nbytes = cache.rows_of(i, per)
        parts.append(score(src.logits(win, first)[:per], rows, nxt, nbytes))
    return kl_stats(concat(parts))


def score_artifact(
    ra: ResolvedArtifact, cache: refcache.RefCache, opts: EvalOptions, whole_text: bool = False
) -> QualityRecord:
    """KL pass against the cache; with ``whole_text`` (or for a lean artifact, which has only those)
    also bits and tokens per byte of the whole text (wholetext.py). ``ra`` is settled for scoring
    (``_resolve``): its settings are what the record says was applied."""
    runtime = ra.settings.knobs
    lean = ra.artifact.extra.get("vocab") if isinstance(ra.artifact.extra, dict) else None
    t0 = time.perf_counter()
    src = _open(ra)
    st, wt = None, None
    try:
        vocab = src.vocab()
        if lean:
            id_map = wholetext.load_id_map(id_map_file(ra.path.parent, ra.artifact))
            wholetext.check_trim(vocab.pieces, id_map, cache.piece_hash, ra.artifact.file, cache.key.reference)
        else:
            _check_vocab(vocab, cache, ra.artifact.file)
            st = _kl_pass(src, cache, opts)
        if lean or whole_text:
            wt = wholetext.measure(src, scored_texts(cache, opts), opts.ctx, vocab.bos)
    finally:
        src.close()
    tgt = ra.target
    engine = ra.format.engine
    ref_wt = cache.ref_stats.get("whole_text") or {}
    extra: dict[str, Any] = {
        "reference_ppl": cache.ref_stats.get("ppl"),
        "reference_bits_per_byte": cache.ref_stats.get("bits_per_byte"),
        "reference_vocab": cache.ref_stats.get("n_vocab"),
    }
    if st is not None:
        extra["same_top_se"] = st.same_top_se
        extra["reference_tail_mass"] = tail_mass(cache.rows)
    else:
        extra["kl"] = wholetext.NOT_COMPARABLE
    if wt is not None:  # PPL per own token: not comparable across tokenizers, kept for the record
        extra["text_ppl"] = wt.ppl
    kl = {
        f: getattr(st, f) if st else None
        for f in (
            "ppl",
            "bits_per_byte",
            "kl_mean",
            "kl_lo",
            "kl_hi",
            "kl_median",
            "kl_p99",
            "kl_max",
            "same_top",
            "rms_dp",
        )
    }
    ref_w = wholetext.WholeText.from_json(ref_wt) if wt is not None else None
    return QualityRecord(
        artifact=ra.artifact.file,
        model=ra.model,
        format=ra.artifact.format,
        quant=ra.artifact.quant,
        engine=engine,
        sha256=ra.artifact.sha256,
        file_bytes=ra.artifact.bytes,
        target=tgt.name if tgt else "",
        reference=cache.key.reference,
        reference_sha256=cache.key.reference_sha256,
        text=",".join(Path(t).name for t in opts.texts) if opts.texts else "heldout.txt",
        text_sha256=cache.key.text_sha256,
        ctx=opts.ctx,
        chunks=len(cache.windows) if st else wt.windows,
        tokens_scored=st.n if st else wt.tokens,
        top_k=cache.key.top_k,
        **kl,
        vocab=int(lean["size"]) if lean else len(vocab.pieces),
        text_bytes=wt.nbytes if wt else None,
        text_tokens=wt.tokens if wt else None,
        tokens_per_byte=wt.tokens_per_byte if wt else None,
        text_bits_per_byte=wt.bits_per_byte if wt else None,
        reference_tokens_per_byte=ref_w.tokens_per_byte if ref_w else None,
        reference_text_bits_per_byte=ref_w.bits_per_byte if ref_w else None,
        threads=ra.settings.threads if ENGINES.get(engine).threads else None,
        seconds=round(time.perf_counter() - t0, 3),
        **provenance(opts.device),
        runtime=runtime,
        extra=extra,
    )


def evaluate(paths: list[Path], opts: EvalOptions) -> list[QualityRecord]:
    """One QualityRecord per artifact the paths name (nothing stored or printed). When one of them has a
    lean vocabulary, every record of the run also gets the whole-text figures, so the lean build and the
    full ones (and the reference) are compared on the same bytes."""
    if not paths:
        raise ConfigError("no artifact given; pass a .gguf, an MLX folder or a dist folder")
    _check_options(opts)
    planned = [ra for p in paths for ra in _resolve(Path(p), opts)]
    whole = any(isinstance(ra.artifact.extra, dict) and "vocab" in ra.artifact.extra for ra in planned)
    cache = reference_cache(opts, whole_text=whole, planned=planned)
    if cache.windows.shape[1] != opts.ctx:
        raise ArtifactError(f"reference cache has windows of {cache.windows.shape[1]} tokens, not --ctx {opts.ctx}")
    return [score_artifact(ra, cache, opts, whole_text=whole) for ra in planned]
