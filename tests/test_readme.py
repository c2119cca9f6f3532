"""The README's quick tour, run as a newcomer would: every `sh` block after "A quick tour", in order,
in one fresh folder, with `edgekit` on PATH. A command whose flags or paths drift from the code fails here."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def tour_commands() -> list[str]:
    text = README.read_text(encoding="utf-8")
    tour = text.split("## A quick tour", 1)[1].split("\n## ", 1)[0]
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", tour, flags=re.S):
        for line in block.splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()  # the README's comments are documentation
            if line:
                commands.append(line)
    return commands


def test_the_tour_has_the_commands_a_newcomer_needs():
    verbs = [c.split()[1] for c in tour_commands() if c.startswith("edgekit ")]
    assert {"synth", "build", "bench", "report", "eval", "run"} <= set(verbs), verbs


@pytest.mark.slow
def test_readme_quick_tour_runs_in_order(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "edgekit"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m edgekit.cli "$@"\n')
    shim.chmod(0o755)
    work = tmp_path / "work"
    work.mkdir()
    env = dict(
        os.environ,
        PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        EDGEKIT_DB=str(tmp_path / "results.db"),
        EDGEKIT_NO_PROGRESS="1",
        PYTHONPATH=str(README.parent),
    )
    for command in tour_commands():
        r = subprocess.run(["bash", "-c", command], cwd=work, env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, f"README command failed: {command}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
        assert "Traceback" not in r.stderr, command
    assert (work / "dist" / "tiny" / "pi5" / "manifest.json").is_file()
    assert (work / "report" / "report.md").is_file()
