"""Bench every device over SSH in parallel and gather their records into the local results store.

Each device is deployed (sha256-skipped when already there) and then runs
``edgekit bench <remote build> -o jsonl --no-store ...``; its stdout is parsed with the results
module's own jsonl parser. One thread per device: a device that fails (unreachable, refused,
OOM-killed, timed out) becomes one line in the outcome and never holds back or loses the others.
Records are appended to the store as each device finishes, from the calling thread only.
"""

from __future__ import annotations

import logging
import shlex
import sys
import tempfile
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from ..core.errors import BudgetExceeded, EdgekitError, LabError
from ..results import parse_jsonl
from . import ssh
from .bootstrap import bootstrap as prepare
from .bootstrap import build_wheel
from .deploy import DeployReport, build_folder, check_target, deploy, remote_dir
from .inventory import Device

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class Outcome:
    device: str
    ok: bool
    message: str  # one line: what happened, or why it failed and how to fix it
    records: list = field(default_factory=list)
    deployed: DeployReport | None = None
    exit_code: int = 0  # 0 ok, 3 measured but over budget, 1 anything else


def exit_code(outcomes: list[Outcome]) -> int:
    """1 if any device failed outright, else 3 if any was over its memory budget, else 0."""
    codes = {o.exit_code for o in outcomes}
    return 1 if 1 in codes else 3 if 3 in codes else 0


def for_each(devices: Iterable[Device], work: Callable[[Device], T], parallel: int = 16):
    """Yield (device, result or EdgekitError) as each device finishes; errors never escape."""
    devices = list(devices)
    if not devices:
        return
    with ThreadPoolExecutor(max_workers=max(1, min(parallel, len(devices)))) as pool:
        futures = {pool.submit(work, d): d for d in devices}
        for fut in as_completed(futures):
            device = futures[fut]
            try:
                yield device, fut.result()
            except EdgekitError as e:
                yield device, e
            except Exception as e:  # a bug must not cost the other devices their results
                log.exception("%s: unexpected failure", device.name)
                yield device, LabError(f"device {device.name!r}: internal error {e.__class__.__name__}: {e}")


def bench_argv(device: Device, rdir: str, bench_args: list[str]) -> list[str]:
    return [*device.edgekit_cmd, "bench", rdir, "-o", "jsonl", "--no-store", *bench_args]


def explain_exit(device: Device, code: int, stderr: str) -> str:
    where = f"device {device.name!r}"
    if code == ssh.OOM_KILLED:
        return (
            f"{where}: bench killed (exit 137, SIGKILL: most likely out of memory); "
            f"try a smaller quant, a shorter context, or close other programs on the device"
        )
    if code == 127:
        return (
            f"{where}: edgekit not found on the device; run `edgekit deploy DIST --bootstrap "
            f"--device {shlex.quote(device.name)}` or set `edgekit` in the inventory"
        )
    return f"{where}: bench failed (exit {code}): {ssh.last_error(stderr)}"


def bench_device(
    dist: Path, device: Device, bench_args: list[str], *, push: bool = True, method: str = "auto"
) -> Outcome:
    """Deploy (unless ``push`` is off), bench remotely, return the device's records tagged with its name."""
    with ssh.multiplexed(device):
        return _bench_device(build_folder(dist, device), device, bench_args, push, method)


def tag_records(device: Device, records: list) -> list:
    """Records measured on ``device``: named after it in the store, the device's own name kept in extra."""
    for rec in records:
        rec.extra = {**rec.extra, "lab": {"device": device.name, "ssh_host": device.host, "remote_device": rec.device}}
        rec.device = device.name
    return records


def _bench_device(folder: Path, device: Device, bench_args: list[str], push: bool, method: str) -> Outcome:
    if push:
        report = deploy(folder, device, method=method)
        rdir = report.remote_dir
    else:
        report, rdir = None, remote_dir(device, check_target(folder, device))
    r = ssh.run(
        device, ssh.watched(device, bench_argv(device, rdir, bench_args)), hold_stdin=True, timeout=device.timeout
    )
    text = r.stdout.decode(errors="replace")
    try:
        records = parse_jsonl(text)
    except (ValueError, TypeError) as e:
        if r.returncode:
            raise LabError(explain_exit(device, r.returncode, r.stderr)) from None
        raise LabError(
            f"device {device.name!r}: bench printed unreadable jsonl ({e.__class__.__name__}); "
            f"is the device's edgekit the same version? rerun with --bootstrap"
        ) from None
    tag_records(device, records)
    if r.returncode and not records:
        raise LabError(explain_exit(device, r.returncode, r.stderr))
    if r.returncode:
        # e.g. exit 3 (over budget): the figures were measured and are kept, the verdict is reported.
        return Outcome(
            device.name,
            False,
            explain_exit(device, r.returncode, r.stderr),
            records,
            report,
            exit_code=3 if r.returncode == BudgetExceeded.exit_code else 1,
        )
    if not records:
        raise LabError(f"device {device.name!r}: bench printed no records; run it there by hand to see why")
    return Outcome(device.name, True, f"{device.name}: {len(records)} record(s)", records, report)


def lab_run(
    dist: Path,
    devices: list[Device],
    bench_args: list[str],
    *,
    store=None,
    push: bool = True,
    method: str = "auto",
    on_outcome: Callable[[Outcome], None] | None = None,
    parallel: int = 16,
) -> list[Outcome]:
    """Bench ``devices`` in parallel; append each device's records to ``store`` as soon as it is done."""
    outcomes = []
    for device, result in for_each(
        devices, lambda d: bench_device(dist, d, bench_args, push=push, method=method), parallel
    ):
        out = result if isinstance(result, Outcome) else Outcome(device.name, False, str(result), exit_code=1)
        if out.records and store is not None:
            store.append(out.records)
        outcomes.append(out)
        if on_outcome:
            on_outcome(out)
    order = {d.name: i for i, d in enumerate(devices)}
    return sorted(outcomes, key=lambda o: order.get(o.device, sys.maxsize))


def deploy_devices(
    dist: Path, devices: list[Device], *, bootstrap: bool = False, wheel: Path | None = None, method: str = "auto"
):
    """Deploy (and optionally bootstrap) in parallel; yield (one line, ok) per device as each finishes."""

    with tempfile.TemporaryDirectory(prefix="edgekit-wheel-") as tmp:
        if bootstrap and wheel is None:
            wheel = build_wheel(Path(tmp))  # once for every device

        def work(d: Device) -> str:
            with ssh.multiplexed(d):
                version = prepare(d, wheel, method=method) if bootstrap else ""
                line = deploy(dist, d, method=method).line()
            return line + (f"; edgekit {version} in {d.venv}" if bootstrap else "")

        for _device, result in for_each(devices, work):
            yield (str(result), False) if isinstance(result, EdgekitError) else (result, True)
