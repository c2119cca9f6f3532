"""Facts about the machine edgekit runs on: cpu model, cores, page size, memory. One place, so the
bench's records, the bandwidth probe's cache key and the thread defaults agree."""

from __future__ import annotations

import ctypes
import mmap
import os
import platform
import socket
import subprocess
from pathlib import Path
from typing import Any, Optional

import psutil


def cpu_model() -> str:
    if platform.system() == "Darwin":
        try:
            return (
                subprocess.run(
                    ["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True, timeout=5
                ).stdout.strip()
                or platform.machine()
            )
        except (OSError, subprocess.SubprocessError):
            return platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            # x86 says "model name"; ARM kernels often only "Model" (the board) or nothing useful.
            if line.split(":")[0].strip() in ("model name", "Model"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask, which a container or taskset narrows)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS has no affinity masks
        return os.cpu_count() or 1


def physical_cores() -> int:
    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


def page_size() -> int:
    return mmap.PAGESIZE


def memory_bytes() -> int:
    return int(psutil.virtual_memory().total)


def _malloc_trim() -> Optional[Any]:
    """glibc's ``malloc_trim`` from the C library this process already links (no load, no search), typed
    once here: ctypes function pointers are shared, and retyping one per call is needless work. None
    where the allocator has none (macOS, musl)."""
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
    if trim is not None:
        trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


_MALLOC_TRIM = _malloc_trim()


def trim_heap() -> bool:
    """Hand the C heap's free pages back to the kernel: glibc's ``malloc_trim(0)``; True when it ran.

    glibc keeps freed heap in its arenas: with the towers freed before the text (bench's towers=on_demand)
    the tiny model's text part stayed 23-52 MB over a text-only run, within 9 MB once trimmed. Called after
    a projector is freed. Elsewhere a no-op (False): macOS's and musl's allocators have no malloc_trim and
    give large freed blocks back to the kernel on their own."""
    if _MALLOC_TRIM is None:
        return False
    _MALLOC_TRIM(0)
    return True


def host_key() -> str:
    """What identifies this host's measured figures (the bandwidth cache)."""
    return f"{socket.gethostname()}|{platform.machine()}|{cpu_model()}"


def host_info() -> dict[str, Any]:
    return {
        "cpu": cpu_model(),
        "cores_physical": psutil.cpu_count(logical=False),
        "cores_logical": psutil.cpu_count(logical=True),
        "ram_bytes": memory_bytes(),
        "page_bytes": page_size(),
        "os": platform.platform(),
        "machine": platform.machine(),
        "hostname": socket.gethostname(),
    }


def device_name(given: Optional[str] = None) -> str:
    """The device a record names: --device, else $EDGEKIT_DEVICE, else the host name."""
    return given or os.environ.get("EDGEKIT_DEVICE") or socket.gethostname()
