"""edgekit deploy --serve against the real test sshd (no systemd there: the nohup fallback), the endpoint
benched from the client side, and the service files the other modes write."""

from __future__ import annotations

import json
import plistlib
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest
from serve_fixture import free_port
from sshd_fixture import sshd  # noqa: F401  (the fixture)
from typer.testing import CliRunner

from edgekit.builder.manifest import read_manifest
from edgekit.cli import app
from edgekit.lab.inventory import load_inventory
from edgekit.lab.serve import launchd_plist, stop_served, systemd_unit
from edgekit.results import Store, parse_markdown

REPO = Path(__file__).resolve().parent.parent
# The "device" runs this checkout's edgekit from the same venv.
EDGEKIT = ["env", f"PYTHONPATH={REPO}", sys.executable, "-m", "edgekit.cli"]


@pytest.fixture(scope="module")
def dist(tiny_ckpt, tmp_path_factory):
    from edgekit.builder.pipeline import build

    return build(str(tiny_ckpt), target="pi5", quants=["q8_0"], out=tmp_path_factory.mktemp("dist"))


def test_deploy_serve_then_lab_run_served(sshd, dist, tmp_path):  # noqa: F811
    work = tmp_path / "device"
    inv = tmp_path / "lab.toml"
    inv.write_text(sshd.device_table("pi", workdir=str(work), edgekit=EDGEKIT))
    port = free_port()
    r = CliRunner().invoke(
        app,
        [
            "deploy",
            str(dist),
            "--device",
            "pi",
            "--inventory",
            str(inv),
            "--serve",
            "--serve-host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
    )
    assert r.exit_code == 0, r.output
    pid_file = work / "serve" / "serve.pid"
    url = f"http://127.0.0.1:{port}/v1"
    assert r.output.splitlines()[-1] == f"pi: serving at {url} (nohup: {pid_file})"
    pid = int(pid_file.read_text())
    device = load_inventory(inv).get("pi")
    db = tmp_path / "results.db"
    lab = ["lab", "run", str(dist), "--inventory", str(inv), "--db", str(db)]
    try:
        assert psutil.pid_exists(pid)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as h:
            assert json.loads(h.read())["status"] == "ok"
        assert "serving tiny-gemma4-Q8_0" in (work / "serve" / "serve.log").read_text()
        # The endpoint benched as a client sees it, into the store beside a direct bench of the same build.
        r = CliRunner().invoke(
            app, [*lab, "--served", "--no-deploy", "--port", str(port), "--", "-p", "24", "-n", "6", "-r", "2"]
        )
        assert r.exit_code == 0, r.output
        (line, summary) = r.stdout.splitlines()
        assert line.startswith("pi: 1 served record: TTFT ") and line.endswith(f" t/s at {url}")
        assert summary == f"1 record(s) from 1/1 device(s) in {db}"
        r = CliRunner().invoke(app, [*lab, "--no-deploy", "--", "-p", "24", "-n", "6", "-r", "2"])
        assert r.exit_code == 0, r.output
    finally:
        stop_served(device)
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert not pid_file.exists()

    served, direct = Store(db).records()
    art = read_manifest(dist).artifacts[0]
    assert (served.via, direct.via) == ("served", "bench")
    for rec in (served, direct):
        assert (rec.device, rec.artifact, rec.sha256, rec.file_bytes, rec.quant, rec.engine, rec.target) == (
            "pi",
            art.file,
            art.sha256,
            art.bytes,
            "Q8_0",
            "llama.cpp",
            "pi5",
        )
        assert (rec.n_prompt, rec.n_gen, rec.reps, rec.ctx) == (24, 6, 2, 2048)
        assert rec.threads == direct.threads and rec.runtime == direct.runtime  # the same knobs applied
    # Each repetition's TTFT is positive and within its request's whole time; the means are the samples'.
    s = served.samples
    assert len(s["ttft_ms"]) == len(s["total_ms"]) == len(s["tg_tps"]) == 2
    assert all(0 < t <= total for t, total in zip(s["ttft_ms"], s["total_ms"], strict=True))
    assert all(v > 0 for v in s["tg_tps"])
    assert served.ttft_ms == pytest.approx(sum(s["ttft_ms"]) / 2) and served.tg_tps == pytest.approx(
        sum(s["tg_tps"]) / 2
    )
    assert served.pp_tps == pytest.approx(sum(24 / (t / 1e3) for t in s["ttft_ms"]) / 2)
    # A decode of 6 tokens cannot be faster than their whole request: (6 - 1) tokens within total - TTFT.
    assert all(
        tps >= 5 / ((total - t) / 1e3) for tps, t, total in zip(s["tg_tps"], s["ttft_ms"], s["total_ms"], strict=True)
    )
    # The server's own peak RSS (it maps the whole file), its budget and provenance.
    assert served.peak_rss_bytes > art.bytes and served.budget_bytes == direct.budget_bytes == 1_500_000_000
    assert served.extra["served"] == {"url": url, "model": "tiny-gemma4-Q8_0", "slots": 1}
    assert served.extra["lab"]["device"] == "pi" and served.edgekit_version == direct.edgekit_version

    # edgekit report shows both, told apart.
    out = tmp_path / "report"
    r = CliRunner().invoke(app, ["report", "--db", str(db), "--out", str(out)])
    assert r.exit_code == 0, r.output
    rows = parse_markdown((out / "report.md").read_text())
    assert sorted((row["via"], row["device"], row["artifact"]) for row in rows) == [
        ("bench", "pi", art.file),
        ("served", "pi", art.file),
    ]
    row = next(row for row in rows if row["via"] == "served")
    assert row["TTFT ms"][0] == pytest.approx(served.ttft_ms, abs=0.006)
    assert row["test"] == "pp24 + tg6" and row["tg t/s"][0] == pytest.approx(served.tg_tps, abs=0.006)

    # The server is down now: one line saying what to do, exit 1, nothing stored.
    r = CliRunner().invoke(app, [*lab, "--served", "--no-deploy", "--port", str(port)])
    assert r.exit_code == 1
    assert r.stderr == (
        f"edgekit: error: device 'pi': no server answers at http://127.0.0.1:{port} (connection refused); "
        f"start it with `edgekit deploy DIST --device pi --serve --port {port}`, or run without "
        f"--no-deploy\n"
    )
    assert r.stdout == f"0 record(s) from 0/1 device(s) in {db}\n"
    assert len(Store(db).records()) == 2
    # Options `edgekit bench` takes but a served run cannot apply are refused, not ignored.
    r = CliRunner().invoke(app, [*lab, "--served", "--no-deploy", "--port", str(port), "--", "-d", "64"])
    assert r.exit_code != 0 and r.stderr == (
        "edgekit: error: lab run --served takes -p, -n and -r (prompt tokens, "
        "generated tokens, repetitions), not '-d'\n"
    )


def test_service_files():
    argv = ["./edgekit/venv/bin/edgekit", "serve", "./edgekit/dist/tiny gemma/pi5", "--port", "8080", "100%$x"]
    unit = systemd_unit(argv)
    assert "WorkingDirectory=%h" in unit and "KillSignal=SIGTERM" in unit and "WantedBy=default.target" in unit
    assert (
        'ExecStart=/bin/sh -c "exec \\"$$@\\"" sh "./edgekit/venv/bin/edgekit" "serve" '
        '"./edgekit/dist/tiny gemma/pi5" "--port" "8080" "100%%$$x"'
    ) in unit
    plist = plistlib.loads(launchd_plist(argv, "./edgekit/serve/serve.log"))
    assert plist["ProgramArguments"][4:] == argv and plist["RunAtLoad"] is True


# ---------------------------------------------------------------- deploy --serve: bind, key, replacement


def _health(port, key=None):
    try:
        req = urllib.request.Request(f"http://127.0.0.1:{port}/health")
        with urllib.request.urlopen(req, timeout=3) as h:
            return json.loads(h.read())["status"] == "ok"
    except OSError:
        return False


def _serve_pids(work):
    return int((work / "serve" / "serve.pid").read_text())


def test_deploy_serve_refuses_an_open_bind_without_a_key(sshd, dist, tmp_path):  # noqa: F811
    inv = tmp_path / "lab.toml"
    inv.write_text(sshd.device_table("pi", workdir=str(tmp_path / "device"), edgekit=EDGEKIT))
    r = CliRunner().invoke(
        app,
        [
            "deploy",
            str(dist),
            "--device",
            "pi",
            "--inventory",
            str(inv),
            "--serve",
            "--serve-host",
            "0.0.0.0",
            "--port",
            str(free_port()),
        ],
    )
    assert r.exit_code == 1 and r.stderr == (
        "edgekit: error: --serve-host 0.0.0.0 lets anyone on that network use "
        "the model: give --api-key-file FILE, or --insecure to serve it without "
        "a key\n"
    )
    assert not (tmp_path / "device").exists()  # refused before anything was copied


def test_deploy_serve_binds_loopback_keeps_the_old_server_and_checks_the_sha(sshd, dist, tmp_path):  # noqa: F811
    """Loopback by default, with the key shipped; a redeploy never leaves the port unanswered; a new
    server that fails leaves the old one serving; a foreign server on the port is not taken for ours."""
    from edgekit.core.errors import LabError
    from edgekit.lab.serve import deploy_served

    work = tmp_path / "device"
    inv = tmp_path / "lab.toml"
    inv.write_text(sshd.device_table("pi", workdir=str(work), edgekit=EDGEKIT))
    device = load_inventory(inv).get("pi")
    (tmp_path / "key").write_text("k3y-for-the-pi\n")
    port = free_port()
    cmd = [
        "deploy",
        str(dist),
        "--device",
        "pi",
        "--inventory",
        str(inv),
        "--serve",
        "--port",
        str(port),
        "--api-key-file",
        str(tmp_path / "key"),
    ]
    r = CliRunner().invoke(app, cmd)
    assert r.exit_code == 0, r.output
    assert (
        r.output.splitlines()[-1]
        == f"pi: serving at http://127.0.0.1:{port}/v1 (nohup: {work / 'serve' / 'serve.pid'})"
    )
    first = _serve_pids(work)
    try:
        argv = psutil.Process(first).cmdline()
        assert argv[argv.index("--host") + 1] == "127.0.0.1"
        assert oct((work / "serve" / "api-key").stat().st_mode & 0o777) == "0o600"
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=10)
        assert e.value.code == 401
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/models", headers={"Authorization": "Bearer k3y-for-the-pi"}
        )
        with urllib.request.urlopen(req, timeout=10) as m:
            assert m.status == 200

        # Redeploy: /health polled all along never goes unanswered, and the old server is gone after.
        misses, stop = [], threading.Event()

        def poll():
            for _ in range(2000):  # bounded: 2,000 polls or the redeploy's end
                if stop.is_set():
                    return
                if not _health(port):
                    misses.append(time.monotonic())
                time.sleep(0.02)

        t = threading.Thread(target=poll)
        t.start()
        try:
            r = CliRunner().invoke(app, cmd)
        finally:
            stop.set()
            t.join(60)
        assert r.exit_code == 0, r.output
        second = _serve_pids(work)
        assert second != first and not misses
        assert not psutil.pid_exists(first) or psutil.Process(first).status() == psutil.STATUS_ZOMBIE

        # A new server that cannot start: the old one keeps serving, the error says why.
        with pytest.raises(LabError) as e:
            deploy_served(dist, device, port=port, serve_args=["--grace", "-5"], wait_s=60)
        assert "the new server exited before answering (its log ends: edgekit: error: --grace -5" in str(e.value)
        assert "keeps serving" in str(e.value)
        assert _serve_pids(work) == second and psutil.pid_exists(second) and _health(port)
    finally:
        stop_served(device)

    # Another program answering on the port (no edgekit, no sha256): deploy fails instead of "serving".
    import http.server

    foreign = http.server.HTTPServer(("127.0.0.1", port), http.server.SimpleHTTPRequestHandler)
    th = threading.Thread(target=foreign.serve_forever)
    th.start()
    try:
        r = CliRunner().invoke(app, cmd)
        assert r.exit_code == 1 and "serving at" not in r.output
        assert "the new server exited before answering" in r.stderr and "is in use (another server?)" in r.stderr
    finally:
        foreign.shutdown()
        th.join(10)
        foreign.server_close()


def test_lab_run_served_deploys_behind_a_key_made_for_the_run(sshd, dist, tmp_path):  # noqa: F811
    """The bench client uses the key the run made; the server refuses requests without it. (Bound to
    loopback here: tests never listen elsewhere; the CLI binds every interface.)"""
    from edgekit.lab.serve import lab_run_served

    work = tmp_path / "device"
    inv = tmp_path / "lab.toml"
    inv.write_text(sshd.device_table("pi", workdir=str(work), edgekit=EDGEKIT))
    device = load_inventory(inv).get("pi")
    port = free_port()
    try:
        (out,) = lab_run_served(dist, [device], ["-p", "16", "-n", "4", "-r", "1"], port=port, host="127.0.0.1")
        assert out.ok, out.message
        assert out.records[0].n_gen == 4 and out.records[0].sha256 == read_manifest(dist).artifacts[0].sha256
        key = (work / "serve" / "api-key").read_text().strip()
        assert len(key) >= 32
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=10)
        assert e.value.code == 401
    finally:
        stop_served(device)
