"""Runtime knobs as typed data: each engine declares a schema; values are checked in the parent.

A knob has a name, a type (bool, int, float, str), optional allowed values and bounds, a default
(None: the engine's own default, the knob is then not passed) and a line of help. ``Schema.validate``
turns target-profile values (already typed by TOML) and ``--set`` strings into typed values, or
raises one ConfigError line naming the fix: an unknown key lists the known ones, ``repack=False``
is the bool False (not the non-empty string), ``n_ubatch=0`` is below its bound.

How to add a knob: one ``Knob(...)`` line in the engine's ``KNOBS`` (edgekit/runners/<engine>.py),
then read ``opts.knobs[name]`` in its ``load``; nothing else changes. A runner reports what it
applied (``Runner.applied()``), and only that goes in the record.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Optional

from ..core.errors import ConfigError

_TRUE = {"true", "on", "yes", "1"}
_FALSE = {"false", "off", "no", "0"}


@dataclass(frozen=True)
class Knob:
    name: str
    type: type  # bool | int | float | str
    help: str
    default: Any = None  # None: the engine's own default applies (knob not passed)
    choices: Optional[tuple[Any, ...]] = None
    min: Optional[float] = None
    max: Optional[float] = None

    def parse(self, value: Any, where: str) -> Any:
        """``value`` as this knob's type, or ConfigError (``where`` names the source: --set, a profile)."""

        def bad(why: str) -> ConfigError:
            allowed = f"one of {', '.join(map(str, self.choices))}" if self.choices else f"a {self.type.__name__}"
            return ConfigError(f"{where}: runtime knob {self.name} = {value!r} {why}; use {allowed} ({self.help})")

        v = value
        if self.type is bool:
            if isinstance(v, str) and v.strip().lower() in _TRUE | _FALSE:
                v = v.strip().lower() in _TRUE
            elif not isinstance(v, bool):
                raise bad("is not a boolean")
        elif self.type in (int, float):
            kind = "an integer" if self.type is int else "a number"
            if isinstance(v, str):
                try:
                    v = self.type(v.strip())
                except ValueError:
                    raise bad(f"is not {kind}") from None
            elif isinstance(v, bool) or not isinstance(v, (int, float)) or (self.type is int and isinstance(v, float)):
                raise bad(f"is not {kind}")
            v = self.type(v)
        elif self.type is str:
            if isinstance(v, bool) or not isinstance(v, (str, int, float)):
                raise bad("is not a string")
            v = str(v).strip().lower()
        if self.choices is not None and v not in self.choices:
            raise bad("is not allowed")
        if self.min is not None and v < self.min:
            raise bad(f"is below {self.min:g}")
        if self.max is not None and v > self.max:
            raise bad(f"is above {self.max:g}")
        return v


class Schema:
    """The knobs one engine understands, by name."""

    def __init__(self, engine: str, knobs: Iterable[Knob]):
        self.engine = engine
        self.knobs = {k.name: k for k in knobs}

    def __contains__(self, name: object) -> bool:
        return name in self.knobs

    def validate(self, values: Mapping[str, Any], where: str, strict: bool = True) -> dict[str, Any]:
        """Typed values for the known keys; an unknown key is an error when ``strict`` (``--set``),
        else skipped (a profile's [runtime] may hold knobs for its alternative engine too)."""
        out = {}
        for name, value in values.items():
            knob = self.knobs.get(name)
            if knob is None:
                if strict:
                    raise ConfigError(
                        f"{where}: unknown runtime knob {name!r} for {self.engine}; "
                        f"known: {', '.join(sorted(self.knobs))}"
                    )
                continue
            out[name] = knob.parse(value, where)
        return out

    def defaults(self) -> dict[str, Any]:
        return {k.name: k.default for k in self.knobs.values() if k.default is not None}

    def describe(self) -> str:
        return "\n".join(
            f"{k.name} ({k.type.__name__}{': ' + '|'.join(map(str, k.choices)) if k.choices else ''})  {k.help}"
            for k in self.knobs.values()
        )


def parse_set(items: Iterable[str]) -> dict[str, str]:
    """``--set key=value`` pairs as raw strings; each engine's schema types them."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set kv_type=q8_0")
        v = value.strip()
        if len(v) >= 2 and v[0] == v[-1] and v[0] in "\"'":
            v = v[1:-1]  # a quoted string, as TOML would write it
        out[key.strip()] = v
    return out
