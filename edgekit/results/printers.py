"""Printers that stream, as llama-bench's do: a header before the first row, a row per record as it is
measured, a footer. ``render`` is the same three steps over a finished list.

csv, json and jsonl carry every field and parse back to equal records. CSV cells hold scalars only:
a dict field becomes a column per key (``runtime.kv_type``, ``host.cpu``; nested keys and list items
joined with dots), so a spreadsheet reads it without decoding JSON. Markdown is for people: it shows
the columns it is given at printed precision, and ``parse_markdown`` reads them back.
"""

from __future__ import annotations

import csv
import io
import json
import re
import typing
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields
from typing import Any, Optional

from .base import hints, kind, optional


class Printer:
    """One table for one run: ``feed`` returns the text for records as they arrive (the header before the
    first), ``footer`` what closes the table; print each piece at once and a run that fails later has
    already shown its finished rows."""

    def __init__(self) -> None:
        self.n = 0

    def header(self, first: Any) -> str:
        return ""

    def row(self, rec: Any) -> str:
        raise NotImplementedError

    def footer(self) -> str:
        return ""

    def feed(self, records: Iterable[Any]) -> str:
        out = ""
        for r in records:
            if not self.n:
                out += self.header(r)
            out += self.row(r)
            self.n += 1
        return out

    def render(self, records: Iterable[Any]) -> str:
        return self.feed(records) + self.footer()


class JsonlPrinter(Printer):
    def row(self, rec: Any) -> str:
        return json.dumps(rec.to_json(), sort_keys=True) + "\n"


class JsonPrinter(Printer):
    """A JSON array, one element per row as it comes; the same bytes ``json.dumps(list, indent=2)`` writes."""

    def row(self, rec: Any) -> str:
        body = json.dumps(rec.to_json(), indent=2, sort_keys=True).replace("\n", "\n  ")
        return ("[\n  " if not self.n else ",\n  ") + body

    def footer(self) -> str:
        return "\n]\n" if self.n else "[]\n"


class CsvPrinter(Printer):
    """Every field; rows are written at the footer, because the columns are the union of every row's keys
    (each engine has its own runtime knobs). A failed run still prints its footer: the rows before it."""

    def __init__(self, cls: type) -> None:
        super().__init__()
        self.cls = cls
        self.rows_: list[dict[str, str]] = []

    def row(self, rec: Any) -> str:
        self.rows_.append(flatten(rec.to_json(), self.cls))
        return ""

    def footer(self) -> str:
        names: dict[str, None] = {}
        for f in fields(self.cls):
            if kind(f.name, self.cls) is dict:
                for r in self.rows_:
                    names.update(dict.fromkeys(k for k in r if k.startswith(f.name + ".")))
            else:
                names[f.name] = None
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(names)
        for r in self.rows_:
            w.writerow([r.get(n, "") for n in names])
        return buf.getvalue()


# ---------------------------------------------------------------- CSV cells: scalars only

_INT = re.compile(r"-?\d+")
_WORDS: dict[str, Any] = {"null": None, "true": True, "false": False, "[]": [], "{}": {}}


def _unleaf(s: str) -> Any:
    """A leaf cell of a free-form dict (host, runtime, extra) back to its type; a string that would read
    as another type was written in double quotes."""
    if len(s) >= 2 and s[0] == s[-1] == '"':
        return s[1:-1]
    if s in _WORDS:
        v = _WORDS[s]
        return list(v) if isinstance(v, list) else dict(v) if isinstance(v, dict) else v
    if _INT.fullmatch(s):
        return int(s)
    if any(c.isdigit() for c in s) or s in ("inf", "-inf", "nan"):
        try:
            return float(s)
        except ValueError:
            pass
    return s


def _leaf(v: Any) -> str:
    if v is None or isinstance(v, bool):
        return {None: "null", True: "true", False: "false"}[v]
    if isinstance(v, str):
        return v if v and _unleaf(v) == v and not v.startswith('"') else f'"{v}"'
    return repr(v) if isinstance(v, float) else str(v)


