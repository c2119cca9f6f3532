"""Decode roofline: weight bytes read per generated token, and the host's memory read bandwidth.

Decoding one token reads every weight matrix once, except gathered tables, of which only the
token's rows are read: the PLE table always, and the token embedding unless it is also the output
head (tied embeddings), in which case the head's matmul reads it whole. Each format counts its own
artifact's bytes (``Format.token_bytes``: tensor names differ). KV cache reads are left out: they
grow with context and are small next to the weights at the lengths the bench runs.
tg t/s ≤ bandwidth ÷ bytes per token, so achieved GB/s = bytes × tg t/s.
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..backends.format import TokenBytes
from ..backends.formats import format_of
from ..core.host import host_key, usable_cores


def token_bytes(path: Path, fmt: str) -> TokenBytes:
    """Bytes one decoded token reads from the artifact at ``path`` of format ``fmt``."""
    return format_of(fmt).token_bytes(Path(path))


# ---------------------------------------------------------------- bandwidth probe


def _cache_file() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "edgekit" / "bandwidth.json"


# Cached figures from an older probe are measured again (2: every core, max kernel, pool outside the clock).
PROBE_VERSION = 2


def measure_bandwidth(mib: int = 512, threads: Optional[int] = None, trials: int = 5) -> dict[str, float]:
    """STREAM-like probe with numpy (edgekit's own: STREAM itself is a C program to build): a
    read-only reduction and a copy of ``mib`` MiB (far past the last-level cache), split over
    ``threads`` (default: every core, as llama.cpp decodes with several threads; numpy drops the GIL
    in these loops), best of ``trials``. read_gbs counts bytes read; copy_gbs counts read + written,
    as STREAM's Copy does."""
    threads = threads or usable_cores()
    n = (mib << 20) // 8
    src = np.ones(n, dtype=np.float64)
    dst = np.empty_like(src)
    bounds = [(n * i // threads, n * (i + 1) // threads) for i in range(threads)]

    def timed(kernel: Any) -> float:
        best = float("inf")
        # Threads start before the clock does: their start-up is not memory traffic.
        with ThreadPoolExecutor(threads, thread_name_prefix="edgekit-bw") as pool:
            for _ in range(trials):
                t0 = time.perf_counter()
                for f in [pool.submit(kernel, a, b) for a, b in bounds]:
                    f.result()
                best = min(best, time.perf_counter() - t0)
        return best

    # max, not sum: from L2, numpy's max loop runs 1.4-1.6x faster than its pairwise sum on the EPYC
    # this was written on, so a slower core is less likely to time its adder instead of memory. From
    # DRAM both read the same there.
    read_s = timed(lambda a, b: src[a:b].max())
    copy_s = timed(lambda a, b: np.copyto(dst[a:b], src[a:b]))
    return {
        "read_gbs": src.nbytes / read_s / 1e9,
        "copy_gbs": 2 * src.nbytes / copy_s / 1e9,
        "mib": mib,
        "threads": threads,
        "probe": PROBE_VERSION,
    }


def host_bandwidth(refresh: bool = False, cache: Optional[Path] = None) -> dict[str, float]:
    """This host's bandwidth, measured once and cached per host (~/.cache/edgekit/bandwidth.json)."""
    path = cache or _cache_file()
    key = host_key()
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError):
        stored = {}
    cached = stored.get(key)
    if not refresh and isinstance(cached, dict) and "read_gbs" in cached and cached.get("probe") == PROBE_VERSION:
        return cached
    stored[key] = measure_bandwidth()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
        tmp.write_text(json.dumps(stored, indent=2) + "\n")
        os.replace(tmp, path)
    except OSError:
        pass  # an unwritable cache only costs a re-measure next time
    return stored[key]
