"""Bench records: the Record dataclass, the SQLite store, and printers (md, csv, json, jsonl) with parsers.

csv, json and jsonl carry every field and parse back to equal Records. Markdown is for people: it
shows the headline figures at printed precision, and ``parse_markdown`` reads those columns back.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import json
import os
import sqlite3
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

from .errors import OutputError

MB = 1e6  # memory in decimal MB, the unit of the targets' budgets (1.5 GB = 1.5e9 bytes)


@dataclass
class Record:
    # what was measured
    artifact: str                # file or folder name as the manifest lists it
    model: str
    format: str                  # gguf | mlx
    quant: str
    engine: str                  # llama.cpp | mlx
    sha256: str
    file_bytes: int
    device: str                  # hostname unless the lab names it
    target: str                  # target profile whose knobs and budget applied ("" for none)
    # how
    threads: Optional[int]       # None where the engine has no thread knob (MLX)
    ctx: int
    n_prompt: int
    n_gen: int
    reps: int
    # figures (mean and sample sd over reps; raw samples in `samples`)
    load_ms: float
    ttft_ms: float
    ttft_ms_sd: float
    pp_tps: float
    pp_tps_sd: float
    tg_tps: float
    tg_tps_sd: float
    peak_rss_bytes: int
    peak_anon_bytes: Optional[int] = None
    peak_file_bytes: Optional[int] = None
    phys_footprint_bytes: Optional[int] = None
    mlx_peak_bytes: Optional[int] = None
    kv_cache_bytes: Optional[int] = None        # llama.cpp: its log's MiB, 2 decimals, per buffer; MLX: cache nbytes
    compute_buffer_bytes: Optional[int] = None  # llama.cpp only (same resolution)
    # roofline: weights read per decoded token vs this host's measured read bandwidth
    bytes_per_token: Optional[int] = None
    host_read_gbs: Optional[float] = None
    achieved_gbs: Optional[float] = None
    roofline_pct: Optional[float] = None
    predicted_tg_tps: Optional[float] = None   # a prediction from the target's bandwidth, not a measurement
    budget_bytes: Optional[int] = None
    # memory as a device would count it (edgekit.limits, edgekit.pages); None where not measured
    depth: int = 0                               # tokens already in the cache before each test (-d)
    page_size: Optional[int] = None              # this host's page size (Linux)
    peak_16k_bytes: Optional[int] = None         # peak RSS with the artifact's mappings counted in 16 KB pages
    limit_bytes: Optional[int] = None            # the memory limit the child was asked to run under
    limit_mechanism: Optional[str] = None        # what enforced it ("cgroup v1 memory.limit_in_bytes", ...)
    limit_not_enforced: Optional[str] = None     # why an asked-for limit could not be enforced
    cgroup_peak_bytes: Optional[int] = None      # the cgroup's own peak: page cache charged to the run included
    oom_killed: Optional[bool] = None            # the kernel's OOM killer stopped the child inside the limit
    majflt_prefill: Optional[float] = None       # major page faults per prefill (mean over reps)
    majflt_per_token: Optional[float] = None     # major page faults per decoded token (mean over reps)
    # "bench": edgekit bench, in its own process; "served": an HTTP client timing `edgekit serve`
    # (edgekit lab run --served: TTFT and decode t/s as the client sees them, template, HTTP and SSE included)
    via: str = "bench"
    # provenance
    timestamp: str = ""
    edgekit_version: str = ""
    engine_version: str = ""
    host: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    runtime: dict[str, Any] = field(default_factory=dict)
    samples: dict[str, list[float]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Record":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    @property
    def gate_bytes(self) -> int:
        """The figure the budget gate compares: peak RSS, or the 16 KB-page peak where that is larger."""
        return max(self.peak_rss_bytes, self.peak_16k_bytes or 0)

    @property
    def over_budget_bytes(self) -> Optional[int]:
        return None if self.budget_bytes is None else self.gate_bytes - self.budget_bytes

    @property
    def pp_test(self) -> str:
        """llama-bench's name of the prompt test: pp512, or pp512 @ d1024 after 1024 tokens of depth."""
        return f"pp{self.n_prompt}" + (f" @ d{self.depth}" if self.depth else "")

    @property
    def tg_test(self) -> str:
        return f"tg{self.n_gen}" + (f" @ d{self.depth}" if self.depth else "")


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    """A record class's field types, resolved once (get_type_hints is slow, and parsing asks per field)."""
    return typing.get_type_hints(cls)


