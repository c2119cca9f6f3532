"""``edgekit deploy --serve``: run ``edgekit serve`` on a device as a service, and bench it over HTTP.

Linux with a systemd user manager: a user unit ``edgekit-serve.service`` (``systemctl --user``; it runs
while the user is logged in, or always after ``loginctl enable-linger``). Without one (containers, the
test sshd): the documented fallback, a ``nohup``'d process detached with ``setsid``, its pid in
``WORKDIR/serve/serve.pid`` and its log in ``WORKDIR/serve/serve.log``. A new deploy keeps the old server
until the new one is up: the new one shares the port (``--reuse-port``), and only when its /props names
the deployed artifact's sha256 and its own pid is the old one stopped (SIGTERM, which lets requests in
flight finish); a new server that dies or never answers is removed and the old one keeps serving.
macOS: a launchd agent plist in ~/Library/LaunchAgents loaded with ``launchctl`` (written, not exercised
here); systemd restarts its unit. Each then checks /props from the device itself over SSH (the sha256,
so another server answering on the port is never taken for ours) and returns the URL.

Binding: loopback unless told otherwise; a non-loopback bind needs an API key (``--api-key-file``,
copied to ``WORKDIR/serve/api-key``, mode 600) or ``--insecure`` (checked by the CLI).

``lab_run_served`` deploys and starts each device's server, then benches it as its client sees it
(lab/served_bench.py).
"""

from __future__ import annotations

import json
import os
import plistlib
import secrets
import shlex
import time
from dataclasses import dataclass
from typing import Any, Optional

from ..core.errors import LabError
from . import ssh
from .deploy import build_folder, deploy, load_build
from .inventory import Device, join_remote
from .run import Outcome, for_each
from .served_bench import NoServer, bench_served, served_args

UNIT = "edgekit-serve"
LAUNCHD_LABEL = "com.edgekit.serve"

# $1 = mode probe. Prints "systemd", "launchd" or "none".
PROBE = r"""
if [ "$(uname -s)" = Darwin ]; then echo launchd
elif command -v systemctl >/dev/null 2>&1 && systemctl --user show-environment >/dev/null 2>&1; then echo systemd
else echo none; fi
"""

# $1 = state dir, $2... = the serve command: start it beside any earlier server; print its pid.
NOHUP = r"""
dir=$1; shift
mkdir -p "$dir" || exit 1
if command -v setsid >/dev/null 2>&1; then s=setsid; else s=; fi
nohup $s "$@" >"$dir/serve.log.new" 2>&1 </dev/null &
echo $! >"$dir/serve.pid.new"
echo $!
"""

# $1 = state dir: the new server is up; stop the old one (SIGTERM, up to 40 s) and take its place.
PROMOTE = r"""
dir=$1
if [ -f "$dir/serve.pid" ]; then
  old=$(cat "$dir/serve.pid")
  if kill -TERM "$old" 2>/dev/null; then
    i=0; while kill -0 "$old" 2>/dev/null && [ $i -lt 400 ]; do sleep 0.1; i=$((i+1)); done
  fi
fi
mv -f "$dir/serve.pid.new" "$dir/serve.pid" && mv -f "$dir/serve.log.new" "$dir/serve.log"
"""

# $1 = state dir: the new server failed; stop it, keep its log as serve.log.failed, print its last line.
ABANDON = r"""
dir=$1
pid=$(cat "$dir/serve.pid.new" 2>/dev/null)
if [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null; then
  i=0; while kill -0 "$pid" 2>/dev/null && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
  kill -KILL "$pid" 2>/dev/null
fi
rm -f "$dir/serve.pid.new"
mv -f "$dir/serve.log.new" "$dir/serve.log.failed" 2>/dev/null
grep -v '^[[:space:]]*$' "$dir/serve.log.failed" 2>/dev/null | tail -1
"""

