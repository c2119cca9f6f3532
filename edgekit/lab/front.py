"""``edgekit lab serve --front``: HAProxy (Debian's package) in front of every device's `edgekit serve`.

Why HAProxy rather than LiteLLM's proxy: one 4 MB C package from the OS (LiteLLM's proxy is a large
Python tree whose pins fight ours), active health checks on /health that cost no tokens (LiteLLM's
make real completions), retries that re-send a request the device never started (connection
refused, empty reply, 503 busy) to another device, and bytes passed through as they come, so a
stream reaches the client token by token and unknown fields (``ignore_eos``) arrive untouched.

The configuration is written from the inventory. Each device's API key (``api_key`` /
``edgekit_api_key``) is added by a small per-device listener on an abstract socket (HAProxy sets
headers before it picks a server, so the key cannot be set on the shared backend); the client talks
to the front with the front's own key, if one is given. Every response says which device served it
(``X-Edgekit-Device``); the front's own ``/health`` is 200 while at least one device is up.
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import ConfigError, LabError
from .ansible_run import ansible_run
from .inventory import Device
from .run import for_each
from .serve import deploy_served

# Health: a device is out after 2 failed checks 1 s apart, back after 2 good ones.
CHECK = "inter 1s fall 2 rise 2"
_NAME = re.compile(r"[^A-Za-z0-9_.-]")


@dataclass(frozen=True)
class Backend:
    name: str  # the device's name (X-Edgekit-Device)
    host: str
    port: int
    api_key: str | None = None


def backends(devices: list[Device], port: int) -> list[Backend]:
    return [Backend(d.name, d.host, d.serve_port or port, d.api_key) for d in devices]


def _quote(value: str) -> str:
    # HAProxy arguments: double quotes; '%' starts a log-format expression in header values.
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%") + '"'


def _addr(host: str, port: int) -> str:
    return f"ipv6@{host}:{port}" if ":" in host else f"{host}:{port}"


def _ids(names: list[str]) -> list[str]:
    """HAProxy server names (letters, digits, - _ .), unique, as close to the device names as allowed."""
    out: list[str] = []
    for n in names:
        base = _NAME.sub("_", n) or "device"
        cand, i = base, 1
        while cand in out:
            i += 1
            cand = f"{base}_{i}"
        out.append(cand)
    return out


def _maxconn() -> int:
    """HAProxy needs about two descriptors a connection and refuses to start when it cannot raise its
    limit that far: 4096, or what this process's hard descriptor limit allows (a test run had 2048)."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return 4096 if hard == resource.RLIM_INFINITY else max(64, min(4096, (hard - 256) // 2))


def _raise_fd_limit() -> None:  # in the HAProxy child before exec: the soft limit up to the hard one
    resource.setrlimit(resource.RLIMIT_NOFILE, (resource.getrlimit(resource.RLIMIT_NOFILE)[1],) * 2)


def haproxy_config(
    items: list[Backend],
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    front_key: str | None = None,
    tag: str | None = None,
) -> str:
    """The whole haproxy.cfg for ``items`` behind one OpenAI-compatible front at host:port."""
    if not items:
        raise ConfigError("no devices to put behind the front")
    tag = tag or uuid.uuid4().hex[:8]  # abstract socket names are machine-wide: one set per front
    ids = _ids([b.name for b in items])
    lines = [
        "# Written by `edgekit lab serve --front` from the lab inventory. It holds API keys: keep it private.",
        "global",
        f"    maxconn {_maxconn()}",
        "",
        "defaults",
        "    mode http",
        "    timeout connect 2s",
        # forward each streamed token as it comes: without it HAProxy merges small writes (MSG_MORE) and
        # the first tokens waited ~130 ms for company here (TTFT direct/front 0.39 on the tiny model)
        "    option http-no-delay",
        # a bench or a long answer streams for minutes
        "    timeout client 600s",
        "    timeout server 600s",
        "    timeout queue 60s",
        "    timeout http-request 30s",
        "",
        "frontend edgekit",
        f"    bind {_addr(host, port)}",
        "    http-request return status 200 content-type application/json string "
        '"{\\"status\\":\\"ok\\"}" if { path /health } { nbsrv(fleet) gt 0 }',
        "    http-request return status 503 content-type application/json string "
        '"{\\"status\\":\\"no device up\\"}" if { path /health }',
    ]
    if front_key:
        lines.append(
            "    http-request deny deny_status 401 unless "
            f"{{ req.hdr(authorization) -m str {_quote('Bearer ' + front_key)} }}"
        )
    lines += [
        "    default_backend fleet",
        "",
        "backend fleet",
        # the device with the fewest requests in flight (each runs few slots)
        "    balance leastconn",
        "    option httpchk",
        "    http-check send meth GET uri /health",
        "    http-check expect status 200",
        # a request no device answered is sent to another: refused, dropped before a reply, 502 (the
        # device's key listener lost it) or 503 (busy, or down before the checks noticed)
        "    option http-buffer-request",
        "    retries 3",
        "    option redispatch 1",
        "    retry-on conn-failure empty-response 502 503",
        "    http-response set-header X-Edgekit-Device %[srv_name]",
    ]
    keyed = [b.api_key is not None for b in items]
    for b, sid in zip(items, ids, strict=True):
        target = f"abns@edgekit-{tag}-{sid}" if b.api_key else _addr(b.host, b.port)
        lines.append(f"    server {sid} {target} check {CHECK} init-addr last,libc,none")
    for b, sid, k in zip(items, ids, keyed, strict=True):
        if not k:
            continue
        lines += [
            "",
            f"listen device-{sid}",
            f"    bind abns@edgekit-{tag}-{sid}",
            f"    http-request set-header Authorization {_quote('Bearer ' + b.api_key)}",
            "    option httpchk",
            "    http-check send meth GET uri /health",
            "    http-check expect status 200",
            "    option http-buffer-request",
            "    retries 1",
            "    retry-on conn-failure empty-response",
            f"    server {sid} {_addr(b.host, b.port)} check {CHECK} init-addr last,libc,none",
        ]
    return "\n".join(lines) + "\n"


