"""Atomic file output: write to a hidden temp name beside the target, rename when complete.

A crash, a full disk or Ctrl-C leaves at most a hidden ``.*.partial`` that nothing mistakes for a
finished artifact, and the context manager removes even that when it sees the exception.

Temp names are unique per call and created exclusively (``mkstemp`` / ``mkdtemp``: O_CREAT|O_EXCL,
which refuses an existing name, symlinks included), so two writers never share one, and a symlink
planted at a name edgekit might use is never opened or written through. The rename replaces
whatever stands at the final name, a symlink included, without following it, and only a regular
file (or real folder) this call made is ever renamed into place.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import OutputError


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# mkstemp makes 0600 files and mkdtemp 0700 folders; finished artifacts get the modes a plain
# open() would have given them.
_UMASK = _umask()
FILE_MODE = 0o666 & ~_UMASK
DIR_MODE = 0o777 & ~_UMASK


def output_error(path: Path, e: OSError, option: str = "--out") -> OutputError:
    """One line for a failed write; ``option`` is the command's option that names the place (--out,
    eval's --ref-cache ...), so the fix it suggests is one the command has."""
    if e.errno == errno.ENOSPC:
        return OutputError(f"{path}: no space left on the device; free space or pass {option} on a larger disk")
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return OutputError(f"{path}: not writable ({e.strerror}); pass {option} with a folder you can write")
    if e.errno in (errno.ENOTDIR, errno.EEXIST):
        return OutputError(f"{path}: a file stands where a folder is needed; pass {option} with a folder path")
    if e.errno == errno.EISDIR:
        return OutputError(f"{path}: a folder stands where a file is needed; remove it or pass {option} elsewhere")
    return OutputError(f"{path}: cannot write ({e.strerror or e}); pass {option} with a folder you can write")


# Free space under which a failed write by a child (llama.cpp's quantizer, which reports no errno) is
# most likely a full disk: it fails on a write of up to one tensor's rows, tens of MB for E2B.
LOW_SPACE = 64 << 20


def low_space_hint(path: Path) -> str:
    """'; the disk ... has only N MB free ...' when ``path``'s filesystem is (nearly) full, else ''."""
    try:
        st = os.statvfs(Path(path).parent)
    except OSError:
        return ""
    free = st.f_bavail * st.f_frsize
    if free >= LOW_SPACE:
        return ""
    return (
        f"; the disk holding {Path(path).parent} has only {free / 1e6:.1f} MB free, most likely full: "
        "free space or pass --out on a larger disk"
    )


def _mkdirs(folder: Path, option: str = "--out") -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise output_error(folder, e, option) from None


@contextmanager
def atomic_path(path: Path, option: str = "--out") -> Iterator[Path]:
    """Yield a fresh, empty temp file beside ``path`` (made exclusively); rename it over ``path``.
    ``option``: the command's option naming the place, for the error's fix."""
    path = Path(path)
    _mkdirs(path.parent, option)
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    except OSError as e:
        raise output_error(path.parent, e, option) from None
    tmp = Path(name)
    try:
        os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)
    try:
        yield tmp
        if not stat.S_ISREG(os.lstat(tmp).st_mode):  # swapped for a link or folder under our feet
            raise OutputError(f"{tmp}: replaced by something else while being written; nothing was renamed into place")
        os.replace(tmp, path)
    except OSError as e:
        _remove(tmp)
        raise output_error(path, e, option) from None
    except BaseException:
        _remove(tmp)
        raise


@contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Like atomic_path for a directory: build it under a fresh temp name, then swap it in."""
    path = Path(path)
    _mkdirs(path.parent)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    except OSError as e:
        raise output_error(path.parent, e) from None
    try:
        yield tmp
        os.chmod(tmp, DIR_MODE)
        replace_into(tmp, path)
    except OSError as e:
        _remove(tmp)
        raise output_error(path, e) from None
    except BaseException:
        _remove(tmp)
        raise


def replace_into(src: Path, dst: Path) -> None:
    """Rename ``src`` over ``dst``: a file or symlink there is replaced (never followed), a real
    folder is first moved aside beside ``src`` and then removed."""
    if dst.is_dir() and not dst.is_symlink() and src.is_dir():
        aside = Path(tempfile.mkdtemp(prefix=".replaced.", dir=src.parent))
        os.replace(dst, aside / "old")
        os.replace(src, dst)
        _remove(aside)
        return
    if dst.is_symlink() and src.is_dir():
        dst.unlink()  # rename() cannot put a folder over a link; the link goes, its target stays
    os.replace(src, dst)


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        try:
            p.unlink()
        except FileNotFoundError:
            pass
        except OSError:
            pass  # cleanup must not hide the error that brought us here