# $1 = file: the API key on stdin, kept readable by its owner only.
KEY = r"""
umask 077; mkdir -p "$(dirname "$1")" && cat >"$1.tmp" && chmod 600 "$1.tmp" && mv -f "$1.tmp" "$1"
"""

# $1 = state dir: stop the fallback server and wait for it to exit.
STOP = r"""
dir=$1
[ -f "$dir/serve.pid" ] || exit 0
pid=$(cat "$dir/serve.pid")
kill -TERM "$pid" 2>/dev/null
i=0; while kill -0 "$pid" 2>/dev/null && [ $i -lt 400 ]; do sleep 0.1; i=$((i+1)); done
kill -0 "$pid" 2>/dev/null && { echo "server $pid did not stop" >&2; exit 1; }
rm -f "$dir/serve.pid"
"""

# $1 = unit text path (stdin is the unit), $2 = unit name.
SYSTEMD = r"""
d="${XDG_CONFIG_HOME:-$HOME/.config}/systemd/user"
mkdir -p "$d" && cat >"$d/$2.service" && systemctl --user daemon-reload && systemctl --user enable "$2" >/dev/null 2>&1
systemctl --user restart "$2"
"""

LAUNCHD = r"""
p="$HOME/Library/LaunchAgents/$1.plist"
mkdir -p "$HOME/Library/LaunchAgents" && cat >"$p" || exit 1
launchctl bootout "gui/$(id -u)/$1" 2>/dev/null
launchctl bootstrap "gui/$(id -u)" "$p"
"""

# $1 = python, $2 = /props url, $3 = key file ("" for none), $4 = pid ("" for any): prints /props; exit 3
# when that pid is gone.
PROPS = r"""
[ -z "$4" ] || kill -0 "$4" 2>/dev/null || exit 3
exec "$1" -c "
import sys, urllib.request
h = {'Authorization': 'Bearer ' + open(sys.argv[2]).read().strip()} if sys.argv[2] else {}
print(urllib.request.urlopen(urllib.request.Request(sys.argv[1], headers=h), timeout=3).read().decode())
" "$2" "$3"
"""


@dataclass
class Served:
    device: str
    url: str  # the API base, http://HOST:PORT/v1
    mode: str  # systemd | launchd | nohup
    where: str  # unit file, plist, or pid file on the device


def serve_argv(device: Device, rdir: str, host: str, port: int, extra: list[str]) -> list[str]:
    return [*device.edgekit_cmd, "serve", rdir, "--host", host, "--port", str(port), *extra]


def _systemd_arg(a: str) -> str:
    # systemd's ExecStart= quoting: double quotes with C-style escapes; % and $ are its own specifiers.
    return '"' + a.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$") + '"'


def systemd_unit(argv: list[str], grace_s: float = 30.0) -> str:
    """A user unit running ``argv`` from the home directory (where the inventory's relative paths start)."""
    return "\n".join(
        [
            "[Unit]",
            "Description=edgekit serve (OpenAI-compatible API)",
            "After=network-online.target",
            "",
            "[Service]",
            "WorkingDirectory=%h",
            # sh finds a relative command (./edgekit/venv/bin/edgekit) from the working directory; systemd
            # itself wants an absolute one.
            "ExecStart=/bin/sh -c " + _systemd_arg('exec "$@"') + " sh " + " ".join(_systemd_arg(a) for a in argv),
            "KillSignal=SIGTERM",
            f"TimeoutStopSec={int(grace_s) + 10}",
            "Restart=on-failure",
            "RestartSec=2",
            "",
            "[Install]",
            "WantedBy=default.target",
            "",
        ]
    )


def launchd_plist(argv: list[str], log: str) -> bytes:
    return plistlib.dumps(
        {
            "Label": LAUNCHD_LABEL,
            "ProgramArguments": ["/bin/sh", "-c", 'cd ~ && exec "$@"', "sh", *argv],
            "RunAtLoad": True,
            "KeepAlive": {"SuccessfulExit": False},
            "StandardOutPath": log,
            "StandardErrorPath": log,
        }
    )