def _kind(name: str, cls: type = Record) -> type:
    """The field's base type: int, float, str, dict or list (Optional unwrapped)."""
    t = _hints(cls)[name]
    if typing.get_origin(t) is typing.Union:
        t = next(a for a in typing.get_args(t) if a is not type(None))
    return typing.get_origin(t) or t


def _optional(name: str, cls: type = Record) -> bool:
    """An Optional field: its empty CSV cell is None (an Optional[str]'s "" is not written by edgekit)."""
    return type(None) in typing.get_args(_hints(cls)[name])


# ---------------------------------------------------------------- printers and parsers

def to_jsonl(records: Iterable[Record]) -> str:
    return "".join(json.dumps(r.to_json(), sort_keys=True) + "\n" for r in records)


def parse_jsonl(text: str, cls: Any = Record) -> list[Any]:
    return [cls.from_json(json.loads(line)) for line in text.splitlines() if line.strip()]


def to_json(records: Iterable[Record]) -> str:
    return json.dumps([r.to_json() for r in records], indent=2, sort_keys=True) + "\n"


def parse_json(text: str, cls: Any = Record) -> list[Any]:
    return [cls.from_json(d) for d in json.loads(text)]


def to_csv(records: Iterable[Any]) -> str:
    """Every field of the records' dataclass (a bench Record, or eval's QualityRecord), one row each."""
    records = list(records)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    names = [f.name for f in fields(type(records[0]) if records else Record)]
    w.writerow(names)
    for r in records:
        d = r.to_json()
        w.writerow(["" if d[n] is None else json.dumps(d[n], sort_keys=True) if isinstance(d[n], (dict, list))
                    else repr(d[n]) if isinstance(d[n], float) else d[n] for n in names])
    return buf.getvalue()


def parse_csv(text: str, cls: Any = Record) -> list[Any]:
    out = []
    for row in csv.DictReader(io.StringIO(text)):
        d: dict[str, Any] = {}
        for k, v in row.items():
            kind = _kind(k, cls)
            if v == "" and (kind is not str or _optional(k, cls)):
                d[k] = None
            elif kind in (dict, list):
                d[k] = json.loads(v)
            elif kind is bool:
                d[k] = v == "True"
            else:
                d[k] = kind(v)
        out.append(cls.from_json(d))
    return out


# Markdown columns: header, value getter (None shows as "-"), decimals. pp/tg headers carry the lengths.
def _mb(x: Optional[int]) -> Optional[float]:
    return None if x is None else x / MB


