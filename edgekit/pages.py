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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

PAGE_16K = 16384


@dataclass
class PageCount:
    page_size: int             # this host's page size
    block: int                 # the page size counted for (16384)
    resident_bytes: int        # the mappings' present pages at this host's page size
    blocks: int                # distinct file-aligned blocks of ``block`` bytes with any present page
    mappings: int              # mappings of those files

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


def present_pages(paths: Iterable[Path], pid: str = "self") -> dict[str, set[int]]:
    """File page indices (at this host's page size) present in the process's page tables, per mapping
    ("path@start"): RSS counts a file page once per mapping that has it, and so does this."""
    ps = page_size()
    wanted = {str(Path(p).resolve()) for p in paths}
    out: dict[str, set[int]] = {}
    maps = Path(f"/proc/{pid}/maps").read_text()
    fd = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY)
    try:
        for lo, hi, off, path in _mappings(wanted, maps):
            n = (hi - lo) // ps
            raw = b""
            while len(raw) < 8 * n:  # one pread per mapping: 8 bytes per page (6 MB for a 3 GB file)
                chunk = os.pread(fd, 8 * n - len(raw), (lo // ps) * 8 + len(raw))
                if not chunk:
                    break
                raw += chunk
            entries = np.frombuffer(raw[: len(raw) // 8 * 8], dtype="<u8")
            present = np.flatnonzero(entries >> np.uint64(63))  # bit 63: the page is present in RAM
            out.setdefault(f"{path}@{lo:x}", set()).update((present + off // ps).tolist())
    finally:
        os.close(fd)
    return out


def count_blocks(pages: dict[str, set[int]], page: int, block: int = PAGE_16K) -> PageCount:
    """The pure arithmetic: present pages of ``page`` bytes → distinct file-aligned blocks of ``block``."""
    per = max(block // page, 1)
    blocks = sum(len({p // per for p in ps}) for ps in pages.values())
    resident = sum(len(ps) for ps in pages.values()) * page
    return PageCount(page_size=page, block=max(block, page), resident_bytes=resident,
                     blocks=blocks if block > page else sum(len(ps) for ps in pages.values()), mappings=len(pages))


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
