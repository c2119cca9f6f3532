"""`edgekit lab serve --front`: HAProxy in front of three local `edgekit serve` instances on the tiny
model (loopback only, bounded loops): requests spread, a killed backend is skipped with no error beyond
the requests it had in flight, it rejoins when it comes back, streams pass through, keys are set."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request

import pytest
from serve_fixture import REPO, free_port, start_server

from edgekit.lab.front import Backend, Front, haproxy_config, write_config


def _have_haproxy() -> bool:
    return shutil.which("haproxy") is not None or os.access("/usr/sbin/haproxy", os.X_OK)


@pytest.fixture(scope="module", autouse=True)
def haproxy():
    if not _have_haproxy():
        # the same script `make test` runs; it installs Debian's haproxy when run as root
        subprocess.run(["sh", str(REPO / "scripts" / "ensure-haproxy.sh")], check=False)
    if not _have_haproxy():
        pytest.fail(
            "haproxy is not installed and could not be installed; run scripts/ensure-haproxy.sh as root", pytrace=False
        )


ARGS = ("--parallel", "2", "--ctx", "256", "--threads", "1")
MODEL = "tiny-gemma4-Q8_0"  # what every device serves (the front routes by load, not by model)


@pytest.fixture(scope="module")
def dist(tiny_ckpt, tmp_path_factory):
    from edgekit.builder.pipeline import build

    return build(str(tiny_ckpt), target="pi5", quants=["q8_0"], out=tmp_path_factory.mktemp("dist"))


def _post(url: str, body: dict, key: str | None = None, timeout: float = 60):
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(url + "/v1/chat/completions", data=json.dumps(body).encode(), headers=headers)
    return urllib.request.urlopen(req, timeout=timeout)


def _chat(url: str, n: int = 4, stream: bool = False, key: str | None = "front-key"):
    """(device that served it, text) for one greedy chat of exactly n tokens; streamed: and its chunks."""
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": n,
        "temperature": 0,
        "ignore_eos": True,
        "stream": stream,
    }
    with _post(url, body, key) as r:
        device = r.headers["X-Edgekit-Device"]
        raw = r.read().decode()
    if not stream:
        return device, json.loads(raw)["choices"][0]["message"]["content"]
    chunks = [json.loads(ln[6:]) for ln in raw.splitlines() if ln.startswith("data: ") and ln != "data: [DONE]"]
    return device, "".join((c["choices"][0]["delta"].get("content") or "") for c in chunks if c["choices"]), len(chunks)


@pytest.fixture(scope="module")
def fleet(dist, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("front")
    servers = {name: start_server(dist, tmp / f"{name}.log", *ARGS) for name in ("pi-a", "pi-b", "pi-c")}
    yield dist, tmp, servers
    for s in servers.values():
        s.stop()


@pytest.mark.ansible
def test_config_from_an_inventory_with_per_device_keys(tmp_path):
    from edgekit.lab.front import backends
    from edgekit.lab.inventory import load_inventory

    inv = tmp_path / "fleet.ini"
    inv.write_text(
        "[pis]\npi-a ansible_host=10.0.0.1 edgekit_api_key=key-a\npi-b ansible_host=10.0.0.2 edgekit_serve_port=9000\n"
        "[pis:vars]\nedgekit_target=pi5\n"
    )
    cfg = haproxy_config(backends(list(load_inventory(inv).devices.values()), 8080), port=free_port(), tag="t")
    assert "    server pi-a abns@edgekit-t-pi-a check inter 1s fall 2 rise 2 init-addr last,libc,none" in cfg
    assert "    server pi-b 10.0.0.2:9000 check inter 1s fall 2 rise 2 init-addr last,libc,none" in cfg
    assert cfg.count("set-header Authorization") == 1 and 'set-header Authorization "Bearer key-a"' in cfg
    assert "    server pi-a 10.0.0.1:8080 check" in cfg.split("listen device-pi-a")[1]
    path = write_config(cfg, tmp_path / "haproxy.cfg")  # haproxy -c accepts it
    assert path.stat().st_mode & 0o777 == 0o600


@pytest.mark.slow
def test_front_spreads_skips_a_dead_backend_rejoins_and_streams(fleet):
    dist, tmp, servers = fleet
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    items = [Backend(n, "127.0.0.1", s.port, f"key-{n}") for n, s in servers.items()]
    cfg = write_config(haproxy_config(items, port=port, front_key="front-key"), tmp / "haproxy.cfg")
    with Front(cfg, tmp / "haproxy.log").start(url):
        _wait_up(url, 3)
        # The front's key is required; /health is open.
        with pytest.raises(urllib.error.HTTPError) as e:
            _chat(url, key="wrong")
        assert e.value.code == 401
        # Spread: sequential requests go round the three devices (least connections, ties in turn).
        seen = [_chat(url)[0] for _ in range(9)]
        assert {n: seen.count(n) for n in servers} == {"pi-a": 3, "pi-b": 3, "pi-c": 3}, seen
        direct = _chat(servers["pi-a"].url, key=None)[1]
        # Streaming passes through: many SSE chunks, the same greedy text as the non-streamed reply.
        # Streaming passes through: the first token reaches the client while the device is still generating
        # the rest (a buffering front would hold it until the end), and the whole text is the device's own.
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 160,
            "temperature": 0,
            "ignore_eos": True,
            "stream": True,
        }
        with _post(url, body, "front-key") as r:
            device, parts, busy_at_first = r.headers["X-Edgekit-Device"], [], None
            for raw in r:
                line = raw.decode().strip()
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                delta = chunk["choices"][0]["delta"].get("content") if chunk["choices"] else None
                if delta and busy_at_first is None:
                    busy_at_first = servers[device].health()["busy"]
                parts.append(delta or "")
        assert busy_at_first == 1
        assert "".join(parts) == _chat(servers[device].url, n=160, key=None)[1]

        # Kill pi-b while three clients keep asking (a bounded loop): only requests it had in flight fail.
        results: list[tuple[float, float, str | None, str]] = []  # (start, end, device, error)
        stop_at = time.monotonic() + 60
        killed: list[float] = []

        def client():
            for _ in range(12):
                if time.monotonic() > stop_at:
                    return
                t0 = time.monotonic()
                try:
                    d, _ = _chat(url, n=8)
                    results.append((t0, time.monotonic(), d, ""))
                except Exception as ex:
                    results.append((t0, time.monotonic(), None, repr(ex)))

        threads = [threading.Thread(target=client) for _ in range(3)]
        for t in threads:
            t.start()
        while len(results) < 6 and time.monotonic() < stop_at:
            time.sleep(0.05)
        servers["pi-b"].proc.send_signal(signal.SIGKILL)
        killed.append(time.monotonic())
        servers["pi-b"].proc.wait()
        for t in threads:
            t.join(timeout=120)
        kill = killed[0]
        failed = [r for r in results if r[3]]
        # Requests started after the kill all succeeded (retried elsewhere while the checks caught up);
        # a failure is a request that was in flight at the kill (at most one per client).
        assert all(r[0] < kill for r in failed), failed
        assert len(failed) <= 3
        after = [r for r in results if r[0] > kill]
        assert after and all(r[2] in ("pi-a", "pi-c") for r in after)
        assert sum(1 for r in results if not r[3]) >= len(results) - 3

        # pi-b comes back on its port and rejoins within a few health checks.
        servers["pi-b"] = start_server(dist, tmp / "pi-b-2.log", *ARGS, port=servers["pi-b"].port)
        deadline, back = time.monotonic() + 30, False
        while time.monotonic() < deadline and not back:
            back = any(_chat(url)[0] == "pi-b" for _ in range(3))
            time.sleep(0.3)
        assert back
        assert direct


def _wait_up(url: str, n: int, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url + "/health", timeout=2).close()
            if len({_chat(url)[0] for _ in range(n)}) == n:
                return
        except OSError:
            pass
        time.sleep(0.3)
    raise AssertionError("the front did not see every backend up")


def test_each_device_receives_its_own_key_not_the_front_key(tmp_path):
    """Two stand-in devices (stdlib HTTP servers) record the Authorization header they receive."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    seen: dict[int, list[str]] = {}

    class Device(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path != "/health":
                seen.setdefault(self.server.server_port, []).append(self.headers.get("Authorization", ""))
            body = b'{"status":"ok"}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    servers = [ThreadingHTTPServer(("127.0.0.1", 0), Device) for _ in range(2)]
    for s in servers:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    try:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        items = [Backend(f"pi-{i}", "127.0.0.1", s.server_port, f"key-{i}") for i, s in enumerate(servers)]
        cfg = write_config(haproxy_config(items, port=port, front_key="front-key"), tmp_path / "haproxy.cfg")
        with Front(cfg, tmp_path / "haproxy.log").start(url):
            deadline = time.monotonic() + 20
            while len(seen) < 2 and time.monotonic() < deadline:
                req = urllib.request.Request(url + "/v1/models", headers={"Authorization": "Bearer front-key"})
                try:
                    urllib.request.urlopen(req, timeout=5).close()
                except urllib.error.HTTPError:
                    time.sleep(0.2)  # 503 until the first health checks pass
        assert {p: set(h) for p, h in seen.items()} == {
            s.server_port: {f"Bearer key-{i}"} for i, s in enumerate(servers)
        }
    finally:
        for s in servers:
            s.shutdown()
