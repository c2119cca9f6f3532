"""OpenSSH through argument lists: no local shell, and exactly one quoting layer for the remote one.

ssh joins everything after the host into one string that the device's login shell parses, so every
remote argument goes through ``shlex.quote`` here and nowhere else. Host keys are checked the way the
user's OpenSSH is configured (~/.ssh/config, known_hosts); BatchMode means a missing key or an
unknown host fails instead of prompting.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import LabError
from .inventory import Device

log = logging.getLogger(__name__)

SSH_FAILED = 255  # ssh's own exit status: the connection or authentication failed
OOM_KILLED = 137  # 128 + SIGKILL: what the kernel's OOM killer leaves behind


@dataclass
class Result:
    returncode: int
    stdout: bytes
    stderr: str


def _option(key: str, value: str) -> list[str]:
    # ssh parses -o like a config line: quote values with blanks or quotes so they stay one token.
    if any(c.isspace() or c in "\"'\\" for c in value):
        value = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return ["-o", f"{key}={value}"]


_MUX: dict[Device, str] = {}
_MUX_LOCK = threading.Lock()


@contextmanager
def multiplexed(device: Device) -> Iterator[None]:
    """Share one authenticated connection among the many ssh/scp/rsync calls of a deploy or run.

    OpenSSH's ControlMaster: the first call becomes a background master, the others ride on it, and
    the master is told to exit on the way out (ControlPersist bounds its life if we are killed).
    """
    with _MUX_LOCK:
        nested = device in _MUX
        if not nested:
            tmp = tempfile.mkdtemp(prefix="ek-ssh-")  # short: a socket path must fit in ~100 bytes
            _MUX[device] = os.path.join(tmp, "mux")
    if nested:
        yield
        return
    try:
        yield
    finally:
        with _MUX_LOCK:
            path = _MUX.pop(device)
        try:
            subprocess.run(
                ["ssh", *options(device), *_option("ControlPath", path), "-O", "exit", "--", device.host],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=15,
            )
        except (OSError, subprocess.TimeoutExpired):
            pass
        shutil.rmtree(tmp, ignore_errors=True)


def options(device: Device) -> list[str]:
    """Options ssh and scp share (and rsync passes on via -e); user and port as -o work for both."""
    out: list[str] = []
    mux = _MUX.get(device)
    if mux:
        out += _option("ControlMaster", "auto") + _option("ControlPath", mux) + _option("ControlPersist", "120")
    if device.ssh_config:
        out += ["-F", device.ssh_config]
    out += _option("BatchMode", "yes") + _option("ConnectTimeout", str(device.connect_timeout))
    if device.user:
        out += _option("User", device.user)
    if device.port:
        out += _option("Port", str(device.port))
    if device.identity:
        out += ["-i", device.identity, *_option("IdentitiesOnly", "yes")]
    for key, value in device.ssh_options:
        out += _option(key, value)
    return out


def ssh_argv(device: Device, remote_args: list[str]) -> list[str]:
    """ssh argv running ``remote_args`` on the device, each argument quoted once for its shell."""
    return ["ssh", *options(device), "--", device.host, shlex.join(remote_args)]


def script_argv(device: Device, script: str, args: list[str]) -> list[str]:
    """Run a POSIX sh script on the device with ``args`` as "$1"...: data never becomes code."""
    return ssh_argv(device, ["sh", "-c", script, "edgekit-lab", *args])


def rsync_shell(device: Device) -> str:
    # rsync splits -e itself, honouring single quotes the way shlex.quote writes them.
    return shlex.join(["ssh", *options(device)])


def remote_spec(device: Device, path: str) -> str:
    """host:path for scp and rsync (an IPv6 address needs brackets)."""
    host = f"[{device.host}]" if ":" in device.host else device.host
    return f"{host}:{path}"


def check_local(device: Device) -> None:
    if device.identity and not Path(device.identity).is_file():
        raise LabError(
            f"device {device.name!r}: identity file {device.identity} does not exist; "
            f"fix `identity` in the lab inventory"
        )


def explain(device: Device, stderr: str) -> str:
    """One line for a failed connection, from what OpenSSH printed."""
    where = f"device {device.name!r} ({device.address()})"
    text = stderr.lower()
    if "connection refused" in text:
        return f"{where}: unreachable: connection refused; check that the device is on and sshd listens on that port"
    if "timed out" in text:
        return f"{where}: unreachable: connection timed out; check the host, network and firewall"
    if "could not resolve hostname" in text:
        return f"{where}: unreachable: unknown host name; fix `host` in the inventory or add an alias to ~/.ssh/config"
    if "no route to host" in text or "network is unreachable" in text:
        return f"{where}: unreachable: no route to host; check the network"
    if "host key verification failed" in text or "remote host identification has changed" in text:
        return (
            f"{where}: host key not trusted (unknown or changed); verify it, then add it to known_hosts "
            f"by running `ssh` to the device once"
        )
    if "permission denied" in text or "too many authentication failures" in text:
        return (
            f"{where}: authentication refused; check `user` and `identity` in the inventory and that "
            f"the key is in the device's authorized_keys"
        )
    last = next((ln.strip() for ln in reversed(stderr.splitlines()) if ln.strip()), "no message")
    return f"{where}: ssh failed: {last}"


def run(
    device: Device,
    argv: list[str],
    *,
    input: bytes | None = None,
    timeout: float | None = None,
    hold_stdin: bool = False,
) -> Result:
    """Run an ssh/scp/rsync argv; raise LabError (one line) when the connection itself failed.

    ``hold_stdin`` keeps the remote command's stdin open until we are done with it, so a command
    wrapped by ``watched`` learns from the EOF that we gave up (timeout, Ctrl-C) and stops.
    """
    check_local(device)
    log.info("%s: %s", device.name, shlex.join(argv))
    try:
        p = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.PIPE if input is not None or hold_stdin else subprocess.DEVNULL,
        )
    except FileNotFoundError:
        raise LabError(
            f"{argv[0]}: not installed on this machine; install the OpenSSH client"
            + (" and rsync" if argv[0] == "rsync" else "")
        ) from None
    out: list[bytes] = []
    err: list[bytes] = []
    readers = [
        threading.Thread(target=lambda f=f, b=b: b.append(f.read()), daemon=True)
        for f, b in ((p.stdout, out), (p.stderr, err))
    ]
    for t in readers:
        t.start()
    try:
        if input is not None:
            try:
                p.stdin.write(input)
            except BrokenPipeError:
                pass
        if not hold_stdin and p.stdin:
            p.stdin.close()
        p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        raise LabError(
            f"device {device.name!r}: timed out after {timeout:g} s; raise `timeout` in the "
            f"inventory or bench fewer tokens"
        ) from None
    finally:
        if p.poll() is None:  # Ctrl-C or any other way out: never leave the ssh behind
            p.kill()
        p.wait()
        if p.stdin and not p.stdin.closed:
            p.stdin.close()
        for t in readers:
            t.join()
    stdout, stderr = b"".join(out), b"".join(err).decode(errors="replace")
    if p.returncode == SSH_FAILED or (argv[0] in ("scp", "rsync") and _connect_failed(stderr)):
        raise LabError(explain(device, stderr))
    return Result(p.returncode, stdout, stderr)


# "$1" is the command; it runs in the background while a reader waits for EOF on our stdin: the
# local ssh ended (we timed out or were interrupted) before the command did, so stop it. sshd sends
# no signal to a command without a tty, and a bench left running would skew the device's next run.
WATCH = r"""
exec 3<&0
"$@" </dev/null 3<&- &
pid=$!
( cat >/dev/null; kill -TERM "$pid" 2>/dev/null ) <&3 >/dev/null 2>&1 &
exec 3<&-
wait "$pid"
"""


def watched(device: Device, remote_args: list[str]) -> list[str]:
    """ssh argv for a long remote command that stops when we hang up (run it with hold_stdin=True)."""
    return script_argv(device, WATCH, remote_args)


_CONNECT = re.compile(
    r"connection refused|timed out|could not resolve|no route to host|network is unreachable|"
    r"host key verification failed|permission denied \((?:publickey|password|keyboard|gssapi|hostbased)",
    re.I,
)


def _connect_failed(stderr: str) -> bool:
    # scp exits 1 and rsync 255/12 when ssh underneath could not connect; their text says why.
    return bool(_CONNECT.search(stderr))


def last_error(stderr: str) -> str:
    """The most telling line of a remote command's stderr (edgekit's own error line if there is one)."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if ln.startswith("edgekit: error:"):
            return ln.removeprefix("edgekit: error:").strip()
    return lines[-1] if lines else "no message"
