"""Decode roofline: weight bytes read per generated token, and the host's memory read bandwidth.

Decoding one token reads every weight matrix once, except gathered tables, of which only the
token's rows are read: ``per_layer_token_embd`` (PLE) always, and ``token_embd`` unless it is also
the output head (tied embeddings, no ``output.weight``), in which case the head's matmul reads it
whole. KV cache reads are left out: they grow with context and are small next to the weights at the
lengths the bench runs. tg t/s ≤ bandwidth ÷ bytes per token, so achieved GB/s = bytes × tg t/s.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .checkpoint import safetensors_header
from .errors import ArtifactError


GATHERED_GGUF = ("per_layer_token_embd.weight", "token_embd.weight")
# MLX (mlx-lm) names: the tables end in these, with .weight/.scales/.biases parts when quantized.
GATHERED_MLX = ("embed_tokens_per_layer", "embed_tokens")


@dataclass
class TokenBytes:
    total: int                                  # bytes read per decoded token
    whole: int                                  # of which: matrices read whole
    gathered: dict[str, int] = field(default_factory=dict)   # table -> bytes of the one row read
    file_tensor_bytes: int = 0                  # all tensor bytes in the artifact
    sizes: dict[str, int] = field(default_factory=dict, repr=False)   # tensor name -> bytes


def gguf_token_bytes(path: Path) -> TokenBytes:
    from .formats.gguf_header import read_gguf_header

    tensors = read_gguf_header(path).tensors   # ArtifactError for a corrupt or truncated file
    tied = "output.weight" not in tensors
    whole, gathered = 0, {}
    for name, t in tensors.items():
        if name in GATHERED_GGUF and not (tied and name == "token_embd.weight"):
            rows = int(t.shape[-1])  # ggml order: ne[1] counts the rows (vocabulary entries)
            gathered[name] = int(t.n_bytes) // max(rows, 1)
        else:
            whole += int(t.n_bytes)
    sizes = {name: int(t.n_bytes) for name, t in tensors.items()}
    return TokenBytes(total=whole + sum(gathered.values()), whole=whole, gathered=gathered,
                      file_tensor_bytes=sum(sizes.values()), sizes=sizes)


def mlx_token_bytes(folder: Path) -> TokenBytes:
    try:
        entries = {k: v for p in sorted(Path(folder).glob("*.safetensors")) for k, v in safetensors_header(p)[0].items()}
        cfg = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise ArtifactError(f"{Path(folder).name}: not a readable MLX artifact ({e}); rebuild it with `edgekit build`") from None
    tied = cfg.get("tie_word_embeddings", cfg.get("text_config", {}).get("tie_word_embeddings", True))
    tied = tied and not any(".lm_head." in k or k.startswith("lm_head.") for k in entries)
    whole, gathered, total_file = 0, {}, 0
    for name, info in entries.items():
        b0, b1 = info["data_offsets"]
        nbytes = b1 - b0
        total_file += nbytes
        module = name.rsplit(".", 1)[0]
        table = next((g for g in GATHERED_MLX if module.endswith(g)), None)
        if table and not (tied and table == "embed_tokens"):
            rows = int(info["shape"][0])
            gathered[module] = gathered.get(module, 0) + nbytes // max(rows, 1)
        else:
            whole += nbytes
    return TokenBytes(total=whole + sum(gathered.values()), whole=whole, gathered=gathered, file_tensor_bytes=total_file)


def token_bytes(path: Path, fmt: str) -> TokenBytes:
    return gguf_token_bytes(path) if fmt == "gguf" else mlx_token_bytes(path)


# ---------------------------------------------------------------- bandwidth probe

def _cache_file() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "edgekit" / "bandwidth.json"


def _host_key() -> str:
    from .results import cpu_model

    return f"{socket.gethostname()}|{platform.machine()}|{cpu_model()}"


# Cached figures from an older probe are measured again (2: every core, max kernel, pool outside the clock).
PROBE_VERSION = 2


def host_cores() -> int:
    """Cores this process may run on (its affinity mask, which a container or taskset narrows)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS has no affinity masks
        return os.cpu_count() or 1


def measure_bandwidth(mib: int = 512, threads: Optional[int] = None, trials: int = 5) -> dict[str, float]:
    """STREAM-like probe with numpy (edgekit's own: STREAM itself is a C program to build): a
    read-only reduction and a copy of ``mib`` MiB (far past the last-level cache), split over
    ``threads`` (default: every core, as llama.cpp decodes with several threads; numpy drops the GIL
    in these loops), best of ``trials``. read_gbs counts bytes read; copy_gbs counts read + written,
    as STREAM's Copy does."""
    threads = threads or host_cores()
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
    return {"read_gbs": src.nbytes / read_s / 1e9, "copy_gbs": 2 * src.nbytes / copy_s / 1e9,
            "mib": mib, "threads": threads, "probe": PROBE_VERSION}


def host_bandwidth(refresh: bool = False, cache: Optional[Path] = None) -> dict[str, float]:
    """This host's bandwidth, measured once and cached per host (~/.cache/edgekit/bandwidth.json)."""
    path = cache or _cache_file()
    key = _host_key()
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
