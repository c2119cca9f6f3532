"""Streaming generation for ``edgekit run`` and ``edgekit serve``: a backend's generator, opened by name.

The generator protocol, its request and event types and the engine-neutral scheduler live in
edgekit.backends.generator; each backend's generator in its package (backends/gguf/generator.py,
backends/mlx/generator.py), registered in edgekit.backends.registry.BACKENDS.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..backends.generator import (
    REPEAT_LAST_N,
    Event,
    Generator,
    GenOptions,
    GenRequest,
    PromptTooLong,
    QueueFull,
    Sampling,
)
from ..backends.registry import BACKENDS
from ..backends.runner import RunOptions


def open_engine(
    path: Path,
    engine: str,
    opts: RunOptions,
    slots: int = 1,
    max_queue: int = 16,
    prefix_file: Optional[Path] = None,
    prefix_key: str = "",
) -> Generator:
    """The generator of backend ``engine`` (a BACKENDS name) with ``opts.knobs`` already typed by its schema
    (a ConfigError when it cannot run ``slots`` requests at once)."""
    return BACKENDS.get(engine).generator(Path(path), opts, GenOptions(slots, max_queue, prefix_file, prefix_key))


__all__ = [
    "REPEAT_LAST_N",
    "Event",
    "GenOptions",
    "GenRequest",
    "Generator",
    "PromptTooLong",
    "QueueFull",
    "Sampling",
    "open_engine",
]
