"""The trained fixture with a 16,384-token vocabulary (tests/data/tiny-trained-16k): it loads, its
tokenizer round-trips every language's held-out text with few byte-fallback tokens, and the model
predicts held-out text far better than a uniform guess over its vocabulary."""

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
    assert tok.token_to_id("<0xE9>") is not None           # byte fallback
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


def test_heldout_loss_well_below_uniform(trained_16k, trained_16k_heldout, tok):
    torch = pytest.importorskip("torch")
    from edgekit.dev.hf_model import load_torch_model

    model = load_torch_model(trained_16k, "float32")
    seq, windows = 256, []
    for lang in LANGS:
        ids = tok.encode(trained_16k_heldout[lang].read_text(encoding="utf-8"), add_special_tokens=False).ids
        windows.append([2] + ids[1000:1000 + seq - 1])      # <bos> + text from inside the file
    x = torch.tensor(np.array(windows))
    with torch.no_grad():
        losses = [float(model(input_ids=x[i:i + 1], labels=x[i:i + 1], use_cache=False).loss) for i in range(len(LANGS))]
    uniform = math.log(16384)                                  # 9.70 nats/token
    for lang, loss in zip(LANGS, losses):
        assert loss < uniform - 3.0, (lang, loss)               # > 20× likelier than uniform per token
