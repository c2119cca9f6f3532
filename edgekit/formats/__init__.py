"""Output formats, one module each, registered by the recipe ``format`` string they build.

A format builder turns a checkpoint into artifacts for one recipe:
    builder(ckpt, recipe, target, out_dir, cache) -> Artifact
It writes only under ``out_dir`` through ``edgekit.fsutil`` (temp name + rename) and may reuse
intermediates across recipes of one build through ``cache`` (a dict owned by the build).
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

from ..registry import Registry


class FormatBuilder(Protocol):
    def __call__(self, ckpt: Any, recipe: Any, target: Any, out_dir: Any, cache: dict[str, Any]) -> Any: ...


FORMATS: Registry[Callable[..., Any]] = Registry("format")


def _load() -> dict[str, Callable[..., Any]]:
    # Imported lazily so `edgekit build --quant q4_0` never imports mlx, and vice versa.
    out: dict[str, Callable[..., Any]] = {}
    from . import gguf
    out["gguf"] = gguf.build_artifact
    try:
        from . import mlx
        out["mlx"] = mlx.build_artifact
    except ImportError:
        pass
    return out


FORMATS.lazy(_load)
