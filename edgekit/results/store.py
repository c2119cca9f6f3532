"""The results store: SQLite, a table per registered record type (base.record_type), append-only.

Rows keep each record as JSON in ``data``: a field added to a record needs no ALTER TABLE, and rows
written before it read back with the field's default (``from_json`` also drops keys a newer edgekit
wrote). The table's other columns are indexed copies of identifying fields.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Optional

from ..core.errors import OutputError
from .base import RECORD_TYPES, RecordType, table_of, well_typed
from .bench import Record


def default_db() -> Path:
    """$EDGEKIT_DB, else $XDG_DATA_HOME/edgekit/results.db (~/.local/share/edgekit/results.db)."""
    if os.environ.get("EDGEKIT_DB"):
        return Path(os.environ["EDGEKIT_DB"]).expanduser()
    base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "edgekit" / "results.db"


def table_schema(t: RecordType) -> str:
    cols = ", ".join(f"{c} TEXT NOT NULL" for c in t.columns)
    return f"CREATE TABLE IF NOT EXISTS {t.table} (id INTEGER PRIMARY KEY AUTOINCREMENT, {cols}, data TEXT NOT NULL)"


class Store:
    """Append-only SQLite store. WAL lets readers run beside a writer; each append is one
    ``BEGIN IMMEDIATE`` transaction, and the busy timeout makes a second writer wait its turn
    instead of failing, so concurrent bench processes keep every row."""

    def __init__(self, path: Optional[Path] = None, timeout_s: float = 60.0):
        self.path = Path(path) if path else default_db()
        self.skipped: dict[str, list[int]] = {}  # table → ids of rows read() skipped as not well-typed
        db: Optional[sqlite3.Connection] = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, timeout=timeout_s, isolation_level=None)
            db.execute(f"PRAGMA busy_timeout = {int(timeout_s * 1000)}")
            db.execute("PRAGMA journal_mode = WAL")
            db.execute(table_schema(RECORD_TYPES.get("records")))
        except (OSError, sqlite3.Error) as e:
            if db is not None:
                db.close()  # a refused store keeps no file open (a mount it is on can be unmounted)
            raise OutputError(
                f"{self.path}: cannot open the results store ({e}); pass --db with a writable path"
            ) from None
        self.db: sqlite3.Connection = db

    def check_writable(self, table: str) -> None:
        """Make ``table`` and begin and roll back a write: a read-only file or mount, a folder or a file that
        is not SQLite is an OutputError before anything is measured (the store is closed then)."""
        try:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute(table_schema(RECORD_TYPES.get(table)))
            self.db.execute("ROLLBACK")
        except sqlite3.Error as e:
            self.close()
            raise OutputError(
                f"{self.path}: cannot write the results store ({e}); pass --db with a writable path, or --no-store"
            ) from None

    def append(self, records: Iterable[Any]) -> int:
        """Append records (each to its type's table) in one BEGIN IMMEDIATE transaction: a second writer
        waits its turn."""
        records = list(records)
        if not records:
            return 0
        t = table_of(type(records[0]))
        if any(type(r) is not t.cls for r in records):
            raise TypeError("append records of one type at a time")
        rows = [(*(str(getattr(r, c)) for c in t.columns), json.dumps(r.to_json(), sort_keys=True)) for r in records]
        sql = f"INSERT INTO {t.table} ({', '.join(t.columns)}, data) VALUES ({', '.join('?' * (len(t.columns) + 1))})"
        try:
            self.db.execute(table_schema(t))
            self.db.execute("BEGIN IMMEDIATE")
            self.db.executemany(sql, rows)
            self.db.execute("COMMIT")
        except sqlite3.Error as e:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            raise OutputError(f"{self.path}: cannot append to the results store ({e}); pass --db elsewhere") from None
        return len(rows)

    def read(self, cls: type) -> list[Any]:
        """Every readable record of a type, in store order; the ids of rows that are not a well-typed
        ``cls`` (edited by hand, written by a foreign tool, a torn disk page) go to ``skipped[table]``."""
        t = table_of(cls)
        try:
            self.db.execute(table_schema(t))
            rows = self.db.execute(f"SELECT id, data FROM {t.table} ORDER BY id").fetchall()
        except sqlite3.Error as e:
            raise OutputError(f"{self.path}: unreadable results store ({e})") from None
        out, self.skipped[t.table] = [], []
        for rid, data in rows:
            try:
                rec = well_typed(json.loads(data), cls)
            except (TypeError, ValueError):
                rec = None
            if rec is None:
                self.skipped[t.table].append(rid)
            else:
                out.append(rec)
        return out

    def records(self) -> list[Record]:
        """The bench records (``read(Record)``)."""
        return self.read(Record)

    @property
    def corrupt(self) -> list[int]:
        """Ids of bench rows the last records() skipped."""
        return self.skipped.get("records", [])

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
