"""BACKENDS: one registry of backends keyed by the engine name the CLI shows, and FORMATS, the same
backends keyed by their artifacts' format name (recipes and manifests say "gguf", "mlx").

Modules named in $EDGEKIT_PLUGINS (comma-separated) are imported on the registry's first use; each
registers its own Backend. That is how a backend outside this package reaches every process edgekit
starts (the bench child inherits the environment); the test suite's fake backend comes in that way.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

from ..core.errors import ArtifactError, ConfigError
from ..core.registry import Registry
from .backend import Backend
from .format import Format
from .gguf.backend import BACKEND as LLAMACPP
from .mlx.backend import BACKEND as MLX

PLUGINS_ENV = "EDGEKIT_PLUGINS"

BACKENDS: Registry[Backend] = Registry("engine")
BACKENDS.register(LLAMACPP.name, LLAMACPP)
BACKENDS.register(MLX.name, MLX)


def _plugins() -> dict[str, Backend]:
    for name in filter(None, (m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(","))):
        try:
            importlib.import_module(name)  # registers its backend
        except ImportError as e:
            raise ConfigError(f"${PLUGINS_ENV}: cannot import {name!r} ({e}); fix or unset it") from None
    return {}


BACKENDS.lazy(_plugins)


class FormatView:
    """The registered backends' formats by format name (a view: a backend registered later shows here)."""

    kind = "format"

    def _by_name(self) -> dict[str, Format]:
        return {BACKENDS.get(n).format.name: BACKENDS.get(n).format for n in BACKENDS}

    def get(self, name: str) -> Format:
        formats = self._by_name()
        if name not in formats:
            raise ConfigError(f"unknown format {name!r}; choose one of: {', '.join(sorted(formats))}")
        return formats[name]

    def backend(self, name: str) -> Backend:
        """The backend whose artifacts have format ``name``."""
        return BACKENDS.get(self.get(name).engine)

    def names(self) -> list[str]:
        return sorted(self._by_name())

    def __contains__(self, name: object) -> bool:
        return name in self._by_name()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


FORMATS = FormatView()


def detect(path: Path) -> Optional[Format]:
    """The format whose artifact ``path`` is, or None."""
    return next((FORMATS.get(n) for n in FORMATS if FORMATS.get(n).detect(Path(path))), None)


def format_of(name: str) -> Format:
    """The format an artifact names (ArtifactError, not ConfigError: the manifest is the input)."""
    if name not in FORMATS:
        raise ArtifactError(f"no runner for artifact format {name!r}; edgekit benches {', '.join(FORMATS)}")
    return FORMATS.get(name)


__all__ = ["BACKENDS", "FORMATS", "Backend", "FormatView", "detect", "format_of"]
