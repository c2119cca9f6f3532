"""Gemma 4 text → an MLX artifact folder, on mlx-lm's own model, quantizer and writer.

The folder loads in stock ``mlx_lm.load`` / ``mlx_lm.generate`` and in ``edgekit.backends.mlx.ple.load_mlx_model``
(which keeps the per-layer embedding table on disk, reading the rows in flight). Steps:

* config: mlx-lm's gemma4 reads a top-level ``vocab_size`` and ``text_config.global_head_dim`` and,
  where a key is absent, falls back to *E2B's* values (num_kv_shared_layers 20, double-wide MLP,
  softcap 30) where transformers falls back to 0 / False / None. So every field is written out
  from edgekit's parsed config, and the vision/audio configs are dropped with their weights.
* weights: the checkpoint's text tensors (lazily, via ``mx.load``) into ``mlx_lm.models.gemma4``,
  cast and quantized by ``mlx_lm.utils.quantize_model`` with a predicate built from the recipe's
  overrides, saved by ``mlx_lm.utils.save_model``.
* the PLE table goes to ``model-ple.safetensors`` instead: it is streamed in row slabs through
  ``mx.quantize`` (the call ``nn.QuantizedEmbedding`` makes; groups never cross a row, so slabs give
  the same bytes as the whole table), because quantizing 4.7 GB of bf16 in one piece would hold
  source and result in RAM together; ``safetensors_io.SlabWriter`` writes the header first, then
  each slab at its offset.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ...core.errors import ConfigError, ConversionError
from ...core.fsutil import atomic_dir
from ...core.progress import progress_bar
from ...model.checkpoint import Checkpoint
from ...model.dtypes import DTYPES, float_dtype, lossless
from ...model.safetensors_io import SlabWriter, TensorSpec
from . import towers as mlx_towers
from .ple import PLE_FILE, PLE_MODULE, require_mlx

log = logging.getLogger(__name__)

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "chat_template.jinja",
    "generation_config.json",
)
HF_PREFIX = "model.language_model."


def mlx_config(ckpt: Checkpoint) -> dict[str, Any]:
    """The config.json mlx-lm's gemma4 reads exactly as transformers would (text only)."""
    c = ckpt.config
    if c.hidden_activation not in ("gelu_pytorch_tanh", "gelu_approx"):
        raise ConversionError(
            f"{ckpt.path}: hidden_activation {c.hidden_activation!r}; mlx-lm's gemma4 "
            "computes the tanh GELU only, so this checkpoint cannot be converted to MLX"
        )
    raw = dict(c.raw)
    text = dict(raw.get("text_config") or raw)
    text.update(
        model_type="gemma4_text",
        hidden_size=c.hidden_size,
        num_hidden_layers=c.num_hidden_layers,
        num_attention_heads=c.num_attention_heads,
        num_key_value_heads=c.num_key_value_heads,
        head_dim=c.head_dim,
        global_head_dim=c.global_head_dim,
        intermediate_size=c.intermediate_size,
        vocab_size=c.vocab_size,
        vocab_size_per_layer_input=c.vocab_size_per_layer_input,
        hidden_size_per_layer_input=c.hidden_size_per_layer_input,
        num_kv_shared_layers=c.num_kv_shared_layers,
        sliding_window=c.sliding_window,
        layer_types=list(c.layer_types),
        use_double_wide_mlp=c.use_double_wide_mlp,
        final_logit_softcapping=c.final_logit_softcapping,
        rms_norm_eps=c.rms_norm_eps,
        max_position_embeddings=c.max_position_embeddings,
        tie_word_embeddings=c.tie_word_embeddings,
        enable_moe_block=bool(text.get("enable_moe_block", False)),
        attention_k_eq_v=bool(text.get("attention_k_eq_v", False)),
    )
    if not text.get("rope_parameters"):
        text["rope_parameters"] = {
            "full_attention": {
                "rope_type": "proportional",
                "rope_theta": c.rope_theta_full,
                "partial_rotary_factor": c.partial_rotary_factor_full,
            },
            "sliding_attention": {"rope_type": "default", "rope_theta": c.rope_theta_sliding},
        }
    text.pop("per_layer_config", None)
    top = {k: v for k, v in raw.items() if k not in ("text_config", "vision_config", "audio_config")}
    if raw.get("model_type") == "gemma4_text":
        top = {}
    top.update(
        model_type="gemma4",
        architectures=["Gemma4ForConditionalGeneration"],
        vocab_size=c.vocab_size,
        tie_word_embeddings=c.tie_word_embeddings,
        eos_token_id=c.eos_token_id,
        text_config=text,
    )
    return top


def _override(value: str) -> int | str:
    v = str(value).strip().lower()
    if v.isdigit() and int(v) in (2, 3, 4, 5, 6, 8):
        return int(v)
    d = float_dtype(v)
    if d is not None and d.mlx:
        return d.mlx
    raise ConfigError(f"mlx recipe override {value!r}: use bits (2, 3, 4, 5, 6, 8) or bf16 / f16 / f32")


