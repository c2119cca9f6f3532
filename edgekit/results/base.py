"""What every record shares: JSON in and out, field types for the parsers, one provenance helper, and
the registry of record types (one store table each).

A record type registers itself (``@record_type("quality", "text_sha256")``): the store makes its table
from that, so the store never imports the modules that define records.
"""

from __future__ import annotations

import dataclasses
import functools
import time
import typing
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Optional, TypeVar

from ..builder.manifest import versions
from ..core.host import device_name, host_info
from ..core.registry import Registry

MB = 1e6  # memory in decimal MB, the unit of the targets' budgets (1.5 GB = 1.5e9 bytes)


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def provenance(device: Optional[str] = None) -> dict[str, Any]:
    """When, where and with what a record was measured: the fields every record type has by these names."""
    vers = versions()
    return {
        "device": device_name(device),
        "timestamp": utc_now(),
        "edgekit_version": vers.get("edgekit", ""),
        "host": host_info(),
        "versions": vers,
    }


class RecordBase:
    """to_json / from_json of a record dataclass: from_json drops the keys a newer edgekit wrote, and fields
    added since take their defaults (rows written before a field existed read back)."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Any:
        names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class ArtifactRecord(RecordBase):
    """The identity and provenance fields eval's records share with bench's (which spells them out, as its
    field order is its CSV's); the run's fields are keyword-only, so each record's own required fields
    can follow."""

    artifact: str
    model: str
    format: str
    quant: str
    engine: str
    sha256: str
    file_bytes: int
    device: str
    target: str
    threads: Optional[int] = field(default=None, kw_only=True)
    seconds: float = field(default=0.0, kw_only=True)
    timestamp: str = field(default="", kw_only=True)
    edgekit_version: str = field(default="", kw_only=True)
    host: dict[str, Any] = field(default_factory=dict, kw_only=True)
    versions: dict[str, str] = field(default_factory=dict, kw_only=True)
    runtime: dict[str, Any] = field(default_factory=dict, kw_only=True)
    extra: dict[str, Any] = field(default_factory=dict, kw_only=True)


# ---------------------------------------------------------------- registry of record types


@dataclass(frozen=True)
class RecordType:
    """A record class and its store table: ``columns`` are indexed copies of fields (the record itself is
    JSON in ``data``, so a new field needs no ALTER TABLE)."""

    table: str
    cls: type
    columns: tuple[str, ...]


RECORD_TYPES: Registry[RecordType] = Registry("record type")

R = TypeVar("R")


def record_type(table: str, *columns: str) -> Callable[[R], R]:
    """Register a record dataclass under its store table; every table also has the artifact's identity."""

    def deco(cls: R) -> R:
        RECORD_TYPES.register(table, RecordType(table, cls, (*IDENTITY, *columns)))  # type: ignore[arg-type]
        return cls

    return deco


IDENTITY = ("timestamp", "device", "artifact", "sha256", "engine", "quant")


def table_of(cls: type) -> RecordType:
    for name in RECORD_TYPES:
        if RECORD_TYPES.get(name).cls is cls:
            return RECORD_TYPES.get(name)
    raise KeyError(f"{cls.__name__} is not a registered record type")


# ---------------------------------------------------------------- field types (parsers and the store)


@functools.cache
def hints(cls: type) -> dict[str, Any]:
    """A record class's field types, resolved once (get_type_hints is slow, and parsing asks per field)."""
    return typing.get_type_hints(cls)


def kind(name: str, cls: type) -> type:
    """The field's base type: int, float, str, bool, dict or list (Optional unwrapped)."""
    t = hints(cls)[name]
    if typing.get_origin(t) is typing.Union:
        t = next(a for a in typing.get_args(t) if a is not type(None))
    return typing.get_origin(t) or t


def optional(name: str, cls: type) -> bool:
    """An Optional field: its empty CSV cell is None (an Optional[str]'s "" is not written by edgekit)."""
    return type(None) in typing.get_args(hints(cls)[name])


def well_typed(d: Any, cls: Any) -> Optional[Any]:
    """``d`` (parsed JSON) as a ``cls``, or None when it is not a dict of that dataclass's fields and types."""
    if not isinstance(d, dict):
        return None
    for f in fields(cls):
        if f.name not in d:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                return None
            continue
        v, k = d[f.name], kind(f.name, cls)
        if v is None and optional(f.name, cls):
            continue
        if (isinstance(v, bool) and k is not bool) or not isinstance(v, (int, float) if k is float else k):
            return None
    return cls.from_json(d)
