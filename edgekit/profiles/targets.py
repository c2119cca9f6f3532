"""Target profiles (targets/*.toml) as typed dataclasses: what a device runs and what it can afford."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.errors import ConfigError
from ..core.fields import Fields, read_toml
from ..core.names import check_plain_name
from ..core.registry import Registry, data_dir


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    engine: str                       # default runner: "llama.cpp" | "mlx"
    quants: tuple[str, ...]           # recipes `edgekit build` makes by default (first = recommended)
    threads: int
    context: int
    memory_budget_gb: float
    bandwidth_gbs: float
    alternatives: tuple[str, ...] = ()
    runtime: dict[str, Any] = field(default_factory=dict)   # engine knobs: use_mmap, kv_type, repack, ...
    notes: str = ""
    # [bench]: how `edgekit bench` measures for this device
    enforce_limit: bool = False       # run each child inside a memory cgroup at the budget (bench --limit)
    page_size: int = 0                # the device kernel's page size when larger than 4 KB (pi5: 16384)

    @property
    def memory_budget_bytes(self) -> int:
        return int(self.memory_budget_gb * 1e9)


def _raw(path: Path, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """The profile's fields with ``extends = "other"`` resolved: the other profile (a file beside this
    one) first, this one's fields over it, its [runtime] and [bench] merged knob by knob. A variant
    of a device (pi5-lean) then states only what differs, and a budget or page size fixed in the base
    reaches every variant."""
    raw = read_toml(path, ConfigError, "target profile")
    base = raw.pop("extends", None)
    if base is None:
        return raw
    where = f"{path}: extends"
    check_plain_name(base, "extends", str(path), "name a profile in the same folder (e.g. extends = \"pi5\")")
    if base in seen or base == path.stem:
        raise ConfigError(f"{where} {base!r} makes a loop ({' -> '.join((*seen, path.stem, base))}); "
                          "a profile cannot extend itself")
    base_path = path.with_name(base + ".toml")
    if not base_path.is_file():
        raise ConfigError(f"{where} {base!r}: no {base_path.name} beside it; name a profile in {path.parent}")
    out = _raw(base_path, (*seen, path.stem))
    out.pop("name", None)   # the variant's own name (or its file's stem), never the base's
    for key, value in raw.items():
        merge = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = {**out[key], **value} if merge else value
    return out


def load_target(path: Path) -> Target:
    raw = _raw(path)
    f = Fields(raw, str(path), "fix the TOML (see targets/pi5.toml for the fields)", ConfigError)
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
    )


def _load_all() -> dict[str, Target]:
    out: dict[str, Target] = {}
    for p in sorted(data_dir("targets").glob("*.toml")):
        if p.stem.startswith("lab"):
            continue  # lab inventories live beside the profiles but are not profiles
        t = load_target(p)
        out[t.name] = t
    return out


TARGETS: Registry[Target] = Registry("target")
TARGETS.lazy(_load_all)
