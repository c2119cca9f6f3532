"""evaluate(paths, options): score every artifact against a reference on the same token windows.

The reference (a Hugging Face checkpoint run by transformers, an unquantized artifact, or a cache file
eval wrote) is run once per (reference, text, ctx, chunks, top-k) and its compact log-probabilities
are cached (refcache.py); each artifact then runs every window with its engine and the target's
runtime knobs, and its logits are scored against the cache (metrics.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from ..bench import Planned, _target, plan, profile_knobs
from ..errors import ArtifactError, ConfigError
from ..host import device_name, host_info
from ..manifest import versions
from ..runners import ENGINES
from . import refcache
from .engines import GgufSource, HfSource, MlxSource, Source, Vocab
from .metrics import RefRows, compact, concat, kl_stats, score, tail_mass
from .record import QualityRecord
from .text import first_scored, load_texts, piece_bytes, texts_digest, windows

log = logging.getLogger(__name__)

# Reference log-probabilities kept per position. KL over the top k plus one tail bin is a lower bound
# that undercounts by about the reference's mass outside the top k, as a fraction of the KL. Measured
# on the trained tiny model (Q4_0 vs F32 GGUF, ctx 512, 12,750 held-out positions; full KL 0.006999,
# what llama-perplexity --kl-divergence prints): k=64 0.005289 (-24%, 21% of the mass outside),
# k=256 0.006635 (-5.2%, 4.5% outside), k=512 0.006976 (-0.3%), k=1024 exact (= its vocabulary).
# 64 missed issue 13's 1e-3 agreement with llama.cpp; 1024 costs 8,204 bytes a position (64: 524),
# 60 MB for E2B on the default text (~7,500 positions) against llama.cpp's 3.9 GB. Every record
# carries the reference's mean mass outside the top k, so a run where it is large says so.
DEFAULT_TOP_K = 1024


@dataclass
class EvalOptions:
    reference: str
    texts: Optional[list[Path]] = None      # default: edgekit's held-out text
    ctx: int = 512
    chunks: Optional[int] = None            # windows per text (default: all the text has)
    top_k: int = DEFAULT_TOP_K
    threads: Optional[int] = None
    target: Optional[str] = None            # default: the manifest's
    runtime: dict[str, Any] = field(default_factory=dict)   # knobs over the target's [runtime]
    reference_dtype: str = "float32"
    ref_cache: Optional[Path] = None        # default: ~/.cache/edgekit/eval/ref-<key>.npz
    device: Optional[str] = None


def _threads(opts: EvalOptions) -> int:
    import psutil

    return opts.threads or psutil.cpu_count(logical=False) or os.cpu_count() or 1


def _is_hf_checkpoint(p: Path) -> bool:
    from ..safetensors_io import read_header

    shard = next(iter(sorted(p.glob("*.safetensors"))), None)
    if not (p / "config.json").is_file() or shard is None:
        return False
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
    open: Optional[Callable[[], Source]]    # None: a cache file (nothing to run)
    cache_file: Optional[Path] = None


def _runtime(pl: Planned, opts: EvalOptions) -> dict[str, Any]:
    """The engine's knobs as bench would apply them: its defaults, the target's [runtime], then --set."""
    engine, tgt = ENGINES.get(pl.format.engine), _target(pl.target)
    for name in opts.runtime:   # a mixed run (GGUF + MLX): each engine takes the --set knobs it has
        if not any(name in ENGINES.get(e).knobs for e in ENGINES):
            engine.knobs.validate({name: opts.runtime[name]}, "--set")   # raises, naming the known knobs
    mine = {k: v for k, v in opts.runtime.items() if k in engine.knobs}
    rt = {**engine.knobs.defaults(), **(profile_knobs(tgt, engine) if tgt else {}),
          **engine.knobs.validate(mine, "--set")}
    rt.pop("kv_fill", None)  # stand-in keys/values would fake the context being scored
    return rt


def _open(pl: Planned, opts: EvalOptions, runtime: dict[str, Any]) -> Source:
    if pl.format.engine == "llama.cpp":
        return GgufSource(pl.path, _threads(opts), opts.ctx, runtime)
    return MlxSource(pl.path, opts.ctx, runtime)


def resolve_reference(opts: EvalOptions) -> _Ref:
    p = Path(opts.reference).expanduser()
    if p.is_file() and p.suffix == ".npz":
        return _Ref(p.name, "", {}, None, cache_file=p)
    if p.is_dir() and _is_hf_checkpoint(p):
        from ..checkpoint import load_checkpoint

        ckpt = load_checkpoint(p)
        sha = ckpt.fingerprint()["sha256"]
        return _Ref(p.name, sha, {"dtype": opts.reference_dtype},
                    lambda: HfSource(p, opts.reference_dtype, _threads(opts)))
    if not p.exists():
        raise ConfigError(f"--reference {opts.reference}: no such file or folder; pass a Hugging Face checkpoint "
                          "folder, an unquantized .gguf / MLX folder, or a reference cache (.npz)")
    pls = plan(p, opts.target)
    if len(pls) != 1:
        raise ConfigError(f"--reference {opts.reference}: names {len(pls)} artifacts; pass one file or folder")
    pl = pls[0]
    rt = _runtime(pl, opts)
    # An artifact reference runs under the artifacts' runtime, so the KL isolates the weights.
    return _Ref(pl.artifact.file, pl.artifact.sha256, rt, lambda: _open(pl, opts, rt))


def _key(ref: _Ref, text_sha: str, opts: EvalOptions) -> refcache.CacheKey:
    ref_sha = ref.sha256
    if ref.runtime:
        ref_sha = hashlib.sha256((ref_sha + json.dumps(ref.runtime, sort_keys=True)).encode()).hexdigest()
    return refcache.CacheKey(ref.name, ref_sha, text_sha, opts.ctx, opts.chunks or 0, opts.top_k)


def reference_cache(opts: EvalOptions) -> refcache.RefCache:
    """The reference's cache for this run: read when present (its key checked), else computed and saved."""
    if opts.ctx < 4:
        raise ConfigError(f"--ctx {opts.ctx}: too short to score anything; use at least 4 (llama-perplexity: 128+)")
    if opts.top_k < 1:
        raise ConfigError(f"--top-k {opts.top_k}: must be at least 1")
    texts = load_texts(opts.texts)
    text_sha = texts_digest(texts)
    ref = resolve_reference(opts)
    if ref.open is None:  # a cache file given as the reference: its own key, checked against the run
        have = refcache.load(ref.cache_file)
        want = refcache.CacheKey(have.key.reference, have.key.reference_sha256, text_sha, opts.ctx,
                                 opts.chunks or 0, opts.top_k)
        refcache.check(have.key, want, ref.cache_file)
        return have
    key = _key(ref, text_sha, opts)
    path = opts.ref_cache or refcache.default_path(key)
    if Path(path).exists():
        log.info("reference cache %s", path)
        return refcache.load(path, want=key)
    t0 = time.perf_counter()
    src = ref.open()
    try:
        vocab = src.vocab()
        first = first_scored(opts.ctx)
        nbytes = piece_bytes(vocab.pieces, set(vocab.control))
        wins, rows, nll, nb = [], [], [], []
        for t in texts:
            w = windows(src.tokenize(t.text), opts.ctx, vocab.bos, opts.chunks)
            for win in w:
                nxt = win[first + 1:].astype(np.int64)
                r = compact(src.logits(win, first)[:len(nxt)], nxt, opts.top_k)
                rows.append(r)
                nll.append(-r.next_logp.astype(np.float64))
                nb.append(nbytes[nxt].astype(np.int32))
            wins.append(w)
    finally:
        src.close()
    all_nll, all_nb = np.concatenate(nll), np.concatenate(nb)
    stats = {"ppl": float(np.exp(all_nll.mean())),
             "bits_per_byte": float(all_nll.sum() / np.log(2) / max(int(all_nb.sum()), 1)),
             "seconds": round(time.perf_counter() - t0, 2), "n_vocab": len(vocab.pieces),
             "tail_mass": tail_mass(RefRows.concat(rows))}
    cache = refcache.RefCache(key, vocab.sha256, np.concatenate(wins),
                              RefRows.concat(rows), all_nb, stats)
    refcache.save(cache, path)
    log.info("reference %s: PPL %.4f over %d windows in %.1f s; cached in %s", ref.name, stats["ppl"],
             len(cache.windows), stats["seconds"], path)
    return cache


