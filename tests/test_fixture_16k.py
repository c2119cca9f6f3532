"""The trained fixture with a 16,384-token vocabulary (tests/data/tiny-trained-16k): it loads, its
tokenizer round-trips every language's held-out text with few byte-fallback tokens, and the model
predicts held-out text better than a unigram model (which is itself far better than uniform)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

LANGS = ("en", "de", "fr", "es")


@pytest.fixture(scope="module")
def tok(trained_16k):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(trained_16k / "tokenizer.json"))


def test_vocabulary_is_16k_with_gemma4_specials(trained_16k, tok):
    cfg = json.loads((trained_16k / "config.json").read_text())
    assert cfg["text_config"]["vocab_size"] == cfg["text_config"]["vocab_size_per_layer_input"] == 16384
    assert tok.get_vocab_size() == 16384
    for i, t in {0: "<pad>", 1: "<eos>", 2: "<bos>", 105: "<|turn>", 106: "<turn|>", 107: "\n"}.items():
        assert tok.id_to_token(i) == t
    assert tok.token_to_id("<0xE9>") is not None  # byte fallback
    tc = json.loads((trained_16k / "tokenizer_config.json").read_text())
    assert "<|turn>" in tc["chat_template"]
    # the BPE part is learnt from the man pages, not padded with <unused> filler
    assert sum(1 for i in range(16384) if tok.id_to_token(i).startswith("<unused")) < 100


@pytest.mark.parametrize("lang", LANGS)
def test_tokenizer_round_trips_heldout(tok, trained_16k_heldout, lang):
    text = trained_16k_heldout[lang].read_text(encoding="utf-8")
    enc = tok.encode(text, add_special_tokens=False)
    assert tok.decode(enc.ids, skip_special_tokens=False) == text
    n_bytes = len(text.encode())
    fallback = sum(1 for t in enc.tokens if t.startswith("<0x"))
    # a vocabulary learnt on these languages: well under one token per 2 bytes, byte fallback rare
    assert len(enc.ids) / n_bytes < 0.5, len(enc.ids) / n_bytes
    assert fallback / len(enc.ids) < 0.01, fallback


def test_heldout_loss_beats_unigram(trained_16k, trained_16k_heldout, tok):
    """Per language, the model's held-out loss is below a unigram model's (token frequencies of
    calibration.txt, add-one): it predicts from context, not only from frequencies; the unigram is
    itself ≈2 nats below uniform (ln 16384 = 9.70)."""
    torch = pytest.importorskip("torch")
    from edgekit.dev.hf_model import load_torch_model

    cal = tok.encode(
        (trained_16k_heldout["en"].parent / "calibration.txt").read_text(encoding="utf-8"), add_special_tokens=False
    ).ids
    counts = np.bincount(cal, minlength=16384) + 1.0
    logp = np.log(counts / counts.sum())
    model = load_torch_model(trained_16k, "float32")
    seq = 512
    for lang in LANGS:
        ids = tok.encode(trained_16k_heldout[lang].read_text(encoding="utf-8"), add_special_tokens=False).ids
        x = torch.tensor([[2, *ids[k * seq : (k + 1) * seq - 1]] for k in (1, 3)])  # <bos> + text, 2 windows
        with torch.no_grad():
            loss = float(model(input_ids=x, labels=x, use_cache=False).loss)
        unigram = float(-logp[x[:, 1:].numpy()].mean())
        assert loss < unigram < math.log(16384) - 1.5, (lang, loss, unigram)
