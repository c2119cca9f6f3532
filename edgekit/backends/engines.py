"""ENGINES: the backends by engine name (edgekit.backends.registry.BACKENDS under the name bench, eval and
serve use). An ``Engine`` is a ``Backend``: its knob schema, the version key the manifest records, its
runner (``make``), generator and logits source; runners import their engine library only when made,
so benching a GGUF never imports mlx."""

from __future__ import annotations

from .backend import Backend
from .registry import BACKENDS
from .runner import Measurement, Runner, RunOptions

ENGINES = BACKENDS
Engine = Backend

__all__ = ["ENGINES", "Engine", "Measurement", "RunOptions", "Runner"]
