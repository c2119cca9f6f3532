"""Re-make edgekit's default calibration text (the importance matrix's, `edgekit build --calibrate builtin`).

Two stdlib modules that neither eval's held-out text nor the tiny model's training text uses
(scripts/make_eval_text.py takes other modules and the documentation's topics): docstring prose and
code, © Python Software Foundation, PSF License Version 2 (edgekit/eval/data/PSF-LICENSE.txt).
tests/test_imatrix.py checks it shares no paragraph with the held-out text.

    python scripts/make_calibration_text.py     # writes edgekit/eval/data/calibration.txt

Made from CPython 3.11.7; another version's modules give another text (and sha256).
"""

from __future__ import annotations

import sys
import sysconfig
from pathlib import Path

MODULES = ["statistics", "contextlib"]
OUT = Path(__file__).resolve().parent.parent / "edgekit" / "eval" / "data" / "calibration.txt"


def main() -> int:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    text = "\n\n".join((stdlib / f"{m}.py").read_text(encoding="utf-8") for m in MODULES)
    OUT.write_text(text, encoding="utf-8")
    print(f"calibration {len(text.encode())} bytes (Python {sys.version.split()[0]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
