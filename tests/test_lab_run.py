"""edgekit lab run against a real sshd: a tiny GGUF deployed and benched "remotely", records gathered;
failing devices (unreachable, wrong key, OOM-killed, timed out) are one line each and cost nobody else."""

from __future__ import annotations

import shlex
import socket
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest
from sshd_fixture import closed_port, sshd  # noqa: F401  (the fixtures)
from typer.testing import CliRunner

from edgekit.builder.manifest import read_manifest
from edgekit.cli import app
from edgekit.results import Record, Store, to_jsonl

# The "device" runs this checkout's edgekit from the same venv.
EDGEKIT = str(Path(sys.executable).with_name("edgekit"))
BENCH = ["--", "-p", "8", "-n", "4", "-r", "1"]


@pytest.fixture(scope="module")
def tiny_dist(tiny_ckpt, tmp_path_factory):
    from edgekit.builder.pipeline import build

    out = tmp_path_factory.mktemp("lab-dist") / "dist"
    return build(str(tiny_ckpt), target="pi5", quants=["q8_0"], out=out)


def test_lab_run_gathers_records_and_survives_failing_devices(sshd, closed_port, tiny_dist, tmp_path):  # noqa: F811
    tag = uuid.uuid4().hex
    sleeper = ["python3", "-c", f"import time; time.sleep(60)  # {tag}"]
    oom = ["python3", "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"]
    closed = closed_port
    inv = tmp_path / "lab.toml"
    inv.write_text(
        sshd.device_table("pi-a", workdir=str(tmp_path / "a"), edgekit=[EDGEKIT])
        + sshd.device_table("pi-down", port=closed)
        + sshd.device_table("pi-badkey", identity=str(sshd.wrong_identity))
        + sshd.device_table("pi-oom", workdir=str(tmp_path / "oom"), edgekit=oom)
        + sshd.device_table("pi-slow", workdir=str(tmp_path / "slow"), edgekit=sleeper, timeout=4)
        + sshd.device_table("pi-bare", workdir=str(tmp_path / "bare"))  # never bootstrapped: no venv
    )
    db = tmp_path / "results.db"
    t0 = time.monotonic()
    r = CliRunner().invoke(
        app, ["lab", "run", str(tiny_dist.parent.parent), "--inventory", str(inv), "--db", str(db), *BENCH]
    )
    took = time.monotonic() - t0
    assert r.exit_code == 1, r.output
    assert sorted(r.stdout.splitlines()) == sorted(["pi-a: 1 record(s)", f"1 record(s) from 1/6 device(s) in {db}"])
    u, port = sshd.user, sshd.port
    assert sorted(r.stderr.splitlines()) == sorted(
        [
            f"edgekit: error: device 'pi-down' ({u}@127.0.0.1:{closed}): unreachable: connection refused; "
            f"check that the device is on and sshd listens on that port",
            f"edgekit: error: device 'pi-badkey' ({u}@127.0.0.1:{port}): authentication refused; check `user` and "
            f"`identity` in the inventory and that the key is in the device's authorized_keys",
            "edgekit: error: device 'pi-oom': bench killed (exit 137, SIGKILL: most likely out of memory); "
            "try a smaller quant, a shorter context, or close other programs on the device",
            "edgekit: error: device 'pi-slow': timed out after 4 s; raise `timeout` in the inventory or bench fewer "
            "tokens",
            "edgekit: error: device 'pi-bare': edgekit not found on the device; run "
            "`edgekit deploy DIST --bootstrap --device pi-bare` or set `edgekit` in the inventory",
        ]
    )
    # The bench on pi-a and the sleeper ran side by side, not one after the other.
    assert took < 60
    # The timed-out remote command was stopped, not left running on the device.
    deadline = time.monotonic() + 10
    while _running(tag) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _running(tag)

    manifest = read_manifest(tiny_dist)
    [rec] = Store(db).records()
    art = manifest.artifacts[0]
    assert (rec.device, rec.artifact, rec.sha256, rec.file_bytes) == ("pi-a", art.file, art.sha256, art.bytes)
    assert (rec.n_prompt, rec.n_gen, rec.reps, rec.quant) == (8, 4, 1, "Q8_0")
    assert rec.tg_tps > 0 and rec.peak_rss_bytes > art.bytes  # a real run mapped the whole file
    assert rec.extra["lab"] == {"device": "pi-a", "ssh_host": "127.0.0.1", "remote_device": socket.gethostname()}
    # The device holds the verified build where the bench read it.
    assert (tmp_path / "a" / "dist" / manifest.model / "pi5" / art.file).read_bytes() == (
        tiny_dist / art.file
    ).read_bytes()