def _script(device: Device, script: str, args: list[str], what: str, input: Optional[bytes] = None) -> str:
    r = ssh.run(device, ssh.script_argv(device, script, args), input=input, timeout=device.timeout)
    if r.returncode:
        raise LabError(f"device {device.name!r}: {what} failed: {ssh.last_error(r.stderr)}")
    return r.stdout.decode(errors="replace").strip()


def state_dir(device: Device) -> str:
    return join_remote(device.workdir, "serve")


def key_file(device: Device) -> str:
    return join_remote(state_dir(device), "api-key")


def start_served(
    device: Device,
    rdir: str,
    sha256: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    serve_args: Optional[list[str]] = None,
    wait_s: float = 120.0,
    api_key: Optional[str] = None,
) -> Served:
    """Start (or replace) ``edgekit serve`` on the device for the build in ``rdir``; return once its
    /props names ``sha256`` (nohup: and its own pid). The old server keeps serving until then (nohup)."""
    sdir = state_dir(device)
    extra = list(serve_args or [])
    kfile = ""
    if api_key:
        kfile = key_file(device)
        _script(device, KEY, [kfile], "writing the API key", input=api_key.encode() + b"\n")
        extra += ["--api-key-file", kfile]
    mode = _script(device, PROBE, [], "probing the service manager")
    pid = ""
    if mode == "systemd":
        argv = serve_argv(device, rdir, host, port, extra)
        _script(device, SYSTEMD, ["-", UNIT], "installing the systemd user unit", input=systemd_unit(argv).encode())
        where, log_cmd = f"~/.config/systemd/user/{UNIT}.service", f"journalctl --user -u {UNIT} -n 20"
    elif mode == "launchd":
        argv = serve_argv(device, rdir, host, port, extra)
        log = join_remote(sdir, "serve.log")
        _script(device, LAUNCHD, [LAUNCHD_LABEL], "loading the launchd agent", input=launchd_plist(argv, log))
        where, log_cmd = f"~/Library/LaunchAgents/{LAUNCHD_LABEL}.plist", f"tail -20 {shlex.quote(log)}"
    else:
        argv = serve_argv(device, rdir, host, port, [*extra, "--reuse-port"])
        pid = _script(device, NOHUP, [sdir, *argv], "starting the server (nohup)")
        mode, where = "nohup", join_remote(sdir, "serve.pid")
        log_cmd = f"tail -20 {shlex.quote(join_remote(sdir, 'serve.log'))}"
    try:
        _wait_props(device, host, port, kfile, pid, sha256, wait_s, log_cmd)
    except LabError as e:
        if mode != "nohup":
            raise
        last = _script(device, ABANDON, [sdir], "stopping the new server")
        why = f" (its log ends: {last})" if last else ""
        raise LabError(f"{e}{why}; the server that was running before, if any, keeps serving") from None
    if mode == "nohup":
        _script(device, PROMOTE, [sdir], "replacing the old server")
    shown = device.host if host in ("0.0.0.0", "::") else host
    return Served(device.name, f"http://{shown}:{port}/v1", mode, where)


