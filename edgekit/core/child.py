"""The child-process protocol, both halves: ``run_child`` in the parent, ``main`` in the child.

edgekit runs engine work in a fresh interpreter: the bench (one artifact's peak memory and an
engine's global state stay out of the next one's figures) and llama.cpp's quantizer (a C++ abort
becomes a clean error, and its peak is its own). The parent calls ``run_child(entry, spec)`` with
``entry`` = "module:function" and ``spec`` a dataclass; the child runs ``function(spec, step)`` and
its dataclass result comes back; an EdgekitError raised there is raised again here with its class.

* transport: ``python -m edgekit.core.child ENTRY PARENT_PID FD`` with the spec as JSON on stdin and
  messages as JSON lines on the pipe ``FD`` (``step`` for progress, then ``result`` or ``error``):
  never stdout, which an engine may print to. The child's stderr goes to an anonymous temp file
  (unlinked at creation), whose last line explains a crash; nothing is left on disk even when the
  parent is SIGKILLed.
* PYTHONPATH starts with the edgekit the parent imported, so a checkout's child runs its code.
* lifetime: the child gets its own process group (a terminal's Ctrl-C reaches only the parent,
  which decides) and, on Linux, PR_SET_PDEATHSIG = SIGKILL, set by the child as its first act and
  followed by a check that the parent that spawned it still lives (the signal would otherwise be
  missed by a parent that died before the prctl). When the parent leaves ``run_child`` any other way
  than with a result (KeyboardInterrupt, SystemExit, an error), it kills the child's whole group
  and waits for it, so nothing outlives it. (The death signal follows the spawning *thread*:
  ``run_child`` is called from the main thread in edgekit.)

How to add a child: a spec dataclass and a result dataclass of JSON-typed fields (both rebuilt
with ``cls(**fields)``), and a module-level ``function(spec, step) -> result``.
"""

from __future__ import annotations

import ctypes
import dataclasses
import importlib
import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional, TypeVar

import edgekit
import edgekit.core.errors as errors

from .errors import EdgekitError

R = TypeVar("R")
PR_SET_PDEATHSIG = 1


class ChildDied(Exception):
    """The child ended without a result; ``why`` says how, ``tail`` is its last stderr line."""

    def __init__(self, why: str, tail: str):
        super().__init__(why)
        self.why, self.tail = why, tail


def _resolve(entry: str) -> Any:
    module, _, name = entry.partition(":")
    return getattr(importlib.import_module(module), name)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    root = str(Path(edgekit.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([root] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the child's process group (it and anything it started), then reap it."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            proc.kill()
    proc.wait()


def run_child(
    entry: str,
    spec: Any,
    result_type: Callable[..., R],
    *,
    verbose: bool = False,
    on_step: Callable[[str], None] = lambda s: None,
    block: tuple[str, ...] = (),
    wrap: Callable[[list[str]], list[str]] = list,
) -> R:
    """Run ``entry(spec, step)`` in a fresh interpreter and return ``result_type(**result)``.

    ``block`` names modules the child must treat as absent (set to None in sys.modules before the
    entry is imported). ``wrap`` turns the child's command into the one to run (edgekit.measure.limits: one
    that joins a memory cgroup, then execs it, same pid). Raises the child's EdgekitError as its own
    class, ChildDied otherwise."""
    payload = json.dumps(
        {
            "spec": dataclasses.asdict(spec),
            "block": list(block),
            "spec_type": f"{type(spec).__module__}:{type(spec).__qualname__}",
        }
    )
    r, w = os.pipe()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            wrap([sys.executable, "-m", "edgekit.core.child", entry, str(os.getpid()), str(w)]),
            pass_fds=(w,),
            stdin=subprocess.PIPE,
            stdout=2 if verbose else err,
            stderr=None if verbose else err,
            env=_env(),
            process_group=0,
        )
        os.close(w)
        result: Optional[dict[str, Any]] = None
        try:
            assert proc.stdin is not None
            try:
                proc.stdin.write(payload.encode())
                proc.stdin.close()
            except BrokenPipeError:
                pass  # the child died at start; its exit code says how
            with os.fdopen(r) as msgs:
                for line in msgs:
                    msg = json.loads(line)
                    if "step" in msg:
                        on_step(msg["step"])
                    elif "error" in msg:
                        raise rebuild(msg["error"])
                    elif "result" in msg:
                        result = msg["result"]
            rc = proc.wait()
        finally:
            kill_group(proc)
        if result is None:
            err.seek(0)
            lines = [ln.strip() for ln in err.read().decode("utf-8", "replace").splitlines() if ln.strip()]
            why = f"signal {signal.Signals(-rc).name}" if rc < 0 else f"exit code {rc}"
            raise ChildDied(why, lines[-1] if lines else "")
    return result_type(**result)


def rebuild(err: dict[str, str]) -> EdgekitError:
    """The child's EdgekitError as the same class (the EdgekitError base when the name is unknown)."""

    cls = getattr(errors, err.get("type", ""), None)
    if not (isinstance(cls, type) and issubclass(cls, EdgekitError)):
        cls = EdgekitError
    return cls(err["message"])


def die_with_parent(parent: int) -> None:
    """Linux: SIGKILL this process when its parent dies; exit now if it already has."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:
        os._exit(70)  # the parent died before the death signal was armed


def main(argv: list[str]) -> int:
    entry, parent, fd = argv[0], int(argv[1]), int(argv[2])
    die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # the parent decides about Ctrl-C; no traceback here
    payload = json.loads(sys.stdin.read())
    for mod in payload.get("block", ()):
        sys.modules.setdefault(mod, None)  # type: ignore[arg-type]
    out = os.fdopen(fd, "w", buffering=1)

    def send(msg: dict[str, Any]) -> None:
        out.write(json.dumps(msg) + "\n")

    try:
        fn = _resolve(entry)
        spec = _resolve(payload["spec_type"])(**payload["spec"])
        result = fn(spec, lambda s: send({"step": s}))
        is_record = dataclasses.is_dataclass(result) and not isinstance(result, type)
        send({"result": dataclasses.asdict(result) if is_record else result})
    except EdgekitError as e:
        send({"error": {"type": e.__class__.__name__, "message": e.message}})
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
