"""Run a child process inside a memory cgroup sized at a limit, and read back what the kernel saw.

``memory_limit(limit_bytes)`` is a context manager that makes a fresh cgroup, yields a ``Limit``
whose ``wrap(argv)`` turns a command into one that joins the cgroup before anything else runs, and
always removes the cgroup on the way out (after killing whatever is still in it: a child left
behind by an interrupted bench, say). Mechanisms, first that works:

  cgroup v2   ``memory.max`` (+ ``memory.swap.max = 0``) in a child of this process's own v2 cgroup,
              where the v2 hierarchy has the memory controller (the root's child where ours has
              processes, the v2 "no internal processes" rule); peak: ``memory.peak``, OOM kills:
              ``memory.events`` ``oom_kill``
  cgroup v1   ``memory.limit_in_bytes`` (+ ``memory.memsw.limit_in_bytes`` at the same figure where the
              kernel accounts swap, so swap cannot stretch the limit) in a child of this process's own
              v1 memory cgroup; peak: ``memory.max_usage_in_bytes``, OOM kills: ``memory.oom_control``
              ``oom_kill``, ``memory.failcnt``
  systemd     ``systemd-run --scope -p MemoryMax=`` (``--user`` when not root) where systemd is PID 1 and
              the cgroup tree is not writable; the scope's counters are read from
              ``systemctl show`` while the unit exists (OOM kills from its ``Result``)

Both cgroup counters include the page cache charged to the run (the mapped GGUF's pages the child
read in). A file page already in the page cache was charged to whoever read it first, so a caller
that wants the weights counted evicts the artifact first (``evict``).

Joining is race-free: the wrapper is ``sh -c 'echo $$ > cgroup.procs && exec "$@"'``, so the shell
moves itself and then execs the real child, which starts life inside the cgroup (no Python
``preexec_fn``, which is unsafe with threads in the parent, e.g. rich's refresh thread). Where no
cgroup can be made (macOS, no permission, no memory controller), ``Limit.enforced`` is False and
``Limit.reason`` says why; ``wrap`` then returns the command unchanged.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

log = logging.getLogger(__name__)

JOIN = 'echo $$ > "$0" || exit 97; exec "$@"'  # $0 = the cgroup's procs file (sh -c's first operand)
JOIN_FAILED = 97  # the wrapper's exit code when it could not join


@dataclass
class Readings:
    peak_bytes: Optional[int] = None  # the cgroup's high-water mark, page cache charged to it included
    oom_kills: int = 0  # processes the kernel's OOM killer killed inside it
    failcnt: Optional[int] = None  # v1: times usage hit the limit (reclaim ran)


@dataclass
class Limit:
    """A limit a child can be put under: ``enforced`` with a ``mechanism``, or not, with a ``reason``."""

    limit_bytes: Optional[int]
    mechanism: str = ""  # e.g. "cgroup v1 memory.limit_in_bytes"
    reason: str = ""  # why it is not enforced ("" when it is)
    path: Optional[Path] = None  # the cgroup folder (v1/v2)
    procs: Optional[Path] = None  # the file a process writes its pid to, to join
    unit: str = ""  # systemd scope name
    version: int = 0  # 1, 2, or 0 for systemd / not enforced
    readings: Readings = field(default_factory=Readings)

    @property
    def enforced(self) -> bool:
        return bool(self.mechanism)

    def wrap(self, argv: list[str]) -> list[str]:
        if self.procs is not None:
            return ["/bin/sh", "-c", JOIN, str(self.procs), *argv]
        if self.unit:
            user = [] if os.geteuid() == 0 else ["--user"]
            return [
                "systemd-run",
                *user,
                "--scope",
                "--quiet",
                f"--unit={self.unit}",
                "-p",
                f"MemoryMax={self.limit_bytes}",
                "-p",
                "MemorySwapMax=0",
                "--",
                *argv,
            ]
        return list(argv)

    def read(self) -> Readings:
        """The cgroup's counters now (call after the child exited; ``__exit__`` calls it too)."""
        if self.path is not None and self.path.is_dir():
            self.readings = _read_v2(self.path) if self.version == 2 else _read_v1(self.path)
        elif self.unit:
            self.readings = _read_systemd(self.unit) or self.readings
        return self.readings


# ---------------------------------------------------------------- where this process's cgroups are


