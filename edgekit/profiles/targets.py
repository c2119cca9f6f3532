"""Target profiles (targets/*.toml) as typed dataclasses: what a device runs and what it can afford."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.errors import ConfigError, EdgekitError
from ..core.fields import Fields, read_toml, shown
from ..core.names import check_plain_name
from ..core.registry import Registry, data_dir
from ..model.towers import MODALITIES


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    engine: str  # default runner: "llama.cpp" | "mlx"
    quants: tuple[str, ...]  # recipes `edgekit build` makes by default (first = recommended)
    threads: int
    context: int
    memory_budget_gb: float
    bandwidth_gbs: float
    alternatives: tuple[str, ...] = ()
    runtime: dict[str, Any] = field(default_factory=dict)  # engine knobs: use_mmap, kv_type, repack, ...
    notes: str = ""
    # [bench]: how `edgekit bench` measures for this device
    enforce_limit: bool = False  # run each child inside a memory cgroup at the budget (bench --limit)
    page_size: int = 0  # the device kernel's page size when larger than 4 KB (pi5: 16384)
    modalities: tuple[str, ...] = ()  # towers `edgekit build` ships beside the text model ("vision", "audio")
    # the recipes in recommended order for a build with towers, where it differs from ``quants`` (pi5: the
    # full text + a tower on demand is over its budget, the lean text fits)
    quants_with_towers: tuple[str, ...] = ()

    @property
    def memory_budget_bytes(self) -> int:
        return int(self.memory_budget_gb * 1e9)

    def build_quants(self, modalities: tuple[str, ...]) -> tuple[str, ...]:
        """The recipes a build without --quant makes, recommended first: ``quants_with_towers`` when the
        build ships towers and the profile names them, else ``quants``."""
        return self.quants_with_towers if modalities and self.quants_with_towers else self.quants


# Every key a profile may hold (a typo such as `threds` is an error, never a silent default).
KEYS = frozenset(
    {
        "name",
        "extends",
        "description",
        "engine",
        "quants",
        "threads",
        "context",
        "memory_budget_gb",
        "bandwidth_gbs",
        "alternatives",
        "runtime",
        "notes",
        "bench",
        "modalities",
        "quants_with_towers",
    }
)
BENCH_KEYS = frozenset({"enforce_limit", "page_size"})


def _check_keys(raw: dict[str, Any], path: Path) -> None:
    """Unknown keys at the top and in [bench] ([runtime] is the engines' to check: resolve.profile_knobs)."""
    bench = raw.get("bench")
    for prefix, keys, known in (("", raw, KEYS), ("bench.", bench if isinstance(bench, dict) else {}, BENCH_KEYS)):
        for key in keys:
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f"did you mean {prefix}{close[0]!r}? " if close else ""
                raise ConfigError(f"{path}: unknown key {prefix}{key!r}; {hint}known: {', '.join(sorted(known))}")


def _raw(path: Path, seen: tuple[str, ...] = ()) -> tuple[dict[str, Any], dict[str, Path]]:
    """The profile's fields with ``extends = "other"`` resolved: the other profile (a file beside this
    one) first, this one's fields over it, its [runtime] and [bench] merged knob by knob. A variant
    of a device (pi5-lean) then states only what differs, and a budget or page size fixed in the base
    reaches every variant. Also returns the file each field (``key``, ``bench.key``) came from, so a
    bad value is reported against the file that holds it."""
    raw = read_toml(path, ConfigError, "target profile")
    _check_keys(raw, path)
    base = raw.pop("extends", None)
    if base is None:
        return raw, _origins(raw, path)
    where = f"{path}: extends"
    check_plain_name(base, "extends", str(path), 'name a profile in the same folder (e.g. extends = "pi5")')
    if base in seen or base == path.stem:
        raise ConfigError(
            f"{where} {base!r} makes a loop ({' -> '.join((*seen, path.stem, base))}); a profile cannot extend itself"
        )
    base_path = path.with_name(base + ".toml")
    if not base_path.is_file():
        raise ConfigError(f"{where} {base!r}: no {base_path.name} beside it; name a profile in {path.parent}")
    out, origins = _raw(base_path, (*seen, path.stem))
    out.pop("name", None)  # the variant's own name (or its file's stem), never the base's
    for key, value in raw.items():
        merge = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = {**out[key], **value} if merge else value
    origins.update(_origins(raw, path))
    return out, origins


def _origins(raw: dict[str, Any], path: Path) -> dict[str, Path]:
    out = dict.fromkeys(raw, path)
    for key, value in raw.items():
        if isinstance(value, dict):
            out.update({f"{key}.{k}": path for k in value})
    return out


class _Sourced(Fields):
    """Fields whose errors name the file each value came from (a base profile's, through extends)."""

    def __init__(self, raw: Any, origins: dict[str, Path], where: str, fix: str, path: str = ""):
        super().__init__(raw, where, fix, ConfigError, path)
        self.origins = origins

    def fail(self, key: str, must: str, value: Any) -> EdgekitError:
        where = self.origins.get(self.name(key), self.where)
        return self.error(f"{where}: {self.name(key)} must be {must}, not {shown(value)}; {self.fix}")

    def sub(self, key: str) -> _Sourced:
        return _Sourced(self.table(key, {}), self.origins, self.where, self.fix, self.name(key))


def load_target(path: Path) -> Target:
    raw, origins = _raw(path)
    f = _Sourced(raw, origins, str(path), "fix the TOML (see targets/pi5.toml for the fields)")
    bench = f.sub("bench")
    return Target(
        # The name is the build folder's (dist/<model>/<target>/): one plain name, never a path.
        name=check_plain_name(f.str("name", path.stem), "name", str(path), "fix the target profile"),
        description=f.str("description", ""),
        engine=f.str("engine"),
        quants=tuple(f.strs("quants")),
        threads=f.int("threads"),
        context=f.int("context"),
        memory_budget_gb=f.number("memory_budget_gb"),
        bandwidth_gbs=f.number("bandwidth_gbs"),
        alternatives=tuple(f.strs("alternatives", [])),
        # The knobs' own types are the runners' to check (their schema); here only that it is a table.
        runtime=dict(f.table("runtime", {})),
        notes=f.str("notes", ""),
        enforce_limit=bench.bool("enforce_limit", False),
        page_size=bench.int("page_size", 0, minimum=0),
        modalities=parse_modalities(f.strs("modalities", []), str(path)),
        quants_with_towers=tuple(f.strs("quants_with_towers", [])),
    )


def parse_modalities(names: list[str] | tuple[str, ...], where: str) -> tuple[str, ...]:
    """Modalities in canonical order ("text" is always there and may be named); ConfigError for others."""

    bad = [m for m in names if m not in (*MODALITIES, "text")]
    if bad:
        raise ConfigError(f"{where}: modality {bad[0]!r}; choose from text, {', '.join(MODALITIES)}")
    return tuple(m for m in MODALITIES if m in names)


def _load_all() -> dict[str, Target]:
    out: dict[str, Target] = {}
    where: dict[str, Path] = {}
    for p in sorted(data_dir("targets").glob("*.toml")):
        if p.stem.startswith("lab"):
            continue  # lab inventories live beside the profiles but are not profiles
        t = load_target(p)
        if t.name in out:  # one would silently stand in for the other
            raise ConfigError(
                f"{p}: name {t.name!r} is also the name of {where[t.name]}; two profiles cannot share "
                "a name, rename one"
            )
        out[t.name], where[t.name] = t, p
    return out


TARGETS: Registry[Target] = Registry("target")
TARGETS.lazy(_load_all)
