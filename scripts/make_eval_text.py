"""Re-make edgekit's default evaluation text and the tiny model's training text from CPython's stdlib.

Both come from the standard library a Python install ships (no download): prose from the Python
documentation (``pydoc_data.topics``: the language reference and library chapters ``help()`` shows)
and code from a few pure-Python modules. Both are © Python Software Foundation under the PSF License
Version 2 (PSF-LICENSE.txt beside the text), which permits redistribution with the licence kept.

Paragraphs are deduplicated (topics quote each other: ``compound`` contains ``if``, ``while`` …), then the
last topics and three modules become the held-out text that training never sees: no held-out
paragraph occurs in the training text (checked here).

    python scripts/make_eval_text.py      # writes edgekit/eval/data/{train,heldout}.txt

Made from CPython 3.11.7; another version's docs give another text (and sha256).
"""

from __future__ import annotations

import shutil
import sys
import sysconfig
from pathlib import Path

TRAIN_MODULES = ["textwrap", "heapq", "shlex", "graphlib", "string", "colorsys", "calendar", "fractions"]
HELDOUT_MODULES = ["bisect", "sched", "reprlib", "fnmatch"]
HELDOUT_PROSE_BYTES = 40_000
OUT = Path(__file__).resolve().parent.parent / "edgekit" / "eval" / "data"


def prose_paragraphs() -> list[str]:
    import pydoc_data.topics as topics

    seen: set[str] = set()
    out = []
    for name in sorted(topics.topics):
        for para in topics.topics[name].split("\n\n"):
            para = para.strip("\n")
            if para.strip() and para not in seen:
                seen.add(para)
                out.append(para)
    return out


def module_text(name: str) -> str:
    return (Path(sysconfig.get_paths()["stdlib"]) / f"{name}.py").read_text(encoding="utf-8")


def main() -> int:
    paras = prose_paragraphs()
    # The held-out prose is the tail of the deduplicated stream: whole paragraphs, ≈40 KB.
    held, size = [], 0
    while paras and size < HELDOUT_PROSE_BYTES:
        p = paras.pop()
        held.insert(0, p)
        size += len(p.encode()) + 2
    train = "\n\n".join(paras) + "\n\n" + "\n\n".join(module_text(m) for m in TRAIN_MODULES)
    heldout = "\n\n".join(held) + "\n\n" + "\n\n".join(module_text(m) for m in HELDOUT_MODULES)
    leaked = [p for p in held if p in train and len(p) > 80]
    if leaked:
        raise SystemExit(f"{len(leaked)} held-out paragraphs occur in the training text, e.g. {leaked[0][:60]!r}")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "train.txt").write_text(train, encoding="utf-8")
    (OUT / "heldout.txt").write_text(heldout, encoding="utf-8")
    shutil.copyfile(Path(sysconfig.get_paths()["stdlib"]) / "LICENSE.txt", OUT / "PSF-LICENSE.txt")
    print(f"train {len(train.encode())} bytes, heldout {len(heldout.encode())} bytes (Python {sys.version.split()[0]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
