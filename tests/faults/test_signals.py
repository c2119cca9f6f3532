"""Signals to a running `edgekit build` (a real process): SIGTERM and SIGINT unwind through the same
cleanup, one line and 128 + signal; SIGKILL leaves no lock and no finished-looking file behind.

The build is held at a known point so each signal lands mid-build, every time: the source-hashing
job (which runs beside the conversion) is wrapped to wait until the build stops it, and the test
signals once the build's private stage holds its converted and quantized artifacts and the
intermediate, i.e. when there is most to clean up.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from faultkit import env, hidden_leftovers, run_cli

from edgekit.builder.manifest import read_manifest, verify

HELD_BUILD = """
import sys, time
import edgekit.builder.pipeline as b
real = b.source_fingerprint
def held(ckpt, stop, *a):
    while not stop.is_set():
        time.sleep(0.02)
    return real(ckpt, stop, *a)
b.source_fingerprint = held
from edgekit.cli import app
app(sys.argv[1:], prog_name="edgekit")
"""


def start_held_build(ckpt, out, quants="f16,q8_0"):
    return subprocess.Popen(
        [sys.executable, "-c", HELD_BUILD, "build", "-m", str(ckpt), "-q", quants, "--out", str(out)],
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_until_staged(proc, folder: Path, names: set[str], timeout=120) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        for stage in folder.glob(".edgekit-build-*"):
            have = {p.name for p in stage.iterdir()}
            if names <= have:
                return stage
        time.sleep(0.05)
    raise AssertionError(f"the build never staged {names}")


@pytest.fixture()
def earlier_build(tiny_ckpt, tmp_path):
    out = tmp_path / "dist"
    res = run_cli("build", "-m", tiny_ckpt, "-q", "q4_0", "--out", out)
    assert res.returncode == 0, res.stderr
    folder = out / "tiny-gemma4" / "pi5"
    return out, folder, {p.name: p.read_bytes() for p in folder.iterdir()}


STAGED = {"tiny-gemma4-F16.gguf", "tiny-gemma4-Q8_0.gguf"}


@pytest.mark.parametrize(
    "sig, code, line",
    [
        (signal.SIGTERM, 143, "edgekit: terminated (SIGTERM); partial files were removed\n"),
        (signal.SIGINT, 130, "edgekit: interrupted; partial files were removed\n"),
    ],
    ids=["SIGTERM", "SIGINT"],
)
def test_signal_mid_build_is_one_line_and_leaves_the_earlier_build(tiny_ckpt, earlier_build, sig, code, line):
    out, folder, before = earlier_build
    proc = start_held_build(tiny_ckpt, out)
    stage = wait_until_staged(proc, folder, STAGED)
    assert any(p.name.endswith(".intermediate.gguf") or ".intermediate.gguf." in p.name for p in stage.iterdir())
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code
    assert stderr.splitlines()[-1] + "\n" == line and "Traceback" not in stderr
    assert stdout == ""
    # The stage (converted file, quantized file, intermediate) is gone; the earlier build is untouched.
    assert not stage.exists() and hidden_leftovers(out) == []
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert verify(folder) == []


def test_sigkill_mid_build_leaves_no_lock_and_the_next_build_cleans_up(tiny_ckpt, earlier_build):
    out, folder, before = earlier_build
    proc = start_held_build(tiny_ckpt, out)
    stage = wait_until_staged(proc, folder, STAGED)
    proc.kill()
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    # Nothing can clean up after SIGKILL: the stage stays, hidden, and the earlier build still stands
    # whole beside it (nothing was swapped in before the kill).
    assert stage.is_dir()
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} == before and verify(folder) == []
    # The kernel dropped the dead build's lock: the next build starts at once and removes the stage.
    res = run_cli("build", "-m", tiny_ckpt, "-q", "f16", "--out", out, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "waiting" not in res.stderr
    assert not stage.exists() and hidden_leftovers(out) == []
    assert [a.file for a in read_manifest(folder).artifacts] == ["tiny-gemma4-F16.gguf"] and verify(folder) == []


def test_sigterm_mid_bench_is_one_line_and_leaves_nothing_behind(tiny_ckpt, tmp_path):
    """The parent's half: the line, 143, and nothing of the run left in TMPDIR."""
    res = run_cli("build", "-m", tiny_ckpt, "-q", "q4_0", "--out", tmp_path / "dist")
    assert res.returncode == 0, res.stderr
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edgekit.cli",
            "bench",
            str(tmp_path / "dist" / "tiny-gemma4" / "pi5"),
            "-p",
            "16",
            "-n",
            "64",
            "-r",
            "100000",
            "--no-store",
        ],
        env=env(TMPDIR=str(tmp)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    parent = psutil.Process(proc.pid)
    while not parent.children():  # the measuring child has started
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    time.sleep(1.0)  # into the measured runs
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr
    assert (
        stderr.splitlines()[-1] == "edgekit: terminated (SIGTERM); partial files were removed"
        and "Traceback" not in stderr
    )
    assert stdout == "" and list(tmp.iterdir()) == []
