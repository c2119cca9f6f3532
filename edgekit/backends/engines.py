"""Engines, one object each, in one registry keyed by the engine name the CLI and records show.

An ``Engine`` knows its knob schema, the version key the manifest records for it, and how to make
its runner; runners import their engine library only when made, so benching a GGUF never imports
mlx. A format names the engine that runs its artifacts (``Format.engine``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

from ..core.registry import Registry
from ..profiles.knobs import Schema
from .gguf.runner import KNOBS as LLAMACPP_KNOBS
from .gguf.runner import N_CTX_MAX, LlamaCppRunner
from .mlx.runner import KNOBS as MLX_KNOBS
from .mlx.runner import MlxRunner
from .runner import Measurement, Runner, RunOptions


@dataclass(frozen=True)
class Engine:
    name: str
    knobs: Schema
    version_key: str  # the key of edgekit.builder.manifest.versions() naming its library
    make: Callable[[], Runner]
    block: tuple[str, ...] = ()  # modules its bench child treats as absent
    max_ctx: Optional[int] = None  # the longest context the engine can represent


def _llamacpp() -> Runner:
    return LlamaCppRunner()


def _mlx() -> Runner:
    return MlxRunner()


ENGINES: Registry[Engine] = Registry("engine")
ENGINES.register("llama.cpp", Engine("llama.cpp", LLAMACPP_KNOBS, "llama-cpp-python", _llamacpp, max_ctx=N_CTX_MAX))
# mlx-lm imports transformers, which imports torch whenever it is installed (a dev venv): ≈180 MB
# resident that a device running edgekit[mlx] does not have, for nothing the runner uses (it feeds
# token ids); E2B 4-bit at kv_fill 2044 measured 1,625 MB with it. transformers treats a blocked
# torch as absent.
ENGINES.register("mlx", Engine("mlx", MLX_KNOBS, "mlx", _mlx, block=("torch",)))

__all__ = ["ENGINES", "Engine", "Measurement", "RunOptions", "Runner"]
