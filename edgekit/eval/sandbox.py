"""Run a model's code against a case's tests in a child process that cannot hurt the host.

The child is a fresh interpreter in isolated mode (`python -I`: no site-packages of the user, no
PYTHON* variables, no current folder on the path) in an empty temporary folder, with CPU time,
address space, file size and process count capped by rlimits, no network where an unprivileged
network namespace can be made (`unshare -rn`), stdin closed, and a wall-clock timeout that kills its
whole process group. What it prints is capped too. This is a sandbox for scoring model output on
purpose-written tests, not a security boundary against a determined attacker.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from functools import lru_cache

CPU_SECONDS = 5
MEMORY_BYTES = 512 * 2**20
FILE_BYTES = 8 * 2**20
OUTPUT_CHARS = 4000


@dataclass(frozen=True)
class SandboxResult:
    passed: bool
    reason: str  # "ok", "failed", "timeout", "error"
    output: str


def _limits() -> None:  # runs in the child between fork and exec
    os.setsid()
    resource.setrlimit(resource.RLIMIT_CPU, (CPU_SECONDS, CPU_SECONDS))
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_BYTES, MEMORY_BYTES))
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_BYTES, FILE_BYTES))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


@lru_cache(maxsize=1)
def _net_isolation() -> tuple[str, ...]:
    """`unshare -rn` as a prefix when this kernel lets an unprivileged user make a network namespace."""
    exe = shutil.which("unshare")
    if exe is None:
        return ()
    try:
        ok = subprocess.run([exe, "-rn", "true"], capture_output=True, timeout=5).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    return (exe, "-rn") if ok else ()


def run_python(program: str, timeout: float = 10.0) -> SandboxResult:
    """Run ``program`` (the model's code followed by the case's asserts); passed when it exits 0."""
    with tempfile.TemporaryDirectory(prefix="edgekit-sandbox-") as tmp:
        script = os.path.join(tmp, "case.py")
        with open(script, "w", encoding="utf-8") as f:
            f.write(program)
        cmd = [*_net_isolation(), sys.executable, "-I", "-B", script]
        env = {"PATH": "/usr/bin:/bin", "HOME": tmp, "LANG": "C.UTF-8"}
        try:
            proc = subprocess.Popen(
                cmd,
                cwd=tmp,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                preexec_fn=_limits,
            )
        except OSError as e:
            return SandboxResult(False, "error", f"cannot start the sandbox: {e}")
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill(proc)
            return SandboxResult(False, "timeout", f"killed after {timeout:g} s")
        except BaseException:  # Ctrl-C, SIGTERM: the case's group would outlive eval (a sleeping one forever)
            _kill(proc)
            raise
        text = out.decode("utf-8", "replace")[-OUTPUT_CHARS:]
        if proc.returncode == 0:
            return SandboxResult(True, "ok", text)
        return SandboxResult(False, "failed", text)


def _kill(proc: subprocess.Popen) -> None:
    """SIGKILL the case's process group (its own session) and reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.communicate()
