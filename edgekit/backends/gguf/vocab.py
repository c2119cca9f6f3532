"""Gemma 4 tokenizer metadata for GGUF, in the shape llama.cpp's ``gemma4`` vocab loader reads.

llama.cpp (src/llama-vocab.cpp) treats ``tokenizer.ggml.model = "gemma4"`` as BPE over raw UTF-8
with ``▁`` for spaces, ``<0xXX>`` byte fallback and a pre-tokenizer that only cuts at newline runs;
it needs ``tokenizer.ggml.merges``, and takes bos/eos/unk/pad from the file. Merges, the special
token ids, ``add_bos`` and the chat template come from gguf-py's ``SpecialVocab`` as in llama.cpp's
converter; token texts and types are read here (see ``_tokens`` for why not ``LlamaHfVocab``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import gguf

from ...core.errors import TokenizerError

log = logging.getLogger(__name__)

# Rendered as text even when special tokens are hidden, so a chat parser can read them
# (llama.cpp's Gemma 4 converter marks the same set USER_DEFINED).
VISIBLE_TOKENS = frozenset(
    {"<|channel>", "<channel|>", "<|tool_call>", "<tool_call|>", "<|tool_response>", "<tool_response|>", '<|"|>'}
)


def _read_tokenizer_json(checkpoint_dir: Path) -> dict[str, Any]:
    path = Path(checkpoint_dir) / "tokenizer.json"
    if not path.is_file():
        raise TokenizerError(
            f"{path} is missing; copy tokenizer.json from the original Gemma 4 checkpoint into {path.parent}"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        model = data["model"]
        if not isinstance(model, dict):
            raise TypeError("model is not an object")
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise TokenizerError(
            f"{path} is unreadable or corrupt ({type(e).__name__}); replace it with the original Gemma 4 tokenizer.json"
        ) from None
    if model.get("type") != "BPE" or not model.get("byte_fallback"):
        raise TokenizerError(
            f"{path} is not a Gemma 4 tokenizer (needs a byte-fallback BPE model); use the tokenizer.json shipped "
            "with the Gemma 4 checkpoint"
        )
    return data


def _tokens(data: dict[str, Any], where: Path) -> tuple[list[str], list[int]]:
    """Token texts by id and their llama.cpp token types, read straight from tokenizer.json.

    Written here instead of with gguf.LlamaHfVocab: that helper imports transformers (and torch,
    seconds) and calls ``get_vocab()`` once per special token, ≈0.4 s each at 262144 tokens, so
    an E2B vocabulary took ≈17 s; reading the JSON gives the same texts in a fraction of a second.
    Types follow LlamaHfVocab (``<0xXX>`` BYTE, special tokens CONTROL, the rest NORMAL) plus
    llama.cpp's Gemma 4 USER_DEFINED set, with one correction: transformers splits *every* added
    token out of the text before BPE (``<unused3>``, a run of newlines), while llama.cpp does that
    only for CONTROL / USER_DEFINED tokens, and LlamaHfVocab leaves non-special added tokens inside
    the base vocabulary NORMAL. Here special added tokens are CONTROL and the others USER_DEFINED
    (which llama.cpp splits out even with special parsing off, as transformers does).
    """
    by_id: dict[int, str] = {int(i): t for t, i in data["model"]["vocab"].items()}
    added = {int(a["id"]): bool(a.get("special")) for a in data.get("added_tokens", [])}
    by_id.update({int(a["id"]): a["content"] for a in data.get("added_tokens", [])})
    n = len(by_id)
    if set(by_id) != set(range(n)):
        raise TokenizerError(
            f"{where}: token ids are not 0..{n - 1} without gaps; restore the original Gemma 4 tokenizer.json"
        )
    texts = [by_id[i] for i in range(n)]
    T = gguf.TokenType
    types = []
    for i, text in enumerate(texts):
        if len(text) == 6 and text.startswith("<0x") and text.endswith(">") and _is_hex(text[3:5]):
            types.append(int(T.BYTE))
        elif text in VISIBLE_TOKENS:
            types.append(int(T.USER_DEFINED))
        elif i in added:
            types.append(int(T.CONTROL if added[i] else T.USER_DEFINED))
        else:
            types.append(int(T.NORMAL))
    return texts, types


def _is_hex(s: str) -> bool:
    return all(c in "0123456789abcdefABCDEF" for c in s)


class _QuietPairWarning(logging.Filter):
    # SpecialVocab warns "Unknown separator token '<bos>'" for the <bos> A <bos> B pair template
    # that transformers writes for Gemma; single-sequence prompts (all llama.cpp uses) are unaffected.
    def filter(self, record: logging.LogRecord) -> bool:
        return "TemplateProcessing<pair>" not in record.getMessage()


def add_vocab(writer: gguf.GGUFWriter, checkpoint_dir: Path, n_vocab: int) -> int:
    """Write the gemma4 tokenizer keys into ``writer``; return how many tokens were written.

    ``n_vocab`` is the embedding's row count: a tokenizer with more tokens than that cannot belong
    to the weights. Raises TokenizerError for a missing, corrupt or foreign tokenizer.
    """
    checkpoint_dir = Path(checkpoint_dir)
    data = _read_tokenizer_json(checkpoint_dir)
    where = checkpoint_dir / "tokenizer.json"
    try:
        texts, types = _tokens(data, where)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise TokenizerError(
            f"{where} is corrupt ({type(e).__name__}); replace it with the original Gemma 4 tokenizer.json"
        ) from None
    n = len(texts)
    if n > n_vocab:
        raise TokenizerError(
            f"{checkpoint_dir}: tokenizer has {n} tokens but the embedding only {n_vocab} rows; the tokenizer does "
            "not belong to these weights"
        )
    if len(set(texts)) != n:
        # llama.cpp aborts at load on a repeated token text; say so here instead.
        raise TokenizerError(f"{where} has repeated token texts; restore the original Gemma 4 tokenizer.json")

    writer.add_tokenizer_model("gemma4")
    writer.add_token_list(texts)
    writer.add_token_scores([-1000.0] * n)  # BPE ignores scores; LlamaHfVocab writes the same placeholder
    writer.add_token_types(types)

    vocab_log = logging.getLogger("gguf.vocab")
    quiet = _QuietPairWarning()
    vocab_log.addFilter(quiet)
    try:
        special = gguf.SpecialVocab(checkpoint_dir, load_merges=True, n_vocab=n)
    except (ValueError, OSError) as e:
        raise TokenizerError(
            f"{checkpoint_dir}: tokenizer files are inconsistent ({e}); restore tokenizer.json and "
            "tokenizer_config.json from the original checkpoint"
        ) from None
    finally:
        vocab_log.removeFilter(quiet)
    if not special.merges:
        raise TokenizerError(
            f"{where} has no BPE merges; llama.cpp's gemma4 tokenizer needs them, restore the original file"
        )
    # llama.cpp forces add_bos for gemma4 anyway; write it (and no space prefix) explicitly.
    special.add_special_token["bos"] = True
    special.add_to_gguf(writer, quiet=True)
    writer.add_add_space_prefix(False)
    log.info(
        "gguf vocab: %d tokens, %d merges, %d control",
        n,
        len(special.merges),
        sum(t == gguf.TokenType.CONTROL for t in types),
    )
    return n


def check_tokenizer(checkpoint_dir: Path) -> None:
    """Parse tokenizer.json as the GGUF vocabulary writer does (one reader, one set of messages),
    before anything is written: an MLX build copies the file, a GGUF build reads it late."""
    _read_tokenizer_json(Path(checkpoint_dir))
    check_chat_template(Path(checkpoint_dir))


def check_chat_template(checkpoint_dir: Path) -> None:
    """A checkpoint must carry its chat template where the converters read it, or `run` and `serve`
    refuse the artifact it builds: gguf-py (as llama.cpp's converter) reads tokenizer_config.json's
    chat_template, or chat_template.jinja only beside a tokenizer_config.json; MLX copies both."""
    cfg_path = checkpoint_dir / "tokenizer_config.json"
    fix = "copy tokenizer_config.json (and chat_template.jinja, if it has one) from the original checkpoint"
    if not cfg_path.is_file():
        raise TokenizerError(
            f"{checkpoint_dir}: no tokenizer_config.json, so no chat template or special tokens reach "
            f"the artifacts (run and serve need them); {fix}"
        )
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise TokenizerError(f"{cfg_path}: unreadable ({e.__class__.__name__}); {fix}") from None
    template = cfg.get("chat_template") if isinstance(cfg, dict) else None
    if not template and not (checkpoint_dir / "chat_template.jinja").is_file():
        raise TokenizerError(
            f"{checkpoint_dir}: no chat template (tokenizer_config.json's chat_template or "
            f"chat_template.jinja), which run and serve need; {fix}"
        )