def _wait_props(
    device: Device, host: str, port: int, kfile: str, pid: str, sha256: str, wait_s: float, log_cmd: str
) -> dict[str, Any]:
    """Poll /props from the device until it names ``sha256`` (and ``pid``): a port shared with the old
    server answers from either, and another program answering there is never taken for ours."""
    ask = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    url = f"http://{'[' + ask + ']' if ':' in ask else ask}:{port}/props"
    deadline = time.monotonic() + wait_s
    seen = ""
    while True:
        r = ssh.run(device, ssh.script_argv(device, PROPS, [device.python, url, kfile, pid]), timeout=30)
        if r.returncode == 3:
            raise LabError(f"device {device.name!r}: the new server exited before answering")
        if r.returncode == 0:
            try:
                props = json.loads(r.stdout)
                got = (props.get("artifact") or {}).get("sha256", "")
                if got == sha256 and (not pid or str(props.get("pid")) == pid):
                    return props
                seen = got or "no sha256"
            except (ValueError, AttributeError):
                seen = "not an edgekit server"
        if time.monotonic() > deadline:
            what = f"; what answers there serves {seen[:12]}" if seen else ""
            raise LabError(
                f"device {device.name!r}: no server at {url} named artifact sha256 {sha256[:12]}… "
                f"within {wait_s:g} s{what}; see `{log_cmd}` on the device"
            )
        time.sleep(0.5)


def stop_served(device: Device) -> None:
    """Stop the nohup fallback's server (systemd: ``systemctl --user stop edgekit-serve``)."""
    _script(device, STOP, [state_dir(device)], "stopping the server")


def lab_run_served(
    dist: Any,
    devices: list[Device],
    args: list[str],
    *,
    store: Any = None,
    push: bool = True,
    method: str = "auto",
    port: int = 8080,
    on_outcome: Any = None,
    host: str = "0.0.0.0",
    parallel: int = 16,
) -> list[Any]:
    """``edgekit lab run --served``: per device (in parallel), deploy and start its server (unless not
    ``push``: then the one already listening at host:port), bench it over HTTP, append its record."""

    n_prompt, n_gen, reps = served_args(args)

    def work(d: Device) -> Any:
        # Benched from here over the network: every interface, behind a key made for this run (with
        # --no-deploy, the running server's key from $EDGEKIT_API_KEY, if it has one).
        key = secrets.token_urlsafe(24) if push else os.environ.get("EDGEKIT_API_KEY")
        p = d.serve_port or port
        url = (
            deploy_served(dist, d, host=host, port=p, method=method, api_key=key).url
            if push
            else f"http://{d.host}:{p}/v1"
        )
        try:
            return bench_served(url, d.name, n_prompt, n_gen, reps, ssh_host=d.host, key=key)
        except NoServer as e:
            raise LabError(
                f"device {d.name!r}: {e}; start it with `edgekit deploy DIST --device {d.name} "
                f"--serve --port {p}`, or run without --no-deploy"
            ) from None

    outcomes = []
    for d, rec in for_each(devices, work, parallel):
        if isinstance(rec, Exception):
            out = Outcome(d.name, False, str(rec), exit_code=1)
        else:
            out = Outcome(
                d.name,
                True,
                f"{d.name}: 1 served record: TTFT {rec.ttft_ms:.1f} ms, "
                f"{rec.tg_tps:.2f} t/s at {rec.extra['served']['url']}",
                [rec],
            )
            if store is not None:
                store.append([rec])
        outcomes.append(out)
        if on_outcome:
            on_outcome(out)
    order = {d.name: i for i, d in enumerate(devices)}
    return sorted(outcomes, key=lambda o: order.get(o.device, len(order)))


def deploy_served(
    dist: Any,
    device: Device,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    serve_args: Optional[list[str]] = None,
    method: str = "auto",
    api_key: Optional[str] = None,
    wait_s: float = 120.0,
) -> Served:
    """Deploy the device's build (sha256-checked, as ``deploy``), then start the server on it and check
    that it serves that build's first artifact (the one ``edgekit serve`` picks)."""

    manifest = load_build(build_folder(dist, device), device)
    if not manifest.artifacts:
        raise LabError(f"{dist}: the manifest lists no artifacts; rebuild with `edgekit build`")
    with ssh.multiplexed(device):
        report = deploy(dist, device, method=method)
        return start_served(
            device,
            report.remote_dir,
            manifest.artifacts[0].sha256,
            host=host,
            port=port,
            serve_args=serve_args,
            api_key=api_key,
            wait_s=wait_s,
        )
