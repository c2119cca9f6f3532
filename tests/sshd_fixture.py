"""A real OpenSSH server on 127.0.0.1 for the lab tests: temp host key, temp user key, temp device dir.

Import the fixture into a test module with ``from sshd_fixture import sshd  # noqa: F401``.
sshd runs as the current user (root in CI, so root logs in with its key only). Host keys are checked:
clients get a known_hosts file holding exactly this server's key and StrictHostKeyChecking=yes.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parent.parent
SSHD_CANDIDATES = ("/usr/sbin/sshd", "/usr/local/sbin/sshd", "/sbin/sshd")


def _sshd_binary() -> str | None:
    return next((p for p in SSHD_CANDIDATES if os.access(p, os.X_OK)), None)


def _ensure_sshd() -> str:
    if not _sshd_binary():
        # The same script `make test` runs; it installs openssh-server with apt when run as root.
        subprocess.run(["sh", str(REPO / "scripts" / "ensure-sshd.sh")], check=False)
    path = _sshd_binary()
    if not path:
        pytest.fail(
            "sshd (openssh-server) is not installed and could not be installed; run scripts/ensure-sshd.sh as root",
            pytrace=False,
        )
    return path


@pytest.fixture()
def closed_port():
    """A 127.0.0.1 port that refuses connections for the whole test: bound, never listening, so no
    other process can take it. (``sshd.port + 1`` is not: in one CI run another listener sat there and
    ssh waited 120 s for a banner instead of being refused.)"""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "edgekit-test", "-f", str(path)], check=True)


@dataclass
class SSHD:
    root: Path
    port: int
    user: str
    identity: Path  # private key sshd accepts
    wrong_identity: Path  # a valid key sshd does not know
    known_hosts: Path
    ssh_config: Path  # empty: the tests must not depend on the runner's ~/.ssh/config
    device: Path  # the device's work dir
    log: Path
    proc: subprocess.Popen

    def device_table(self, name: str, **over) -> str:
        """One [devices.NAME] TOML table pointing at this server."""
        fields = {
            "target": "pi5",
            "host": "127.0.0.1",
            "port": self.port,
            "user": self.user,
            "identity": str(self.identity),
            "workdir": str(self.device),
            "ssh_config": str(self.ssh_config),
            "connect_timeout": 5,
            "timeout": 120,
        }
        fields.update(over)
        lines = [f"[devices.{_toml_str(name)}]"]
        for k, v in fields.items():
            lines.append(f"{k} = {_toml_value(v)}")
        lines.append("[devices." + _toml_str(name) + ".ssh_options]")
        lines.append(f"UserKnownHostsFile = {_toml_str(str(self.known_hosts))}")
        lines.append('GlobalKnownHostsFile = "/dev/null"')
        lines.append('StrictHostKeyChecking = "yes"')
        return "\n".join(lines) + "\n"


def _toml_str(s: str) -> str:
    return json.dumps(s)  # a JSON string is a valid TOML basic string (\n, \", \\, \uXXXX escapes)


def _toml_value(v) -> str:
    if isinstance(v, str):
        return _toml_str(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return str(v)


def _wait_listening(port: int, proc: subprocess.Popen, log: Path, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sshd exited ({proc.returncode}): {log.read_text()[-2000:]}")
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"sshd did not listen on {port}: {log.read_text()[-2000:]}")


def _stop(proc: subprocess.Popen) -> None:
    # Session processes are children of sshd (the user's shell calls setsid, so a process group
    # would miss them): stop the whole tree, so no test leaves a process behind.
    try:
        tree = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        tree = []
    proc.terminate()
    for p in tree:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    _, alive = psutil.wait_procs(tree, timeout=5)
    for p in alive:
        p.kill()


def start_sshd(root: Path, subsystem: str = "internal-sftp") -> SSHD:
    """One sshd on a free 127.0.0.1 port with its own host key, user key and device dir under ``root``;
    ``subsystem`` is its sftp server (e.g. a link that corrupts files, tests/corrupt_sftp.py)."""
    binary = _ensure_sshd()
    root.mkdir(parents=True, exist_ok=True)
    host_key, user_key, wrong_key = root / "host_ed25519", root / "user_ed25519", root / "wrong_ed25519"
    for k in (host_key, user_key, wrong_key):
        _keygen(k)
    authorized = root / "authorized_keys"
    authorized.write_text((root / "user_ed25519.pub").read_text())
    device = root / "device"
    device.mkdir()
    (root / "ssh_config").write_text("")
    if os.geteuid() == 0:
        # sshd running as root needs its privilege-separation directory (systemd normally makes it).
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    user = psutil.Process().username()
    log = root / "sshd.log"
    for _ in range(5):
        port = _free_port()
        config = root / "sshd_config"
        config.write_text(
            "\n".join(
                [
                    f"Port {port}",
                    "ListenAddress 127.0.0.1",
                    f"HostKey {host_key}",
                    f"PidFile {root / 'sshd.pid'}",
                    f"AuthorizedKeysFile {authorized}",
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "PermitRootLogin prohibit-password",
                    "UsePAM no",
                    # pytest's temp dirs are not the home-dir permissions StrictModes expects.
                    "StrictModes no",
                    f"AllowUsers {user}",
                    f"Subsystem sftp {subsystem}",
                    "LogLevel VERBOSE",
                    "MaxStartups 50:30:100",
                    "",
                ]
            )
        )
        with open(log, "ab") as err:
            proc = subprocess.Popen(
                [binary, "-D", "-e", "-f", str(config)], stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL
            )
        try:
            _wait_listening(port, proc, log)
            break
        except RuntimeError:
            _stop(proc)  # most likely the free port was taken in between: try another
    else:
        pytest.fail(f"sshd did not start: {log.read_text()[-2000:]}", pytrace=False)
    known_hosts = root / "known_hosts"
    key_type, key_b64 = (root / "host_ed25519.pub").read_text().split()[:2]
    known_hosts.write_text(f"[127.0.0.1]:{port} {key_type} {key_b64}\n")
    return SSHD(root, port, user, user_key, wrong_key, known_hosts, root / "ssh_config", device, log, proc)


def stop_sshd(server: SSHD) -> None:
    _stop(server.proc)


def assert_no_masters() -> None:
    # edgekit's multiplexing masters (ssh -O exit at the end of every deploy/run) must be gone too.
    masters = [p for p in psutil.process_iter(["cmdline"]) if any("ek-ssh-" in a for a in p.info["cmdline"] or [])]
    assert not masters, f"ssh control masters left running: {[p.info['cmdline'] for p in masters]}"


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    server = start_sshd(tmp_path_factory.mktemp("sshd"))
    try:
        yield server
    finally:
        stop_sshd(server)
    assert_no_masters()