def _own_cgroups() -> tuple[Optional[str], Optional[str]]:
    """(v1 memory controller path, v2 path) of this process from /proc/self/cgroup."""
    v1 = v2 = None
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        hid, ctrls, path = line.split(":", 2)
        if hid == "0" and ctrls == "":
            v2 = path
        elif "memory" in ctrls.split(","):
            v1 = path
    return v1, v2


def _mounts() -> tuple[Optional[Path], Optional[Path]]:
    """(v1 memory controller mount point, cgroup2 mount point) from /proc/self/mountinfo."""
    v1 = v2 = None
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fstype, _src, opts = [*right.split(), "", "", ""][:3]
        mnt = Path(left.split()[4])
        if fstype == "cgroup2" and v2 is None:
            v2 = mnt
        elif fstype == "cgroup" and "memory" in opts.split(",") and v1 is None:
            v1 = mnt
    return v1, v2


def _write(path: Path, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _mkdir(parent: Path, name: str) -> Path:
    p = parent / name
    p.mkdir()
    return p


def _try_v2(mount: Path, own: str, name: str, limit: int) -> tuple[Optional[Limit], str]:
    if "memory" not in (mount / "cgroup.controllers").read_text().split():
        return None, f"cgroup v2 at {mount} has no memory controller (it is bound to a v1 hierarchy)"
    errs = []
    for parent in (mount / own.lstrip("/"), mount):
        sub = parent / "cgroup.subtree_control"
        try:
            if "memory" not in sub.read_text().split():
                _write(sub, "+memory")  # EBUSY where `parent` holds processes and is not the root
            _sweep(parent)
            cg = _mkdir(parent, name)
        except OSError as e:
            errs.append(f"{parent}: {e.strerror}")
            continue
        try:
            _write(cg / "memory.max", str(limit))
            if (cg / "memory.swap.max").exists():
                _write(cg / "memory.swap.max", "0")
        except OSError as e:
            _remove(cg)
            errs.append(f"{cg}/memory.max: {e.strerror}")
            continue
        return Limit(limit, "cgroup v2 memory.max", path=cg, procs=cg / "cgroup.procs", version=2), ""
    return None, "cgroup v2: " + "; ".join(errs)


def _try_v1(mount: Path, own: str, name: str, limit: int) -> tuple[Optional[Limit], str]:
    parent = mount / own.lstrip("/")
    _sweep(parent)
    try:
        cg = _mkdir(parent, name)
    except OSError as e:
        return None, f"cgroup v1 memory at {parent}: {e.strerror}"
    try:
        _write(cg / "memory.limit_in_bytes", str(limit))
        if (cg / "memory.memsw.limit_in_bytes").exists():  # memory + swap: no swap beyond the limit
            _write(cg / "memory.memsw.limit_in_bytes", str(limit))
        if int((cg / "memory.limit_in_bytes").read_text()) > limit:
            raise OSError(errno.EINVAL, "the kernel did not take the limit")
    except OSError as e:
        _remove(cg)
        return None, f"cgroup v1 {cg}/memory.limit_in_bytes: {e.strerror}"
    return Limit(limit, "cgroup v1 memory.limit_in_bytes", path=cg, procs=cg / "cgroup.procs", version=1), ""


def _systemd_pid1() -> bool:
    try:
        return Path("/proc/1/comm").read_text().strip() == "systemd"
    except OSError:
        return False


PREFIX = "edgekit-bench-"


def _sweep(parent: Path) -> None:
    """Remove the empty cgroups an earlier bench left when it was SIGKILLed (or SIGTERMed: no finally
    runs) before it could: named with its pid, which no longer exists."""
    try:
        stale = [p for p in parent.glob(PREFIX + "*") if p.is_dir()]
    except OSError:
        return
    for p in stale:
        pid = p.name[len(PREFIX) :].split("-")[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists() and not _pids(p):
            with contextlib.suppress(OSError):
                p.rmdir()


def _open(limit: int) -> Limit:
    if not sys.platform.startswith("linux"):
        return Limit(limit, reason=f"no memory cgroups on {sys.platform} (Linux only)")
    name = f"{PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    why: list[str] = []
    try:
        own_v1, own_v2 = _own_cgroups()
        mnt_v1, mnt_v2 = _mounts()
    except OSError as e:
        return Limit(limit, reason=f"cannot read /proc/self/cgroup or mountinfo ({e.strerror})")
    if mnt_v2 is not None and own_v2 is not None:
        lim, err = _try_v2(mnt_v2, own_v2, name, limit)
        if lim:
            return lim
        why.append(err)
    if mnt_v1 is not None and own_v1 is not None:
        lim, err = _try_v1(mnt_v1, own_v1, name, limit)
        if lim:
            return lim
        why.append(err)
    elif mnt_v1 is None:
        why.append("no cgroup v1 memory hierarchy mounted")
    if _systemd_pid1() and shutil.which("systemd-run"):
        return Limit(limit, "systemd-run --scope MemoryMax", unit=name + ".scope")
    why.append("systemd is not PID 1" if not _systemd_pid1() else "systemd-run not found")
    return Limit(limit, reason="; ".join(why))


@contextlib.contextmanager
def memory_limit(limit_bytes: Optional[int]) -> Iterator[Limit]:
    """A cgroup at ``limit_bytes`` for the duration of the block (None: a Limit that enforces nothing).

    The cgroup is removed on exit, also when the block raises (KeyboardInterrupt included): anything
    still inside is killed first, then the counters are read, then the folder is removed."""
    if limit_bytes is None:
        yield Limit(None, reason="no limit asked for")
        return
    lim = _open(int(limit_bytes))
    if lim.enforced:
        log.info("memory limit %d bytes via %s%s", limit_bytes, lim.mechanism, f" at {lim.path}" if lim.path else "")
    else:
        log.info("memory limit not enforced: %s", lim.reason)
    try:
        yield lim
    finally:
        if lim.path is not None:
            _empty(lim.path)
            lim.read()
            _remove(lim.path)
        elif lim.unit:
            lim.read()
            user = [] if os.geteuid() == 0 else ["--user"]
            with contextlib.suppress(OSError, subprocess.SubprocessError):  # a failed (OOM) scope stays listed
                subprocess.run(["systemctl", *user, "reset-failed", lim.unit], capture_output=True, timeout=10)


def _pids(cg: Path) -> list[int]:
    try:
        return [int(x) for x in (cg / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return []


def _empty(cg: Path, timeout_s: float = 10.0) -> None:
    """Kill every process left in the cgroup (they are the bench's own child) and wait until it is empty."""
    deadline = time.monotonic() + timeout_s
    while (pids := _pids(cg)) and time.monotonic() < deadline:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.02)


def _remove(cg: Path, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            cg.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as e:  # EBUSY while an exiting task is still being taken out
            if time.monotonic() > deadline:
                log.warning("could not remove cgroup %s (%s); remove it with `rmdir %s`", cg, e.strerror, cg)
                return
            _empty(cg, timeout_s=0.2)
            time.sleep(0.02)


# ---------------------------------------------------------------- reading the counters


def _int(path: Path) -> Optional[int]:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _keyed(path: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        for line in path.read_text().splitlines():
            k, _, v = line.partition(" ")
            with contextlib.suppress(ValueError):
                out[k] = int(v)
    except OSError:
        pass
    return out


def _read_v1(cg: Path) -> Readings:
    return Readings(
        peak_bytes=_int(cg / "memory.max_usage_in_bytes"),
        oom_kills=_keyed(cg / "memory.oom_control").get("oom_kill", 0),
        failcnt=_int(cg / "memory.failcnt"),
    )


def _read_v2(cg: Path) -> Readings:
    return Readings(peak_bytes=_int(cg / "memory.peak"), oom_kills=_keyed(cg / "memory.events").get("oom_kill", 0))


def _read_systemd(unit: str) -> Optional[Readings]:
    user = [] if os.geteuid() == 0 else ["--user"]
    try:
        out = subprocess.run(
            ["systemctl", *user, "show", unit, "-p", "MemoryPeak,Result"], capture_output=True, text=True, timeout=10
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    props = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    peak = props.get("MemoryPeak", "")
    return Readings(peak_bytes=int(peak) if peak.isdigit() else None, oom_kills=int(props.get("Result") == "oom-kill"))


# ---------------------------------------------------------------- page cache


def evict(path: Path) -> None:
    """Drop a file's (or a folder's files') clean pages from the page cache (fadvise DONTNEED), so the
    run that maps it next reads them in and is charged for them. Pages another process maps stay."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        with contextlib.suppress(OSError, AttributeError):
            fd = os.open(f, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
