"""Typed reads of a parsed config (config.json, targets/*.toml, quant/*.toml) at the boundary.

``Fields(raw, where, fix)`` hands out each value checked against its type and bounds; a wrong one
raises the caller's error class with the file, the field, what it must be and what it was, and the
fix: ``config.json: hidden_size must be a positive integer, not the string '256'; ...``. JSON and TOML
give bool as a subclass of int, so booleans are refused where a number belongs, and vice versa.
"""

from __future__ import annotations

import builtins
import math
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import ConfigError, EdgekitError

_MISSING: Any = object()


def shown(v: Any) -> str:
    kind = {
        bool: "the boolean",
        str: "the string",
        int: "the integer",
        float: "the number",
        list: "a list",
        dict: "an object",
        type(None): "null",
    }.get(type(v), type(v).__name__)
    if isinstance(v, (list, dict)):
        return kind
    text = repr(v) if not isinstance(v, bool) else str(v).lower()
    return f"{kind} {text[:40] + '…' if len(text) > 40 else text}"


class Fields:
    """The fields of one object; ``path`` is its dotted place in the file ("" for the top level),
    which prefixes every key an error names (``text_config.hidden_size``)."""

    def __init__(self, raw: Any, where: str, fix: str, error: type[EdgekitError], path: str = ""):
        if not isinstance(raw, dict):
            raise error(f"{where}: {path or 'the file'} must be an object of fields, not {shown(raw)}; {fix}")
        self.raw, self.where, self.fix, self.error, self.path = raw, where, fix, error, path

    def name(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def fail(self, key: str, must: str, value: Any) -> EdgekitError:
        return self.error(f"{self.where}: {self.name(key)} must be {must}, not {shown(value)}; {self.fix}")

    def sub(self, key: str) -> Fields:
        """The fields of the object at ``key`` (an empty one when absent)."""
        return Fields(self.table(key, {}), self.where, self.fix, self.error, self.name(key))

    def _get(self, key: str, default: Any, check: Callable[[Any], bool], must: str) -> Any:
        v = self.raw.get(key, _MISSING)
        if v is _MISSING or (v is None and default is not _MISSING):
            if default is _MISSING:
                raise self.error(f"{self.where}: {self.name(key)} is missing; {self.fix}")
            return default
        if not check(v):
            raise self.fail(key, must, v)
        return v

    def int(self, key: str, default: Any = _MISSING, minimum: int | None = 1) -> Any:
        must = (
            "a positive integer"
            if minimum == 1
            else "a non-negative integer"
            if minimum == 0
            else "an integer"
            if minimum is None
            else f"an integer ≥ {minimum}"
        )
        return self._get(key, default, lambda v: type(v) is int and (minimum is None or v >= minimum), must)

    def number(self, key: str, default: Any = _MISSING, positive: bool = True, maximum: float | None = None) -> Any:
        def ok(v: Any) -> bool:
            return (
                type(v) in (int, float)
                and math.isfinite(v)
                and (not positive or v > 0)
                and (maximum is None or v <= maximum)
            )

        must = "a positive number" if positive else "a number"
        if maximum is not None:
            must += f" ≤ {maximum:g}"
        v = self._get(key, default, ok, must)
        return float(v) if type(v) in (int, float) else v  # a non-numeric default (None) as given

    def bool(self, key: str, default: Any = _MISSING) -> Any:
        return self._get(key, default, lambda v: type(v) is bool, "true or false")

    def str(self, key: str, default: Any = _MISSING, choices: tuple[str, ...] | None = None) -> Any:
        must = "one of " + ", ".join(repr(c) for c in choices) if choices else "a string"
        return self._get(key, default, lambda v: type(v) is str and (choices is None or v in choices), must)

    def strs(self, key: builtins.str, default: Any = _MISSING, choices: tuple[builtins.str, ...] | None = None) -> Any:
        must = "a list of strings" + (" from " + ", ".join(repr(c) for c in choices) if choices else "")
        return self._get(
            key,
            default,
            lambda v: type(v) is list and all(type(x) is str and (choices is None or x in choices) for x in v),
            must,
        )

    def table(self, key: builtins.str, default: Any = _MISSING) -> Any:
        return self._get(key, default, lambda v: type(v) is dict, "an object of fields")


def utf8_text(data: bytes, where: object, fix: str, error: type[EdgekitError] = ConfigError) -> str:
    """``data`` as UTF-8, or one line naming the first bad byte and its offset, then ``fix``: the one
    decoder for every text a user hands edgekit (TOML profiles, eval texts, vocabulary corpora)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{where}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); {fix}") from None


def read_toml(path: Path, error: type[EdgekitError], kind: str) -> dict[str, Any]:
    """A TOML file's table; unreadable, non-UTF-8 and malformed files raise ``error`` in one line."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise error(f"{path}: unreadable {kind} ({e.strerror or e}); fix the file's permissions") from None
    text = utf8_text(data, path, "save the file as UTF-8", error)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise error(f"{path}: unreadable {kind} ({e}); fix the TOML") from None
