"""What a build calibrates on: a text the importance matrix is computed over, or a matrix made before.

`edgekit build --calibrate TEXT` (``builtin``: the shipped text) or `--imatrix FILE` (llama-imatrix's
GGUF or legacy .dat). Checked here before any work; the GGUF format computes and applies it
(edgekit/backends/gguf/calibrate.py). The shipped text is two CPython stdlib modules, prose and code
(PSF License), disjoint from eval's held-out text (scripts/make_calibration_text.py): English and
Python only, so a deployment in other languages should pass its own text.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..backends.gguf.imatrix import read_imatrix
from ..core.errors import ConfigError
from ..eval.text import read_text

BUILTIN = "builtin"
DEFAULT_TEXT = Path(__file__).resolve().parent.parent / "eval" / "data" / "calibration.txt"


@dataclass(frozen=True)
class Calibration:
    text: Optional[Path] = None  # the calibration text (None: a precomputed matrix)
    imatrix: Optional[Path] = None  # a precomputed importance matrix

    @property
    def label(self) -> str:
        return f"--imatrix {self.imatrix}" if self.imatrix else f"--calibrate {self.text}"


def calibration(calibrate: Optional[str], imatrix: Optional[Path]) -> Optional[Calibration]:
    """The build's calibration from its options (None: none asked), every input checked now."""
    if calibrate is not None and imatrix is not None:
        raise ConfigError("--calibrate and --imatrix both name an importance matrix; pass one of them")
    if imatrix is not None:
        read_imatrix(Path(imatrix))  # a file llama.cpp cannot read fails here, before any conversion
        return Calibration(imatrix=Path(imatrix))
    if calibrate is None:
        return None

    path = DEFAULT_TEXT if calibrate == BUILTIN else Path(calibrate)
    read_text(path)
    return Calibration(text=path)
