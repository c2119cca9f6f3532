"""Quantization recipes (quant/*.toml) as typed dataclasses, one registry keyed by recipe name.

Common keys: name, format, quant, description. Every other key must be one the recipe's format
reads (``Format.recipe_keys``: gguf ftype/overrides, mlx bits/group_size/overrides/dtype); any
other is an error naming the keys it knows, so a typo never builds silently with a default.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..backends.formats import FORMATS
from ..backends.gguf.ftypes import type_recipes
from ..core.errors import ConfigError
from ..core.fields import Fields, read_toml
from ..core.names import check_plain_name
from ..core.registry import Registry, data_dir
from ..model.towers import MODALITIES, TOWER_TYPES
from .recipe import Recipe

if TYPE_CHECKING:
    from ..backends.format import Format


def check_names(r: Recipe, where: str) -> None:
    """name and quant become file names (<model>-<quant>.gguf): each must be one plain name, never a
    path. load_recipe checks it, and build again for recipes registered in code."""
    for key in ("name", "quant"):
        check_plain_name(getattr(r, key), key, where, "fix the recipe")


def check_label(r: Recipe, where: str, fmt: Format) -> None:
    """The quant label names the artifact (<model>-<quant>.gguf) and the manifest's quant: it must be what
    the settings write (a gguf ftype's type, an MLX recipe's bits), optionally with a -suffix."""
    rule = fmt.recipe_label(r)
    if rule is None:
        return
    label, want = r.quant.upper(), rule.want.upper()
    if label != want and not label.startswith(want + "-"):
        raise ConfigError(f"{where}: quant {r.quant!r} does not match {rule.what}; {rule.fix}")


def load_recipe(path: Path) -> Recipe:
    raw = read_toml(path, ConfigError, "recipe")
    f = Fields(raw, str(path), "fix the TOML (see quant/q4_0.toml for the fields)", ConfigError)
    fmt = raw.get("format")
    if not isinstance(fmt, str) or fmt not in FORMATS:
        raise ConfigError(f"{path}: format {fmt!r}; a recipe's format is one of: {', '.join(FORMATS)}")
    known = COMMON_KEYS | FORMATS.get(fmt).recipe_keys
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(
            f"{path}: unknown key {unknown[0]!r} for a {fmt} recipe; known keys: {', '.join(sorted(known))}"
        )
    overrides = f.table("overrides", {})
    for k, v in overrides.items():
        if type(v) not in (str, int):
            raise f.fail(f"overrides.{k!r}", 'a type name ("q8_0", "bf16") or bits (8)', v)
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
        towers=_tower_types(raw.get("towers", {}), str(path)),
    )
    check_names(r, str(path))
    check_label(r, str(path), FORMATS.get(fmt))
    if r.vocab is not None and (isinstance(r.vocab, bool) or not isinstance(r.vocab, int) or r.vocab <= 0):
        raise ConfigError(f"{path}: vocab = {r.vocab!r}; give a positive number of tokens (e.g. vocab = 65536)")
    return r


def _tower_types(raw: Any, where: str) -> dict[str, str]:
    if not isinstance(raw, dict):
        raise ConfigError(f'{where}: towers must be a table like {{vision = "Q8_0", audio = "BF16"}}')
    for m, t in raw.items():
        if m not in MODALITIES:
            raise ConfigError(f"{where}: towers.{m}: unknown modality; choose from {', '.join(MODALITIES)}")
        if not isinstance(t, str) or t.upper() not in TOWER_TYPES:
            raise ConfigError(f"{where}: towers.{m} = {t!r}; choose one of {', '.join(TOWER_TYPES)}")
    return {m: t.upper() for m, t in raw.items()}


# vocab (a lean vocabulary, edgekit/vocab) is a checkpoint transform before any format's converter;
# towers (the projector's types) applies to whatever format builds the towers.
COMMON_KEYS = frozenset({"name", "format", "quant", "description", "vocab", "towers"})


def _load_all() -> dict[str, Recipe]:
    toml = {r.name: r for r in (load_recipe(p) for p in sorted(data_dir("quant").glob("*.toml")))}
    # Every llama.cpp file type by llama-quantize's name (q5_k_m, iq3_xxs ...); a TOML of the same name wins.
    return {**type_recipes(Recipe(name="", format="gguf", quant="")), **toml}


RECIPES: Registry[Recipe] = Registry("recipe")
RECIPES.lazy(_load_all)


def get_recipe(name: str) -> Recipe:
    """A recipe by name (a TOML's, or a llama.cpp type's: q5_k_m), or ``RECIPE+TYPE``: RECIPE's tensor
    overrides and vocabulary on top of llama.cpp type TYPE (``iq4_xs-edge+q5_k_m``: Q5_K_M layers with
    the edge recipe's Q4_K head and Q6_K per-layer table)."""
    base, plus, typ = name.rpartition("+")
    if not plus:
        return RECIPES.get(name)
    r, t = RECIPES.get(base), RECIPES.get(typ)
    if r.format != "gguf" or t.format != "gguf" or t.overrides or t.vocab is not None:
        raise ConfigError(f"{name}: RECIPE+TYPE takes a gguf recipe and a llama.cpp type (e.g. iq4_xs-edge+q5_k_m)")
    return replace(
        r,
        name=name,
        quant=f"{t.quant}+{r.name}",
        ftype=t.ftype,
        description=f"{r.name}'s overrides on llama.cpp {t.quant}",
    )