def _flat(prefix: str, v: Any, out: dict[str, str]) -> None:
    if isinstance(v, (dict, list)) and v:
        for k, x in v.items() if isinstance(v, dict) else enumerate(v):
            _flat(f"{prefix}.{k}", x, out)
    elif isinstance(v, (dict, list)):
        out[prefix] = "[]" if isinstance(v, list) else "{}"  # an empty container, so that it reads back
    else:
        out[prefix] = _leaf(v)


def _values(name: str, cls: type) -> Any:
    """The value type of a dict field: str (versions), list (samples), else Any (host, runtime, extra)."""
    args = typing.get_args(hints(cls)[name])
    v = args[1] if len(args) == 2 else Any
    return typing.get_origin(v) or v


def flatten(d: dict[str, Any], cls: type) -> dict[str, str]:
    """A record's JSON as CSV cells: scalars as they are (floats by repr: bit for bit); a dict field one
    column per key (versions.llama.cpp) or, free-form, per leaf (extra.pages.block); a list of numbers
    (samples.tg_tps) one cell of space-separated values, as llama-bench's samples_ts."""
    out: dict[str, str] = {}
    for name, v in d.items():
        k = kind(name, cls)
        if k is dict:
            vt = _values(name, cls)
            for key, x in v.items():
                if vt is list:
                    out[f"{name}.{key}"] = " ".join(map(repr, x))
                elif vt is str:
                    out[f"{name}.{key}"] = x
                else:
                    _flat(f"{name}.{key}", x, out)
        elif k is list:
            _flat(name, v, out)
        else:
            out[name] = "" if v is None else repr(v) if isinstance(v, float) else str(v)
    return out


def _lists(t: Any) -> Any:
    """Dicts whose keys are 0..n-1 back into lists."""
    if not isinstance(t, dict):
        return t
    t = {k: _lists(v) for k, v in t.items()}
    if t and all(k.isdigit() for k in t) and sorted(map(int, t)) == list(range(len(t))):
        return [t[str(i)] for i in range(len(t))]
    return t


def unflatten(row: dict[str, str], cls: type) -> dict[str, Any]:
    d: dict[str, Any] = {}
    for k, v in row.items():
        name, _, rest = k.partition(".")
        kd = kind(name, cls)
        if kd is dict:
            tree = d.setdefault(name, {})
            vt = _values(name, cls)
            if v == "":
                continue  # a key this row does not have
            if vt is list:
                tree[rest] = [float(x) for x in v.split()]
            elif vt is str:
                tree[rest] = v
            else:
                *path, last = rest.split(".")
                for p in path:
                    tree = tree.setdefault(p, {})
                tree[last] = _unleaf(v)
        elif kd is list:
            if v != "":  # differs.0.output: the field's name heads the path, so [] reads back too
                tree = d.setdefault("\0" + name, {})
                *path, last = k.split(".")
                for p in path:
                    tree = tree.setdefault(p, {})
                tree[last] = _unleaf(v)
        elif v == "" and (kd is not str or optional(name, cls)):
            d[name] = None
        elif kd is bool:
            d[name] = v == "True"
        else:
            d[name] = kd(v)
    for name in [n for n in d if n.startswith("\0")]:
        d[name[1:]] = _lists(d.pop(name))[name[1:]]
    return {n: _lists(v) if kind(n, cls) is dict else v for n, v in d.items()}


def parse_csv(text: str, cls: Any) -> list[Any]:
    return [cls.from_json(unflatten(row, cls)) for row in csv.DictReader(io.StringIO(text))]


def parse_jsonl(text: str, cls: Any) -> list[Any]:
    return [cls.from_json(json.loads(line)) for line in text.splitlines() if line.strip()]


def parse_json(text: str, cls: Any) -> list[Any]:
    return [cls.from_json(d) for d in json.loads(text)]


# ---------------------------------------------------------------- markdown


