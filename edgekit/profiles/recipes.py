"""Quantization recipes (quant/*.toml) as typed dataclasses, one registry keyed by recipe name.

Common keys: name, format, quant, description. Every other key must be one the recipe's format
reads (``Format.recipe_keys``: gguf ftype/overrides, mlx bits/group_size/overrides/dtype); any
other is an error naming the keys it knows, so a typo never builds silently with a default.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.errors import ConfigError
from ..core.fields import Fields, read_toml
from ..core.names import check_plain_name
from ..core.registry import Registry, data_dir


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


def check_names(r: Recipe, where: str) -> None:
    """name and quant become file names (<model>-<quant>.gguf): each must be one plain name, never a
    path. load_recipe checks it, and build again for recipes registered in code."""
    for key in ("name", "quant"):
        check_plain_name(getattr(r, key), key, where, "fix the recipe")


def load_recipe(path: Path) -> Recipe:
    from ..backends.formats import FORMATS

    raw = read_toml(path, ConfigError, "recipe")
    f = Fields(raw, str(path), "fix the TOML (see quant/q4_0.toml for the fields)", ConfigError)
    fmt = raw.get("format")
    if fmt not in FORMATS:
        raise ConfigError(f"{path}: format {fmt!r}; a recipe's format is one of: {', '.join(FORMATS)}")
    known = COMMON_KEYS | FORMATS.get(fmt).recipe_keys
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{path}: unknown key {unknown[0]!r} for a {fmt} recipe; known keys: {', '.join(sorted(known))}")
    overrides = f.table("overrides", {})
    for k, v in overrides.items():
        if type(v) not in (str, int):
            raise f.fail(f"overrides.{k!r}", "a type name (\"q8_0\", \"bf16\") or bits (8)", v)
    r = Recipe(
        name=f.str("name", path.stem),
        format=fmt,
        quant=f.str("quant"),
        description=f.str("description", ""),
        ftype=f.str("ftype", None),
        overrides={str(k): str(v) for k, v in overrides.items()},
        bits=f.int("bits", None),
        group_size=f.int("group_size", None),
        dtype=f.str("dtype", None),
        vocab=raw.get("vocab"),
    )
    check_names(r, str(path))
    if r.vocab is not None and (isinstance(r.vocab, bool) or not isinstance(r.vocab, int) or r.vocab <= 0):
        raise ConfigError(f"{path}: vocab = {r.vocab!r}; give a positive number of tokens (e.g. vocab = 65536)")
    return r


# vocab (a lean vocabulary, edgekit/vocab) is a checkpoint transform before any format's converter.
COMMON_KEYS = frozenset({"name", "format", "quant", "description", "vocab"})


def _load_all() -> dict[str, Recipe]:
    return {r.name: r for r in (load_recipe(p) for p in sorted(data_dir("quant").glob("*.toml")))}


RECIPES: Registry[Recipe] = Registry("recipe")
RECIPES.lazy(_load_all)
