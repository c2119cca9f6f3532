"""edgekit eval on a lean artifact (edgekit/eval/wholetext.py): bits and tokens per byte of the whole
text, each side with its own tokenizer, on the same bytes.

The lean build is the trained tiny model (tests/data/tiny-trained, 1,024 tokens) trimmed to 512 on the
default corpus (eval's training text); the reference is transformers fp32 on the full checkpoint.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edgekit.cli import app
from edgekit.eval import EvalOptions, evaluate
from edgekit.eval.wholetext import NOT_COMPARABLE, covered, spans

TRAINED = Path(__file__).resolve().parent / "data" / "tiny-trained"
N_LEAN = 512
F32_CACHE = {"kv_type": "f32"}


@pytest.fixture(scope="module")
def lean_dist(tmp_path_factory):
    from edgekit.builder.pipeline import build

    return build(
        str(TRAINED), target="pi5", quants=["f32", "iq4_xs-edge"], out=tmp_path_factory.mktemp("lean"), vocab=N_LEAN
    )


@pytest.mark.parametrize("ctx", [4, 5, 16, 17])
def test_spans_predict_every_token_once(ctx):
    for n_seq in range(2, 60):
        targets = []
        for start, end, first in spans(n_seq, ctx):
            assert end - start <= ctx and first in (0, ctx // 2)
            targets += list(range(start + first + 1, end))
        assert targets == list(range(1, n_seq)), (n_seq, ctx)
        # with --chunks k: the first k windows predict exactly the first covered() tokens
        for k in range(1, len(spans(n_seq, ctx)) + 1):
            last = spans(n_seq, ctx)[k - 1][1]
            assert covered(n_seq - 1, ctx, k) == last - 1


CTX = 32


def _hand_nll(next_logp, seq: list[int], ctx: int) -> float:
    """−ln P(seq[1:] | seq[0]) with the context each target gets under eval's rule, written per target:
    targets 1..ctx-1 see the whole prefix; target i beyond sees BOS + the tokens after the start of the
    window j = ⌈(i − ctx + 1) / per⌉ that scores it, start j·per (per = ctx − 1 − ctx//2)."""
    per = ctx - 1 - ctx // 2
    total = 0.0
    for i in range(1, len(seq)):
        if i <= ctx - 1:
            context = seq[:i]
        else:
            start = -(-(i - ctx + 1) // per) * per
            context = [seq[0], *seq[start + 1 : i]]
        assert len(context) <= ctx - 1
        total -= next_logp(context, seq[i])
    return total


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max()
    return x - (m + np.log(np.exp(x - m).sum()))


def _torch_nll(text: str) -> tuple[float, int]:
    """The reference by hand: transformers' tokenizer and Gemma 4 in fp32."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(TRAINED)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    model = AutoModelForCausalLM.from_pretrained(TRAINED, dtype=torch.float32)

    def next_logp(context, target):
        with torch.no_grad():
            return float(_log_softmax(model(torch.tensor([context])).logits[0, -1].numpy())[target])

    return _hand_nll(next_logp, [tok.bos_token_id, *ids], CTX), len(ids)


def _llama_nll(gguf: Path, text: str) -> tuple[float, int]:
    """The lean artifact by hand: llama.cpp's own Python API on the lean GGUF (its tokenizer, its logits),
    with eval's F32 cache and the pi5 runtime's flash attention (without it the figure moves by 1.4e-6
    relative, measured: another attention kernel, another float summation order)."""
    import llama_cpp

    llm = llama_cpp.Llama(
        str(gguf),
        n_ctx=64,
        n_batch=64,
        n_ubatch=64,
        logits_all=True,
        verbose=False,
        type_k=0,
        type_v=0,
        flash_attn=True,
    )
    try:
        ids = llm.tokenize(text.encode(), add_bos=False, special=False)

        def next_logp(context, target):
            llm.reset()
            llm.eval(context)
            return float(_log_softmax(np.array(llm.scores[len(context) - 1]))[target])

        return _hand_nll(next_logp, [llm.token_bos(), *ids], CTX), len(ids)
    finally:
        llm.close()


def test_whole_text_bits_per_byte_by_hand(lean_dist, tmp_path):
    """A short text, three to five windows of 32: both figures are Σ NLL of every token / ln 2 / the
    text's UTF-8 bytes, computed here without edgekit (torch for the reference, llama-cpp-python for the
    lean GGUF), each target with the context written out per target."""
    text = (
        "The dictionary maps keys to values: ünïcode, tabs\tand  runs of   spaces. print(len(x)) "
        "A list holds items in order; a set holds each item once."
    )
    (tmp_path / "short.txt").write_text(text, encoding="utf-8")
    lean = lean_dist / f"tiny-trained-v{N_LEAN}-F32.gguf"
    (r,) = evaluate(
        [lean],
        EvalOptions(
            reference=str(TRAINED),
            texts=[tmp_path / "short.txt"],
            ctx=CTX,
            threads=2,
            ref_cache=tmp_path / "c.npz",
            runtime=dict(F32_CACHE),
        ),
    )
    nbytes = len(text.encode("utf-8"))
    ref_nll, ref_n = _torch_nll(text)
    lean_nll, lean_n = _llama_nll(lean, text)
    print(
        f"reference {ref_n} tokens {ref_nll / math.log(2) / nbytes:.5f} bits/byte; lean {lean_n} tokens "
        f"{lean_nll / math.log(2) / nbytes:.5f}; edgekit {r.reference_text_bits_per_byte:.5f} / "
        f"{r.text_bits_per_byte:.5f}"
    )
    assert lean_n > ref_n > CTX
    assert r.text_bytes == nbytes
    assert r.text_tokens == lean_n and r.tokens_per_byte == pytest.approx(lean_n / nbytes, rel=1e-12)
    assert r.reference_tokens_per_byte == pytest.approx(ref_n / nbytes, rel=1e-12)
    assert r.reference_text_bits_per_byte == pytest.approx(ref_nll / math.log(2) / nbytes, rel=1e-6)
    assert r.text_bits_per_byte == pytest.approx(lean_nll / math.log(2) / nbytes, rel=1e-6)
    # KL and the window figures are not defined against another tokenizer: empty, never 0
    assert r.kl_mean is None and r.same_top is None and r.ppl is None and r.extra["kl"] == NOT_COMPARABLE
    assert r.vocab == N_LEAN


def test_full_artifact_whole_text_equals_the_reference(trained_dist, lean_dist, tmp_path):
    """In a run with a lean artifact, the full F32 GGUF gets the whole-text figures too: same tokenizer
    and the same weights as the reference, so its bits/byte is the reference's (to llama.cpp vs torch
    float error, KL 2e-8 in test_eval) and its tokens the same; every record counts the same bytes."""
    recs = evaluate(
        [trained_dist / "tiny-trained-F32.gguf", lean_dist],
        EvalOptions(
            reference=str(TRAINED), ctx=256, chunks=4, threads=2, ref_cache=tmp_path / "c.npz", runtime=dict(F32_CACHE)
        ),
    )
    full, *lean = recs
    assert {r.text_bytes for r in recs} == {full.text_bytes} and full.text_bytes > 0
    assert full.kl_mean is not None and full.text_tokens == round(full.reference_tokens_per_byte * full.text_bytes)
    # measured 3.4e-7 relative here (llama.cpp F32 with an F32 cache vs torch fp32); 1e-5 leaves 30x
    assert full.text_bits_per_byte == pytest.approx(full.reference_text_bits_per_byte, rel=1e-5)
    for r in lean:
        assert r.tokens_per_byte > full.tokens_per_byte


def test_lean_build_eval_cli_prints_both_and_stores(lean_dist, tmp_path):
    db = tmp_path / "r.db"
    res = CliRunner().invoke(
        app,
        [
            "eval",
            str(lean_dist),
            "--reference",
            str(TRAINED),
            "--ctx",
            "256",
            "--chunks",
            "8",
            "--threads",
            "2",
            "--ref-cache",
            str(tmp_path / "c.npz"),
            "--db",
            str(db),
        ],
    )
    assert res.exit_code == 0, res.stderr
    print(res.stdout)
    from edgekit.results.quality import PARSERS

    rows = {r["artifact"]: r for r in PARSERS["md"](res.stdout)}
    ref = rows["tiny-trained (reference)"]
    lean = rows[f"tiny-trained-v{N_LEAN}-IQ4_XS-edge.gguf"]
    assert ref["vocab"] == 1024 and lean["vocab"] == N_LEAN
    assert lean["tokens/byte"] > ref["tokens/byte"] and lean["bits/byte"] > 0 and ref["bits/byte"] > 0
    assert lean["mean KL"] == "not defined"
    assert lean["Δ bits/byte %"] == pytest.approx(100 * (lean["bits/byte"] / ref["bits/byte"] - 1), abs=0.02)
    # the store keeps the record; the report's quality table shows it
    from test_results import make_record

    from edgekit.results import QualityRecord, Store
    from edgekit.results.report import write_report

    with Store(db) as s:
        stored = s.read(QualityRecord)
        s.append([make_record(0)])
    assert {r.artifact for r in stored} == {
        f"tiny-trained-v{N_LEAN}-F32.gguf",
        f"tiny-trained-v{N_LEAN}-IQ4_XS-edge.gguf",
    }
    assert all(r.text_bits_per_byte is not None and r.kl_mean is None for r in stored)
    md = write_report(db, tmp_path / "report").read_text()
    report_rows = {r["artifact"]: r for r in PARSERS["md"](md.split("## Quality", 1)[1])}
    assert report_rows[f"tiny-trained-v{N_LEAN}-IQ4_XS-edge.gguf"]["bits/byte"] == lean["bits/byte"]


def test_lean_against_another_reference_is_refused(lean_dist, tiny_ckpt, tmp_path):
    # Other weights are refused first (tests/faults/test_eval_inputs.py); forced, the vocabularies still differ.
    res = CliRunner().invoke(
        app,
        [
            "eval",
            str(lean_dist / f"tiny-trained-v{N_LEAN}-F32.gguf"),
            "--reference",
            str(tiny_ckpt),
            "--ctx",
            "32",
            "--chunks",
            "1",
            "--no-store",
            "--ref-cache",
            str(tmp_path / "c.npz"),
            "--force-reference",
        ],
    )
    assert res.exit_code == 1
    assert res.stderr == (
        f"edgekit: error: tiny-trained-v{N_LEAN}-F32.gguf: its lean vocabulary ({N_LEAN} tokens) is "
        "not the reference tiny-gemma4's restricted to the kept ids of its id map; evaluate against "
        "the checkpoint it was trimmed from\n"
    )


def test_missing_id_map_is_one_line(lean_dist, tmp_path):
    import shutil

    d = tmp_path / "copy"
    shutil.copytree(lean_dist, d)
    m = json.loads((d / "manifest.json").read_text())
    (d / m["artifacts"][0]["extra"]["vocab"]["id_map"]).unlink()
    res = CliRunner().invoke(
        app,
        [
            "eval",
            str(d / f"tiny-trained-v{N_LEAN}-F32.gguf"),
            "--reference",
            str(TRAINED),
            "--ctx",
            "32",
            "--chunks",
            "1",
            "--no-store",
            "--ref-cache",
            str(tmp_path / "c.npz"),
        ],
    )
    assert res.exit_code == 1
    assert res.stderr == (
        f"edgekit: error: {d / f'tiny-trained-v{N_LEAN}.vocab-ids.npy'}: "
        f"tiny-trained-v{N_LEAN}-F32.gguf's lean-vocabulary id map is missing beside "
        "manifest.json; copy it from the build folder or rebuild with `edgekit build`\n"
    )
