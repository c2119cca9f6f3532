"""``edgekit lab run --via ansible`` and ``deploy --via ansible``: the shipped playbook
(deploy/ansible/edgekit.yml, packaged as edgekit/_data/ansible) driven by ansible-runner.

The playbook does what the SSH path does (bootstrap, sha256-checked copy verified on the device,
service unit and /health, ``edgekit bench -o jsonl``); this module hands it the builds and each
device's resolved settings as extra vars, reads the bench records out of the run's events and stores
them exactly as the SSH path does, and turns every failed or unreachable host into one line. An
Ansible inventory is passed to Ansible as it is (group_vars, become, interpreters all apply); a TOML
inventory becomes a generated one with the same hosts, users, ports, keys and ssh options.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shlex
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..builder.manifest import MANIFEST
from ..core.errors import BudgetExceeded, EdgekitError, LabError
from ..model.checkpoint import sha256_file
from ..results import parse_jsonl
from . import ssh
from .bootstrap import build_wheel
from .deploy import build_folder, load_build, remote_dir, sidecars
from .inventory import Device, Inventory
from .run import Outcome, explain_exit, tag_records

log = logging.getLogger(__name__)
PLAYBOOK = "edgekit.yml"
BENCH_TASK = "edgekit bench"


def playbook_dir() -> Path:
    """Inside the wheel (edgekit/_data/ansible) or deploy/ansible in a source checkout."""
    pkg = Path(__file__).resolve().parents[1]
    packaged = pkg / "_data" / "ansible"
    return packaged if packaged.is_dir() else pkg.parent / "deploy" / "ansible"


def build_spec(folder: Path, device: Device) -> dict[str, Any]:
    """What the playbook copies for one build: every file with its sha256 (a folder artifact file by
    file, hashed here after the folder's digest was checked against the manifest), manifest last."""
    manifest = load_build(folder, device)
    remote_dir(device, manifest)  # the model and target must be plain folder names
    files = []
    for item in [*manifest.artifacts, *sidecars(folder, manifest)]:
        path = folder / item.file
        if path.is_file():
            files.append({"path": item.file, "sha256": item.sha256})
        else:
            files += [
                {"path": p.relative_to(folder).as_posix(), "sha256": sha256_file(p)}
                for p in sorted(path.rglob("*"))
                if p.is_file()
            ]
    return {
        "src": str(folder.resolve()),
        "model": manifest.model,
        "files": files,
        "manifest_sha256": hashlib.sha256((folder / MANIFEST).read_bytes()).hexdigest(),
    }


def _ssh_args(d: Device) -> str:
    words = ["-F", d.ssh_config] if d.ssh_config else []
    for k, v in d.ssh_options:
        words += ["-o", f"{k}={v}"]
    return shlex.join(words)


def generated_inventory(devices: list[Device]) -> dict[str, Any]:
    """An Ansible YAML inventory (as JSON, which YAML reads) for devices from a TOML inventory."""
    hosts = {}
    for d in devices:
        h: dict[str, Any] = {
            "ansible_host": d.host,
            "edgekit_target": d.target,
            "ansible_ssh_timeout": d.connect_timeout,
            # the SSH path's interpreter on the device, also Ansible's for its modules
            "ansible_python_interpreter": d.python,
        }
        if d.user:
            h["ansible_user"] = d.user
        if d.port:
            h["ansible_port"] = d.port
        if d.identity:
            h["ansible_ssh_private_key_file"] = d.identity
        if d.ssh_options or d.ssh_config:
            h["ansible_ssh_common_args"] = _ssh_args(d)
        hosts[d.name] = h
    return {"all": {"hosts": hosts}}


def device_vars(d: Device) -> dict[str, Any]:
    """The settings edgekit resolved (login-relative work dir, edgekit command), so both paths agree."""
    out = {"workdir": d.workdir, "command": list(d.edgekit_cmd), "python": d.python, "timeout": d.timeout}
    return {**out, "serve_port": d.serve_port} if d.serve_port else out


@dataclass
class _Host:
    failed: str = ""  # one line
    unreachable: str = ""
    rc: int | None = None
    bench_stdout: str | None = None
    bench_stderr: str = ""
    changed: int = 0
    ok: int = 0
    sent: list[str] = field(default_factory=list)


def _first_line(text: Any) -> str:
    return next((ln.strip() for ln in str(text or "").splitlines() if ln.strip()), "")


def _why(res: dict[str, Any]) -> str:
    """The telling message of a failed task result (a loop's failed items carry their own)."""
    for item in res.get("results") or []:
        if isinstance(item, dict) and item.get("failed"):
            label = item.get("_ansible_item_label") or item.get("item") or {}
            label = label.get("path") if isinstance(label, dict) else label
            why = _why(item)
            return f"{label}: {why}" if label and str(label) not in why else why
    return (
        (ssh.last_error(res.get("stderr") or "") if res.get("stderr") else "")
        or _first_line(res.get("msg"))
        or _first_line(res.get("stdout"))
        or "no message"
    )


class _Events:
    def __init__(self) -> None:
        self.hosts: dict[str, _Host] = {}
        self.tail: list[str] = []

    def __call__(self, event: dict[str, Any]) -> bool:
        if event.get("stdout"):
            self.tail = (self.tail + event["stdout"].splitlines())[-20:]
        data = event.get("event_data") or {}
        host, kind, res = data.get("host"), event.get("event"), data.get("res") or {}
        if not host:
            return True
        h = self.hosts.setdefault(host, _Host())
        task = data.get("task", "")
        if kind == "runner_on_unreachable":
            h.unreachable = str(res.get("msg") or "unreachable")
        elif kind == "runner_on_failed" and not data.get("ignore_errors"):
            h.failed = f"{task} failed: {_why(res)}"
            if task == BENCH_TASK:
                h.rc, h.bench_stdout, h.bench_stderr = res.get("rc"), res.get("stdout", ""), res.get("stderr", "")
        elif kind == "runner_on_ok" and task == BENCH_TASK:
            h.rc, h.bench_stdout, h.bench_stderr = 0, res.get("stdout", ""), res.get("stderr", "")
        elif kind == "runner_item_on_ok" and task == "edgekit copy" and res.get("changed"):
            item = res.get("item") or {}
            h.sent.append(item.get("path", "?"))
        return True


def run_playbook(
    inventory: Inventory, devices: list[Device], extravars: dict[str, Any], *, forks: int = 16
) -> tuple[_Events, dict]:
    """Run the playbook on ``devices``; return the events seen and Ansible's per-host stats."""
    try:
        # deferred: ansible-runner (the fleet extra) loads only for --via ansible
        import ansible_runner
    except ImportError:
        raise LabError("--via ansible needs ansible-core and ansible-runner: pip install 'edgekit[fleet]'") from None
    binary = Path(sys.executable).with_name("ansible-playbook")
    binary = str(binary) if binary.exists() else shutil.which("ansible-playbook")
    if not binary:
        raise LabError("ansible-playbook is not installed: pip install 'edgekit[fleet]'")
    playbook = playbook_dir() / PLAYBOOK
    if not playbook.is_file():
        raise LabError(f"{playbook}: the edgekit playbook is missing from this installation; reinstall edgekit")
    events = _Events()
    with tempfile.TemporaryDirectory(prefix="edgekit-ansible-") as tmp:
        if inventory.kind == "ansible":
            inv_path = str(inventory.path.resolve())
        else:
            inv_path = str(Path(tmp) / "inventory.yml")
            Path(inv_path).write_text(json.dumps(generated_inventory(devices)))
        r = ansible_runner.run(
            private_data_dir=tmp,
            playbook=str(playbook),
            inventory=inv_path,
            extravars=extravars,
            limit=",".join(d.name for d in devices),
            forks=max(1, min(forks, len(devices))),
            quiet=True,
            event_handler=events,
            envvars={
                "ANSIBLE_RETRY_FILES_ENABLED": "False",
                "ANSIBLE_ROLES_PATH": str(playbook_dir() / "roles"),
                "ANSIBLE_NOCOLOR": "1",
                # modules over the ssh session's stdin, not a file copy each: fewer round trips per
                # task (the user's environment decides if it says otherwise)
                "ANSIBLE_PIPELINING": os.environ.get("ANSIBLE_PIPELINING", "True"),
                # the ansible-playbook beside this Python (a venv's bin is often not on PATH)
                "PATH": os.pathsep.join([str(Path(binary).parent), os.environ.get("PATH", "")]),
            },
        )
        stats = r.stats or {}
        log.info("ansible: %s", r.config.command)
    if not stats and not events.hosts:
        raise LabError(
            f"ansible-playbook failed before reaching any device (status {r.status}, rc {r.rc}): "
            f"{_first_line(' '.join(events.tail[-3:])) or 'no message'}"
        )
    return events, stats


def _builds(dist: Path, devices: list[Device]) -> tuple[dict[str, Any], dict[str, str]]:
    """({target: build spec}, {device: one-line error}) for the devices that have a build."""
    builds, errors = {}, {}
    for d in devices:
        try:
            folder = build_folder(dist, d)
            if d.target not in builds:
                builds[d.target] = build_spec(folder, d)
        except EdgekitError as e:
            errors[d.name] = f"device {d.name!r}: {e}" if not str(e).startswith("device ") else str(e)
    return builds, errors


def ansible_run(
    dist: Path,
    inventory: Inventory,
    devices: list[Device],
    bench_args: list[str],
    *,
    store=None,
    push: bool = True,
    bootstrap: bool = False,
    wheel: Path | None = None,
    pip_args: list[str] | None = None,
    serve: bool = False,
    serve_host: str = "0.0.0.0",
    port: int = 8080,
    serve_args: list[str] | None = None,
    bench: bool = True,
    forks: int = 16,
    on_outcome: Callable[[Outcome], None] | None = None,
) -> list[Outcome]:
    """Deploy (unless not ``push``) and bench ``devices`` through the playbook; store each device's
    records as the SSH path does. One Outcome per device, failures one line each."""
    builds, errors = _builds(dist, devices)
    reachable = [d for d in devices if d.name not in errors]
    outcomes = [Outcome(n, False, msg, exit_code=1) for n, msg in errors.items()]
    with tempfile.TemporaryDirectory(prefix="edgekit-wheel-") as tmp:
        if bootstrap and wheel is None:
            wheel = build_wheel(Path(tmp))
        extravars = {
            "edgekit_builds": builds,
            "edgekit_devices": {d.name: device_vars(d) for d in reachable},
            "edgekit_deploy": push,
            "edgekit_bench": bench,
            "edgekit_bench_args": list(bench_args),
            "edgekit_bootstrap": bootstrap,
            "edgekit_wheel": str(Path(wheel).resolve()) if wheel else "",
            "edgekit_pip_args": list(pip_args or []),
            "edgekit_serve": serve,
            "edgekit_serve_host": serve_host,
            "edgekit_serve_port": port,
            "edgekit_serve_args": list(serve_args or []),
        }
        events, stats = run_playbook(inventory, reachable, extravars, forks=forks) if reachable else (_Events(), {})
    for d in reachable:
        out = _outcome(d, events.hosts.get(d.name, _Host()), stats, bench)
        if out.records and store is not None:
            store.append(out.records)
        outcomes.append(out)
    order = {d.name: i for i, d in enumerate(devices)}
    outcomes.sort(key=lambda o: order.get(o.device, len(order)))
    for o in outcomes:
        if on_outcome:
            on_outcome(o)
    return outcomes


def _outcome(d: Device, h: _Host, stats: dict, bench: bool) -> Outcome:
    changed = (stats.get("changed") or {}).get(d.name, 0)
    if h.unreachable or d.name in (stats.get("dark") or {}):
        return Outcome(d.name, False, ssh.explain(d, h.unreachable), exit_code=1)
    records = []
    if h.bench_stdout:
        try:
            records = tag_records(d, parse_jsonl(h.bench_stdout))
        except (ValueError, TypeError) as e:
            if not h.failed:
                return Outcome(
                    d.name,
                    False,
                    f"device {d.name!r}: bench printed unreadable jsonl "
                    f"({e.__class__.__name__}); is the device's edgekit the same version?",
                    exit_code=1,
                )
    if h.failed:
        if h.rc:  # the bench ran and failed: the same line as the SSH path
            msg = explain_exit(d, h.rc, h.bench_stderr)
            return Outcome(
                d.name, False, msg, records, exit_code=3 if records and h.rc == BudgetExceeded.exit_code else 1
            )
        return Outcome(d.name, False, f"device {d.name!r}: {h.failed}", exit_code=1)
    if d.name not in (stats.get("ok") or {}) and d.name not in (stats.get("skipped") or {}):
        return Outcome(d.name, False, f"device {d.name!r}: the playbook did not run on it", exit_code=1)
    if bench and not records:
        return Outcome(
            d.name, False, f"device {d.name!r}: bench printed no records; run it there by hand to see why", exit_code=1
        )
    what = f"{len(records)} record(s)" if bench else "up to date" if not changed else "deployed"
    sent = f", {len(h.sent)} file(s) sent" if h.sent else ""
    return Outcome(d.name, True, f"{d.name}: {what} (ansible: changed={changed}{sent})", records)
