"""Names that become file and folder names: one plain name inside a folder, never a path.

No numpy here: targets and recipes import it, and a device venv made with --no-deps reads target
profiles without numpy.
"""

from __future__ import annotations

import re
from typing import Any

from .errors import ArtifactError, ConfigError
from .fields import shown

# A recipe name or quant label, which ends up in file names: one plain, portable name.
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


def check_member(name: Any, where: str) -> str:
    """``name`` if it is one plain file or folder name: not empty, . or .., no path separator or NUL,
    no leading dash (it reaches ssh and shell commands in deploy); else ArtifactError. Every manifest
    entry passes here when read, and every artifact before it is swapped into a build folder."""
    ok = (
        isinstance(name, str)
        and name not in ("", ".", "..")
        and not name.startswith("-")
        and not any(c in name for c in "/\\\0")
    )
    if not ok:
        raise ArtifactError(
            f"{where}: artifact name {name!r} is not a plain name inside the build folder "
            "(absolute, .., or a path separator); rebuild with `edgekit build`"
        )
    return name


def check_plain_name(value: Any, key: str, where: str, fix: str) -> str:
    """A recipe's name or quant, a target's name: they become file and folder names, so each must be
    one portable name (SAFE_NAME), never a path; else ConfigError."""
    if not (isinstance(value, str) and SAFE_NAME.match(value)):
        raise ConfigError(
            f"{where}: {key} must be a plain name (letters, digits, . _ + -; no path separator "
            f"or leading dot), not {shown(value)}; {fix}"
        )
    return value
