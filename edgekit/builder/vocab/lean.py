"""The lean checkpoint: tokenizer files renumbered, token ids in the configs remapped, rows gathered.

New ids keep the original order (new id k is the k-th smallest kept original id), so the head
specials keep their ids (<pad> 0, <eos> 1, <bos> 2, ...) and the map is one ascending array.
The embedding rows (embed_tokens, embed_tokens_per_layer, an untied lm_head) are gathered in runs
of consecutive ids with ``pread``, at most ``max_bytes`` at a time, into one safetensors file
through the project's streaming writer: E2B's 4.7 GB bf16 PLE table never sits in memory. Every
other tensor stays where it is: the lean Checkpoint's TensorRefs point into the source shards, so
the converters (which read tensors through TensorRefs and tokenizer files from ``ckpt.path``) read
the lean model unchanged.

Row padding: none. llama.cpp's gemma4 loader wants token_embd and per_layer_token_embd with exactly
as many rows as the token list (src/models/gemma4.cpp creates both as {.., n_vocab}); mlx-lm and
transformers size both tables from config.json's vocab_size and vocab_size_per_layer_input, which
are set to the kept count. So the row count is the token count.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ...core.errors import ConversionError
from ...model.checkpoint import Checkpoint
from ...model.gemma4 import Gemma4TextConfig
from ...model.safetensors_io import TensorRef, TensorSpec, read_tensors, write_safetensors
from .select import ID_KEY_SUFFIXES, Selection, SourceTokenizer, kept_merges

log = logging.getLogger(__name__)

LEAN_SHARD = "model-lean-vocab.safetensors"
# Tensors indexed by token id (short names, as Checkpoint.tensors keys them).
ROW_TENSORS = ("embed_tokens.weight", "embed_tokens_per_layer.weight", "lm_head.weight")
COPIED = ("special_tokens_map.json", "chat_template.jinja")


def remap_ids(node: Any, new_id: dict[int, int], key: str = "") -> Any:
    """A copy of a config dict with every token id (keys ending in token_id/_ids/_index) renumbered."""
    if isinstance(node, dict):
        return {k: remap_ids(v, new_id, k) for k, v in node.items()}
    if key.endswith(ID_KEY_SUFFIXES) and not isinstance(node, bool):
        if isinstance(node, int):
            return new_id[node]
        if isinstance(node, list):
            return [new_id[v] if isinstance(v, int) and not isinstance(v, bool) else v for v in node]
    return node


def _remap_post_processor(node: Any, new_id: dict[int, int]) -> Any:
    # TemplateProcessing keeps {"<bos>": {"id": "<bos>", "ids": [2], ...}}; a Sequence nests processors.
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if k == "ids" and isinstance(v, list):
                out[k] = [new_id[int(i)] for i in v]
            else:
                out[k] = _remap_post_processor(v, new_id)
        return out
    if isinstance(node, list):
        return [_remap_post_processor(v, new_id) for v in node]
    return node


def lean_tokenizer_json(src: SourceTokenizer, sel: Selection) -> dict[str, Any]:
    kept = {int(i) for i in sel.kept}
    new_id = {int(o): n for n, o in enumerate(sel.kept)}
    data = copy.deepcopy({k: v for k, v in src.data.items() if k != "model"})
    model = {k: v for k, v in src.data["model"].items() if k not in ("vocab", "merges")}
    model["vocab"] = {src.tokens[o]: n for o, n in new_id.items()}
    model["merges"] = kept_merges(src, kept)
    data["model"] = model
    data["added_tokens"] = [
        {**a, "id": new_id[int(a["id"])]} for a in src.data.get("added_tokens", []) if int(a["id"]) in kept
    ]
    if isinstance(data.get("padding"), dict) and "pad_id" in data["padding"]:
        data["padding"]["pad_id"] = new_id[int(data["padding"]["pad_id"])]
    if data.get("post_processor"):
        data["post_processor"] = _remap_post_processor(data["post_processor"], new_id)
    return data


def lean_tokenizer_config(src: SourceTokenizer, sel: Selection) -> dict[str, Any]:
    new_id = {int(o): n for n, o in enumerate(sel.kept)}
    cfg = copy.deepcopy(src.tokenizer_config)
    dec = cfg.get("added_tokens_decoder")
    if isinstance(dec, dict):
        cfg["added_tokens_decoder"] = {str(new_id[int(i)]): a for i, a in dec.items() if int(i) in new_id}
    return cfg


def lean_model_config(src: SourceTokenizer, sel: Selection) -> dict[str, Any]:
    new_id = {int(o): n for n, o in enumerate(sel.kept)}
    cfg = remap_ids(src.model_config, new_id)
    n = sel.size
    text = cfg.get("text_config") if isinstance(cfg.get("text_config"), dict) else cfg
    for c in {id(cfg): cfg, id(text): text}.values():
        for k in ("vocab_size", "vocab_size_per_layer_input"):
            if k in c:
                c[k] = n
    return cfg


def gather_rows(ref: TensorRef, ids: np.ndarray, max_bytes: int = 64 << 20) -> Iterator[np.ndarray]:
    """``ref``'s rows at ``ids`` (ascending), as stored, in chunks of at most ~max_bytes."""
    per = max(1, max_bytes // max(ref.row_bytes, 1))
    breaks = np.flatnonzero(np.diff(ids) != 1) + 1
    pending: list[np.ndarray] = []
    rows = 0
    for run in np.split(ids, breaks):
        start, end = int(run[0]), int(run[-1]) + 1
        while start < end:
            stop = min(end, start + per - rows)
            raw = ref.read_bytes(start * ref.row_bytes, (stop - start) * ref.row_bytes)
            pending.append(raw.reshape((stop - start, *ref.shape[1:])))
            rows += stop - start
            start = stop
            if rows >= per:
                yield np.concatenate(pending) if len(pending) > 1 else pending[0]
                pending, rows = [], 0
    if pending:
        yield np.concatenate(pending) if len(pending) > 1 else pending[0]


def write_lean(ckpt: Checkpoint, src: SourceTokenizer, sel: Selection, dest: Path) -> Checkpoint:
    """Write the lean tokenizer, configs and gathered rows to ``dest`` (a private folder the caller
    removes); return the lean Checkpoint, whose other tensors are the source's."""
    dest = Path(dest)
    dest.mkdir(parents=True)

    def dump(name: str, obj: dict[str, Any]) -> None:
        (dest / name).write_text(
            json.dumps(obj, ensure_ascii=False, indent=None if name == "tokenizer.json" else 1), encoding="utf-8"
        )

    dump("tokenizer.json", lean_tokenizer_json(src, sel))
    if src.tokenizer_config:
        dump("tokenizer_config.json", lean_tokenizer_config(src, sel))
    if src.generation_config:
        dump("generation_config.json", remap_ids(src.generation_config, {int(o): n for n, o in enumerate(sel.kept)}))
    config = lean_model_config(src, sel)
    dump("config.json", config)
    for name in COPIED:
        if (src.path / name).is_file():
            shutil.copyfile(src.path / name, dest / name)
    if (src.path / "tokenizer.model").is_file():
        # A SentencePiece proto of the full vocabulary would contradict the lean ids: left out.
        log.info("lean vocabulary: tokenizer.model left out (tokenizer.json carries the lean vocabulary)")

    refs = {short: ckpt.tensors[short] for short in ROW_TENSORS if short in ckpt.tensors}
    specs = [TensorSpec(r.name, (sel.size, *r.shape[1:]), r.dtype) for r in refs.values()]
    by_name = {r.name: r for r in refs.values()}
    write_safetensors(dest / LEAN_SHARD, specs, lambda s: gather_rows(by_name[s.name], sel.kept))
    lean_refs = read_tensors(dest / LEAN_SHARD, ConversionError, fix="build again")
    tensors = dict(ckpt.tensors)
    for short, r in refs.items():
        tensors[short] = lean_refs[r.name]
    lean_cfg = Gemma4TextConfig.from_hf(config, str(dest / "config.json"))
    for name, shape in lean_cfg.expected_shapes().items():
        if tensors[name].shape != shape:  # a bug here, not a user error
            raise ConversionError(
                f"lean vocabulary: {name} has shape {tensors[name].shape}, the lean config implies {shape}"
            )
    return Checkpoint(path=dest, config=lean_cfg, tensors=tensors, dropped=list(ckpt.dropped))
