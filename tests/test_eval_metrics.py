"""eval's figures from their definitions, on synthetic logits (no model)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgekit.eval.metrics import compact, full_kl, kl_stats, log_softmax, score


def _logits(n=200, v=300, seed=0, sharp=3.0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, v)) * sharp).astype(np.float32)


def _numpy_full_kl(p_logits, q_logits):
    """KL(P ‖ Q) over every vocabulary entry, written out here (not edgekit's log_softmax or full_kl)."""
    lp = p_logits.astype(np.float64) - np.logaddexp.reduce(p_logits.astype(np.float64), axis=1, keepdims=True)
    lq = q_logits.astype(np.float64) - np.logaddexp.reduce(q_logits.astype(np.float64), axis=1, keepdims=True)
    return (np.exp(lp) * (lp - lq)).sum(1)


def test_topk_kl_is_the_full_kl_when_k_is_the_vocabulary():
    p, q = _logits(seed=0), _logits(seed=0) + 0.3 * _logits(seed=1, sharp=1.0)
    nxt = np.random.default_rng(2).integers(0, 300, 200)
    s = score(q, compact(p, nxt, 300), nxt, np.ones(200))
    # float32 storage of the reference's log-probabilities (|log p| < 20): within 1e-6 nats
    np.testing.assert_allclose(s.kl, _numpy_full_kl(p, q), rtol=0, atol=1e-6)
    np.testing.assert_allclose(full_kl(p, q), _numpy_full_kl(p, q), rtol=1e-10, atol=0)  # float64 summation order


def test_topk_kl_is_a_lower_bound_and_close_for_peaked_distributions():
    # The tail bin merges what the reference puts outside its top k (log-sum inequality: never more).
    p, q = _logits(sharp=6.0), _logits(sharp=6.0) + 0.5 * _logits(seed=1, sharp=1.0)
    nxt = np.zeros(200, dtype=np.int64)
    full = full_kl(p, q)
    approx = score(q, compact(p, nxt, 32), nxt, np.ones(200)).kl
    assert (approx <= full + 1e-9).all()
    assert abs(approx.mean() - full.mean()) < 0.02 * full.mean()


def test_self_scores_are_exact():
    p = _logits()
    nxt = np.arange(200) % 300
    s = score(p, compact(p, nxt, 64), nxt, np.ones(200))
    st = kl_stats(s)
    assert st.kl_mean < 1e-7 and st.same_top == 1.0 and st.rms_dp < 1e-7


def test_stats_follow_llama_perplexity_definitions():
    p, q = _logits(seed=3), _logits(seed=3) + _logits(seed=4, sharp=0.5)
    nxt = np.random.default_rng(5).integers(0, 300, 200)
    nbytes = np.random.default_rng(6).integers(1, 5, 200)
    st = kl_stats(score(q, compact(p, nxt, 300), nxt, nbytes))
    lq, _ = log_softmax(q)
    lp, _ = log_softmax(p)
    nll = -lq[np.arange(200), nxt]
    kl = full_kl(p, q)
    assert st.ppl == pytest.approx(math.exp(nll.mean()), rel=1e-12)
    assert st.bits_per_byte == pytest.approx(nll.sum() / math.log(2) / nbytes.sum(), rel=1e-12)
    se = kl.std(ddof=1) / math.sqrt(200)
    assert st.kl_mean == pytest.approx(kl.mean(), abs=1e-6)
    assert st.kl_hi - st.kl_mean == pytest.approx(1.959964 * se, rel=1e-4)
    assert st.kl_median == pytest.approx(np.median(kl), rel=1e-5)
    srt = np.sort(kl)  # llama.cpp's percentile: linear between the sorted values at 0.99 * (n - 1)
    pos = 0.99 * 199
    assert st.kl_p99 == pytest.approx(srt[int(pos)] * (1 - pos % 1) + srt[int(pos) + 1] * (pos % 1), rel=1e-5)
    assert st.same_top == pytest.approx((p.argmax(1) == q.argmax(1)).mean())
    dp = np.exp(lq[np.arange(200), nxt]) - np.exp(lp[np.arange(200), nxt])
    assert st.rms_dp == pytest.approx(math.sqrt((dp**2).mean()), rel=1e-5)