# (header, value getter, decimals (-1: text), shown only when some record has a value; or only when
# this test of the records says so)
_MD: list[tuple[str, Callable[[Record], Any], int, Any]] = [
    ("artifact", lambda r: r.artifact, -1, False),
    ("quant", lambda r: r.quant, -1, False),
    ("engine", lambda r: r.engine, -1, False),
    ("via", lambda r: r.via, -1, lambda rs: any(r.via != "bench" for r in rs)),
    ("device", lambda r: r.device, -1, False),
    ("target", lambda r: r.target or None, -1, True),
    ("threads", lambda r: r.threads, 0, False),
    ("ctx", lambda r: r.ctx, 0, False),
    ("size MB", lambda r: _mb(r.file_bytes), 1, False),
    ("load ms", lambda r: r.load_ms, 1, False),
    ("TTFT ms", lambda r: (r.ttft_ms, r.ttft_ms_sd), 2, False),
    ("pp t/s", lambda r: (r.pp_tps, r.pp_tps_sd), 2, False),
    ("tg t/s", lambda r: (r.tg_tps, r.tg_tps_sd), 2, False),
    ("peak RSS MB", lambda r: _mb(r.peak_rss_bytes), 1, False),
    ("anon MB", lambda r: _mb(r.peak_anon_bytes), 1, True),
    ("file MB", lambda r: _mb(r.peak_file_bytes), 1, True),
    ("footprint MB", lambda r: _mb(r.phys_footprint_bytes), 1, True),
    ("MLX peak MB", lambda r: _mb(r.mlx_peak_bytes), 1, True),
    ("KV MB", lambda r: _mb(r.kv_cache_bytes), 2, True),
    ("compute MB", lambda r: _mb(r.compute_buffer_bytes), 2, True),
    ("roofline %", lambda r: r.roofline_pct, 1, True),
    ("predicted tg t/s", lambda r: r.predicted_tg_tps, 1, True),
    ("budget MB", lambda r: _mb(r.budget_bytes), 0, True),
    ("page KB", lambda r: None if r.page_size is None else r.page_size / 1024, 0, True),
    ("peak @16K MB", lambda r: _mb(r.peak_16k_bytes), 1, True),
    ("limit MB", lambda r: _mb(r.limit_bytes), 0, True),
    ("enforced by", lambda r: r.limit_mechanism or (r.limit_not_enforced and f"not enforced: {r.limit_not_enforced}"), -1, True),
    ("cgroup peak MB", lambda r: _mb(r.cgroup_peak_bytes), 1, True),
    ("OOM", lambda r: None if r.oom_killed is None else ("killed" if r.oom_killed else "no"), -1, True),
    ("majflt pp", lambda r: r.majflt_prefill, 1, True),
    ("majflt/tok", lambda r: r.majflt_per_token, 2, True),
]


def _fmt(v: Any, dec: int) -> str:
    if v is None:
        return "-"
    if isinstance(v, tuple):
        return f"{v[0]:.{dec}f} ± {v[1]:.{dec}f}"
    if dec < 0:
        return str(v).replace("|", "\\|")
    return f"{v:.{dec}f}"


def _header(h: str, r: Record) -> str:
    return {"pp t/s": f"{r.pp_test} t/s", "tg t/s": f"{r.tg_test} t/s"}.get(h, h)


def to_markdown(records: Iterable[Record]) -> str:
    """One table per test (prompt and generation lengths, depth), llama-bench's names in the headers
    (pp512, tg128 @ d1024)."""
    groups: dict[tuple[int, int, int], list[Record]] = {}
    for r in records:
        groups.setdefault((r.n_prompt, r.n_gen, r.depth), []).append(r)
    out = []
    for rs in groups.values():
        cols = [c for c in _MD if (c[3](rs) if callable(c[3]) else not c[3] or any(c[1](r) is not None for r in rs))]
        lines = ["| " + " | ".join(_header(h, rs[0]) for h, *_ in cols) + " |",
                 "|" + "|".join("---" if d < 0 else "---:" for _, _, d, _ in cols) + "|"]
        lines += ["| " + " | ".join(_fmt(get(r), d) for _, get, d, _ in cols) + " |" for r in rs]
        out.append("\n".join(lines))
    note = ("mean ± sd over the repetitions; MB = 1e6 bytes; via served: timed by an HTTP client through "
            "`edgekit serve` (lab run --served: TTFT to the first streamed text, decode t/s over the stream, "
            "pp t/s = prompt tokens ÷ that TTFT, peak RSS the server's), not by `edgekit bench`; anon/file: the peak's anonymous vs file-backed "
            "(mmap'd) part; roofline: weight bytes read per token × tg ÷ this host's measured read bandwidth; "
            "predicted tg: the target's bandwidth ÷ bytes per token, a prediction, not a measurement; "
            "peak @16K: the peak with the artifact's mapped pages counted in 16 KB file-aligned blocks, as a "
            "16 KB-page kernel (Raspberry Pi 5) maps them; cgroup peak: the memory cgroup's high-water mark "
            "(page cache charged to the run included); majflt: major page faults (pages read from disk)")
    return "\n\n".join(out) + ("\n\n" + note + "\n" if out else "")


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
            rows.append({h: _cell(c) for h, c in zip(heads, cells)})
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
    return parts + [cur]


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


