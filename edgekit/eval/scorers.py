"""Task-suite scorers: each takes the model's output and the case's ``expected`` and says pass or fail.

exact     the output, stripped, equals ``expected`` (a string)
contains  every string of ``expected`` (a string or a list) occurs in the output, case-insensitively
regex     ``expected`` (a Python regex) matches somewhere in the output (DOTALL)
choice    the first standalone letter A-J in the output (after an optional "Answer:") is ``expected``
json      the output's first JSON object (```json fences allowed) has every field of ``expected`` equal
tool_call the output's first Gemma 4 tool call ``<|tool_call>call:NAME{key:<|"|>text<|"|>,n:3}<tool_call|>``
          has ``expected["name"]`` and every argument of ``expected["arguments"]`` equal

The enterprise pack (packs/) adds, in scorers_pack.py: json_schema, rouge_l, grounded, code, sql,
instructions and refusal.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

QUOTE, CALL_OPEN, CALL_CLOSE = '<|"|>', "<|tool_call>", "<tool_call|>"


def exact(out: str, expected: Any) -> bool:
    return out.strip() == str(expected).strip()


def contains(out: str, expected: Any) -> bool:
    needles = [expected] if isinstance(expected, str) else list(expected)
    low = out.lower()
    return all(str(n).lower() in low for n in needles)


def regex(out: str, expected: Any) -> bool:
    return re.search(str(expected), out, re.DOTALL) is not None


def choice(out: str, expected: Any) -> bool:
    m = re.search(r"answer\s*(?:is)?\s*[:\-]?\s*\(?([A-J])\b", out, re.IGNORECASE) or re.search(r"\b([A-J])\b", out)
    return bool(m) and m.group(1).upper() == str(expected).strip().upper()


def first_json(out: str) -> Any:
    text = re.sub(r"```(?:json)?", "", out)
    dec = json.JSONDecoder()
    for i, ch in enumerate(text):
        if ch == "{":
            try:
                return dec.raw_decode(text, i)[0]
            except ValueError:
                continue
    return None


def fields_match(got: Any, want: dict) -> bool:
    return isinstance(got, dict) and all(k in got and got[k] == v for k, v in want.items())


def json_fields(out: str, expected: Any) -> bool:
    return fields_match(first_json(out), expected)


def parse_tool_call(out: str) -> tuple[str, dict] | None:
    """The first Gemma 4 tool call in ``out`` as (name, arguments), or None when there is none or it
    does not parse. Strings are quoted with <|"|> (no escapes inside), keys are bare."""
    a = out.find(CALL_OPEN)
    if a < 0:
        return None
    b = out.find(CALL_CLOSE, a)
    body = out[a + len(CALL_OPEN) : b if b >= 0 else len(out)]
    m = re.match(r"\s*call:\s*([^{\s]+)\s*(\{.*\})\s*$", body, re.DOTALL)
    if not m:
        return None
    parts, rest = [], m.group(2)
    while QUOTE in rest:  # <|"|>text<|"|> → a JSON string; bare keys outside strings → quoted
        i = rest.index(QUOTE)
        j = rest.find(QUOTE, i + len(QUOTE))
        if j < 0:
            return None
        parts.append(re.sub(r"([{,]\s*)([A-Za-z_][\w.\-]*)\s*:", r'\1"\2":', rest[:i]))
        parts.append(json.dumps(rest[i + len(QUOTE) : j]))
        rest = rest[j + len(QUOTE) :]
    parts.append(re.sub(r"([{,]\s*)([A-Za-z_][\w.\-]*)\s*:", r'\1"\2":', rest))
    try:
        args = json.loads("".join(parts))
    except ValueError:
        return None
    return m.group(1), args


def tool_call(out: str, expected: Any) -> bool:
    call = parse_tool_call(out)
    return (
        call is not None and call[0] == expected.get("name") and fields_match(call[1], expected.get("arguments") or {})
    )


def _check_str(e: Any) -> str | None:
    return None if isinstance(e, str) else "expected must be a string"


def _check_regex(e: Any) -> str | None:
    if not isinstance(e, str):
        return "expected must be a regex string"
    try:
        re.compile(e)
    except re.error as err:
        return f"expected is not a valid regex ({err})"
    return None


def _check_contains(e: Any) -> str | None:
    ok = isinstance(e, str) or (isinstance(e, list) and e and all(isinstance(x, str) for x in e))
    return None if ok else "expected must be a string or a list of strings"


def _check_choice(e: Any) -> str | None:
    return None if isinstance(e, str) and re.fullmatch(r"[A-Ja-j]", e.strip()) else "expected must be one letter A-J"


def _check_json(e: Any) -> str | None:
    return None if isinstance(e, dict) and e else "expected must be an object of the fields to match"


def _check_tool(e: Any) -> str | None:
    ok = isinstance(e, dict) and isinstance(e.get("name"), str) and isinstance(e.get("arguments", {}), dict)
    return None if ok else 'expected must be {"name": ..., "arguments": {...}}'


Scorer = tuple[Callable[[str, Any], bool], Callable[[Any], "str | None"]]

# name → (scorer, check of ``expected`` at load time)
SCORERS: dict[str, Scorer] = {
    "exact": (exact, _check_str),
    "contains": (contains, _check_contains),
    "regex": (regex, _check_regex),
    "choice": (choice, _check_choice),
    "json": (json_fields, _check_json),
    "tool_call": (tool_call, _check_tool),
}
