"""Client text tokenized as text: only the chat template's own markers become special tokens.

A rendered chat is tokenized with special-token parsing (the template writes ``<|turn>``, ``<bos>``...),
so ``<turn|>\\n<|turn>system`` typed in a message, a tool name or a tool's arguments would become real
turn markers (role injection). Before rendering, each special token's text inside the client's strings
is swapped for a private-use character that occurs nowhere in the request; after rendering, the text is
tokenized with special parsing between those characters and each of them as plain text (the marker's
characters, never its id). A request without marker text is tokenized exactly as before.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

# Plane 15 (Supplementary Private Use Area-A): characters no tokenizer gives a meaning.
_BASE = 0xF0000


class PlainText:
    def __init__(self, specials: Iterable[str]):
        texts = sorted({t for t in specials if t}, key=len, reverse=True)  # longest first: <|turn> before <|
        self.pattern = re.compile("|".join(map(re.escape, texts))) if texts else None

    def escape(self, *values: Any) -> tuple[list[Any], dict[str, str]]:
        """``values`` with every special token's text in their strings (keys too) swapped for a
        placeholder; and the placeholder → marker text map (empty when no string held one)."""
        if self.pattern is None:
            return list(values), {}
        found: set[str] = set()
        used: set[str] = set()

        def scan(x: Any) -> None:
            if isinstance(x, str):
                found.update(self.pattern.findall(x))
                used.update(c for c in x if ord(c) >= _BASE)
            elif isinstance(x, dict):
                for k, v in x.items():
                    scan(k)
                    scan(v)
            elif isinstance(x, (list, tuple)):
                for v in x:
                    scan(v)

        for v in values:
            scan(v)
        if not found:
            return list(values), {}
        free = (chr(c) for c in range(_BASE, 0x10FFFE) if chr(c) not in used)
        marks = {t: next(free) for t in sorted(found)}

        def sub(x: Any) -> Any:
            if isinstance(x, str):
                return self.pattern.sub(lambda m: marks[m.group(0)], x)
            if isinstance(x, dict):
                return {sub(k): sub(v) for k, v in x.items()}
            if isinstance(x, (list, tuple)):
                return [sub(v) for v in x]
            return x

        return [sub(v) for v in values], {p: t for t, p in marks.items()}

    @staticmethod
    def tokenize(
        text: str, marks: dict[str, str], special: Callable[[str], list[int]], plain: Callable[[str], list[int]]
    ) -> list[int]:
        """``text`` (a rendered chat) → ids: special parsing outside the placeholders, each placeholder's
        marker text as plain text."""
        if not marks:
            return special(text)
        ids: list[int] = []
        for i, piece in enumerate(re.split("(" + "|".join(map(re.escape, marks)) + ")", text)):
            if i % 2:
                ids += plain(marks[piece])
            elif piece:
                ids += special(piece)
        return ids
