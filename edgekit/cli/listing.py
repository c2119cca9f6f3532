"""`edgekit list`: what was built, as `ollama list` shows what was pulled (name, format, quant, size,
modified), read from the manifests under a folder; and the rows of `targets` and `recipes`."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

from ..builder.manifest import MANIFEST, read_manifest
from ..core.errors import ConfigError
from ..profiles import recipes
from ..profiles.targets import TARGETS

MAX_DEPTH = 4  # dist/<model>/<target>/manifest.json is depth 2; a little slack for nested roots


def _manifests(root: Path) -> Iterator[Path]:
    base = len(root.parts)
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        if MANIFEST in filenames:
            yield here
            dirnames[:] = []  # artifacts (MLX folders) live inside: not builds of their own
        elif len(here.parts) - base >= MAX_DEPTH:
            dirnames[:] = []
        dirnames.sort()


def ago(seconds: float) -> str:
    """ "3 minutes ago", as ollama list writes it."""
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            n = int(seconds // size)
            return f"{n} {unit}{'s' if n > 1 else ''} ago"
    return "just now"


def built(root: Path) -> list[list[Any]]:
    """One row per artifact under ``root``: name (the path to pass to run/serve/bench), format, quant,
    size in MB (1e6 bytes, as bench), modified (the manifest's time). Broken manifests get a row saying so."""
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"{root}: no such folder; build first (`edgekit build --model CKPT`) or pass the folder")
    rows, now = [], time.time()
    for folder in _manifests(root):
        try:
            m = read_manifest(folder)
            when = ago(now - (folder / MANIFEST).stat().st_mtime)
        except Exception as e:  # one unreadable manifest must not hide the others
            rows.append([str(folder), "?", "?", "?", f"unreadable: {str(e)[:60]}"])
            continue
        for i, a in enumerate(m.artifacts):
            rows.append(
                [str(folder / a.file) + (" *" if i == 0 else ""), a.format, a.quant, f"{a.bytes / 1e6:.1f} MB", when]
            )
    return rows


def target_rows(names: list[str]) -> list[list[Any]]:
    return [
        [t.name, t.engine, ",".join(t.quants), t.threads, t.context, f"{t.memory_budget_gb:g} GB", t.description]
        for t in (TARGETS.get(n) for n in names)
    ]


def target_detail(name: str) -> str:
    """One profile: every field, the [runtime] knobs included."""

    t = TARGETS.get(name)
    width = max(len(f.name) for f in fields(t))
    lines = []
    for f in fields(t):
        v = getattr(t, f.name)
        if isinstance(v, dict):
            v = ", ".join(f"{k}={x}" for k, x in v.items()) or "-"
        elif isinstance(v, tuple):
            v = ", ".join(map(str, v)) or "-"
        lines.append(f"{f.name.ljust(width)}  {v}")
    return "\n".join(lines) + "\n"


def recipe_rows() -> list[list[Any]]:
    reg = recipes.RECIPES  # read at call time: tests swap the module's registry for one of bad recipes
    return [[r.name, r.format, r.quant, r.description] for r in (reg.get(n) for n in reg)]