def _running(tag: str) -> bool:
    return any(tag in " ".join(p.info["cmdline"] or []) for p in psutil.process_iter(["cmdline"]))


def _record(**over) -> Record:
    fields = dict(
        artifact="m-Q8_0.gguf",
        model="m",
        format="gguf",
        quant="Q8_0",
        engine="llama.cpp",
        sha256="ab" * 32,
        file_bytes=123,
        device="remote-hostname",
        target="pi5",
        threads=4,
        ctx=2048,
        n_prompt=8,
        n_gen=4,
        reps=1,
        load_ms=1.5,
        ttft_ms=2.5,
        ttft_ms_sd=0.1,
        pp_tps=100.0,
        pp_tps_sd=1.0,
        tg_tps=9.0,
        tg_tps_sd=0.2,
        peak_rss_bytes=2_000_000_000,
        budget_bytes=1_500_000_000,
    )
    fields.update(over)
    return Record(**fields)


def test_over_budget_device_keeps_its_records_and_exits_3(sshd, tiny_dist, tmp_path):  # noqa: F811
    # A fake remote edgekit prints two records then fails the budget gate, as `edgekit bench` does.
    recs = [_record(), _record(artifact="m-Q4_0.gguf", quant="Q4_0", tg_tps=12.5)]
    jsonl = tmp_path / "out.jsonl"
    jsonl.write_text(to_jsonl(recs))
    script = (
        f"cat {shlex.quote(str(jsonl))}; echo 'edgekit: error: peak RSS 2000 MB is over the 1500 MB budget' >&2; exit 3"
    )
    inv = tmp_path / "lab.toml"
    inv.write_text(sshd.device_table("pi-big", edgekit=["sh", "-c", script, "edgekit"]))
    db = tmp_path / "results.db"
    r = CliRunner().invoke(app, ["lab", "run", str(tiny_dist), "--inventory", str(inv), "--db", str(db), "--no-deploy"])
    assert r.exit_code == 3, r.output
    assert r.stderr == (
        "edgekit: error: device 'pi-big': bench failed (exit 3): peak RSS 2000 MB is over the 1500 MB budget\n"
    )
    assert r.stdout == f"2 record(s) from 0/1 device(s) in {db}\n"
    got = Store(db).records()
    assert [(g.device, g.artifact, g.tg_tps) for g in got] == [
        ("pi-big", "m-Q8_0.gguf", 9.0),
        ("pi-big", "m-Q4_0.gguf", 12.5),
    ]
    assert got[0].extra["lab"]["remote_device"] == "remote-hostname"


def test_bench_arguments_reach_the_device_verbatim(sshd, tiny_dist, tmp_path):  # noqa: F811
    # The fake edgekit echoes its argv as a record field: hostile text arrives as one literal argument.
    marker = tmp_path / "PWNED"
    evil = f"$(touch {marker}); touch {marker}"
    echo = (
        "import json, sys\n"
        f"rec = json.loads({to_jsonl([_record()])!r})\n"
        "rec['extra'] = {'argv': sys.argv[1:]}\n"
        "print(json.dumps(rec))\n"
    )
    inv = tmp_path / "lab.toml"
    inv.write_text(sshd.device_table("pi", edgekit=["python3", "-c", echo], workdir=str(tmp_path / "dev ice")))
    db = tmp_path / "results.db"
    r = CliRunner().invoke(
        app, ["lab", "run", str(tiny_dist), "--inventory", str(inv), "--db", str(db), "--", "--device", evil, "-r", "2"]
    )
    assert not marker.exists()
    assert r.exit_code == 0, r.output
    [rec] = Store(db).records()
    rdir = str(tmp_path / "dev ice" / "dist" / "tiny-gemma4" / "pi5")
    assert rec.extra["argv"] == ["bench", rdir, "-o", "jsonl", "--no-store", "--device", evil, "-r", "2"]
