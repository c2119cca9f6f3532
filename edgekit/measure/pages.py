"""Resident memory as a kernel with larger pages would count it ("peak at 16 KB pages").

The Raspberry Pi 5's kernel uses 16 KB pages: a mapping of a file then faults 16 KB at a time, aligned
in the file (a page-cache folio covers file offsets [16K·i, 16K·(i+1))). A lazily read row of the
per-layer-embedding table that touches one 4 KB page here costs four there. This module reads which
4 KB pages of the mappings that matter (the GGUF, the MLX PLE file) are present in this process's
page tables (``/proc/self/pagemap``'s present bit: exactly what RSS counts, unlike mincore, which
reports the page cache), groups them into blocks aligned in the file offset, and gives

    resident at P = RSS − resident_4K(mappings) + P × blocks touched(mappings)

Anonymous memory is not rounded (allocations of a few pages are a small part of a run's memory), and
on a host whose page size already is P the figure is the RSS itself.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np

PAGE_16K = 16384


@dataclass
class PageCount:
    page_size: int  # this host's page size
    block: int  # the page size counted for (16384)
    resident_bytes: int  # the mappings' present pages at this host's page size
    blocks: int  # distinct file-aligned blocks of ``block`` bytes with any present page
    mappings: int  # mappings of those files

    @property
    def block_bytes(self) -> int:
        return self.blocks * self.block

    @property
    def extra_bytes(self) -> int:
        """What the larger pages add to RSS: blocks × block − resident pages."""
        return self.block_bytes - self.resident_bytes

    def to_json(self) -> dict[str, int]:
        return asdict(self)


def page_size() -> int:
    return resource.getpagesize()


def _mappings(paths: set[str], maps: str) -> Iterable[tuple[int, int, int, str]]:
    """(start, end, file offset, path) of every mapping in /proc/PID/maps whose file is in ``paths``."""
    for line in maps.splitlines():
        parts = line.split(None, 5)
        if len(parts) == 6 and parts[5] in paths:
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            yield lo, hi, int(parts[2], 16), parts[5]


# pagemap entries read per pread: 512 KB of entries (2 GB of mapping) at a time. The count runs inside the
# measured child after its test, so what it allocates must stay small beside the figure it corrects:
# reading a 3 GB mapping's 6 MB of entries at once and keeping the present pages as a Python set
# (≈320,000 ints) raised the E2B child's peak RSS by ≈37 MB (1,462 → 1,499 MB for IQ4_XS-edge).
_CHUNK = 65536


def present_pages(paths: Iterable[Path], pid: str = "self") -> dict[str, np.ndarray]:
    """File page indices (at this host's page size, ascending) present in the process's page tables,
    per mapping ("path@start"): RSS counts a file page once per mapping that has it, and so does this."""
    ps = page_size()
    wanted = {str(Path(p).resolve()) for p in paths}
    out: dict[str, np.ndarray] = {}
    maps = Path(f"/proc/{pid}/maps").read_text()
    fd = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY)
    try:
        for lo, hi, off, path in _mappings(wanted, maps):
            n, parts = (hi - lo) // ps, []
            for first in range(0, n, _CHUNK):
                want = 8 * min(_CHUNK, n - first)
                raw = os.pread(fd, want, (lo // ps + first) * 8)
                entries = np.frombuffer(raw[: len(raw) // 8 * 8], dtype="<u8")
                # bit 63: the page is present in RAM
                parts.append(np.flatnonzero(entries >> np.uint64(63)) + (first + off // ps))
                if len(raw) < want:
                    break
            out[f"{path}@{lo:x}"] = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    finally:
        os.close(fd)
    return out


def count_blocks(pages: dict[str, Iterable[int]], page: int, block: int = PAGE_16K) -> PageCount:
    """The pure arithmetic: present pages of ``page`` bytes → distinct file-aligned blocks of ``block``."""
    per = max(block // page, 1)
    blocks = resident = 0
    for ps in pages.values():
        # present_pages gives ascending arrays; anything else (a hand-made set) is sorted first
        idx = ps if isinstance(ps, np.ndarray) else np.unique(np.fromiter(ps, dtype=np.int64))
        resident += idx.size
        blocks += int(np.count_nonzero(np.diff(idx // per))) + (idx.size > 0)
    return PageCount(
        page_size=page, block=max(block, page), resident_bytes=resident * page, blocks=blocks, mappings=len(pages)
    )


def artifact_files(path: Path) -> list[Path]:
    """The mapped files that matter for an artifact: the .gguf itself, or an MLX folder's safetensors
    (its PLE table is the one read lazily; the others are loaded resident and add nothing here)."""
    p = Path(path)
    return [p] if p.is_file() else sorted(p.glob("*.safetensors"))


def count(path: Path, block: int = PAGE_16K) -> Optional[PageCount]:
    """This process's resident pages of the artifact's mapped files, grouped into ``block``-byte blocks
    (None where /proc/self/pagemap does not exist: not Linux)."""
    if not Path("/proc/self/pagemap").exists():
        return None
    return count_blocks(present_pages(artifact_files(path)), page_size(), block)
