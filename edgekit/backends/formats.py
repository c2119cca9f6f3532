"""Output formats, one object each (edgekit/formats/<name>/), in one registry keyed by the name
recipes, manifests and the CLI show. See ``base.Format`` for what a format provides and how to add one."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..core.errors import ArtifactError
from ..core.registry import Registry
from .format import BuildContext, Format
from .gguf.format import GGUF
from .mlx.format import MLX

FORMATS: Registry[Format] = Registry("format")
FORMATS.register(GGUF.name, GGUF)
FORMATS.register(MLX.name, MLX)


def detect(path: Path) -> Optional[Format]:
    """The format whose artifact ``path`` is, or None."""
    return next((FORMATS.get(n) for n in FORMATS if FORMATS.get(n).detect(Path(path))), None)


def format_of(name: str) -> Format:
    """The format an artifact names (ArtifactError, not ConfigError: the manifest is the input)."""
    if name not in FORMATS:
        raise ArtifactError(f"no runner for artifact format {name!r}; edgekit benches {', '.join(FORMATS)}")
    return FORMATS.get(name)


__all__ = ["FORMATS", "BuildContext", "Format", "detect", "format_of"]
