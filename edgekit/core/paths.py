"""A model argument that names a local folder which does not exist: say so, with the nearest names."""

from __future__ import annotations

import difflib
from pathlib import Path

from .errors import CheckpointError


def looks_like_path(text: str) -> bool:
    """A model argument a user meant as a folder: a separator beyond owner/name, a leading . / ~,
    or a parent folder that exists here."""
    if text.startswith((".", "/", "~")) or "\\" in text or text.count("/") > 1:
        return True
    parent = Path(text).expanduser().parent
    return parent != Path(".") and parent.is_dir()


def missing_folder(model: str, hub_said: str | None) -> CheckpointError:
    """'no such folder' for ``model``, with the nearest names in its parent, and what the hub said
    when it was also tried as a hub id (None: it is not of the owner/name form)."""
    p = Path(model).expanduser()
    parent = p.parent
    hint = ""
    if parent.is_dir():
        try:
            names = [c.name for c in parent.iterdir() if c.is_dir()]
        except OSError:
            names = []
        close = difflib.get_close_matches(p.name, names, n=1)
        hint = f" ({parent} has no {p.name}" + (f"; did you mean {parent / close[0]}?)" if close else ")")
    if hub_said is None:
        return CheckpointError(f"{model}: no such folder{hint}, and not a hub id of the form owner/name")
    return CheckpointError(f"{model}: no such folder{hint}; also tried as a hub id: {hub_said}")
