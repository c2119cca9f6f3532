"""One registry per kind of thing (targets, recipes, formats, runners), keyed by the name the CLI shows."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Generic, TypeVar

from .errors import ConfigError

T = TypeVar("T")

_PKG = Path(__file__).resolve().parent.parent  # edgekit/ (this file is edgekit/core/registry.py)


def data_dir(kind: str) -> Path:
    """targets/ or quant/: inside the wheel (force-included) or at the repo root in a checkout."""
    packaged = _PKG / "_data" / kind
    return packaged if packaged.is_dir() else _PKG.parent / kind


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}
        self._loader: Callable[[], dict[str, T]] | None = None

    def lazy(self, loader: Callable[[], dict[str, T]]) -> None:
        """Fill the registry on first use (reading TOML data only when a command needs it)."""
        self._loader = loader

    def _load(self) -> None:
        if self._loader is not None:
            loader, self._loader = self._loader, None
            for k, v in loader().items():
                self._items.setdefault(k, v)

    def register(self, name: str, item: T) -> T:
        self._load()
        self._items[name] = item
        return item

    def unregister(self, name: str) -> None:
        """Remove ``name`` (a plugin taken out again: the test suite's fake backend after its tests)."""
        self._load()
        self._items.pop(name, None)

    def get(self, name: str) -> T:
        self._load()
        try:
            return self._items[name]
        except KeyError:
            raise ConfigError(
                f"unknown {self.kind} {name!r}; choose one of: {', '.join(sorted(self._items))}"
            ) from None

    def names(self) -> list[str]:
        self._load()
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
