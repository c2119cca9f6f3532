"""llama.cpp's importance-matrix files, both halves: read (GGUF or legacy .dat) and write (GGUF).

What the matrix holds (tools/imatrix/imatrix.cpp in the vendored llama.cpp): for every weight a
matrix multiplication reads in the blocks (``blk.*``), the sum over calibration tokens of each input
column's squared activation (``<name>.in_sum2``, F32 [n_mat, n_cols]; n_mat > 1 for MoE experts) and
how many tokens went in (``<name>.counts``, F32 [n_mat, 1]); KV ``general.type = "imatrix"``,
``imatrix.datasets`` (the texts' names), ``imatrix.chunk_count``, ``imatrix.chunk_size``. The legacy
``.dat`` stores each entry already averaged and scaled by its call count. llama-quantize hands the
quantizer the per-column mean (sum / count, or 1 where a matrix saw no token), which ``means`` gives.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from ...core.errors import ConfigError
from ...core.fsutil import atomic_path

KV_DATASETS, KV_CHUNK_COUNT, KV_CHUNK_SIZE = "imatrix.datasets", "imatrix.chunk_count", "imatrix.chunk_size"
# What llama-quantize records in a GGUF it quantized with a matrix (tools/quantize/quantize.cpp).
KV_QUANT_FILE, KV_QUANT_DATASET = "quantize.imatrix.file", "quantize.imatrix.dataset"
KV_QUANT_ENTRIES, KV_QUANT_CHUNKS = "quantize.imatrix.entries_count", "quantize.imatrix.chunks_count"


@dataclass
class Entry:
    sums: np.ndarray  # float32 [n_mat, n_cols]
    counts: np.ndarray  # int64 [n_mat]


@dataclass
class Imatrix:
    entries: dict[str, Entry] = field(default_factory=dict)
    datasets: list[str] = field(default_factory=list)
    chunk_count: int = 0
    chunk_size: int = 0
    legacy: bool = False  # read from a .dat: sums are (sum / count) * ncall, counts [ncall]

    def means(self) -> dict[str, np.ndarray]:
        """name → float32 per-column values the quantizer takes, as llama-quantize's load_imatrix makes them."""
        out = {}
        for name, e in self.entries.items():
            if self.legacy:
                ncall = int(e.counts[0]) if len(e.counts) else 0
                out[name] = (e.sums / np.float32(ncall) if ncall > 0 else e.sums).astype(np.float32).ravel()
                continue
            v = np.ones_like(e.sums, dtype=np.float32)
            for j, c in enumerate(e.counts):
                if c > 0:
                    v[j] = e.sums[j] / np.float32(c)
            out[name] = v.ravel()
        return out


def write_imatrix(path: Path, m: Imatrix) -> Path:
    """Write ``m`` in llama.cpp's GGUF imatrix format (what llama-imatrix writes), atomically."""

    with atomic_path(Path(path)) as tmp:
        w = gguf.GGUFWriter(str(tmp), arch="imatrix")
        w.kv_data[0].pop(gguf.Keys.General.ARCHITECTURE, None)  # an imatrix names no architecture
        w.add_type("imatrix")
        w.add_array(KV_DATASETS, list(m.datasets))
        w.add_uint32(KV_CHUNK_COUNT, int(m.chunk_count))
        w.add_uint32(KV_CHUNK_SIZE, int(m.chunk_size))
        for name in sorted(m.entries):  # llama-imatrix's order: deterministic by name
            e = m.entries[name]
            w.add_tensor(f"{name}.in_sum2", np.ascontiguousarray(e.sums, dtype=np.float32))
            w.add_tensor(f"{name}.counts", np.asarray(e.counts, dtype=np.float32).reshape(-1, 1))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    return Path(path)


def read_imatrix(path: Path) -> Imatrix:
    """An imatrix file, GGUF or legacy .dat (llama.cpp's common_imatrix_load); a bad file is a ConfigError."""
    path = Path(path)
    try:
        head = path.open("rb").read(4)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the importance matrix ({e.strerror})") from None
    try:
        m = _read_gguf(path) if head == b"GGUF" else _read_dat(path)
    except (ValueError, KeyError, IndexError, struct.error) as e:
        raise ConfigError(
            f"{path}: not an importance matrix llama.cpp reads ({e}); make one with "
            "`edgekit build --calibrate TEXT` or llama-imatrix"
        ) from None
    if not m.entries:
        raise ConfigError(f"{path}: the importance matrix has no entries")
    if not m.legacy and not (m.datasets is not None and m.chunk_size):
        # llama-quantize refuses a GGUF imatrix without its metadata ("missing imatrix metadata")
        raise ConfigError(f"{path}: the importance matrix lacks llama.cpp's imatrix.* metadata")
    return m


def _read_gguf(path: Path) -> Imatrix:

    r = gguf.GGUFReader(str(path))
    m = Imatrix()
    f = r.fields
    if KV_DATASETS in f:
        m.datasets = [str(bytes(f[KV_DATASETS].parts[i]), "utf-8") for i in f[KV_DATASETS].data]
    m.chunk_count = int(f[KV_CHUNK_COUNT].parts[-1][0]) if KV_CHUNK_COUNT in f else 0
    m.chunk_size = int(f[KV_CHUNK_SIZE].parts[-1][0]) if KV_CHUNK_SIZE in f else 0
    sums, counts = {}, {}
    for t in r.tensors:
        if t.tensor_type != gguf.GGMLQuantizationType.F32:
            raise ValueError(f"{t.name} is {t.tensor_type.name}, not F32")
        data = np.array(t.data, dtype=np.float32)
        if t.name.endswith(".in_sum2"):
            sums[t.name.removesuffix(".in_sum2")] = data.reshape(-1, int(t.shape[0]))
        elif t.name.endswith(".counts"):
            counts[t.name.removesuffix(".counts")] = np.rint(data.ravel()).astype(np.int64)
    if set(sums) != set(counts):
        raise ValueError(f"sums without counts or counts without sums: {sorted(set(sums) ^ set(counts))[:3]}")
    for name in sums:
        if sums[name].shape[0] != len(counts[name]):
            raise ValueError(f"{name}: {sums[name].shape[0]} matrices but {len(counts[name])} counts")
        m.entries[name] = Entry(sums[name], counts[name])
    return m


def _read_dat(path: Path) -> Imatrix:
    raw = path.read_bytes()
    pos = 0

    def take(fmt: str) -> Any:
        nonlocal pos
        v = struct.unpack_from(fmt, raw, pos)
        pos += struct.calcsize(fmt)
        return v

    (n,) = take("<i")
    if n < 1:
        raise ValueError("no entries")
    m = Imatrix(legacy=True)
    for _ in range(n):
        (ln,) = take("<i")
        name = raw[pos : pos + ln].decode("utf-8")
        pos += ln
        ncall, nval = take("<ii")
        if nval < 1:
            raise ValueError(f"{name}: {nval} values")
        vals = np.frombuffer(raw, dtype="<f4", count=nval, offset=pos).astype(np.float32)
        pos += 4 * nval
        m.entries[name] = Entry(vals.reshape(1, -1), np.array([ncall], dtype=np.int64))
    if pos < len(raw):  # optional trailer: chunk count, then the dataset's name
        (m.chunk_count,) = take("<i")
        if pos < len(raw):
            (ln,) = take("<i")
            if ln > 0:
                m.datasets = [raw[pos : pos + ln].decode("utf-8", "replace")]
    return m
