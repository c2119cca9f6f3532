"""The synthetic Gemma 4 tokenizer, checked against transformers, and its GGUF form against llama.cpp.

The reference for ids is transformers' AutoTokenizer on the written tokenizer.json; the GGUF side
must give the same ids through llama.cpp's own gemma4 tokenizer (llama-cpp-python, vocab only).
"""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import pytest

from edgekit.backends.gguf.vocab import add_vocab
from edgekit.core.errors import OutputError, TokenizerError
from edgekit.dev.synthetic_tokenizer import GEMMA4_MERGES, write_synthetic_tokenizer

TINY = 1024
E2B = 262144

# Published Gemma 4 ids (tokenizer_config / config.json of google/gemma-4-*), the reference here.
GEMMA4_IDS = {
    "<pad>": 0,
    "<eos>": 1,
    "<bos>": 2,
    "<unk>": 3,
    "<mask>": 4,
    "<|tool>": 46,
    "<tool|>": 47,
    "<|tool_call>": 48,
    "<tool_call|>": 49,
    "<|tool_response>": 50,
    "<tool_response|>": 51,
    '<|"|>': 52,
    "<|think|>": 98,
    "<|channel>": 100,
    "<channel|>": 101,
    "<|turn>": 105,
    "<turn|>": 106,
    "\n": 107,
}
GEMMA4_MULTIMODAL_IDS = {
    "<|image>": 255999,
    "<|audio>": 256000,
    "<|image|>": 258880,
    "<|audio|>": 258881,
    "<image|>": 258882,
    "<audio|>": 258883,
    "<|video|>": 258884,
}

CHAT = (
    "<bos><|turn>user\nWhat is 2+2?<turn|>\n<|turn>model\n<|channel>thought\nsimple sum<channel|>It is 4.<turn|><eos>"
)
TOOL = '<|tool_call>call:get_weather{city:<|"|>Tokyo<|"|>}<tool_call|><|tool_response>response:{t:20}<tool_response|>'
TEXTS = [
    "Hello, world! The quick brown fox jumps over the lazy dog.",
    "   leading and trailing spaces   ",
    "multiple     spaces\tand\t\ttabs  between   words",
    "def f(x):\n    if x > 0:\n        return x * 2\n\n    return -x  # negate\n",
    "Unicode: café naïve Zürich Привет 日本語 한국어 العربية 🤖🚀👍🏽 🇩🇰 ❤️ ∑√π",
    "rare characters outside the corpus: 龘 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ☃ ẞ",
    CHAT,
    TOOL,
    "newline runs\n\n\nthen a long one" + "\n" * 40 + "end\n",
    "windows\r\nline endings\r\n",
    "<unused3> <unused200> <mask><pad><unk> literal <0x41> byte-token text",
    "",
]


@pytest.fixture(scope="module")
def tiny_tok_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("tok-tiny")
    write_synthetic_tokenizer(d, TINY)
    return d


@pytest.fixture(scope="module")
def hf_tok(tiny_tok_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_tok_dir)


def _write_vocab_gguf(tok_dir: Path, path: Path, n_vocab: int) -> int:
    """A vocab-only GGUF: the gemma4 hyperparameters llama.cpp reads before the vocab, plus add_vocab."""
    w = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.GEMMA4])
    n = add_vocab(w, tok_dir, n_vocab)
    w.add_block_count(1)
    w.add_context_length(4096)
    w.add_embedding_length(256)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return n


def _llama(path: Path):
    llama_cpp = pytest.importorskip("llama_cpp")
    return llama_cpp.Llama(str(path), vocab_only=True, verbose=False)


