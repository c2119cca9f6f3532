"""Peak memory of the current process, shared by every runner.

Linux: the kernel's own high-water mark ``VmHWM`` (exact peak RSS) plus the anonymous vs file-backed
split of the peak, sampled from ``/proc/self/status`` (``RssAnon``/``RssFile``/``RssShmem``) by a
thread. ``status`` is used rather than ``smaps_rollup`` because it reads O(1) per-mm counters, while
``smaps_rollup`` walks every page table (milliseconds for a 3 GB mapping), which at a few-millisecond
period would steal a core from the engine being measured. The counters are batched per thread by the
kernel (off by up to ~64 pages per thread), far below the figures' resolution. The kernel tracks no
high-water mark for the split, so the split is the sample with the largest total; ``VmHWM`` stays
the peak itself. macOS: ``ru_maxrss`` and the ``phys_footprint`` Apple's memory limits are enforced
on (current and lifetime maximum, via ``proc_pid_rusage``). Elsewhere: psutil's RSS, sampled.
"""

from __future__ import annotations

import ctypes
import os
import resource
import sys
import threading
from dataclasses import dataclass
from typing import Optional

import psutil

_STATUS_KEYS = {"VmRSS": "rss", "RssAnon": "anon", "RssFile": "file", "RssShmem": "shmem", "VmHWM": "hwm"}


@dataclass
class Sample:
    rss: int = 0
    anon: int = 0
    file: int = 0
    shmem: int = 0
    hwm: int = 0


@dataclass
class MemoryPeak:
    peak_rss_bytes: int
    peak_anon_bytes: Optional[int] = None  # Linux: anonymous part of the sampled peak
    peak_file_bytes: Optional[int] = None  # Linux: file-backed (mmap'd weights) part of it
    phys_footprint_bytes: Optional[int] = None  # macOS: lifetime maximum phys_footprint


def read_status() -> Sample:
    """Current memory counters of this process from /proc/self/status (Linux), in bytes."""
    s = Sample()
    with open("/proc/self/status", "rb") as f:
        for line in f:
            key, _, rest = line.partition(b":")
            attr = _STATUS_KEYS.get(key.decode())
            if attr:
                setattr(s, attr, int(rest.split()[0]) * 1024)  # the kernel reports kB
    return s


class _RusageInfoV4(ctypes.Structure):
    # <sys/resource.h> rusage_info_v4, up to the field we read (the buffer we pass is larger).
    _fields_ = [("ri_uuid", ctypes.c_uint8 * 16)] + [
        (n, ctypes.c_uint64)
        for n in (
            "ri_user_time",
            "ri_system_time",
            "ri_pkg_idle_wkups",
            "ri_interrupt_wkups",
            "ri_pageins",
            "ri_wired_size",
            "ri_resident_size",
            "ri_phys_footprint",
            "ri_proc_start_abstime",
            "ri_proc_exit_abstime",
            "ri_child_user_time",
            "ri_child_system_time",
            "ri_child_pkg_idle_wkups",
            "ri_child_interrupt_wkups",
            "ri_child_pageins",
            "ri_child_elapsed_abstime",
            "ri_diskio_bytesread",
            "ri_diskio_byteswritten",
            "ri_cpu_time_qos_default",
            "ri_cpu_time_qos_maintenance",
            "ri_cpu_time_qos_background",
            "ri_cpu_time_qos_utility",
            "ri_cpu_time_qos_legacy",
            "ri_cpu_time_qos_user_initiated",
            "ri_cpu_time_qos_user_interactive",
            "ri_billed_system_time",
            "ri_serviced_system_time",
            "ri_logical_writes",
            "ri_lifetime_max_phys_footprint",
        )
    ]


def macos_phys_footprint() -> tuple[int, int]:
    """(current, lifetime maximum) phys_footprint of this process on macOS, in bytes."""

    lib = ctypes.CDLL("/usr/lib/libproc.dylib")
    buf = ctypes.create_string_buffer(1024)  # larger than any rusage_info version
    if lib.proc_pid_rusage(os.getpid(), 4, buf) != 0:  # RUSAGE_INFO_V4
        raise OSError("proc_pid_rusage failed")
    info = _RusageInfoV4.from_buffer(buf)
    return int(info.ri_phys_footprint), int(info.ri_lifetime_max_phys_footprint)


def _maxrss_bytes() -> int:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r) if sys.platform == "darwin" else int(r) * 1024  # bytes on macOS, kB on Linux


class PeakSampler:
    """Sample this process's memory every ``interval`` seconds in a thread; ``peak()`` at the end.

    Call ``sample()`` at phase boundaries too (after load, after prefill): the engines allocate at
    those points, and the thread then only needs a slow period. It is slow on purpose: on a 2-core
    host every wake-up preempts one of the engine's threads, which the others wait for at a barrier.
    """

    def __init__(self, interval: float = 0.02):
        self.interval = interval
        self.linux = sys.platform.startswith("linux")
        self.best = Sample()
        self.hwm = 0  # VmHWM is rebuilt from batched counters at unmap time and can read a page lower later
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._lock = threading.Lock()

    def sample(self) -> Sample:
        if self.linux:
            s = read_status()
        else:
            s = Sample(rss=psutil.Process().memory_info().rss)
        with self._lock:
            self.hwm = max(self.hwm, s.hwm)
            if s.rss > self.best.rss:  # on Linux VmRSS is RssAnon + RssFile + RssShmem
                self.best = s
        return s

    def reset(self) -> bool:
        """Start a new peak (between tests that share a loaded model). On Linux the kernel's VmHWM is
        reset too (``5`` > /proc/self/clear_refs); returns False where it could not be, so the next
        peak is the process's since the start."""
        ok = True
        if self.linux:
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")
            except OSError:
                ok = False
        with self._lock:
            self.best = Sample()
            if ok:
                self.hwm = 0
        self.sample()
        return ok

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> PeakSampler:
        self.sample()
        self._thread = threading.Thread(target=self._run, name="edgekit-memory", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()

    def peak(self) -> MemoryPeak:
        last = self.sample()
        b = self.best
        if self.linux:
            # Not ru_maxrss: Linux carries it across fork + exec, so a child started by a parent that
            # once held 1 GB reports 1 GB (seen here after the bandwidth probe). VmHWM is per address space.
            return MemoryPeak(
                peak_rss_bytes=max(self.hwm, last.hwm, b.rss), peak_anon_bytes=b.anon, peak_file_bytes=b.file
            )
        out = MemoryPeak(peak_rss_bytes=max(b.rss, _maxrss_bytes()))
        if sys.platform == "darwin":
            try:
                out.phys_footprint_bytes = macos_phys_footprint()[1]
            except (OSError, AttributeError):
                pass
        return out