def haproxy_binary() -> str:
    path = shutil.which("haproxy") or next(
        (p for p in ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy") if os.access(p, os.X_OK)), None
    )
    if not path:
        raise LabError("haproxy is not installed: apt-get install haproxy (or run scripts/ensure-haproxy.sh)")
    return path


def write_config(text: str, path: Path) -> Path:
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it holds the devices' keys
    with os.fdopen(fd, "w") as f:
        f.write(text)
    check = subprocess.run([haproxy_binary(), "-c", "-q", "-f", str(tmp)], capture_output=True, text=True)
    if check.returncode:
        tmp.unlink(missing_ok=True)
        why = next((ln.strip() for ln in check.stderr.splitlines() if "ALERT" in ln), check.stderr.strip()[-300:])
        raise LabError(f"haproxy refused the generated configuration: {why}")
    os.replace(tmp, path)
    return path


class Front:
    """HAProxy running ``config`` in the foreground as our child; stopped (SIGUSR1: finish the
    requests in flight, then exit) on the way out."""

    def __init__(self, config: Path, log: Path | None = None):
        self.config, self.log = Path(config), log
        self.proc: subprocess.Popen | None = None

    def start(self, url: str, wait_s: float = 10.0) -> Front:
        # haproxy holds its own copy of the log's descriptor; ours closes once it has started
        with open(self.log, "ab") if self.log else contextlib.nullcontext(subprocess.DEVNULL) as out:
            self.proc = subprocess.Popen(
                [haproxy_binary(), "-db", "-f", str(self.config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=_raise_fd_limit,
            )

        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise LabError(
                    f"haproxy exited ({self.proc.returncode}) at start" + (f"; see {self.log}" if self.log else "")
                )
            try:
                urllib.request.urlopen(url + "/health", timeout=2).close()
                return self
            except urllib.error.HTTPError:
                return self  # it answers (503: no device up yet)
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise LabError(f"haproxy did not answer at {url} within {wait_s:g} s")

    def stop(self, grace_s: float = 10.0) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGUSR1)  # soft stop
            try:
                self.proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> Front:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_devices(
    dist: Path | None,
    inventory,
    devices: list[Device],
    *,
    via: str = "ssh",
    port: int = 8080,
    serve_host: str = "0.0.0.0",
    serve_args: list[str] | None = None,
    method: str = "auto",
    forks: int = 16,
):
    """Deploy and start every device's `edgekit serve` (SSH path or the playbook); yield (device, ok, line).
    Each device's key (``api_key``) goes to its server as `deploy --serve` sends one (a mode-600 file)."""
    if via == "ansible":
        if any(d.api_key for d in devices):
            raise ConfigError(
                "per-device API keys reach the servers over --via ssh only; the playbook does not send them yet"
            )
        for o in ansible_run(
            dist,
            inventory,
            devices,
            [],
            serve=True,
            bench=False,
            serve_host=serve_host,
            port=port,
            serve_args=serve_args,
            forks=forks,
        ):
            yield next(d for d in devices if d.name == o.device), o.ok, o.message
        return

    def work(d: Device) -> str:
        s = deploy_served(
            dist,
            d,
            host=serve_host,
            port=d.serve_port or port,
            serve_args=list(serve_args or []),
            method=method,
            api_key=d.api_key,
        )
        return f"{s.device}: serving at {s.url} ({s.mode}: {s.where})"

    for d, result in for_each(devices, work, parallel=forks):
        yield d, not isinstance(result, Exception), str(result)


def run_front(
    devices: list[Device],
    *,
    port: int,
    host: str,
    front_port: int,
    front_key: str | None,
    config: Path | None,
    config_only: bool,
    echo,
) -> None:
    """Write and check haproxy.cfg for ``devices``; unless ``config_only``, run HAProxy with it until
    interrupted (Ctrl-C, SIGTERM: it finishes the requests in flight). The devices keep serving."""
    path = Path(config) if config else Path.home() / ".cache" / "edgekit" / "front" / "haproxy.cfg"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_config(haproxy_config(backends(devices, port), host=host, port=front_port, front_key=front_key), path)
    url = f"http://{host}:{front_port}"
    if config_only:
        echo(f"wrote {path} ({len(devices)} device(s) behind {url}/v1); run: haproxy -f {path}")
        return
    log = path.with_suffix(".log")
    with Front(path, log).start(url) as f:
        echo(
            f"front: {url}/v1 -> {len(devices)} device(s) (haproxy, {path}); Ctrl-C stops the front, "
            f"the devices keep serving"
        )
        while f.proc.poll() is None:
            time.sleep(0.5)
        raise LabError(f"haproxy exited ({f.proc.returncode}); see {log}")