@dataclass(frozen=True)
class Column:
    """A markdown column: header, value getter (None shows as "-"), decimals (-1: text), when it is shown
    (always; "some": when some row has a value; or a test of the rows), and its footnote."""

    header: str
    get: Callable[[Any], Any]
    dec: int = -1
    show: Any = "always"
    note: str = ""

    def shown(self, rows: Sequence[Any]) -> bool:
        if self.show == "always":
            return True
        if self.show == "some":
            return any(self.get(r) is not None for r in rows)
        return bool(self.show(rows))


def fmt(v: Any, dec: int) -> str:
    if v is None:
        return "-"
    if isinstance(v, tuple):
        return f"{v[0]:.{dec}f} ± {v[1]:.{dec}f}"
    if dec < 0:
        return str(v).replace("|", "\\|")
    return f"{v:.{dec}f}"


def table_lines(cols: Sequence[Column], rows: Iterable[Any], head: bool = True) -> list[str]:
    out = (
        [
            "| " + " | ".join(c.header for c in cols) + " |",
            "|" + "|".join("---" if c.dec < 0 else "---:" for c in cols) + "|",
        ]
        if head
        else []
    )
    return out + ["| " + " | ".join(fmt(c.get(r), c.dec) for c in cols) + " |" for r in rows]


class MarkdownPrinter(Printer):
    """One markdown table. ``rows_of`` turns a record into its table rows (the compact bench table: one
    per test, pp and tg, as llama-bench). Optional columns are chosen from ``decide`` (a finished list:
    all of it; streaming: the first record's rows); a later value in a column not shown is named in the
    footer. Footnotes are those of the columns shown, plus ``notes``."""

    def __init__(
        self,
        columns: Sequence[Column],
        rows_of: Callable[[Any], list[Any]] = lambda r: [r],
        decide: Optional[Sequence[Any]] = None,
        notes: Sequence[str] = (),
    ) -> None:
        super().__init__()
        self.all, self.rows_of, self.notes = list(columns), rows_of, list(notes)
        self.cols: list[Column] = []
        self.hidden: dict[str, None] = {}
        if decide is not None:
            self.cols = [c for c in self.all if c.shown([x for r in decide for x in rows_of(r)])]

    def header(self, first: Any) -> str:
        if not self.cols:
            self.cols = [c for c in self.all if c.shown(self.rows_of(first))]
        return "\n".join(table_lines(self.cols, [])) + "\n"

    def row(self, rec: Any) -> str:
        rows = self.rows_of(rec)
        for c in self.all:
            if c not in self.cols and c.shown(rows):
                self.hidden[c.header] = None
        return "".join(line + "\n" for line in table_lines(self.cols, rows, head=False))

    def footer(self) -> str:
        if not self.n:
            return ""
        notes = [c.note for c in self.cols if c.note] + self.notes
        if self.hidden:
            notes.append(f"not shown: {', '.join(self.hidden)} (values in later rows; -o json has every field)")
        return "\n" + "".join(n + "\n" for n in dict.fromkeys(notes)) if notes else ""  # a line each


def parse_markdown(text: str) -> list[dict[str, Any]]:
    """Rows of every table as {header: value}; numbers as floats, "a ± b" as (a, b), "-" as None."""
    rows: list[dict[str, Any]] = []
    heads: list[str] = []
    for line in text.splitlines():
        if not line.startswith("|"):
            heads = []
            continue
        cells = [c.strip().replace("\\|", "|") for c in _split_row(line)]
        if not heads:
            heads = cells
        elif not all(set(c) <= set("-:") for c in cells):
            rows.append({h: _cell(c) for h, c in zip(heads, cells, strict=True)})
    return rows


def _split_row(line: str) -> list[str]:
    parts, cur, esc = [], "", False
    for ch in line.strip()[1:-1]:
        if ch == "|" and not esc:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
        esc = ch == "\\"
    return [*parts, cur]


def _cell(c: str) -> Any:
    if c == "-":
        return None
    if " ± " in c:
        a, b = c.split(" ± ")
        return float(a), float(b)
    try:
        return float(c)
    except ValueError:
        return c