@pytest.fixture(scope="module")
def tiny_gguf(tiny_tok_dir, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("gguf") / "vocab.gguf"
    assert _write_vocab_gguf(tiny_tok_dir, path, TINY) == TINY
    return path


# ---- HF side -------------------------------------------------------------------------------------


def test_hf_tokenizer_has_gemma4_layout(hf_tok, tiny_tok_dir):
    assert len(hf_tok) == TINY
    assert {t: hf_tok.convert_tokens_to_ids(t) for t in GEMMA4_IDS} == GEMMA4_IDS
    assert (hf_tok.bos_token_id, hf_tok.eos_token_id, hf_tok.pad_token_id, hf_tok.unk_token_id) == (2, 1, 0, 3)
    vocab = hf_tok.get_vocab()
    assert all(f"<0x{b:02X}>" in vocab for b in range(256))
    assert sorted(vocab.values()) == list(range(TINY))
    tj = json.loads((tiny_tok_dir / "tokenizer.json").read_text())
    assert tj["normalizer"] == {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}
    assert tj["model"]["byte_fallback"] is True and tj["model"]["type"] == "BPE"
    assert [d["type"] for d in tj["decoder"]["decoders"]] == ["Replace", "ByteFallback", "Fuse"]


def test_tokenizer_is_deterministic(tiny_tok_dir, tmp_path):
    write_synthetic_tokenizer(tmp_path, TINY)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (tmp_path / name).read_bytes() == (tiny_tok_dir / name).read_bytes()


@pytest.mark.parametrize("text", TEXTS)
def test_hf_round_trip_and_bos(hf_tok, text):
    ids = hf_tok(text)["input_ids"]
    assert ids[0] == GEMMA4_IDS["<bos>"]
    assert ids[1:].count(GEMMA4_IDS["<bos>"]) == text.count("<bos>")
    assert hf_tok.decode(ids[1:]) == text


def test_hf_special_tokens_are_single_ids(hf_tok):
    ids = hf_tok(CHAT, add_special_tokens=False)["input_ids"]
    for tok in ("<bos>", "<|turn>", "<turn|>", "<|channel>", "<channel|>", "<eos>"):
        assert ids.count(GEMMA4_IDS[tok]) == CHAT.count(tok)
    # A newline run is one token (Gemma keeps runs of newlines as single pieces).
    assert hf_tok("a\n\n\nb", add_special_tokens=False)["input_ids"].count(GEMMA4_IDS["\n"] + 2) == 1
    # Characters the corpus never saw fall back to their UTF-8 bytes.
    assert hf_tok.convert_ids_to_tokens(hf_tok("龘", add_special_tokens=False)["input_ids"]) == [
        "<0xE9>",
        "<0xBE>",
        "<0x98>",
    ]


def test_chat_template_renders_gemma4_turns(hf_tok):
    out = hf_tok.apply_chat_template(
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert out == "<bos><|turn>user\nhi<turn|>\n<|turn>model\nhello<turn|>\n<|turn>model\n"


# ---- GGUF side -----------------------------------------------------------------------------------


@pytest.mark.parametrize("text", TEXTS)
def test_gguf_ids_equal_hf_ids(tiny_gguf, hf_tok, text):
    llm = _llama(tiny_gguf)
    assert llm.tokenize(text.encode(), add_bos=True, special=True) == hf_tok(text)["input_ids"]


@pytest.mark.parametrize("text", TEXTS)
def test_gguf_detokenize_round_trip(tiny_gguf, text):
    llm = _llama(tiny_gguf)
    ids = llm.tokenize(text.encode(), add_bos=False, special=True)
    assert llm.detokenize(ids, special=True).decode() == text
    # Without special rendering, control tokens vanish but Gemma 4's chat markers stay visible,
    # except <|tool_response>, which llama.cpp makes an end-of-generation (control) token itself.
    hidden = text
    for tok in ("<bos>", "<eos>", "<|turn>", "<turn|>", "<mask>", "<pad>", "<unk>", "<unused3>", "<|tool_response>"):
        hidden = hidden.replace(tok, "")
    assert llm.detokenize(ids, special=False).decode() == hidden


def test_gguf_metadata(tiny_gguf, tiny_tok_dir):
    r = gguf.GGUFReader(str(tiny_gguf))

    def val(key):
        return r.fields[key].contents()

    assert val("tokenizer.ggml.model") == "gemma4"
    assert (
        val("tokenizer.ggml.bos_token_id"),
        val("tokenizer.ggml.eos_token_id"),
        val("tokenizer.ggml.unknown_token_id"),
        val("tokenizer.ggml.padding_token_id"),
    ) == (2, 1, 3, 0)
    assert val("tokenizer.ggml.add_bos_token") is True
    assert val("tokenizer.ggml.add_space_prefix") is False
    tj = json.loads((tiny_tok_dir / "tokenizer.json").read_text())
    assert val("tokenizer.ggml.merges") == [" ".join(m) for m in tj["model"]["merges"]]
    tokens, types = val("tokenizer.ggml.tokens"), val("tokenizer.ggml.token_type")
    T = gguf.TokenType
    kind = {t: T(k) for t, k in zip(tokens, types, strict=True)}
    assert {kind[t] for t in ("<bos>", "<eos>", "<|turn>", "<turn|>", "<|think|>", "<unused3>")} == {T.CONTROL}
    assert {
        kind[t]
        for t in (
            "<|channel>",
            "<channel|>",
            "<|tool_call>",
            "<tool_call|>",
            "<|tool_response>",
            "<tool_response|>",
            '<|"|>',
            "\n",
            "\n\n",
        )
    } == {T.USER_DEFINED}
    assert {kind[f"<0x{b:02X}>"] for b in range(256)} == {T.BYTE}
    assert sum(k == T.NORMAL for k in kind.values()) == TINY - len(tj["added_tokens"]) - 256


def test_gguf_end_of_generation_tokens(tiny_gguf):
    import llama_cpp

    llm = _llama(tiny_gguf)
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    eog = {i for i in range(TINY) if llama_cpp.llama_vocab_is_eog(vocab, i)}
    assert eog == {GEMMA4_IDS["<eos>"], GEMMA4_IDS["<turn|>"], GEMMA4_IDS["<|tool_response>"]}


def test_built_gguf_tokenizes_like_hf(tiny_ckpt, tmp_path):
    """The converter's own GGUF (edgekit.builder.pipeline, which calls add_vocab) against transformers."""
    from transformers import AutoTokenizer

    from edgekit.builder.pipeline import build

    folder = build(str(tiny_ckpt), target="pi5", quants=["f32"], out=tmp_path)
    [path] = sorted(Path(folder).glob("*.gguf"))
    hf = AutoTokenizer.from_pretrained(tiny_ckpt)
    llm = _llama(path)
    for text in (CHAT, TOOL, TEXTS[3], TEXTS[4]):
        assert llm.tokenize(text.encode(), add_bos=True, special=True) == hf(text)["input_ids"]


def test_gguf_tokens_match_gguf_py_llamahfvocab(tiny_gguf, tiny_tok_dir):
    """gguf-py's LlamaHfVocab (llama.cpp's converter path) is the reference for texts and types;
    the only differences allowed are added tokens it leaves NORMAL (see gguf_vocab._tokens)."""
    ref = list(gguf.LlamaHfVocab(tiny_tok_dir).all_tokens())
    r = gguf.GGUFReader(str(tiny_gguf))
    tokens, types = r.fields["tokenizer.ggml.tokens"].contents(), r.fields["tokenizer.ggml.token_type"].contents()
    assert tokens == [t.decode() for t, _, _ in ref]
    added = {a["id"] for a in json.loads((tiny_tok_dir / "tokenizer.json").read_text())["added_tokens"]}
    visible = {
        "<|channel>",
        "<channel|>",
        "<|tool_call>",
        "<tool_call|>",
        "<|tool_response>",
        "<tool_response|>",
        '<|"|>',
    }
    diff = {
        i
        for i, ((t, _, k), mine) in enumerate(zip(ref, types, strict=True))
        if int(k) != mine and t.decode() not in visible
    }
    assert diff and diff <= added
    assert all(ref[i][2] == gguf.TokenType.NORMAL for i in diff)


# ---- errors --------------------------------------------------------------------------------------


def _one_line_error(tok_dir: Path, n_vocab: int = TINY) -> str:
    with pytest.raises(TokenizerError) as e:
        add_vocab(gguf.GGUFWriter(str(tok_dir / "x.gguf"), "gemma4"), tok_dir, n_vocab)
    msg = str(e.value)
    assert "\n" not in msg and str(tok_dir) in msg
    return msg


def test_missing_or_corrupt_tokenizer_raises(tiny_tok_dir, tmp_path):
    assert "missing" in _one_line_error(tmp_path)
    (tmp_path / "tokenizer.json").write_text('{"model": {"type": "BPE", "vocab": {')
    assert "corrupt" in _one_line_error(tmp_path)
    (tmp_path / "tokenizer.json").write_text(json.dumps({"model": {"type": "Unigram", "vocab": []}}))
    assert "not a Gemma 4 tokenizer" in _one_line_error(tmp_path)
    tj = json.loads((tiny_tok_dir / "tokenizer.json").read_text())
    del tj["model"]["vocab"]["<0x41>"]
    (tmp_path / "tokenizer.json").write_text(json.dumps(tj))
    assert "gaps" in _one_line_error(tmp_path)
    assert "embedding only 512 rows" in _one_line_error(tiny_tok_dir, n_vocab=512)


def test_too_small_vocab_is_refused(tmp_path):
    with pytest.raises(OutputError, match="too small"):
        write_synthetic_tokenizer(tmp_path, 300)


# ---- E2B size ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_e2b_size_tokenizer_writes_and_loads(tmp_path):
    from transformers import AutoTokenizer

    # The e2b preset's shape: Gemma 4's 262144 tokens and 514,906 merges (llama.cpp's n_merges for the
    # real gemma-4-E2B-it), the filler built from private-use pieces that real text never contains.
    write_synthetic_tokenizer(tmp_path, E2B, n_merges=GEMMA4_MERGES)
    model = json.loads((tmp_path / "tokenizer.json").read_text(encoding="utf-8"))["model"]
    assert len(model["merges"]) == 514_906 and len(model["vocab"]) == E2B
    big = AutoTokenizer.from_pretrained(tmp_path)  # tokenizers rejects a merge whose parts are not pieces
    assert len(big) == E2B
    assert {t: big.convert_tokens_to_ids(t) for t in GEMMA4_MULTIMODAL_IDS} == GEMMA4_MULTIMODAL_IDS
    assert {t: big.convert_tokens_to_ids(t) for t in GEMMA4_IDS} == GEMMA4_IDS
    filler = "".join(chr(0xE000 + i) for i in (0, 1, 2, 3, 5, 8))
    ids = big(filler[:3], add_special_tokens=False)["input_ids"]
    assert big.convert_ids_to_tokens(ids) == [filler[:3]]  # pair merge, then the triple's merge
    path = tmp_path / "vocab.gguf"
    assert _write_vocab_gguf(tmp_path, path, E2B) == E2B
    llm = _llama(path)
    assert llm.n_vocab() == E2B
    for text in (CHAT, TEXTS[3], TEXTS[4], filler):
        assert llm.tokenize(text.encode(), add_bos=True, special=True) == big(text)["input_ids"]
