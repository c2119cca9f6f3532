"""``edgekit deploy --serve``: run ``edgekit serve`` on a device as a service, and bench it over HTTP.

Linux with a systemd user manager: a user unit ``edgekit-serve.service`` (``systemctl --user``; it runs
while the user is logged in, or always after ``loginctl enable-linger``). Without one (containers, the
test sshd): the documented fallback, a ``nohup``'d process detached with ``setsid``, its pid in
``WORKDIR/serve/serve.pid`` and its log in ``WORKDIR/serve/serve.log``; a new deploy stops the old one
first (SIGTERM, which lets requests in flight finish). macOS: a launchd agent plist in
~/Library/LaunchAgents loaded with ``launchctl`` (written, not exercised here). Each then waits for
``/health`` from the device itself over SSH and returns the URL.

``bench_endpoint`` is the client side of ``edgekit lab run --served``: TTFT (request sent → first
content chunk) and decode t/s (streamed tokens after the first over their time), as a client sees them.
"""

from __future__ import annotations

import json
import plistlib
import shlex
import time
import urllib.request
from dataclasses import dataclass
from typing import Any, Optional

from ..errors import LabError
from . import ssh
from .inventory import Device, join_remote

UNIT = "edgekit-serve"
LAUNCHD_LABEL = "com.edgekit.serve"

# $1 = mode probe. Prints "systemd", "launchd" or "none".
PROBE = r"""
if [ "$(uname -s)" = Darwin ]; then echo launchd
elif command -v systemctl >/dev/null 2>&1 && systemctl --user show-environment >/dev/null 2>&1; then echo systemd
else echo none; fi
"""

