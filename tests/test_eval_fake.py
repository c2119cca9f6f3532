"""eval through a backend's logits source, on the fake backend: every row of its logits is one peak on
one token and zeros elsewhere, so the KL between two peaks is one number, the same at every position."""

from __future__ import annotations

import math

import pytest

from edgekit.eval import EvalOptions, evaluate


def kl(a: float, b: float, n: int) -> float:
    """KL(P || Q) for P = softmax of (a, 0 × (n-1)) and Q = softmax of (b, 0 × (n-1))."""
    za, zb = math.exp(a) + n - 1, math.exp(b) + n - 1
    pa, pb = math.exp(a) / za, math.exp(b) / zb
    return pa * math.log(pa / pb) + (n - 1) / za * math.log(zb / za)


def test_kl_between_two_fake_artifacts_is_the_closed_form(fake_backend, tmp_path):
    ref = fake_backend.write_artifact(tmp_path, "F32", logit_peak=10.0)
    same = fake_backend.write_artifact(tmp_path, "SAME", logit_peak=10.0)
    flat = fake_backend.write_artifact(tmp_path, "FLAT", logit_peak=5.0)
    opts = EvalOptions(reference=str(ref), ctx=64, chunks=4, ref_cache=tmp_path / "ref.npz", threads=1)
    r_same, r_flat = evaluate([same, flat], opts)
    assert r_same.engine == "fake" and r_same.tokens_scored > 0 and r_same.threads == 1
    assert r_same.kl_mean == pytest.approx(0.0, abs=1e-6) and r_same.same_top == 1.0
    assert r_flat.kl_mean == pytest.approx(kl(10.0, 5.0, 64), rel=1e-4)
    assert r_flat.kl_max == pytest.approx(r_flat.kl_mean, rel=1e-4)  # the same at every position
    assert r_flat.same_top == 1.0