class Plan:
    """What a recipe asks of each mlx-lm module path: bits, or a float dtype to keep it in."""

    def __init__(self, recipe: Any):
        self.bits = recipe.bits
        self.group_size = recipe.group_size or 64
        if self.bits is not None and self.bits not in (2, 3, 4, 5, 6, 8):
            raise ConfigError(f"recipe {recipe.name}: bits {self.bits}; mlx quantizes to 2, 3, 4, 5, 6 or 8 bits")
        dtype = recipe.dtype
        d = float_dtype(dtype) if dtype else None
        self.dtype = d.mlx if d else None
        if dtype and not self.dtype:
            raise ConfigError(f"recipe {recipe.name}: dtype {dtype!r}; use bfloat16, float16 or float32")
        try:
            self.rules = [(re.compile(p), _override(v)) for p, v in recipe.overrides.items()]
        except re.error as e:
            raise ConfigError(f"recipe {recipe.name}: bad override pattern ({e})") from None

    def rule(self, path: str) -> int | str | None:
        for rx, v in self.rules:
            if rx.search(path):
                return v
        return None

    def quant(self, path: str) -> dict[str, Any] | None:
        """Quantization parameters for ``path``, or None to keep it in floats."""
        r = self.rule(path)
        bits = r if isinstance(r, int) else None if isinstance(r, str) else self.bits
        return None if bits is None else {"group_size": self.group_size, "bits": bits, "mode": "affine"}

    def float_dtype(self, path: str, source: str) -> str:
        r = self.rule(path)
        return r if isinstance(r, str) else self.dtype or source

    def predicate(self, kept: list[str]) -> Callable[[str, Any], Any]:
        """mlx-lm's quant_predicate; paths an override keeps in floats are appended to ``kept``."""

        def pred(path: str, module: Any) -> Any:
            if self.rule(path) is None:
                return True  # the recipe's default bits (recorded once in the config)
            q = self.quant(path)
            if q is None:
                kept.append(path)
            return q or False

        return pred


def check_towers(recipe: Any, modalities: tuple[str, ...]) -> None:
    """Refuse, before anything is written, towers this MLX recipe cannot carry (edgekit.backends.mlx.towers)."""
    q = Plan(recipe).quant(PLE_MODULE)
    mlx_towers.check(recipe, modalities, q["bits"] if q else None)


def _source_dtype(ckpt: Checkpoint) -> str:
    name = lossless(ckpt.source_dtypes())
    mlx = DTYPES[name].mlx
    if mlx is None:  # lossless() names a source dtype, all of which MLX holds
        raise ConversionError(f"{ckpt.path}: MLX has no {name} arrays")
    return mlx


def _build_model(ckpt: Checkpoint, config: dict[str, Any]) -> Any:
    """mlx-lm's gemma4 model holding the checkpoint's text tensors, still lazy (nothing read yet)."""
    # deferred: mlx (the mlx extra) loads only when an MLX model is built or run
    import mlx.core as mx
    from mlx_lm.models import gemma4

    model = gemma4.Model(gemma4.ModelArgs.from_dict(config))
    files: dict[Path, Any] = {}  # mx.load: name -> lazy array
    weights = {}
    for short, ref in ckpt.tensors.items():
        if ref.path not in files:
            files[ref.path] = mx.load(str(ref.path))
        weights[HF_PREFIX + short] = files[ref.path][ref.name]
    weights = model.sanitize(weights)
    try:
        model.load_weights(list(weights.items()), strict=True)
    except ValueError as e:
        raise ConversionError(f"{ckpt.path}: mlx-lm's gemma4 does not accept these weights ({e})") from None
    return model


def _cast(model: Any, plan: Plan, source: str) -> None:
    # deferred: mlx (the mlx extra) loads only when an MLX model is built or run
    import mlx.core as mx
    from mlx.utils import tree_map_with_path

    def cast(path: str, v: Any) -> Any:
        if not mx.issubdtype(v.dtype, mx.floating):
            return v
        want = getattr(mx, plan.float_dtype(path.rsplit(".", 1)[0], source))
        return v if v.dtype == want else v.astype(want)

    model.update(tree_map_with_path(cast, model.parameters()))


def _st_name(mlx_name: str) -> str:
    return next(n for n, d in DTYPES.items() if d.mlx == mlx_name)