def _check_vocab(vocab: Vocab, cache: refcache.RefCache, label: str) -> None:
    if vocab.sha256 != cache.vocab_sha256:
        n_ref = cache.ref_stats.get("n_vocab", "?")
        raise ArtifactError(f"{label}: its tokenizer ({len(vocab.pieces)} tokens, sha256 {vocab.sha256[:12]}) differs "
                            f"from the reference {cache.key.reference}'s ({n_ref} tokens, sha256 "
                            f"{cache.vocab_sha256[:12]}); evaluate against a reference of the same checkpoint")


def score_artifact(pl: Planned, cache: refcache.RefCache, opts: EvalOptions) -> QualityRecord:
    runtime = _runtime(pl, opts)
    t0 = time.perf_counter()
    src = _open(pl, opts, runtime)
    try:
        vocab = src.vocab()
        _check_vocab(vocab, cache, pl.artifact.file)
        first = first_scored(opts.ctx)
        per = opts.ctx - 1 - first
        parts = []
        for i, win in enumerate(cache.windows):
            nxt = win[first + 1:].astype(np.int64)
            rows, nbytes = cache.rows_of(i, per)
            parts.append(score(src.logits(win, first)[:per], rows, nxt, nbytes))
    finally:
        src.close()
    st = kl_stats(concat(parts))
    vers = versions()
    tgt = _target(pl.target)
    engine = pl.format.engine
    return QualityRecord(
        artifact=pl.artifact.file, model=pl.model, format=pl.artifact.format, quant=pl.artifact.quant,
        engine=engine, sha256=pl.artifact.sha256, file_bytes=pl.artifact.bytes,
        device=device_name(opts.device), target=tgt.name if tgt else "",
        reference=cache.key.reference, reference_sha256=cache.key.reference_sha256,
        text=",".join(Path(t).name for t in opts.texts) if opts.texts else "heldout.txt",
        text_sha256=cache.key.text_sha256, ctx=opts.ctx, chunks=len(cache.windows), tokens_scored=st.n,
        top_k=cache.key.top_k, ppl=st.ppl, bits_per_byte=st.bits_per_byte, kl_mean=st.kl_mean, kl_lo=st.kl_lo,
        kl_hi=st.kl_hi, kl_median=st.kl_median, kl_p99=st.kl_p99, kl_max=st.kl_max, same_top=st.same_top,
        rms_dp=st.rms_dp, threads=_threads(opts) if engine == "llama.cpp" else None,
        seconds=round(time.perf_counter() - t0, 3), timestamp=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        edgekit_version=vers.get("edgekit", ""), host=host_info(), versions=vers, runtime=runtime,
        extra={"reference_ppl": cache.ref_stats.get("ppl"), "reference_bits_per_byte": cache.ref_stats.get("bits_per_byte"),
               "same_top_se": st.same_top_se, "reference_tail_mass": tail_mass(cache.rows)})


def evaluate(paths: list[Path], opts: EvalOptions) -> list[QualityRecord]:
    """One QualityRecord per artifact the paths name (nothing stored or printed)."""
    if not paths:
        raise ConfigError("no artifact given; pass a .gguf, an MLX folder or a dist folder")
    planned = [pl for p in paths for pl in plan(Path(p), opts.target)]
    cache = reference_cache(opts)
    if cache.windows.shape[1] != opts.ctx:
        raise ArtifactError(f"reference cache has windows of {cache.windows.shape[1]} tokens, not --ctx {opts.ctx}")
    return [score_artifact(pl, cache, opts) for pl in planned]
