"""Prepare a device to run `edgekit bench`: a venv holding edgekit with its `runtime` extra.

The runtime extra is llama-cpp-python and psutil, no torch. edgekit itself is installed from a wheel:
one the user passes, or one built here from the source checkout this edgekit runs from, so the
device runs exactly the code that deployed to it. llama-cpp-python compiles on the device (minutes on
a Pi 5); pip fetches it and hatchling from the device's package index.
"""

from __future__ import annotations

import importlib.util
import logging
import subprocess
import sys
import tempfile
from pathlib import Path

from ..core.errors import LabError
from . import ssh
from .deploy import choose_method, probe, send
from .inventory import Device, join_remote

log = logging.getLogger(__name__)

# $1 python, $2 venv, $3 wheels folder.
VENV = r"""
py=$1 venv=$2 wheels=$3
"$py" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 3)' 2>/dev/null || {
  echo "$py is missing or older than Python 3.11; install Python >= 3.11 or set python in the inventory" >&2; exit 93; }
mkdir -p -- "$wheels" || exit 90
[ -x "$venv/bin/python" ] || "$py" -m venv -- "$venv" || {
  echo "cannot create a venv with $py -m venv (on Debian: apt install python3-venv)" >&2; exit 94; }
"""

# $1 venv, $2 "wheel[extra]", $3 wheel, then pip options. The second install refreshes edgekit itself
# when the version number did not change (pip would call the first one already satisfied).
INSTALL = r"""
venv=$1 spec=$2 wheel=$3
shift 3
# llama.cpp's -march=native build crashes in ggml's AMX path on some x86 Xeons; ARM and Apple build native.
case "$(uname -m)" in x86_64|amd64) CMAKE_ARGS=${CMAKE_ARGS:--DGGML_NATIVE=OFF}; export CMAKE_ARGS;; esac
"$venv/bin/python" -m pip install --disable-pip-version-check -q "$@" "$spec" || exit 95
"$venv/bin/python" -m pip install --disable-pip-version-check -q --force-reinstall --no-deps "$@" "$wheel" || exit 95
"$venv/bin/python" -c 'import edgekit; print(edgekit.__version__)'
"""


def checkout_root() -> Path:
    root = Path(__file__).resolve().parents[2]
    pyproject = root / "pyproject.toml"
    if not pyproject.is_file() or 'name = "edgekit"' not in pyproject.read_text():
        raise LabError(
            "this edgekit is not running from a source checkout, so there is no wheel to build; "
            "pass --wheel edgekit-*.whl"
        )
    return root


def build_wheel_argv(root: Path, out: Path) -> list[str]:
    argv = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check", "-q", "-w", str(out)]
    if importlib.util.find_spec("hatchling") is not None:
        argv.append("--no-build-isolation")  # offline and quick when the build backend is already here
    return [*argv, str(root)]


def build_wheel(out: Path) -> Path:
    """Build edgekit's wheel from the checkout into ``out``; return its path."""
    root = checkout_root()
    p = subprocess.run(build_wheel_argv(root, out), capture_output=True, text=True)
    wheels = sorted(Path(out).glob("edgekit-*.whl"), key=lambda w: w.stat().st_mtime)
    if p.returncode or not wheels:
        last = next((ln for ln in reversed(p.stderr.splitlines()) if ln.strip()), "no message")
        raise LabError(f"could not build edgekit's wheel from {root}: {last}; pass --wheel edgekit-*.whl")
    return wheels[-1]


def install_args(device: Device, remote_wheel: str, extra: str, pip_args: list[str]) -> list[str]:
    return [device.venv, f"{remote_wheel}[{extra}]" if extra else remote_wheel, remote_wheel, *pip_args]


def bootstrap(
    device: Device,
    wheel: Path | None = None,
    *,
    extra: str = "runtime",
    pip_args: list[str] | None = None,
    method: str = "auto",
) -> str:
    """Create the device's venv and install edgekit[extra] there; return the version it reports."""
    with ssh.multiplexed(device):
        return _bootstrap(device, wheel, extra, pip_args, method)


def _bootstrap(device: Device, wheel: Path | None, extra: str, pip_args: list[str] | None, method: str) -> str:
    with tempfile.TemporaryDirectory(prefix="edgekit-wheel-") as tmp:
        wheel = Path(wheel) if wheel else build_wheel(Path(tmp))
        if not wheel.is_file() or wheel.suffix != ".whl":
            raise LabError(f"{wheel}: not a wheel file; pass --wheel edgekit-*.whl")
        wheels = join_remote(device.workdir, "wheels")
        remote_rsync, _ = probe(device, wheels, [])
        r = ssh.run(device, ssh.script_argv(device, VENV, [device.python, device.venv, wheels]), timeout=device.timeout)
        if r.returncode:
            raise LabError(f"device {device.name!r}: bootstrap failed: {ssh.last_error(r.stderr)}")
        send(device, choose_method(method, remote_rsync), wheel.parent, wheels, [wheel.name])
    log.info("%s: installing edgekit[%s] (llama-cpp-python compiles there; minutes on a Pi 5)", device.name, extra)
    r = ssh.run(
        device,
        ssh.script_argv(
            device, INSTALL, install_args(device, join_remote(wheels, wheel.name), extra, list(pip_args or []))
        ),
        timeout=max(device.timeout, 3600.0),
    )  # compiling llama.cpp on a Pi 5 takes a while
    if r.returncode:
        raise LabError(f"device {device.name!r}: pip install of edgekit[{extra}] failed: {ssh.last_error(r.stderr)}")
    return r.stdout.decode(errors="replace").strip().splitlines()[-1] if r.stdout.strip() else ""
