"""Parameter sweeps as llama-bench runs them: comma-separated values expand into a grid, one row each.

llama-bench (tools/llama-bench/llama-bench.cpp) loops over every combination of its list-valued
parameters, model outermost and threads, depth innermost, and for each combination runs one test per
``-p`` value and one per ``-n`` value; it keeps the loaded model between combinations that differ
only in context parameters, and names a test ``pp512``, ``tg128`` (``pp512+tg128`` for -pg), with
`` @ d1024`` appended at depth 1024: the test runs after 1024 tokens were put in the cache (an untimed
prefill, restored from a saved state after the first repetition). Its context is p + n + d.

edgekit's row differs in one way, on purpose: a record holds a prompt's TTFT and pp rate *and* the
decode rate and the peak memory of the same run, so each (-p, -n) pair is one row (``pp512 @ d1024`` +
``tg128 @ d1024``), where llama-bench would print pp and tg rows apart. The grid's outer part
(threads, context, ``--set`` knobs: what a loaded model and its context are made with) is one child
process per artifact per ``Point``, which loads the model once and runs its tests in order (-d outer,
then -p, then -n), as llama-bench reuses a model across tests that differ only in -p/-n/-d.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

from ..core.errors import ConfigError
from ..profiles.knobs import parse_set


@dataclass(frozen=True)
class Test:
    __test__ = False  # not a pytest test class
    n_prompt: int
    n_gen: int
    depth: int = 0

    @property
    def at(self) -> str:
        return f" @ d{self.depth}" if self.depth else ""

    @property
    def pp_name(self) -> str:
        return f"pp{self.n_prompt}{self.at}"

    @property
    def tg_name(self) -> str:
        return f"tg{self.n_gen}{self.at}"

    @property
    def name(self) -> str:
        return f"{self.pp_name} + {self.tg_name}"


@dataclass(frozen=True)
class Point:
    """One child per artifact: what the model and context are made with, and the tests it runs."""

    threads: Optional[int]
    ctx: Optional[int]
    knobs: dict[str, Any] = field(default_factory=dict, hash=False)
    tests: tuple[Test, ...] = ()


def ints(value: Optional[str | int | Sequence[int]], flag: str, minimum: Optional[int] = 1) -> list[int]:
    """``"128,512"`` → [128, 512]; one clear line for anything that is not a list of integers (or is
    below ``minimum``; None leaves the bounds to the bench's own checks, e.g. --threads, --ctx)."""
    if value is None:
        return []
    if isinstance(value, int):
        items: list[Any] = [value]
    elif isinstance(value, str):
        items = [v.strip() for v in value.split(",") if v.strip()]
    else:
        items = list(value)
    out = []
    for v in items:
        try:
            n = int(v)
        except (TypeError, ValueError):
            raise ConfigError(f"{flag} {value!r}: expected comma-separated integers, e.g. {flag} 128,512") from None
        if minimum is not None and n < minimum:
            raise ConfigError(f"{flag} {n}: must be at least {minimum}")
        out.append(n)
    if not out:
        raise ConfigError(f"{flag}: no value given; e.g. {flag} 128,512")
    return list(dict.fromkeys(out))  # a repeated value is one row, as a set of tests


def knob_lists(knobs: dict[str, Any]) -> dict[str, list[Any]]:
    """``--set kv_type=f16,q8_0`` (parsed to the string "f16,q8_0") → {"kv_type": ["f16", "q8_0"]}.
    Values are read as TOML scalars one by one (true, 512, q8_0)."""
    out: dict[str, list[Any]] = {}
    for k, v in knobs.items():
        if isinstance(v, str) and "," in v:
            out[k] = [parse_set([f"{k}={x.strip()}"])[k] for x in v.split(",") if x.strip()]
        else:
            out[k] = [v]
    return out


def expand(
    n_prompt: Sequence[int],
    n_gen: Sequence[int],
    depth: Sequence[int] = (0,),
    threads: Sequence[Optional[int]] = (None,),
    ctx: Sequence[Optional[int]] = (None,),
    knobs: Optional[dict[str, list[Any]]] = None,
) -> list[Point]:
    """The grid: one Point per (knob values × ctx × threads), in llama-bench's nesting (knobs in the
    order given, outermost; threads innermost), each with the tests d × p × n in that order."""
    knobs = knobs or {}
    tests = tuple(Test(p, n, d) for d in (depth or (0,)) for p in n_prompt for n in n_gen)
    names = list(knobs)
    out = []
    for values in itertools.product(*(knobs[k] for k in names)):
        for c in ctx or (None,):
            for t in threads or (None,):
                out.append(Point(threads=t, ctx=c, knobs=dict(zip(names, values, strict=True)), tests=tests))
    return out


# A grid this large (rows per artifact) starts only with --yes: each row is a model load or a timed run,
# and a typo such as -p 1,2,...,1000 would hold the machine for hours without a word.
CONFIRM_ROWS = 100


def check_grid(points: Sequence[Point], factors: dict[str, int], yes: bool) -> int:
    """The grid's rows per artifact; above CONFIRM_ROWS without ``yes``, a ConfigError that gives the
    count and what multiplies to it (``factors``: flag -> number of values)."""
    rows = sum(len(pt.tests) or 1 for pt in points)
    if rows > CONFIRM_ROWS and not yes:
        made = " × ".join(f"{n} {flag} values" for flag, n in factors.items() if n > 1)
        raise ConfigError(
            f"the grid is {rows:,} rows per artifact ({made}); pass --yes to run it, or give fewer values"
        )
    return rows


def swept_keys(points: Sequence[Point]) -> list[str]:
    """What varies between the grid's points besides threads (a column of its own): ctx and --set knobs,
    in that order; the bench table shows each as a column."""
    keys = ["ctx"] if len({p.ctx for p in points}) > 1 else []
    for k in dict.fromkeys(k for p in points for k in p.knobs):
        if len({repr(p.knobs.get(k)) for p in points}) > 1:
            keys.append(k)
    return keys
