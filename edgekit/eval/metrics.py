"""The figures of ``llama-perplexity --kl-divergence``, from a reference's top-k log-probabilities.

llama-perplexity (tools/perplexity/perplexity.cpp) cuts the tokenized text into chunks of ``n_ctx``
tokens, puts BOS first in each, and scores only the second half of every chunk (positions ``n_ctx/2``
to ``n_ctx - 2`` predicting the next token), so every scored token has at least half a context
before it. Per scored token it computes, with P the base (reference) distribution and Q the model's:

* NLL = −log Q(next token); PPL = exp(mean NLL);
* KL(P ‖ Q) = Σ_v P(v) (log P(v) − log Q(v)); mean with its standard error (sd / √n; the 95%
  interval here is mean ± 1.96 se), median and the 99th percentile (linear interpolation between
  sorted values, as its ``percentile`` lambda);
* "same top": argmax P = argmax Q; Δp = Q(next) − P(next), reported as its RMS.

llama.cpp stores the base's whole log-probability vector (16 bits per vocabulary entry: 512 KB per token
for Gemma 4). edgekit keeps only the reference's ``k`` largest log-probabilities and the log-probability
of the next token, and sums everything outside the top k into one "tail" bin on both sides:
KL ≈ Σ_{v∈top-k} P(v) log(P(v)/Q(v)) + P_tail log(P_tail/Q_tail). By the log-sum inequality this is a
lower bound of the full KL, exact when P's tail is empty (k ≥ the vocabulary); the undercount is
about the tail's mass as a fraction of the KL (figures at run.DEFAULT_TOP_K), so ``tail_mass`` is
reported with every run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

LN2 = math.log(2.0)
Z95 = 1.959963984540054


def log_softmax(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(log-probabilities, log-sum-exp) per row, in float64."""
    x = logits.astype(np.float64)
    m = x.max(-1, keepdims=True)
    lse = m + np.log(np.exp(x - m).sum(-1, keepdims=True))
    return x - lse, lse[..., 0]


@dataclass
class RefRows:
    """The reference's compact log-probabilities for a run of scored positions."""

    top_ids: np.ndarray  # int32 [n, k], most probable first
    top_logp: np.ndarray  # float32 [n, k]
    next_logp: np.ndarray  # float32 [n]: log P(next token)
    lse: np.ndarray  # float32 [n]: log-sum-exp of the reference's logits
    tail_logp: np.ndarray  # float32 [n]: log of the probability outside the top k (-inf: none)

    FIELDS = ("top_ids", "top_logp", "next_logp", "lse", "tail_logp")

    def slice(self, s: slice) -> RefRows:
        return RefRows(*(getattr(self, f)[s] for f in self.FIELDS))

    @classmethod
    def concat(cls, parts: list[RefRows]) -> RefRows:
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in cls.FIELDS))


def compact(logits: np.ndarray, next_ids: np.ndarray, k: int) -> RefRows:
    """A reference's logits [n, vocab] → its top-k rows."""
    logp, lse = log_softmax(logits)
    k = min(k, logp.shape[1])
    idx = np.argpartition(-logp, k - 1, axis=1)[:, :k]
    part = np.take_along_axis(logp, idx, 1)
    order = np.argsort(-part, axis=1, kind="stable")
    idx, part = np.take_along_axis(idx, order, 1), np.take_along_axis(part, order, 1)
    nxt = logp[np.arange(len(next_ids)), next_ids]
    rest = np.exp(logp)
    np.put_along_axis(rest, idx, 0.0, 1)
    with np.errstate(divide="ignore"):
        tail = np.log(rest.sum(1))  # summed directly, not 1 - Σ top-k: no cancellation when it is tiny
    return RefRows(
        idx.astype(np.int32),
        part.astype(np.float32),
        nxt.astype(np.float32),
        lse.astype(np.float32),
        tail.astype(np.float32),
    )


def tail_mass(ref: RefRows) -> float:
    """The reference's mean probability outside its top k over the scored positions (0: KL is exact)."""
    return float(np.exp(ref.tail_logp.astype(np.float64)).mean()) if len(ref.tail_logp) else 0.0


@dataclass
class TokenScores:
    """Per scored token: the artifact's NLL, KL from the reference, same top, Δp; and its bytes."""

    nll: np.ndarray
    kl: np.ndarray
    same_top: np.ndarray
    dp: np.ndarray
    nbytes: np.ndarray


def score(logits: np.ndarray, ref: RefRows, next_ids: np.ndarray, next_bytes: np.ndarray) -> TokenScores:
    """Compare an artifact's logits [n, vocab] at the scored positions with the reference's rows;
    ``next_bytes``: the UTF-8 bytes of each next token's text."""
    logq, _ = log_softmax(logits)
    rows = np.arange(len(next_ids))
    nll = -logq[rows, next_ids]
    lp = ref.top_logp.astype(np.float64)
    lq = np.take_along_axis(logq, ref.top_ids.astype(np.int64), 1)
    kl = (np.exp(lp) * (lp - lq)).sum(1)
    q_rest = np.exp(logq)
    np.put_along_axis(q_rest, ref.top_ids.astype(np.int64), 0.0, 1)
    q_tail = np.maximum(q_rest.sum(1), 1e-300)
    lpt = ref.tail_logp.astype(np.float64)
    with np.errstate(invalid="ignore"):
        kl = kl + np.where(np.isfinite(lpt), np.exp(lpt) * (lpt - np.log(q_tail)), 0.0)
    same = logq.argmax(1) == ref.top_ids[:, 0]
    dp = np.exp(-nll) - np.exp(ref.next_logp.astype(np.float64))
    return TokenScores(nll, kl, same, dp, np.asarray(next_bytes, dtype=np.int64))


def full_kl(ref_logits: np.ndarray, logits: np.ndarray) -> np.ndarray:
    """KL(P ‖ Q) per row over the whole vocabulary (what llama.cpp computes from its full base file)."""
    lp, _ = log_softmax(ref_logits)
    lq, _ = log_softmax(logits)
    return (np.exp(lp) * (lp - lq)).sum(1)


@dataclass(frozen=True)
class KLStats:
    n: int
    ppl: float
    bits_per_byte: float
    kl_mean: float
    kl_lo: float  # 95% interval of the mean (mean ± 1.96 standard errors)
    kl_hi: float
    kl_median: float
    kl_p99: float
    kl_max: float
    same_top: float  # fraction of scored tokens
    same_top_se: float
    rms_dp: float  # RMS of Δp, as a probability (llama.cpp prints it in %)


def kl_stats(s: TokenScores) -> KLStats:
    n = len(s.nll)
    kl = s.kl
    se = float(kl.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0
    mean = float(kl.mean())
    st = float(s.same_top.mean())
    return KLStats(
        n=n,
        ppl=float(math.exp(s.nll.mean())),
        bits_per_byte=float(s.nll.sum() / LN2 / max(int(s.nbytes.sum()), 1)),
        kl_mean=mean,
        kl_lo=mean - Z95 * se,
        kl_hi=mean + Z95 * se,
        kl_median=float(np.median(kl)),
        kl_p99=float(np.percentile(kl, 99)),
        kl_max=float(kl.max()),
        same_top=st,
        same_top_se=math.sqrt(st * (1 - st) / (n - 1)) if n > 1 else 0.0,
        rms_dp=float(math.sqrt((s.dp**2).mean())),
    )


def concat(parts: list[TokenScores]) -> TokenScores:
    return TokenScores(
        *(np.concatenate([getattr(p, f) for p in parts]) for f in ("nll", "kl", "same_top", "dp", "nbytes"))
    )
