"""A synthetic tokenizer shaped like Google's Gemma 4 tokenizer, trained locally in well under a second.

No model hub is reachable, so tests and benchmarks need a tokenizer that exercises everything the
converters meet in the real one, in the same file layout:

* ``tokenizer.json``: BPE with ``byte_fallback`` (``<0x00>``..``<0xFF>``), no ``unk`` in practice;
  normalizer, pre-tokenizer and decoder as transformers' ``GemmaTokenizer`` builds them:
  ``Replace(" ", "▁")``, a ``Split(" ")`` that finds nothing after the normalizer (so merges run
  over the whole text, SentencePiece-style), ``Replace("▁", " ") → ByteFallback → Fuse``; a
  post-processor that prepends ``<bos>``.
* Special tokens at Gemma 4's ids (config.json for the multimodal markers, the rest as public
  Gemma 4 code pins them): ``<pad>`` 0,
  ``<eos>`` 1, ``<bos>`` 2, ``<unk>`` 3, ``<mask>`` 4, ``<|tool>`` 46 … ``<|"|>`` 52, ``<|think|>`` 98,
  ``<|channel>`` 100, ``<channel|>`` 101, ``<|turn>`` 105, ``<turn|>`` 106, ``"\n"`` 107, and the
  multimodal markers at 255999/256000 and 258880–258884 when the vocabulary reaches them.
* Runs of 2..31 newlines are single added tokens after ``"\n"`` (our reading of llama.cpp's
  Gemma 4 newline handling; the exact range is our choice). The other reserved ids below 107
  hold tokens we could not check; here they are Gemma-style ``<unused{i}>`` specials.
* ``tokenizer_config.json``: ``GemmaTokenizer`` with Gemma 4's named tokens (``sot_token`` …) and a
  chat template in Gemma 4's turn format (system, tools, tool calls and responses, thinking on/off).

The trained part is small (a few hundred merges from a built-in corpus of English, code and
unicode). A vocabulary larger than the corpus supports is filled in one of two ways:

* ``<unused{i}>`` tokens that live only in the BPE vocabulary, not in ``added_tokens`` (small test
  tokenizers), so they tokenize as plain text on every engine;
* with ``n_merges`` (the e2b preset: Gemma 4's 514,906), BPE pieces of one to three characters from
  Unicode's private-use area with exactly that many merges in all. llama.cpp keeps every merge in a
  hash map: a vocab-only load measured 93 MiB of anonymous memory with Gemma 4's counts, 41 MiB with
  1,180 merges, so a memory benchmark needs the real counts; private-use characters never occur in real text, so the
  filler leaves the tokenization of everything else unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers

from ..core.errors import OutputError

HEAD_SPECIALS = {
    0: "<pad>",
    1: "<eos>",
    2: "<bos>",
    3: "<unk>",
    4: "<mask>",
    46: "<|tool>",
    47: "<tool|>",
    48: "<|tool_call>",
    49: "<tool_call|>",
    50: "<|tool_response>",
    51: "<tool_response|>",
    52: '<|"|>',
    98: "<|think|>",
    100: "<|channel>",
    101: "<channel|>",
    105: "<|turn>",
    106: "<turn|>",
}
TAIL_SPECIALS = {
    255999: "<|image>",
    256000: "<|audio>",
    258880: "<|image|>",
    258881: "<|audio|>",
    258882: "<image|>",
    258883: "<audio|>",
    258884: "<|video|>",
}
# Where a small vocabulary with towers (synth --towers) puts the multimodal markers: reserved head
# slots that are otherwise <unused>; config.json's token ids point at them.
HEAD_MULTIMODAL = {90 + k: t for k, t in enumerate(TAIL_SPECIALS.values())}
GEMMA4_MERGES = 514_906  # merges in Gemma 4's tokenizer (llama.cpp's n_merges for gemma-4-E2B-it)
FILLER_BASE = 0xE000  # Unicode private-use area
NEWLINE_ID = 107
MAX_NEWLINES = 31  # "\n" * 1..31 at ids 107..137
HEAD_END = NEWLINE_ID  # ids below this are specials or <unused>
MIN_VOCAB = HEAD_END + MAX_NEWLINES + 256 + 128  # specials, newline runs, bytes, some merges
TRAINED_CAP = 4096  # upper bound for training on the built-in corpus (it yields fewer)

# Named tokens in Gemma 4's tokenizer_config.json (key -> token), written when the token fits.
NAMED_TOKENS = {
    "sot_token": "<|turn>",
    "eot_token": "<turn|>",
    "soc_token": "<|channel>",
    "eoc_token": "<channel|>",
    "think_token": "<|think|>",
    "escape_token": '<|"|>',
    "stc_token": "<|tool_call>",
    "etc_token": "<tool_call|>",
    "std_token": "<|tool>",
    "etd_token": "<tool|>",
    "str_token": "<|tool_response>",
    "etr_token": "<tool_response|>",
    "boi_token": "<|image>",
    "eoi_token": "<image|>",
    "image_token": "<|image|>",
    "boa_token": "<|audio>",
    "eoa_token": "<audio|>",
    "audio_token": "<|audio|>",
}

# Gemma 4's turn format as a chat template (our own wording of it, not Google's file): a system turn when
# there is a system prompt, tools or thinking (``<|think|>`` first when ``enable_thinking``), tool
# declarations ``<|tool>declaration:NAME{...}<tool|>``, assistant tool calls
# ``<|tool_call>call:NAME{key:value}<tool_call|>`` with strings quoted by ``<|"|>``, tool results
# ``<|tool_response>response:NAME{...}<tool_response|>`` inside the model's turn (which then continues
# without a new ``<|turn>model``), and an earlier answer's thinking (``<|channel>...<channel|>``) dropped.
# Real checkpoints carry Google's template; edgekit.serve.chat renders whichever one an artifact has.
CHAT_TEMPLATE = r"""{%- macro arg(v, quote_keys=false) -%}
{%- if v is string -%}<|"|>{{ v }}<|"|>
{%- elif v is boolean -%}{{ 'true' if v else 'false' }}
{%- elif v is none -%}null
{%- elif v is mapping -%}{
{%- for k, x in v | dictsort -%}{{ ',' if not loop.first }}{{ ('<|"|>' ~ k ~ '<|"|>') if quote_keys else k }}:{{ arg(x, quote_keys) }}{%- endfor -%}}
{%- elif v is iterable -%}[
{%- for x in v -%}{{ ',' if not loop.first }}{{ arg(x, quote_keys) }}{%- endfor -%}]
{%- else -%}{{ v }}
{%- endif -%}
{%- endmacro -%}
{%- macro schema(v) -%}
{%- if v is mapping -%}{
{%- for k, x in v | dictsort -%}{{ ',' if not loop.first }}{{ k }}:
{%- if k == 'type' and x is string -%}<|"|>{{ x | upper }}<|"|>{%- else -%}{{ schema(x) }}{%- endif -%}
{%- endfor -%}}
{%- elif v is string -%}<|"|>{{ v }}<|"|>
{%- elif v is iterable -%}[
{%- for x in v -%}{{ ',' if not loop.first }}{{ schema(x) }}{%- endfor -%}]
{%- else -%}{{ arg(v) }}
{%- endif -%}
{%- endmacro -%}
{%- macro text(c) -%}
{%- if c is string -%}{{ c }}
{%- elif c is iterable -%}{%- for part in c if part['type'] == 'text' -%}{{ part['text'] }}{%- endfor -%}
{%- endif -%}
{%- endmacro -%}
{%- set thinking = enable_thinking is defined and enable_thinking -%}
{%- set ns = namespace(msgs=messages, open_model=false) -%}
{{- bos_token -}}
{%- if thinking or tools or (messages and messages[0]['role'] in ['system', 'developer']) -%}
<|turn>system
{% if thinking %}<|think|>
{% endif -%}
{%- if messages and messages[0]['role'] in ['system', 'developer'] -%}
{{ text(messages[0]['content']) | trim }}{%- set ns.msgs = messages[1:] -%}
{%- endif -%}
{%- for t in tools or [] -%}
{%- set f = t['function'] if 'function' in t else t -%}
<|tool>declaration:{{ f['name'] }}{description:<|"|>{{ f['description'] | default('') }}<|"|>
{%- if f['parameters'] is defined and f['parameters'] -%},parameters:{{ schema(f['parameters']) }}{%- endif -%}}<tool|>
{%- endfor -%}
<turn|>
{% endif -%}
{%- for m in ns.msgs -%}
{%- if m['role'] == 'tool' -%}
{%- set tn = namespace(name=m['name'] if m['name'] is defined and m['name'] else 'unknown') -%}
{%- for prev in ns.msgs if prev['tool_calls'] is defined and prev['tool_calls'] -%}
{%- for tc in prev['tool_calls'] if tc['id'] is defined and tc['id'] == m['tool_call_id'] -%}
{%- set tn.name = tc['function']['name'] -%}
{%- endfor -%}
{%- endfor -%}
<|tool_response>response:{{ tn.name }}{value:{{ arg(text(m['content'])) }}}<tool_response|>
{%- else -%}
{%- set role = 'model' if m['role'] == 'assistant' else m['role'] -%}
{%- if ns.open_model and role != 'model' -%}<turn|>
{% set ns.open_model = false -%}{%- endif -%}
{%- if not (role == 'model' and ns.open_model) -%}<|turn>{{ role }}
{% endif -%}
{%- set body = text(m['content']) -%}
{%- if role == 'model' -%}{%- set body = (body.split('<channel|>') | last) -%}{%- endif -%}
{%- for tc in m['tool_calls'] or [] -%}
<|tool_call>call:{{ tc['function']['name'] }}{
{%- set a = tc['function']['arguments'] -%}
{%- if a is mapping -%}{%- for k, x in a | dictsort -%}{{ ',' if not loop.first }}{{ k }}:{{ arg(x) }}{%- endfor -%}
{%- else -%}{{ a }}{%- endif -%}}<tool_call|>
{%- endfor -%}
{%- if m['tool_calls'] -%}{%- set ns.open_model = true -%}{{ body | trim }}
{%- else -%}{%- set ns.open_model = false -%}{{ body | trim }}<turn|>
{% endif -%}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt and not ns.open_model -%}<|turn>model
{% endif -%}"""  # noqa: E501 (line 114: the template goes into checkpoints byte for byte)

_CORPUS = [
    "The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a single step.",
    "Edge devices such as the Raspberry Pi 5 and Apple Silicon laptops run small language models locally, "
    "which keeps data private and answers fast even without a network connection.",
    "Memory bandwidth, not compute, limits token generation: each new token reads every weight once, "
    "so a model quantized to four bits decodes roughly twice as fast as the same model at eight bits.",
    "In 2024 the team measured 35 tokens per second for prompt processing and 6.3 tokens per second "
    "for generation; the budget was 4096 MB, and the peak was 3390 MB at 2048 tokens of context.",
    "Tokenizers split text into pieces. Frequent words become single tokens while rare words are "
    "spelled out from smaller pieces, and unknown bytes fall back to one token per byte.",
    "She said: \"It's not what you look at that matters, it's what you see.\" Then she left, quietly.",
    "def fibonacci(n: int) -> list[int]:\n    result = [0, 1]\n    for i in range(2, n):\n"
    "        result.append(result[i - 1] + result[i - 2])\n    return result[:n]\n",
    "class Config:\n    def __init__(self, path):\n        self.path = path\n        self.values = {}\n\n"
    "    def get(self, key, default=None):\n        return self.values.get(key, default)\n",
    "import json\nfrom pathlib import Path\n\nwith open(Path('config.json'), encoding='utf-8') as f:\n"
    '    data = json.load(f)\nprint(f"loaded {len(data)} keys")\n',
    "for (int i = 0; i < n; ++i) {\n\tif (x[i] > max) {\n\t\tmax = x[i];\n\t}\n}\nreturn max;\n",
    "const add = (a, b) => a + b;\nfunction main() {\n  console.log(add(2, 3));\n  return 0;\n}\n",
    "SELECT name, count(*) FROM tokens WHERE id < 1024 GROUP BY name ORDER BY 2 DESC;",
    "$ pip install edgekit && edgekit build ./model --target pi5 --quant q4_0 --out dist/",
    "Café, naïve, résumé, façade, jalapeño, Zürich, Ærøskøbing, São Paulo, Kraków, İstanbul.",
    "Über den Wolken muss die Freiheit wohl grenzenlos sein. Größe, Straße, schön, Mädchen.",
    "Le cœur a ses raisons que la raison ne connaît point. Où est la bibliothèque ?",
    "Привет, мир! Как дела? Москва, Санкт-Петербург, спасибо, пожалуйста.",
    "Γειά σου κόσμε. Η γλώσσα είναι ελληνική. αβγδεζηθικλμνξοπρστυφχψω",
    "你好，世界！今天天气很好。我们一起学习语言模型。日本語のテキストもあります。東京、大阪。",
    "한국어 문장도 있습니다. 안녕하세요, 세계! مرحبا بالعالم. שלום עולם. नमस्ते दुनिया।",
    "Emoji: 😀 😂 🤖 🚀 ✨ 🎉 👍🏽 ❤️ 🇩🇰 — math: ∑ ∫ √ π ≈ ≠ ≤ ≥ ∞ → ← ± × ÷ °C € £ ¥",
    "Markdown: # Title\n\n- item one\n- item two\n\n**bold** and _italic_ and `code` and [link](http://x.y).",
    'JSON: {"name": "gemma", "layers": 35, "heads": [8, 1], "ok": true, "value": null}',
    "The model was trained on text, code and mathematics. It answers questions, writes programs, "
    "translates between languages and summarizes long documents into short, readable notes.",
    "Whitespace matters in code:    four spaces,        eight spaces, a\ttab, and trailing spaces   ",
]


def corpus() -> list[str]:
    """The built-in training corpus (deterministic; no downloads)."""
    return list(_CORPUS)


def _train(size: int, texts: list[str] | None = None) -> tuple[dict[str, int], list[tuple[str, str]]]:
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.Replace(" ", "▁")
    # Training-only splits (the saved tokenizer has none): no merge may contain "\n" (newline runs
    # are added tokens, and llama.cpp's gemma4 pre-tokenizer cuts at newlines), digits stay single
    # as in Gemma, and a space run stops before the "▁word" it precedes.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split("\n", "removed"),
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.Split(Regex("▁+(?=▁)|▁?[^▁]+|▁+"), "isolated"),
        ]
    )
    trainer = trainers.BpeTrainer(vocab_size=size, show_progress=False, min_frequency=1)
    tok.train_from_iterator(corpus() if texts is None else texts, trainer=trainer)
    data = json.loads(tok.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1)) for m in data["merges"]]
    return data["vocab"], merges


def _filler(n_pieces: int, n_merges: int) -> tuple[list[str], list[tuple[str, str]]]:
    """``n_pieces`` BPE pieces over private-use characters and exactly ``n_merges`` merges building them.

    k single characters need no merge, p pairs one each, q triples two each ("ab"+"c" and "a"+"bc", both
    halves being pairs), so n_pieces = k + p + q and n_merges = p + 2q. Triples are drawn from the first
    s characters, whose s² pairs all exist; the smallest s that fits gives the shortest pieces."""
    for s in range(2, 1 << 11):
        k = 2 * s
        q = n_merges - n_pieces + k
        p = n_pieces - k - q
        if 0 <= q <= s**3 and s * s <= p <= k * k:
            break
    else:
        raise ValueError(f"no private-use filler has {n_pieces} pieces and {n_merges} merges")
    chars = [chr(FILLER_BASE + i) for i in range(k)]
    core = [(chars[i], chars[j]) for i in range(s) for j in range(s)]
    rest = [(chars[i], chars[j]) for i in range(k) for j in range(k) if i >= s or j >= s]
    pairs = core + rest[: p - len(core)]
    triples = [(a, b, c) for a in chars[:s] for b in chars[:s] for c in chars[:s]][:q]
    pieces = chars + [a + b for a, b in pairs] + [a + b + c for a, b, c in triples]
    merges = pairs + [m for a, b, c in triples for m in ((a + b, c), (a, b + c))]
    return pieces, merges


def _multimodal(vocab_size: int, multimodal: dict[int, str] | None) -> dict[int, str]:
    return multimodal if multimodal is not None else {i: t for i, t in TAIL_SPECIALS.items() if i < vocab_size}


def _layout(
    vocab_size: int,
    n_merges: int | None = None,
    texts: list[str] | None = None,
    multimodal: dict[int, str] | None = None,
) -> tuple[dict[int, str], list[tuple[str, str]], list[int]]:
    """id -> token for all ``vocab_size`` ids, the merges, and the ids that are added tokens; the BPE part
    is trained on ``texts`` (default: the built-in corpus)."""
    if vocab_size < MIN_VOCAB:
        raise OutputError(f"vocab_size {vocab_size} is too small for a Gemma 4 tokenizer; use at least {MIN_VOCAB}")
    ids: dict[int, str] = dict(HEAD_SPECIALS)
    added = sorted(ids)
    for k in range(1, MAX_NEWLINES + 1):
        ids[NEWLINE_ID + k - 1] = "\n" * k
        added.append(NEWLINE_ID + k - 1)
    tail = _multimodal(vocab_size, multimodal)
    ids.update(tail)
    added += sorted(tail)
    free = (i for i in range(HEAD_END, vocab_size) if i not in ids)
    for b in range(256):
        ids[next(free)] = f"<0x{b:02X}>"
    n_free = vocab_size - len(ids) - sum(1 for i in range(HEAD_END) if i not in ids)
    # A caller's own texts fill the whole vocabulary (the 16k fixture learns 16,384 - 394 pieces).
    trained, merges = _train(n_free if texts is not None else min(n_free, TRAINED_CAP), texts)
    taken = set(ids.values())
    clash = taken.intersection(trained)
    if clash:  # a merge would produce a reserved token's text: a corpus bug, not a user error
        raise AssertionError(f"trained tokens clash with reserved ones: {sorted(clash)[:5]}")
    for tok, _ in sorted(trained.items(), key=lambda kv: kv[1]):
        ids[next(free)] = tok
    if n_merges is not None:
        slots = [i for i in range(HEAD_END, vocab_size) if i not in ids]
        pieces, extra = _filler(len(slots), n_merges - len(merges))
        ids.update(zip(slots, pieces, strict=True))
        merges = merges + extra
    # Whatever the corpus could not fill, and the head slots without a known token, are <unused>.
    n = 0
    for i in range(vocab_size):
        if i not in ids:
            ids[i] = f"<unused{n}>"
            n += 1
            if i < HEAD_END:
                added.append(i)
    return ids, merges, sorted(added)


def _added(i: int, content: str) -> dict:
    return {
        "id": i,
        "content": content,
        "single_word": False,
        "lstrip": False,
        "rstrip": False,
        "normalized": False,
        "special": not content.startswith("\n"),
    }


def tokenizer_json(
    vocab_size: int,
    n_merges: int | None = None,
    texts: list[str] | None = None,
    multimodal: dict[int, str] | None = None,
) -> dict:
    ids, merges, added = _layout(vocab_size, n_merges, texts, multimodal)
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [_added(i, ids[i]) for i in added],
        "normalizer": {"type": "Replace", "pattern": {"String": " "}, "content": "▁"},
        "pre_tokenizer": {
            "type": "Split",
            "pattern": {"String": " "},
            "behavior": "MergedWithPrevious",
            "invert": False,
        },
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<bos>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [
                {"SpecialToken": {"id": "<bos>", "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": "<bos>", "type_id": 1}},
                {"Sequence": {"id": "B", "type_id": 1}},
            ],
            "special_tokens": {"<bos>": {"id": "<bos>", "ids": [2], "tokens": ["<bos>"]}},
        },
        "decoder": {
            "type": "Sequence",
            "decoders": [
                {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
                {"type": "ByteFallback"},
                {"type": "Fuse"},
            ],
        },
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": "<unk>",
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": True,
            "byte_fallback": True,
            "ignore_merges": False,
            "vocab": {t: i for i, t in sorted(ids.items())},
            "merges": [list(m) for m in merges],
        },
    }


def tokenizer_config(vocab_size: int, multimodal: dict[int, str] | None = None) -> dict:
    present = set(HEAD_SPECIALS.values()) | set(_multimodal(vocab_size, multimodal).values())
    cfg: dict = {
        "backend": "tokenizers",
        "tokenizer_class": "GemmaTokenizer",
        "bos_token": "<bos>",
        "eos_token": "<eos>",
        "unk_token": "<unk>",
        "pad_token": "<pad>",
        "mask_token": "<mask>",
        "add_bos_token": True,
        "add_eos_token": False,
        "padding_side": "left",
        "clean_up_tokenization_spaces": False,
        "model_max_length": 131072,
    }
    named = {k: t for k, t in NAMED_TOKENS.items() if t in present}
    cfg.update(named)
    cfg["model_specific_special_tokens"] = named
    if "<|video|>" in present:
        cfg["extra_special_tokens"] = ["<|video|>"]
    cfg["chat_template"] = CHAT_TEMPLATE
    return cfg


def write_synthetic_tokenizer(
    out_dir: Path,
    vocab_size: int,
    n_merges: int | None = None,
    texts: list[str] | None = None,
    multimodal: dict[int, str] | None = None,
) -> None:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json with exactly ``vocab_size``
    tokens (and ``n_merges`` merges, when given: see the module's note). With ``texts`` the BPE merges
    are learnt from them (a trained model's tokenizer) instead of the built-in corpus."""
    out_dir = Path(out_dir)
    tj = tokenizer_json(vocab_size, n_merges, texts, multimodal)
    (out_dir / "tokenizer.json").write_text(json.dumps(tj, ensure_ascii=False), encoding="utf-8")
    cfg = tokenizer_config(vocab_size, multimodal)
    (out_dir / "tokenizer_config.json").write_text(json.dumps(cfg, ensure_ascii=False, indent=1), encoding="utf-8")
    stm = {k: cfg[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token", "mask_token")}
    (out_dir / "special_tokens_map.json").write_text(json.dumps(stm, indent=1), encoding="utf-8")
