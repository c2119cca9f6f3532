"""Signals and orphans (issue 11.3): a real build or bench in a subprocess, its engine child running,
then SIGTERM or SIGKILL of the parent. No child may survive its parent, and after SIGTERM no temp
or intermediate file is left.

SIGTERM is turned into KeyboardInterrupt by the driver below, as the CLI does (branch harden adds
that handler to cli.py): what is tested here is the library's cleanup on that exception. SIGKILL
gives the parent no chance to clean up; the child dies by PR_SET_PDEATHSIG (Linux).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

pytest.importorskip("llama_cpp")
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent

DRIVER = textwrap.dedent("""
    import signal, sys
    from pathlib import Path

    def term(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, term)
    what, src, out = sys.argv[1:4]
    try:
        if what == "build":
            import edgekit.backends.gguf.quantize as q
            real = q.run_child
            # the real child, its quantizer slowed (tests/faults/slow_child.py) so the signal lands in it
            q.run_child = lambda entry, *a, **kw: real("slow_child:slow_quantize", *a, **kw)
            from edgekit.builder.pipeline import build
            build(src, target="pi5", quants=["q8_0"], out=Path(out))
        else:
            from edgekit.measure.bench import BenchOptions, bench
            bench(Path(src), BenchOptions(n_prompt=64, n_gen=64, reps=100000, threads=1, ctx=256, roofline=False))
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        sys.exit(143)
""")


def start(what: str, src: Path, out: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(HERE)]), "TMPDIR": str(out / "tmp")}
    (out / "tmp").mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [sys.executable, "-c", DRIVER, what, str(src), str(out)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def engine_child(proc: subprocess.Popen, ready, timeout: float = 120) -> psutil.Process:
    """The running ``edgekit.core.child`` under ``proc``, once ``ready()`` says it is at work."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        kids = [
            c
            for c in psutil.Process(proc.pid).children(recursive=True)
            if "edgekit.core.child" in " ".join(c.cmdline())
        ]
        if kids and ready():
            return kids[0]
        time.sleep(0.1)
    raise AssertionError("the engine child never started")


def gone(p: psutil.Process, timeout: float = 15) -> bool:
    try:
        p.wait(timeout)
    except psutil.TimeoutExpired:
        return False
    except psutil.NoSuchProcess:
        pass
    return not p.is_running() or p.status() == psutil.STATUS_ZOMBIE


@pytest.fixture(scope="module")
def f16(tiny_ckpt, tmp_path_factory):
    from edgekit.builder.pipeline import build

    return (
        build(str(tiny_ckpt), target="pi5", quants=["f16"], out=tmp_path_factory.mktemp("dist"))
        / "tiny-gemma4-F16.gguf"
    )


def _build_started(out: Path):
    return lambda: any(out.rglob("*.started"))


def test_sigterm_during_quantize_kills_the_child_and_removes_temp_files(tiny_ckpt, tmp_path):
    out = tmp_path / "out"
    proc = start("build", tiny_ckpt, out)
    child = engine_child(proc, _build_started(out))
    folder = out / "tiny-gemma4" / "pi5"
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")]  # intermediate + partial exist now
    proc.send_signal(signal.SIGTERM)
    stdout, _ = proc.communicate(timeout=60)
    assert (proc.returncode, stdout) == (143, "interrupted\n")
    assert gone(child, timeout=1)  # killed and reaped before the parent returned
    left = sorted(p.name for p in folder.iterdir() if not p.name.endswith(".started"))
    assert left == [], left  # no .partial, no intermediate, no manifest
    assert list((out / "tmp").iterdir()) == []


def test_sigkill_of_the_build_takes_the_quantizer_with_it(tiny_ckpt, tmp_path):
    out = tmp_path / "out"
    proc = start("build", tiny_ckpt, out)
    child = engine_child(proc, _build_started(out))
    proc.kill()
    proc.wait(timeout=30)
    assert gone(child), "the quantizer child outlived its SIGKILLed parent"


def test_sigterm_during_bench_kills_the_child_and_leaves_no_temp_folder(f16, tmp_path):
    out = tmp_path / "b"
    proc = start("bench", f16, out)
    t0 = time.monotonic()
    child = engine_child(proc, lambda: time.monotonic() - t0 > 3)  # loaded and measuring by then
    proc.send_signal(signal.SIGTERM)
    stdout, _ = proc.communicate(timeout=60)
    assert (proc.returncode, stdout) == (143, "interrupted\n")
    assert gone(child, timeout=1)
    assert list((out / "tmp").iterdir()) == []  # the child's stderr log was an unlinked temp file


def test_sigkill_of_the_cli_bench_takes_the_child_with_it(f16, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp_path)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edgekit.cli",
            "bench",
            str(f16),
            "-p",
            "64",
            "-n",
            "64",
            "-r",
            "100000",
            "--ctx",
            "256",
            "--no-store",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    t0 = time.monotonic()
    child = engine_child(proc, lambda: time.monotonic() - t0 > 3)
    proc.kill()
    proc.wait(timeout=30)
    assert gone(child), "the bench child outlived its SIGKILLed parent"
    assert list(tmp_path.iterdir()) == []


def test_a_child_whose_parent_is_gone_at_start_exits(tmp_path):
    # The death signal is armed by the child itself: a parent that died before that is caught by the
    # parent-pid check right after, so the child never runs orphaned.
    res = subprocess.run(
        [sys.executable, "-m", "edgekit.core.child", "edgekit.measure.worker:measure", "1", "0"],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdin=subprocess.DEVNULL,
        timeout=60,
    )
    assert res.returncode == 70


def test_child_errors_come_back_as_their_class_and_crashes_as_child_died(monkeypatch):
    from edgekit.backends.gguf.quantize import QuantizeResult, QuantizeSpec
    from edgekit.core.child import ChildDied, run_child
    from edgekit.core.errors import ArtifactError

    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), str(HERE)]))
    steps = []
    with pytest.raises(ArtifactError) as e:
        run_child("slow_child:fails", QuantizeSpec("in.gguf", "out.gguf", 7), QuantizeResult, on_step=steps.append)
    assert (str(e.value), steps) == ("in.gguf: refused in the child", ["about to fail"])
    with pytest.raises(ChildDied) as died:
        run_child("slow_child:crashes", QuantizeSpec("in.gguf", "out.gguf", 7), QuantizeResult)
    assert (died.value.why, died.value.tail) == ("exit code 3", "engine says: out of cheese")
