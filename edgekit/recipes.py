"""Quantization recipes (quant/*.toml) as typed dataclasses, one registry keyed by recipe name."""

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
    # Lean vocabulary: keep this many tokens (edgekit/vocab); None keeps the full vocabulary.
    vocab: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        d = {"name": self.name, "format": self.format, "quant": self.quant}
        for k in ("ftype", "bits", "group_size", "vocab"):
            if getattr(self, k) is not None:
                d[k] = getattr(self, k)
        if self.overrides:
            d["overrides"] = dict(self.overrides)
        if self.extra:
            d["extra"] = dict(self.extra)
        return d


def load_recipe(path: Path) -> Recipe:
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"{path}: unreadable recipe ({e}); fix the TOML") from None
    known = {"name", "format", "quant", "description", "ftype", "overrides", "bits", "group_size", "vocab"}
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
            vocab=raw.get("vocab"),
            extra={k: v for k, v in raw.items() if k not in known},
        )
    except KeyError as e:
        raise ConfigError(f"{path}: recipe lacks {e.args[0]!r}; see quant/q4_0.toml for the fields") from None
    if r.vocab is not None and (isinstance(r.vocab, bool) or not isinstance(r.vocab, int) or r.vocab <= 0):
        raise ConfigError(f"{path}: vocab = {r.vocab!r}; give a positive number of tokens (e.g. vocab = 65536)")
    if r.format == "gguf" and not r.ftype:
        raise ConfigError(f"{path}: a gguf recipe needs ftype (e.g. \"MOSTLY_Q4_0\")")
    return r


def _load_all() -> dict[str, Recipe]:
    return {r.name: r for r in (load_recipe(p) for p in sorted(data_dir("quant").glob("*.toml")))}


RECIPES: Registry[Recipe] = Registry("recipe")
RECIPES.lazy(_load_all)
