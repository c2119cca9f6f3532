"""Suite packs shipped with edgekit, by the name `eval --suite NAME` takes (a path is read as a file).

enterprise  120 cases in ten suites of typical enterprise uses, written for edgekit (licence below):
            function calling, extraction, classification, summarization, RAG grounding, code
            generation, translation, instruction following, SQL generation, refusal
example     the 6-case example suite
"""

from __future__ import annotations

from pathlib import Path

from ...core.errors import ConfigError

HERE = Path(__file__).resolve().parent
PACKS: dict[str, Path] = {
    "enterprise": HERE / "enterprise.jsonl",
    "example": HERE.parent / "data" / "example_suite.jsonl",
}
LICENCE = "CC0-1.0: the enterprise pack's cases were written for edgekit; no public benchmark's text is used."


def resolve_suite(value: str | Path) -> Path:
    """A suite file, or a shipped pack by name; a value that is neither is one line naming both choices."""
    path = Path(value)
    if path.exists() or any(sep in str(value) for sep in ("/", "\\")) or str(value).endswith(".jsonl"):
        return path
    if str(value) in PACKS:
        return PACKS[str(value)]
    raise ConfigError(f"--suite {value}: no such file, and no shipped pack of that name; packs: {', '.join(PACKS)}")
