"""Atomic file output: write to a hidden temp name beside the target, rename when complete.

A crash, a full disk or Ctrl-C leaves at most a ``.*.partial`` file that nothing mistakes for a
finished artifact, and the context manager removes even that when it sees the exception.
"""

from __future__ import annotations

import errno
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import OutputError


def output_error(path: Path, e: OSError) -> OutputError:
    if e.errno == errno.ENOSPC:
        return OutputError(f"{path}: no space left on the device; free space or pass --out on a larger disk")
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return OutputError(f"{path}: not writable ({e.strerror}); pass --out with a folder you can write")
    if e.errno in (errno.ENOTDIR, errno.EEXIST):
        return OutputError(f"{path}: a file stands where a folder is needed; pass --out with a folder path")
    return OutputError(f"{path}: cannot write ({e.strerror or e}); pass --out with a folder you can write")


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise output_error(path.parent, e) from None
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        _remove(tmp)
        raise output_error(path, e) from None
    except BaseException:
        _remove(tmp)
        raise


@contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Like atomic_path for a directory: build it under a temp name, then swap it in."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial")
    _remove(tmp)
    try:
        tmp.mkdir(parents=True)
    except OSError as e:
        raise output_error(path.parent, e) from None
    try:
        yield tmp
        _remove(path)
        os.replace(tmp, path)
    except OSError as e:
        _remove(tmp)
        raise output_error(path, e) from None
    except BaseException:
        _remove(tmp)
        raise


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        try:
            p.unlink()
        except FileNotFoundError:
            pass