PRINTERS: dict[str, Callable[[Iterable[Record]], str]] = {"md": to_markdown, "csv": to_csv, "json": to_json,
                                                           "jsonl": to_jsonl}
PARSERS: dict[str, Callable[[str], list[Any]]] = {"md": parse_markdown, "csv": parse_csv, "json": parse_json,
                                                   "jsonl": parse_jsonl}


# ---------------------------------------------------------------- store

def _parse_row(data: Any, cls: Any = Record) -> Optional[Any]:
    """A stored row as a ``cls`` (bench's Record, eval's QualityRecord or SuiteRecord), or None when it is
    not JSON of that dataclass's fields and types."""
    try:
        d = json.loads(data)
    except (TypeError, ValueError):
        return None
    if not isinstance(d, dict):
        return None
    for f in fields(cls):
        if f.name not in d:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                return None
            continue
        v, kind = d[f.name], _kind(f.name, cls)
        optional = typing.get_origin(_hints(cls)[f.name]) is typing.Union
        if v is None and optional:
            continue
        if isinstance(v, bool) and kind is not bool or not isinstance(v, (int, float) if kind is float else kind):
            return None
    return cls.from_json(d)


def default_db() -> Path:
    """$EDGEKIT_DB, else $XDG_DATA_HOME/edgekit/results.db (~/.local/share/edgekit/results.db)."""
    if os.environ.get("EDGEKIT_DB"):
        return Path(os.environ["EDGEKIT_DB"]).expanduser()
    base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "edgekit" / "results.db"


# Rows keep each Record as JSON in ``data``: a field added to Record (depth, limit_*, cgroup_peak_bytes,
# majflt_*, page_size, peak_16k_bytes) needs no ALTER TABLE, and rows written before it read back
# with the field's default (``Record.from_json`` also drops keys a newer edgekit wrote).
_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    timestamp TEXT NOT NULL, device TEXT NOT NULL, artifact TEXT NOT NULL, sha256 TEXT NOT NULL,
    engine TEXT NOT NULL, quant TEXT NOT NULL, data TEXT NOT NULL
)"""


_QUALITY_SCHEMA = """
CREATE TABLE IF NOT EXISTS quality (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    timestamp TEXT NOT NULL, device TEXT NOT NULL, artifact TEXT NOT NULL, sha256 TEXT NOT NULL,
    engine TEXT NOT NULL, quant TEXT NOT NULL, text_sha256 TEXT NOT NULL, data TEXT NOT NULL
)"""

# `edgekit eval --suite`: one row per suite per artifact, linked by the artifact's and the suite file's sha256.
_SUITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS suites (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    timestamp TEXT NOT NULL, device TEXT NOT NULL, artifact TEXT NOT NULL, sha256 TEXT NOT NULL,
    engine TEXT NOT NULL, quant TEXT NOT NULL, suite_sha256 TEXT NOT NULL, suite TEXT NOT NULL, data TEXT NOT NULL
)"""


