"""Quantization recipes (quant/*.toml) as typed dataclasses, one registry keyed by recipe name.

Common keys: name, format, quant, description. Every other key must be one the recipe's format
reads (``Format.recipe_keys``: gguf ftype/overrides, mlx bits/group_size/overrides/dtype); any
other is an error naming the keys it knows, so a typo never builds silently with a default.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .registry import Registry, data_dir


@dataclass(frozen=True)
class Recipe:
    name: str              # what the CLI shows: q4_0, q4_k_m, mlx-4bit, ...
    format: str            # "gguf" | "mlx"
    quant: str             # label in the manifest: Q4_0, Q4_K_M, 4bit-g64, ...
    description: str = ""
    # gguf: llama_ftype name (e.g. "MOSTLY_Q4_0", or "ALL_F32"/"MOSTLY_F16" for unquantized)
    ftype: str | None = None
    # tensor-name regex → type name: gguf ggml types ("q8_0", "f16") or mlx bits ("8", "bf16")
    overrides: dict[str, str] = field(default_factory=dict)
    # mlx: bits and group size
    bits: int | None = None
    group_size: int | None = None
    # mlx: float type of what stays unquantized (bf16, f16, f32); default: the source's
    dtype: str | None = None
    # Lean vocabulary, any format: keep this many tokens (edgekit/vocab); None keeps the full vocabulary.
    vocab: int | None = None

    def to_json(self) -> dict[str, Any]:
        d = {"name": self.name, "format": self.format, "quant": self.quant}
        for k in ("ftype", "bits", "group_size", "dtype", "vocab"):
            if getattr(self, k) is not None:
                d[k] = getattr(self, k)
        if self.overrides:
            d["overrides"] = dict(self.overrides)
        return d


def load_recipe(path: Path) -> Recipe:
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"{path}: unreadable recipe ({e}); fix the TOML") from None
    from .formats import FORMATS

    fmt = raw.get("format")
    if fmt not in FORMATS:
        raise ConfigError(f"{path}: format {fmt!r}; a recipe's format is one of: {', '.join(FORMATS)}")
    known = COMMON_KEYS | FORMATS.get(fmt).recipe_keys
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{path}: unknown key {unknown[0]!r} for a {fmt} recipe; known keys: {', '.join(sorted(known))}")
    try:
        r = Recipe(
            name=raw.get("name", path.stem),
            format=raw["format"],
            quant=raw["quant"],
            description=raw.get("description", ""),
            ftype=raw.get("ftype"),
            overrides={str(k): str(v) for k, v in raw.get("overrides", {}).items()},
            bits=raw.get("bits"),
            group_size=raw.get("group_size"),
            dtype=raw.get("dtype"),
            vocab=raw.get("vocab"),
        )
    except KeyError as e:
        raise ConfigError(f"{path}: recipe lacks {e.args[0]!r}; see quant/q4_0.toml for the fields") from None
    if r.vocab is not None and (isinstance(r.vocab, bool) or not isinstance(r.vocab, int) or r.vocab <= 0):
        raise ConfigError(f"{path}: vocab = {r.vocab!r}; give a positive number of tokens (e.g. vocab = 65536)")
    return r


# vocab (a lean vocabulary, edgekit/vocab) is a checkpoint transform before any format's converter.
COMMON_KEYS = frozenset({"name", "format", "quant", "description", "vocab"})


def _load_all() -> dict[str, Recipe]:
    return {r.name: r for r in (load_recipe(p) for p in sorted(data_dir("quant").glob("*.toml")))}


RECIPES: Registry[Recipe] = Registry("recipe")
RECIPES.lazy(_load_all)
