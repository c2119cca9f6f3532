"""FORMATS, ``detect`` and ``format_of``: the backends' formats by the name recipes, manifests and the CLI
show (a view of edgekit.backends.registry.BACKENDS). See ``format.Format`` for what a format provides."""

from __future__ import annotations

from .format import BuildContext, Format
from .registry import FORMATS, detect, format_of

__all__ = ["FORMATS", "BuildContext", "Format", "detect", "format_of"]
