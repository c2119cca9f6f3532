"""edgekit deploy --serve against the real test sshd (no systemd there: the nohup fallback), the endpoint
benched from the client side, and the service files the other modes write."""

from __future__ import annotations

import json
import plistlib
import sys
import urllib.request
from pathlib import Path

import psutil
import pytest
from typer.testing import CliRunner

from edgekit.cli import app
from edgekit.lab.inventory import load_inventory
from edgekit.lab.serve import bench_endpoint, launchd_plist, stop_served, systemd_unit
from serve_fixture import free_port
from sshd_fixture import sshd  # noqa: F401  (the fixture)

REPO = Path(__file__).resolve().parent.parent
# The "device" runs this checkout's edgekit from the same venv.
EDGEKIT = ["env", f"PYTHONPATH={REPO}", sys.executable, "-m", "edgekit.cli"]


@pytest.fixture(scope="module")
def dist(tiny_ckpt, tmp_path_factory):
    from edgekit.build import build

    return build(str(tiny_ckpt), target="pi5", quants=["q8_0"], out=tmp_path_factory.mktemp("dist"))


def test_deploy_serve_nohup_fallback(sshd, dist, tmp_path):  # noqa: F811
    work = tmp_path / "device"
    inv = tmp_path / "lab.toml"
    inv.write_text(sshd.device_table("pi", workdir=str(work), edgekit=EDGEKIT))
    port = free_port()
    r = CliRunner().invoke(app, ["deploy", str(dist), "--device", "pi", "--inventory", str(inv), "--serve",
                                 "--serve-host", "127.0.0.1", "--port", str(port)])
    assert r.exit_code == 0, r.output
    pid_file = work / "serve" / "serve.pid"
    assert r.output.splitlines()[-1] == f"pi: serving at http://127.0.0.1:{port}/v1 (nohup: {pid_file})"
    pid = int(pid_file.read_text())
    device = load_inventory(inv).get("pi")
    try:
        assert psutil.pid_exists(pid)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as h:
            assert json.loads(h.read())["status"] == "ok"
        b = bench_endpoint(f"http://127.0.0.1:{port}/v1", n_prompt_words=8, n_gen=4, reps=1)
        assert b["model"] == "tiny-gemma4-Q8_0" and b["ttft_ms"] > 0 and b["samples"][0]["completion_tokens"] == 4
        assert b["decode_tps"] > 0
        assert "serving tiny-gemma4-Q8_0" in (work / "serve" / "serve.log").read_text()
    finally:
        stop_served(device)
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert not pid_file.exists()


def test_service_files():
    argv = ["./edgekit/venv/bin/edgekit", "serve", "./edgekit/dist/tiny gemma/pi5", "--port", "8080", "100%$x"]
    unit = systemd_unit(argv)
    assert "WorkingDirectory=%h" in unit and "KillSignal=SIGTERM" in unit and "WantedBy=default.target" in unit
    assert ('ExecStart=/bin/sh -c "exec \\"$$@\\"" sh "./edgekit/venv/bin/edgekit" "serve" '
            '"./edgekit/dist/tiny gemma/pi5" "--port" "8080" "100%%$$x"') in unit
    plist = plistlib.loads(launchd_plist(argv, "./edgekit/serve/serve.log"))
    assert plist["ProgramArguments"][4:] == argv and plist["RunAtLoad"] is True
