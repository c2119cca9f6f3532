"""Engine runners, one registry keyed by engine name; an artifact's format picks its engine.

Runners import their engine only when constructed, so benching a GGUF never imports mlx.
"""

from __future__ import annotations

from typing import Callable

from ..errors import ArtifactError
from ..registry import Registry
from .base import Measurement, Runner, RunOptions

FORMAT_ENGINE = {"gguf": "llama.cpp", "mlx": "mlx"}


def _llamacpp() -> Runner:
    from .llamacpp import LlamaCppRunner

    return LlamaCppRunner()


def _mlx() -> Runner:
    from .mlx import MlxRunner

    return MlxRunner()


RUNNERS: Registry[Callable[[], Runner]] = Registry("engine")
RUNNERS.register("llama.cpp", _llamacpp)
RUNNERS.register("mlx", _mlx)


def engine_for(fmt: str) -> str:
    try:
        return FORMAT_ENGINE[fmt]
    except KeyError:
        raise ArtifactError(f"no runner for artifact format {fmt!r}; edgekit benches {', '.join(FORMAT_ENGINE)}") from None


__all__ = ["FORMAT_ENGINE", "RUNNERS", "Measurement", "RunOptions", "Runner", "engine_for"]
