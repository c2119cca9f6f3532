"""``serve --prefix-cache FILE``: the shared system prefix's KV state across restarts, keyed by the artifact.

llama.cpp's state file (``llama_state_seq_save_file``) names no model: a cache saved by another model of
the same shape loaded silently and changed the replies. So a sidecar ``FILE.edgekit.json`` records the
sha256 of the artifact that wrote it, checked before the server starts: another artifact's cache, a
folder, or a file edgekit did not write (no sidecar) is refused in one line and never overwritten.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from ...core.errors import ConfigError

KIND = "edgekit prefix cache"


def meta_path(path: Path) -> Path:
    return path.with_name(path.name + ".edgekit.json")


def check(path: Path, sha256: str) -> bool:
    """Whether ``path`` holds this artifact's cache (False: none yet); ConfigError when it may not be used."""
    path = Path(path)
    if not sha256:
        raise ConfigError("--prefix-cache needs the artifact's sha256 (its manifest); serve a build folder")
    if path.is_dir() or (path.exists() and not path.is_file()):
        raise ConfigError(
            f"--prefix-cache {path}: a folder or special file; give the path of a file to keep the cache in"
        )
    if not path.parent.is_dir():
        raise ConfigError(f"--prefix-cache {path}: the folder {path.parent} does not exist")
    meta = meta_path(path)
    if not path.exists():
        return False
    try:
        info = json.loads(meta.read_text(encoding="utf-8"))
        saved = info["artifact_sha256"] if info.get("kind") == KIND else None
    except (OSError, ValueError, KeyError, TypeError):
        saved = None
    if saved is None:
        raise ConfigError(
            f"--prefix-cache {path}: the file exists and is not an edgekit prefix cache (no valid "
            f"{meta.name} beside it); not overwriting it: remove it or give another path"
        )
    if saved != sha256:
        raise ConfigError(
            f"--prefix-cache {path}: saved by artifact sha256 {saved[:12]}…, this server serves "
            f"{sha256[:12]}…; another model's cache would change the replies: remove it or give "
            "another path"
        )
    return True


def save(path: Path, sha256: str, write: Callable[[Path], bool]) -> bool:
    """``write(tmp)`` writes the state to a fresh temporary file beside ``path``; then the sidecar and the
    file are put in place (each an atomic rename). False if ``write`` failed (nothing is replaced)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        if not write(Path(tmp)):
            return False
        mfd, mtmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".json.tmp", dir=path.parent)
        with os.fdopen(mfd, "w", encoding="utf-8") as f:
            json.dump({"kind": KIND, "artifact_sha256": sha256}, f)
        os.replace(mtmp, meta_path(path))
        os.replace(tmp, path)
        return True
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
