"""Target profiles (targets/*.toml) as typed dataclasses: what a device runs and what it can afford."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .registry import Registry, data_dir


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


def load_target(path: Path) -> Target:
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"{path}: unreadable target profile ({e}); fix the TOML") from None
    try:
        return Target(
            name=raw.get("name", path.stem),
            description=raw.get("description", ""),
            engine=raw["engine"],
            quants=tuple(raw["quants"]),
            threads=int(raw["threads"]),
            context=int(raw["context"]),
            memory_budget_gb=float(raw["memory_budget_gb"]),
            bandwidth_gbs=float(raw["bandwidth_gbs"]),
            alternatives=tuple(raw.get("alternatives", ())),
            runtime=dict(raw.get("runtime", {})),
            notes=raw.get("notes", ""),
            enforce_limit=bool(raw.get("bench", {}).get("enforce_limit", False)),
            page_size=int(raw.get("bench", {}).get("page_size", 0)),
        )
    except KeyError as e:
        raise ConfigError(f"{path}: target profile lacks {e.args[0]!r}; see targets/pi5.toml for the fields") from None


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
