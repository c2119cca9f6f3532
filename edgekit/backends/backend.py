"""One backend, one object: everything edgekit knows about an engine and its artifacts.

A ``Backend`` is registered in ``edgekit.backends.registry.BACKENDS`` under the engine name the CLI and
records show ("llama.cpp", "mlx"). It holds the artifact ``format`` (which checks recipes, converts a
checkpoint in ``Format.build`` and reads artifacts back), the engine's knob schema, and how to make its
three engine-side objects: the ``runner`` bench times (backends/runner.py), the ``generator`` run and
serve stream from (backends/generator.py) and the ``logits`` source eval scores (backends/logits.py).

How to add a backend: a package edgekit/backends/<name>/ with format.py, runner.py, generator.py and
logits.py (engine libraries imported when an object is made, so listing backends imports none) and a
backend.py holding its ``BACKEND``, listed in registry.py. A backend outside the package (a plugin, or
the test suite's fake one) calls ``BACKENDS.register`` from a module named in $EDGEKIT_PLUGINS.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

from ..profiles.knobs import Schema
from .bench_media import MediaBench
from .format import Format
from .generator import MakeGenerator
from .logits import MakeLogitsSource
from .runner import Runner


@dataclass(frozen=True)
class Backend:
    name: str  # the engine name: --engine, records' "engine", a format's ``engine``
    format: Format  # its artifacts (Format.build is the converter)
    knobs: Schema  # a target's [runtime] and --set, typed
    version_key: str  # the key of edgekit.builder.manifest.versions() naming its library
    runner: Callable[[], Runner]
    generator: MakeGenerator
    logits: MakeLogitsSource
    block: tuple[str, ...] = ()  # modules its processes treat as absent (the bench child, serve --block)
    max_ctx: Optional[int] = None  # the longest context the engine can represent
    prefix_cache: bool = False  # the generator keeps a shared prompt prefix in a file (serve --prefix-cache)
    threads: bool = True  # the engine takes a thread count (MLX on CPU has none: records say None)
    # opens the towers beside a served session for run/serve with media: (session, --mmproj or None,
    # serve.media_parts.MediaLimits) -> a projector (serve/towers.py says what it gives), or None when the
    # artifact has no towers; None here: the engine runs text only
    projector: Optional[Callable[..., Any]] = None
    # `bench --image/--audio` on this engine (backends/bench_media.py: its towers modes, where its towers
    # are, how they load, encode and free, how its runner evaluates a prompt with a medium); None: refused
    bench_media: Optional[MediaBench] = None

    def __post_init__(self) -> None:
        if self.format.engine != self.name:
            raise ValueError(f"backend {self.name}: its format {self.format.name} names engine {self.format.engine}")

    def make(self) -> Runner:
        """A fresh runner (nothing loaded; the engine library is imported here)."""
        return self.runner()
