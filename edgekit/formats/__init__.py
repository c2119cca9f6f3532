"""Output formats, one module each, registered by the recipe ``format`` string they build.

A format builder turns a checkpoint into artifacts for one recipe:
    builder(ckpt, recipe, target, out_dir, cache) -> Artifact
It writes only under ``out_dir`` through ``edgekit.fsutil`` (temp name + rename) and may reuse
intermediates across recipes of one build through ``cache`` (a dict owned by the build).
Each format also has ``check(recipe)``, which raises what its builder would raise up front (engine
missing, recipe it cannot follow) and writes nothing: a build runs every check before it touches
the output folder.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Protocol

from ..registry import Registry


class FormatBuilder(Protocol):
    def __call__(self, ckpt: Any, recipe: Any, target: Any, out_dir: Any, cache: dict[str, Any]) -> Any: ...


FORMATS: Registry[Callable[..., Any]] = Registry("format")
CHECKS: Registry[Callable[[Any], None]] = Registry("format")


@functools.cache
def _modules() -> dict[str, Any]:
    # Imported lazily so `edgekit build --quant q4_0` never imports mlx, and vice versa.
    out: dict[str, Any] = {}
    from . import gguf
    out["gguf"] = gguf
    try:
        from . import mlx
        out["mlx"] = mlx
    except ImportError:
        pass
    return out


FORMATS.lazy(lambda: {name: m.build_artifact for name, m in _modules().items()})
CHECKS.lazy(lambda: {name: m.check for name, m in _modules().items()})