# $1 = state dir, $2... = the serve command. Stops an earlier server (SIGTERM, up to 30 s), starts this one.
NOHUP = r"""
dir=$1; shift
mkdir -p "$dir" || exit 1
if [ -f "$dir/serve.pid" ]; then
  old=$(cat "$dir/serve.pid")
  if kill -TERM "$old" 2>/dev/null; then
    i=0; while kill -0 "$old" 2>/dev/null && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
  fi
  rm -f "$dir/serve.pid"
fi
if command -v setsid >/dev/null 2>&1; then s=setsid; else s=; fi
nohup $s "$@" >"$dir/serve.log" 2>&1 </dev/null &
echo $! >"$dir/serve.pid"
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

# $1 = python, $2 = url: exits 0 once /health answers.
HEALTH = 'exec "$1" -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=3)" "$2"'


@dataclass
class Served:
    device: str
    url: str          # the API base, http://HOST:PORT/v1
    mode: str         # systemd | launchd | nohup
    where: str        # unit file, plist, or pid file on the device


def serve_argv(device: Device, rdir: str, host: str, port: int, extra: list[str]) -> list[str]:
    return [*device.edgekit_cmd, "serve", rdir, "--host", host, "--port", str(port), *extra]


def _systemd_arg(a: str) -> str:
    # systemd's ExecStart= quoting: double quotes with C-style escapes; % and $ are its own specifiers.
    return '"' + a.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$") + '"'


def systemd_unit(argv: list[str], grace_s: float = 30.0) -> str:
    """A user unit running ``argv`` from the home directory (where the inventory's relative paths start)."""
    return "\n".join([
        "[Unit]", "Description=edgekit serve (OpenAI-compatible API)", "After=network-online.target", "",
        "[Service]", "WorkingDirectory=%h",
        # sh finds a relative command (./edgekit/venv/bin/edgekit) from the working directory; systemd
        # itself wants an absolute one.
        "ExecStart=/bin/sh -c " + _systemd_arg('exec "$@"') + " sh " + " ".join(_systemd_arg(a) for a in argv),
        "KillSignal=SIGTERM", f"TimeoutStopSec={int(grace_s) + 10}", "Restart=on-failure", "RestartSec=2", "",
        "[Install]", "WantedBy=default.target", ""])


def launchd_plist(argv: list[str], log: str) -> bytes:
    return plistlib.dumps({"Label": LAUNCHD_LABEL, "ProgramArguments": ["/bin/sh", "-c", 'cd ~ && exec "$@"', "sh", *argv],
                           "RunAtLoad": True, "KeepAlive": {"SuccessfulExit": False},
                           "StandardOutPath": log, "StandardErrorPath": log})


def _script(device: Device, script: str, args: list[str], what: str, input: Optional[bytes] = None) -> str:
    r = ssh.run(device, ssh.script_argv(device, script, args), input=input, timeout=device.timeout)
    if r.returncode:
        raise LabError(f"device {device.name!r}: {what} failed: {ssh.last_error(r.stderr)}")
    return r.stdout.decode(errors="replace").strip()


def state_dir(device: Device) -> str:
    return join_remote(device.workdir, "serve")


def start_served(device: Device, rdir: str, *, host: str = "0.0.0.0", port: int = 8080,
                 serve_args: Optional[list[str]] = None, wait_s: float = 120.0) -> Served:
    """Start (or restart) ``edgekit serve`` on the device for the build in ``rdir``; wait for /health."""
    argv = serve_argv(device, rdir, host, port, list(serve_args or []))
    mode = _script(device, PROBE, [], "probing the service manager")
    sdir = state_dir(device)
    if mode == "systemd":
        _script(device, SYSTEMD, ["-", UNIT], "installing the systemd user unit", input=systemd_unit(argv).encode())
        where, log_cmd = f"~/.config/systemd/user/{UNIT}.service", f"journalctl --user -u {UNIT} -n 20"
    elif mode == "launchd":
        log = join_remote(sdir, "serve.log")
        _script(device, LAUNCHD, [LAUNCHD_LABEL], "loading the launchd agent", input=launchd_plist(argv, log))
        where, log_cmd = f"~/Library/LaunchAgents/{LAUNCHD_LABEL}.plist", f"tail -20 {shlex.quote(log)}"
    else:
        _script(device, NOHUP, [sdir, *argv], "starting the server (nohup)")
        mode, where = "nohup", join_remote(sdir, "serve.pid")
        log_cmd = f"tail -20 {shlex.quote(join_remote(sdir, 'serve.log'))}"
    local = f"http://127.0.0.1:{port}/health"
    deadline = time.monotonic() + wait_s
    while True:
        r = ssh.run(device, ssh.script_argv(device, HEALTH, [device.python, local]), timeout=30)
        if r.returncode == 0:
            break
        if time.monotonic() > deadline:
            raise LabError(f"device {device.name!r}: the server did not answer {local} within {wait_s:g} s; "
                           f"see `{log_cmd}` on the device")
        time.sleep(0.5)
    shown = device.host if host in ("0.0.0.0", "::") else host
    return Served(device.name, f"http://{shown}:{port}/v1", mode, where)


def stop_served(device: Device) -> None:
    """Stop the nohup fallback's server (systemd: ``systemctl --user stop edgekit-serve``)."""
    _script(device, STOP, [state_dir(device)], "stopping the server")


# ---------------------------------------------------------------- the client's view


def _sse(url: str, body: dict[str, Any], timeout: float) -> Any:
    import urllib.error

    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        r = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        try:
            why = json.loads(e.read())["error"]["message"]
        except (ValueError, KeyError, TypeError):
            why = e.reason
        raise LabError(f"{url}: HTTP {e.code}: {why}") from None
    with r:
        for raw in r:
            line = raw.decode("utf-8", "replace").strip()
            if line.startswith("data: ") and line != "data: [DONE]":
                yield json.loads(line[6:])


def one_request(base: str, model: str, messages: list[dict[str, Any]], max_tokens: int,
                timeout: float = 600.0) -> dict[str, Any]:
    """One streamed greedy chat: ttft_ms (to the first content), decode_tps, tokens, cached prompt tokens."""
    body = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    first = last = None
    usage: dict[str, Any] = {}
    for chunk in _sse(base.rstrip("/") + "/chat/completions", body, timeout):
        if chunk.get("usage"):
            usage = chunk["usage"]
        for ch in chunk.get("choices") or []:
            if (ch.get("delta") or {}).get("content"):
                now = time.perf_counter()
                first = first or now
                last = now
    n = usage.get("completion_tokens", 0)
    return {"ttft_ms": ((first or time.perf_counter()) - t0) * 1e3,
            "decode_tps": (n - 1) / (last - first) if first and last and last > first and n > 1 else 0.0,
            "completion_tokens": n, "prompt_tokens": usage.get("prompt_tokens", 0),
            "cached_tokens": (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)}


def model_id(base: str, timeout: float = 30.0) -> str:
    with urllib.request.urlopen(base.rstrip("/") + "/models", timeout=timeout) as r:
        return json.loads(r.read())["data"][0]["id"]


def bench_endpoint(base: str, n_prompt_words: int = 64, n_gen: int = 64, reps: int = 3) -> dict[str, Any]:
    """Median client-seen TTFT and decode t/s over ``reps`` requests (after one warm-up)."""
    import statistics

    model = model_id(base)
    messages = [{"role": "user", "content": " ".join(f"word{i}" for i in range(n_prompt_words))}]
    one_request(base, model, messages, min(n_gen, 4))
    runs = [one_request(base, model, messages, n_gen) for _ in range(reps)]
    return {"url": base, "model": model, "reps": reps, "n_gen": n_gen,
            "prompt_tokens": runs[0]["prompt_tokens"],
            "ttft_ms": statistics.median(r["ttft_ms"] for r in runs),
            "decode_tps": statistics.median(r["decode_tps"] for r in runs), "samples": runs}


def deploy_served(dist: Any, device: Device, *, host: str = "0.0.0.0", port: int = 8080,
                  serve_args: Optional[list[str]] = None, method: str = "auto") -> Served:
    """Deploy the device's build (sha256-checked, as ``deploy``), then start the server on it."""
    from .deploy import deploy

    with ssh.multiplexed(device):
        report = deploy(dist, device, method=method)
        return start_served(device, report.remote_dir, host=host, port=port, serve_args=serve_args)
