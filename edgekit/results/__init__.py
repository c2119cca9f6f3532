"""Records and what is done with them: one base with its provenance (base), the bench record and its
tables (bench), eval's records (quality), streaming printers (printers), the SQLite store (store), and
``edgekit report`` (report and plots, imported on their own: they need matplotlib)."""

from .base import MB, RECORD_TYPES, ArtifactRecord, RecordBase, provenance, record_type, utc_now
from .bench import (
    OUTPUTS,
    PARSERS,
    PRINTERS,
    Record,
    parse_csv,
    parse_json,
    parse_jsonl,
    printer,
    to_csv,
    to_json,
    to_jsonl,
    to_markdown,
)
from .printers import Column, CsvPrinter, JsonlPrinter, JsonPrinter, MarkdownPrinter, Printer, parse_markdown
from .quality import QualityRecord, SuiteRecord
from .store import Store, default_db

__all__ = [
    "MB",
    "OUTPUTS",
    "PARSERS",
    "PRINTERS",
    "RECORD_TYPES",
    "ArtifactRecord",
    "Column",
    "CsvPrinter",
    "JsonPrinter",
    "JsonlPrinter",
    "MarkdownPrinter",
    "Printer",
    "QualityRecord",
    "Record",
    "RecordBase",
    "Store",
    "SuiteRecord",
    "default_db",
    "parse_csv",
    "parse_json",
    "parse_jsonl",
    "parse_markdown",
    "printer",
    "provenance",
    "record_type",
    "to_csv",
    "to_json",
    "to_jsonl",
    "to_markdown",
    "utc_now",
]
