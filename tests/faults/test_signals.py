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
from edgekit.results import Store, SuiteRecord

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


# `eval --suite` held at a known point: inside llama.cpp's log callback while the model loads (the
# handler then raises inside a ctypes callback, where Python drops exceptions), or at a decoded token.
HELD_EVAL = """
import sys, time
import edgekit.backends.gguf.runner as r
import edgekit.backends.gguf.generator as g
where = sys.argv.pop(1)
def hold():
    sys.stderr.write("HELD\\n"); sys.stderr.flush()
    time.sleep(5)  # the signal interrupts it
if where == "load":
    line, n = r._Log._line, [0]
    def held_line(self, text):
        n[0] += 1
        if n[0] == 200:  # of 960 lines the tiny model's load logs
            hold()
        line(self, text)
    r._Log._line = held_line
else:
    emit, n = g.LlamaGenerator._emit, [0]
    def held_emit(self, *a):
        n[0] += 1
        if n[0] == 50:
            sys.stderr.write("HELD\\n"); sys.stderr.flush()
        return emit(self, *a)
    g.LlamaGenerator._emit = held_emit
from edgekit.cli import app
app(sys.argv[1:], prog_name="edgekit")
"""


@pytest.fixture(scope="module")
def q8_and_suite(tiny_ckpt, tmp_path_factory):
    """The tiny model's Q8_0 and a suite long enough that, decoded to its end, it takes about a minute."""
    import json

    out = tmp_path_factory.mktemp("signal-eval")
    res = run_cli("build", "-m", tiny_ckpt, "-q", "q8_0", "--out", out / "dist")
    assert res.returncode == 0, res.stderr
    suite = out / "long.jsonl"
    suite.write_text(
        "".join(
            json.dumps({"id": f"c{i}", "suite": "s", "prompt": f"Count to {i}", "expected": "x", "scorer": "contains"})
            + "\n"
            for i in range(8)
        )
    )
    return next((out / "dist").rglob("*-Q8_0.gguf")), suite


@pytest.mark.parametrize("where", ["load", "decode"])
def test_sigterm_mid_suite_eval_ends_it_within_seconds(q8_and_suite, tmp_path, where):
    """SIGTERM while the model loads (inside llama.cpp's log callback) or while it decodes: the process ends
    within seconds, with the line and 143, and stores nothing. Before the fix, a SIGTERM during the load was
    dropped in the callback ("Exception ignored on calling ctypes callback function"), every later SIGTERM
    ignored, and the suite decoded to its end (≈1 min here, hours for E2B): only SIGKILL ended it."""
    q8, suite = q8_and_suite
    db = tmp_path / "r.db"
    cmd = ["eval", str(q8), "--suite", str(suite), "-n", "1500", "-t", "1", "--db", str(db)]
    proc = subprocess.Popen(
        [sys.executable, "-c", HELD_EVAL, where, *cmd], env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stderr is not None
    line = proc.stderr.readline()
    assert line == b"HELD\n", line + proc.communicate(timeout=60)[1]
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        stdout, stderr = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
        raise AssertionError(f"still running 20 s after SIGTERM: {stderr.decode()[-600:]}") from None
    took = time.monotonic() - t0
    print(f"{where}: exited {took:.2f} s after SIGTERM, code {proc.returncode}")
    assert proc.returncode == 143, stderr.decode()
    assert stderr.decode() == "edgekit: terminated (SIGTERM); partial files were removed\n"
    assert stdout == b""
    with Store(db) as s:
        assert s.read(SuiteRecord) == []
