"""Peak at 16 KB pages: which 4 KB pages of a file mapping are present, grouped into 16 KB blocks
aligned in the file offset, as a 16 KB-page kernel (Raspberry Pi 5) maps them."""

from __future__ import annotations

import mmap
import sys

import pytest

from edgekit.measure.budget import apply_pages
from edgekit.measure.pages import PAGE_16K, count, count_blocks, present_pages

pytestmark = pytest.mark.skipif(sys.platform != "linux" or mmap.PAGESIZE != 4096, reason="4 KB-page Linux host")

PAGE = 4096
TOUCHED = [0, 5, 6, 40]  # of a 64-page file: blocks 0 (pages 0-3), 1 (4-7), 10 (40-43)


def test_block_arithmetic_by_hand():
    c = count_blocks({"f": set(TOUCHED)}, PAGE)
    assert (c.resident_bytes, c.blocks, c.block_bytes, c.extra_bytes) == (4 * PAGE, 3, 3 * PAGE_16K, 2 * PAGE_16K)
    # a mapping's offsets are the file's: page 3 and page 4 are in different 16 KB blocks
    assert count_blocks({"f": {3, 4}}, PAGE).blocks == 2 and count_blocks({"f": {4, 7}}, PAGE).blocks == 1
    # two mappings of one file each fault their own blocks, as RSS counts each mapping's pages
    assert count_blocks({"f@1": {0}, "f@2": {1}}, PAGE).blocks == 2


@pytest.mark.parametrize("offset_pages", [0, 8])
def test_a_mapping_whose_touched_pages_the_test_chose(tmp_path, offset_pages):
    f = tmp_path / "model.gguf"
    f.write_bytes(b"\x01" * (64 + offset_pages) * PAGE)
    with open(f, "rb") as fh:
        # a private mapping written page by page: each write fault maps that one page (a read fault
        # would map the page cache's neighbours too, fault-around)
        m = mmap.mmap(fh.fileno(), 64 * PAGE, access=mmap.ACCESS_COPY, offset=offset_pages * PAGE)
        try:
            for p in TOUCHED:
                m[p * PAGE] = 2
            pages = present_pages([f])
            c = count(f)
        finally:
            m.close()
    assert [v.tolist() for v in pages.values()] == [[p + offset_pages for p in TOUCHED]]  # ascending
    assert c is not None and (c.page_size, c.resident_bytes, c.mappings) == (PAGE, 4 * PAGE, 1)
    # offset 8 pages = 32 KB: still 16 KB-aligned, so the same three blocks, shifted by two
    assert c.blocks == 3 and c.extra_bytes == 3 * PAGE_16K - 4 * PAGE


def test_pi5_record_gets_rss_minus_4k_pages_plus_16k_blocks():
    from tests.test_results import make_record

    rec = make_record(4, peak_rss_bytes=100_000_000)
    counted = count_blocks({"f": set(TOUCHED)}, PAGE).to_json()
    apply_pages(rec, counted, device_page_size=PAGE_16K)
    assert rec.page_size == PAGE and rec.peak_16k_bytes == 100_000_000 - 4 * PAGE + 3 * PAGE_16K
    assert rec.gate_bytes == rec.peak_16k_bytes
    other = make_record(4, peak_rss_bytes=100_000_000)
    apply_pages(other, counted, device_page_size=0)  # a target without 16 KB pages: page size only
    assert other.page_size == PAGE and other.peak_16k_bytes is None and other.gate_bytes == 100_000_000


def test_pagemap_read_in_chunks_gives_the_same_pages(tmp_path, monkeypatch):
    """The count reads the pagemap a chunk at a time (its memory is inside the measured child); pages
    either side of a chunk boundary, and a last partial chunk, are all found."""
    import edgekit.measure.pages as pages

    f = tmp_path / "model.gguf"
    f.write_bytes(b"\x01" * 64 * PAGE)
    monkeypatch.setattr(pages, "_CHUNK", 5)  # 64 pages: 12 chunks of 5 and one of 4
    touched = [0, 4, 5, 9, 10, 59, 60, 63]
    with open(f, "rb") as fh:
        m = mmap.mmap(fh.fileno(), 64 * PAGE, access=mmap.ACCESS_COPY)
        try:
            for p in touched:
                m[p * PAGE] = 2
            found = present_pages([f])
        finally:
            m.close()
    assert [v.tolist() for v in found.values()] == [touched]
    c = count_blocks(found, PAGE)
    assert c.blocks == len({p // 4 for p in touched}) and c.resident_bytes == len(touched) * PAGE
