"""The mechanism behind E2B's memory budget: the per-layer-embedding table stays on disk.

With targets/pi5.toml's runtime (mmap, lazy = "on", repack = false) llama.cpp maps the PLE table
and touches only the rows of the tokens it decodes. We check it page by page: /proc/self/pagemap
says which virtual pages of the mapped GGUF are present in this process, so after decoding a few
tokens only a small fraction of the table's pages may be resident. The same check with lazy = "off" sees
the whole table resident, which shows the check can tell the two apart.
"""

from __future__ import annotations

import ctypes
import gc
import struct
import sys
from pathlib import Path

import gguf
import pytest

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self/pagemap")

PAGE = 4096
TOKENS = [2, 17, 18, 19]


def _present_pages(path: Path, offset: int, size: int) -> tuple[int, int]:
    """(present, total) pages of file bytes [offset, offset+size) as mapped into this process."""
    first, last = offset // PAGE, (offset + size - 1) // PAGE
    present, covered = 0, set()
    with open("/proc/self/maps") as maps, open("/proc/self/pagemap", "rb") as pm:
        for line in maps:
            parts = line.split()
            if len(parts) < 6 or parts[5] != str(path):
                continue
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            file_off = int(parts[2], 16)
            for page in range(first, last + 1):
                pos = page * PAGE - file_off
                if page in covered or not (0 <= pos < hi - lo):
                    continue
                covered.add(page)
                pm.seek(((lo + pos) // PAGE) * 8)
                (entry,) = struct.unpack("<Q", pm.read(8))
                present += bool(entry >> 63)
    assert covered, f"{path.name} is not mapped into the process"
    return present, last - first + 1


def _ple_range(path: Path) -> tuple[int, int]:
    # GGUFReader maps the file too; it must be gone before the pages are counted.
    reader = gguf.GGUFReader(path)
    ple = next(t for t in reader.tensors if t.name == "per_layer_token_embd.weight")
    out = int(ple.data_offset), int(ple.n_bytes)
    del reader, ple
    gc.collect()
    return out


def _decode_and_count(path: Path, lazy: int) -> tuple[int, int]:
    import llama_cpp as L

    offset, size = _ple_range(path)
    L.llama_backend_init()
    mp = L.llama_model_default_params()
    mp.load_mode = L.LLAMA_LOAD_MODE_MMAP
    mp.lazy_mode = lazy
    mp.use_extra_bufts = False
    model = L.llama_model_load_from_file(str(path).encode(), mp)
    assert model
    cp = L.llama_context_default_params()
    cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_threads, cp.n_threads_batch = 128, 128, 128, 2, 2
    ctx = L.llama_init_from_model(model, cp)
    try:
        toks = (ctypes.c_int32 * len(TOKENS))(*TOKENS)
        assert L.llama_decode(ctx, L.llama_batch_get_one(toks, len(TOKENS))) == 0
        return _present_pages(path, offset, size)
    finally:
        L.llama_free(ctx)
        L.llama_model_free(model)


@pytest.fixture(scope="module")
def edge_gguf(tiny_ckpt, tmp_path_factory):
    from edgekit.builder.pipeline import build

    out = build(str(tiny_ckpt), target="pi5", quants=["iq4_xs-edge"], out=tmp_path_factory.mktemp("dist"))
    return out / "tiny-gemma4-IQ4_XS-edge.gguf"


def test_lazy_ple_keeps_the_table_on_disk(edge_gguf):
    from edgekit.profiles.targets import TARGETS

    rt = TARGETS.get("pi5").runtime
    assert rt["lazy"] == "on" and rt["repack"] is False and rt["use_mmap"] is True
    present, total = _decode_and_count(edge_gguf, lazy=2)
    print(f"lazy PLE: {present}/{total} pages resident after {len(TOKENS)} tokens")
    # 4 tokens need 4 rows (2.7 KB each at Q8_0). Were they faulted in through the mapping, the
    # kernel's fault-around could map up to 16 neighbouring pages each: at most ~64 of 680 pages.
    # Measured: 25 of 681 pages.
    assert present <= 0.15 * total, f"{present}/{total} PLE pages resident after {len(TOKENS)} tokens"


def test_without_lazy_the_whole_table_is_resident(edge_gguf):
    present, total = _decode_and_count(edge_gguf, lazy=0)
    print(f"eager PLE: {present}/{total} pages resident")
    assert present >= 0.9 * total