class Store:
    """Append-only SQLite store. WAL lets readers run beside a writer; each append is one
    ``BEGIN IMMEDIATE`` transaction, and the busy timeout makes a second writer wait its turn
    instead of failing, so concurrent bench processes keep every row."""

    def __init__(self, path: Optional[Path] = None, timeout_s: float = 60.0):
        self.path = Path(path) if path else default_db()
        self.corrupt: list[int] = []   # ids of rows records() skipped
        self.corrupt_quality: list[int] = []   # and quality_records()
        self.corrupt_suites: list[int] = []    # and suite_records()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(self.path, timeout=timeout_s, isolation_level=None)
            self.db.execute(f"PRAGMA busy_timeout = {int(timeout_s * 1000)}")
            self.db.execute("PRAGMA journal_mode = WAL")
            self.db.execute(_SCHEMA)
        except (OSError, sqlite3.Error) as e:
            raise OutputError(f"{self.path}: cannot open the results store ({e}); pass --db with a writable path") from None

    def _insert(self, sql: str, rows: list[tuple]) -> int:
        """One BEGIN IMMEDIATE transaction per append (a second writer waits its turn)."""
        try:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.executemany(sql, rows)
            self.db.execute("COMMIT")
        except sqlite3.Error as e:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            raise OutputError(f"{self.path}: cannot append to the results store ({e}); pass --db elsewhere") from None
        return len(rows)

    def append(self, records: Iterable[Record]) -> int:
        rows = [(r.timestamp, r.device, r.artifact, r.sha256, r.engine, r.quant, json.dumps(r.to_json(), sort_keys=True))
                for r in records]
        return self._insert("INSERT INTO records (timestamp, device, artifact, sha256, engine, quant, data) "
                            "VALUES (?, ?, ?, ?, ?, ?, ?)", rows)

    def _ensure(self, schema: str) -> None:
        try:
            self.db.execute(schema)
        except sqlite3.Error as e:
            raise OutputError(f"{self.path}: cannot append to the results store ({e}); pass --db elsewhere") from None

    def append_quality(self, records: Iterable[Any]) -> int:
        """Append eval's QualityRecords (their own table, linked to bench records by artifact sha256)."""
        rows = [(r.timestamp, r.device, r.artifact, r.sha256, r.engine, r.quant, r.text_sha256,
                 json.dumps(r.to_json(), sort_keys=True)) for r in records]
        self._ensure(_QUALITY_SCHEMA)
        return self._insert("INSERT INTO quality (timestamp, device, artifact, sha256, engine, quant, text_sha256, "
                            "data) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)

    def append_suites(self, records: Iterable[Any]) -> int:
        """Append eval's SuiteRecords (``edgekit eval --suite``), linked by artifact and suite-file sha256."""
        rows = [(r.timestamp, r.device, r.artifact, r.sha256, r.engine, r.quant, r.suite_sha256, r.suite,
                 json.dumps(r.to_json(), sort_keys=True)) for r in records]
        self._ensure(_SUITE_SCHEMA)
        return self._insert("INSERT INTO suites (timestamp, device, artifact, sha256, engine, quant, suite_sha256, "
                            "suite, data) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)

    def _typed_rows(self, schema: str, table: str, cls: Any) -> tuple[list[Any], list[int]]:
        """Every row of an eval table as ``cls``; the ids of rows that are not a well-typed ``cls`` are
        returned apart, as records() skips and counts corrupt bench rows."""
        try:
            self.db.execute(schema)
            rows = self.db.execute(f"SELECT id, data FROM {table} ORDER BY id").fetchall()
        except sqlite3.Error as e:
            raise OutputError(f"{self.path}: unreadable results store ({e})") from None
        out, corrupt = [], []
        for rid, data in rows:
            rec = _parse_row(data, cls)
            if rec is None:
                corrupt.append(rid)
            else:
                out.append(rec)
        return out, corrupt

    def quality_records(self) -> list[Any]:
        from .eval.record import QualityRecord

        out, self.corrupt_quality = self._typed_rows(_QUALITY_SCHEMA, "quality", QualityRecord)
        return out

    def suite_records(self) -> list[Any]:
        from .eval.record import SuiteRecord

        out, self.corrupt_suites = self._typed_rows(_SUITE_SCHEMA, "suites", SuiteRecord)
        return out

    def records(self) -> list[Record]:
        """Every readable record in store order; the ids of rows that are not a well-typed Record
        (edited by hand, written by a foreign tool, a torn disk page) are skipped into ``corrupt``."""
        try:
            rows = self.db.execute("SELECT id, data FROM records ORDER BY id").fetchall()
        except sqlite3.Error as e:
            raise OutputError(f"{self.path}: unreadable results store ({e})") from None
        out, self.corrupt = [], []
        for rid, data in rows:
            rec = _parse_row(data)
            if rec is None:
                self.corrupt.append(rid)
            else:
                out.append(rec)
        return out

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