def _write_ple(ref: Any, dest: Path, q: dict[str, Any] | None, dtype: str) -> int:
    """Stream the PLE table into ``dest`` in mlx-lm's layout; return its size."""
    # deferred: mlx (the mlx extra) loads only when an MLX model is built or run
    import mlx.core as mx
    import numpy as np

    rows, cols = ref.shape
    fdt = _st_name(dtype)
    if q:
        bits, gs = q["bits"], q["group_size"]
        if cols % gs:
            raise ConversionError(f"PLE width {cols} is not a multiple of group size {gs}; pick another group_size")
        parts = [("weight", "U32", cols * bits // 32), ("scales", fdt, cols // gs), ("biases", fdt, cols // gs)]
    else:
        parts = [("weight", fdt, cols)]
    want = getattr(mx, dtype)

    def host(a: Any) -> Any:
        a = a.view(mx.uint16) if a.dtype == mx.bfloat16 else a
        return np.array(a)

    specs = [TensorSpec(f"{PLE_MODULE}.{name}", (rows, c), dt) for name, dt, c in parts]
    with contextlib.closing(SlabWriter(dest, specs)) as w, progress_bar("mlx PLE table", ref.nbytes) as advance:
        r0 = 0
        for chunk in ref.row_chunks(32 << 20):
            x = mx.array(chunk).astype(want)
            arrays = (
                dict(zip(("weight", "scales", "biases"), mx.quantize(x, gs, bits), strict=True)) if q else {"weight": x}
            )
            for name, a in arrays.items():
                w.write_rows(f"{PLE_MODULE}.{name}", r0, host(a))
            r0 += chunk.shape[0]
            advance(chunk.shape[0] * ref.row_bytes)
    return w.size


def convert(ckpt: Checkpoint, recipe: Any, out: Path, modalities: tuple[str, ...] = ()) -> Path:
    """Write the MLX artifact folder ``out`` for ``recipe`` (atomically: all of it or nothing); with
    ``modalities``, the towers too, in mlx-vlm's layout (edgekit.backends.mlx.towers)."""
    require_mlx()
    # deferred: mlx (the mlx extra) loads only when an MLX model is built or run
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_flatten
    from mlx_lm.utils import quantize_model, save_config, save_model

    plan = Plan(recipe)
    config = mlx_config(ckpt)
    source = _source_dtype(ckpt)
    has_ple = "embed_tokens_per_layer.weight" in ckpt.tensors
    model = _build_model(ckpt, config)
    _cast(model, plan, source)
    if plan.bits is not None:
        # quantize_model reports bits per weight on stdout, which belongs to edgekit's results.
        kept: list[str] = []
        with contextlib.redirect_stdout(io.StringIO()) as said:
            model, config = quantize_model(
                model, config, plan.group_size, plan.bits, quant_predicate=plan.predicate(kept)
            )
        log.info("mlx-lm: %s", said.getvalue().strip())
        # mlx-lm would infer these from the missing scales; saying so keeps the config self-describing.
        config["quantization"].update(dict.fromkeys(kept, False))
    text = model.language_model.model
    ple_q = plan.quant(PLE_MODULE) if has_ple else None
    if has_ple:
        # Detach the table before saving: its lazy source is never read here, _write_ple streams it.
        text.embed_tokens_per_layer = nn.Module()
        if "quantization" in config:
            config["quantization"][PLE_MODULE] = ple_q or False
    tower_types = {m: recipe.towers.get(m, "F16") for m in modalities}
    if modalities:
        config.update(mlx_towers.config_part(ckpt, modalities))
        note = f"with towers: {', '.join(modalities)} (mlx-vlm)"
    else:
        note = "text-only: vision/audio towers dropped" if ckpt.dropped else "text-only"
    config["edgekit"] = {
        "source": ckpt.name,
        "recipe": recipe.name,
        "dropped_tensors": len([n for n in ckpt.dropped if not mlx_towers.shipped(n, modalities)]),
        "note": note,
        "ple": {"file": PLE_FILE, "bits": ple_q["bits"] if ple_q else None} if has_ple else None,
    }
    if modalities:
        config["edgekit"]["towers"] = {
            "file": mlx_towers.TOWERS_FILE,
            "modalities": list(modalities),
            "types": tower_types,
        }
    with atomic_dir(Path(out)) as tmp:
        # Materialize one module at a time so each source tensor is freed as soon as its result exists.
        for _, p in tree_flatten(model.parameters()):  # type: ignore[str-unpack]  # (path, array) pairs
            mx.eval(p)
        save_model(tmp, model, donate_model=True)
        if has_ple:
            ple_dtype = plan.float_dtype(PLE_MODULE, source)
            size = _write_ple(ckpt.tensors["embed_tokens_per_layer.weight"], tmp / PLE_FILE, ple_q, ple_dtype)
            index_path = tmp / "model.safetensors.index.json"
            index = json.loads(index_path.read_text())
            for suffix in ("weight", "scales", "biases") if ple_q else ("weight",):
                index["weight_map"][f"{PLE_MODULE}.{suffix}"] = PLE_FILE
            index["metadata"]["total_size"] += size
            index["weight_map"] = dict(sorted(index["weight_map"].items()))
            index_path.write_text(json.dumps(index, indent=4))
        if modalities:
            mlx_towers.write(ckpt, tmp, config, modalities, tower_types)
        save_config(config, tmp / "config.json", keep_vision_config=bool(modalities))
        for name in TOKENIZER_FILES:
            if (ckpt.path / name).is_file():
                shutil.copyfile(ckpt.path / name, tmp / name)
    if ckpt.dropped and not modalities:
        log.info("%s: dropped %d vision/audio tensors (text-only deployment)", Path(out).name, len(ckpt.dropped))
    return Path(out)
