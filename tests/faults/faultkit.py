"""Helpers the fault-injection tests share: run edgekit in a real subprocess, check one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def env(**extra: str) -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([e["PYTHONPATH"]] if e.get("PYTHONPATH") else []))
    e["EDGEKIT_NO_PROGRESS"] = "1"
    e.update(extra)
    return e


def edgekit_cmd(*args: object) -> list[str]:
    return [sys.executable, "-m", "edgekit.cli", *map(str, args)]


def run_cli(*args: object, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(edgekit_cmd(*args), capture_output=True, text=True, env=env(), timeout=timeout, **kw)


def hidden_leftovers(root: Path) -> list[str]:
    """Hidden names under ``root`` (temp files, stage folders, partial files): a clean run leaves none."""
    return sorted(str(p.relative_to(root)) for p in Path(root).rglob(".*"))


def exit_code(res) -> int:
    return res.exit_code if hasattr(res, "exit_code") else res.returncode


def assert_one_line(res, code: int, line: str) -> None:
    """Exit ``code``; stderr is exactly ``edgekit: error: <line>``: one line, no traceback."""
    exc = getattr(res, "exception", None)  # CliRunner keeps an escaped exception here, not on stderr
    assert exc is None or isinstance(exc, SystemExit), repr(exc)
    assert exit_code(res) == code, (exit_code(res), res.stderr)
    assert "Traceback" not in res.stderr and "Traceback" not in (res.stdout or "")
    assert res.stderr == f"edgekit: error: {line}\n", res.stderr


@contextmanager
def tmpfs(mnt: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``mnt`` for the block (a small disk that really fills up)."""
    mnt.mkdir(parents=True, exist_ok=True)
    if (
        os.geteuid() != 0
        or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)]).returncode
    ):
        pytest.skip("needs root to mount a tmpfs")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
