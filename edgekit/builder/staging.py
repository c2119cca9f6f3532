"""One build at a time per output folder, written in a private folder and swapped in at the end.

``BuildStage(folder)`` takes an exclusive ``flock`` on the build folder itself (a directory fd locks
as well as a file's, and leaves no lock file a user could mistake for output or delete mid-build).
A second build into the same folder waits for the first, with a log line saying so, the way cargo
waits on its build directory lock: a build tool user who starts two builds expects both to finish,
the later one's result being the one left. The lock is released by the kernel when the process
dies, so a killed build never blocks the next one.

Everything this build writes goes to a private folder made for it inside the output folder
(``mkdtemp``: a fresh name, mode 0700, no path in it another process can predict or plant a symlink
at); the artifacts' sha256s are taken there, from the bytes this build wrote. ``commit`` then removes
the old manifest (it must not vouch for files being replaced), renames each artifact over its old
version and writes the new manifest last. A build that fails or is interrupted before ``commit``
leaves the earlier build, manifest included, exactly as it was; the private folder is removed, and
a stale one left by a killed build is removed by the next build that holds the lock.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from ..core.errors import EdgekitError, OutputError
from ..core.fsutil import _remove, output_error, replace_into
from ..core.names import check_member

log = logging.getLogger(__name__)

STAGE_PREFIX = ".edgekit-build-"


class BuildStage:
    def __init__(self, folder: Path, manifest_name: str):
        self.folder = Path(folder)
        self.manifest_name = manifest_name
        self._fd: int | None = None
        self.path: Path | None = None

    def __enter__(self) -> BuildStage:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise output_error(self.folder, e) from None
        self._lock()
        try:
            m = self.folder / self.manifest_name
            if m.exists() and not m.is_symlink() and not m.is_file():
                raise OutputError(f"{m}: a folder stands where the manifest goes; remove it and build again")
            for stale in self.folder.glob(STAGE_PREFIX + "*"):
                log.info("removing %s, left by a build that was killed", stale.name)
                _remove(stale)
            try:
                self.path = Path(tempfile.mkdtemp(prefix=STAGE_PREFIX, dir=self.folder))
            except OSError as e:
                raise output_error(self.folder, e) from None
        except BaseException:
            self._unlock()
            raise
        return self

    def _lock(self) -> None:
        while True:
            try:
                fd = os.open(self.folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
            except OSError as e:
                raise output_error(self.folder, e) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.warning("%s: another edgekit build is writing here; waiting for it to finish", self.folder)
                fcntl.flock(fd, fcntl.LOCK_EX)
            # The folder we locked must still be the one at this path (not removed and made again).
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.folder))
            except OSError:
                same = False
            if same:
                self._fd = fd
                return
            os.close(fd)

    def _unlock(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the fd drops the flock
            self._fd = None

    def commit(self, files: Iterable[str], write_manifest: Callable[[Path], object]) -> None:
        """Swap the staged ``files`` into the build folder, then write the manifest (last)."""
        assert self.path is not None
        files = list(files)
        twice = next((f for i, f in enumerate(files) if f in files[:i]), None)
        if twice is not None:  # the second rename would find nothing (the regression of issue 23)
            raise OutputError(f"{twice}: the build made it twice; nothing was swapped in")
        for name in files:  # everything that can refuse the swap refuses before the old manifest goes
            check_member(name, f"{self.folder}")
            try:
                st = os.lstat(self.path / name)
            except FileNotFoundError:
                raise OutputError(f"{name}: the build did not make it; nothing was swapped in") from None
            if stat.S_ISLNK(st.st_mode):
                raise OutputError(f"{self.path / name}: the build made a symlink; nothing was swapped in")
            dest = self.folder / name
            if not stat.S_ISDIR(st.st_mode) and dest.is_dir() and not dest.is_symlink():
                raise OutputError(f"{dest}: a folder stands where this file goes; remove it and build again")
        manifest = self.folder / self.manifest_name
        try:
            if manifest.is_symlink() or manifest.exists():
                manifest.unlink()
            for name in files:
                replace_into(self.path / name, self.folder / name)
        except OSError as e:
            raise output_error(self.folder, e) from None
        write_manifest(self.folder)

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if isinstance(exc, EdgekitError) and self.path is not None and str(self.path) in exc.message:
            # The stage is gone once we return: name the build folder the user asked for instead.
            exc.message = exc.message.replace(str(self.path), str(self.folder))
            exc.args = (exc.message,)
        try:
            if self.path is not None:
                shutil.rmtree(self.path, ignore_errors=True)
        finally:
            self._unlock()
