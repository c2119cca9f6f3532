"""A GGUF file's tensor table and scalar metadata, read without building every metadata value.

gguf's GGUFReader turns each element of each metadata array into numpy views; Gemma 4's tokenizer
has 262,144 tokens and 514,906 merges, so reading one E2B file's header that way took 29 s of CPU.
The bench (bytes read per token, the file type) and the quantizer's override check only need the
tensor table and a few scalars, so this walks the header and skips array bodies.
"""

from __future__ import annotations

import logging
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf

from ...core.errors import ArtifactError

log = logging.getLogger(__name__)

INCOMPLETE = "{name}: not a complete GGUF file (corrupt or truncated); rebuild it with `edgekit build`"
_T = gguf.GGUFValueType
_SCALAR = {
    _T.UINT8: "B",
    _T.INT8: "b",
    _T.UINT16: "H",
    _T.INT16: "h",
    _T.UINT32: "I",
    _T.INT32: "i",
    _T.FLOAT32: "f",
    _T.BOOL: "?",
    _T.UINT64: "Q",
    _T.INT64: "q",
    _T.FLOAT64: "d",
}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    type: gguf.GGMLQuantizationType
    shape: tuple[int, ...]  # ggml order: shape[0] is the row length
    offset: int  # from the start of the file
    n_bytes: int


@dataclass(frozen=True)
class GGUFHeader:
    scalars: dict[str, Any]  # metadata keys with scalar or string values (arrays are skipped)
    tensors: dict[str, TensorInfo]


class _Cursor:
    def __init__(self, buf: Any):
        self.buf, self.pos = buf, 0

    def unpack(self, fmt: str) -> Any:
        (v,) = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += struct.calcsize(fmt)
        return v

    def string(self) -> str:
        n = self.unpack("Q")
        s = bytes(self.buf[self.pos : self.pos + n]).decode("utf-8", "replace")
        self.pos += n
        return s


def _value(cur: _Cursor, vtype: int) -> Any:
    """A scalar or string value; arrays are skipped (None)."""
    if vtype == _T.STRING:
        return cur.string()
    if vtype == _T.ARRAY:
        etype, count = cur.unpack("I"), cur.unpack("Q")
        if etype == _T.STRING:
            for _ in range(count):
                cur.pos += 8 + struct.unpack_from("<Q", cur.buf, cur.pos)[0]
        elif etype == _T.ARRAY:
            for _ in range(count):
                _value(cur, _T.ARRAY)
        else:
            cur.pos += count * struct.calcsize(_SCALAR[_T(etype)])
        return None
    return cur.unpack(_SCALAR[_T(vtype)])


def read_gguf_header(path: Path) -> GGUFHeader:
    """The tensor table and scalar metadata of ``path``; ArtifactError for a file that is not a complete
    GGUF (bad magic, a header running past the end, tensor data past the end)."""
    path = Path(path)
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            cur = _Cursor(buf)
            if bytes(buf[:4]) != b"GGUF":
                raise ValueError("bad magic")
            cur.pos = 4
            version = cur.unpack("I")
            if version not in (2, 3):
                raise ValueError(f"GGUF version {version}")
            n_tensors, n_kv = cur.unpack("Q"), cur.unpack("Q")
            if n_tensors == 0:
                raise ValueError("no tensors")
            scalars = {}
            for _ in range(n_kv):
                key = cur.string()
                value = _value(cur, cur.unpack("I"))
                if value is not None:
                    scalars[key] = value
            infos = []
            for _ in range(n_tensors):
                name = cur.string()
                shape = tuple(cur.unpack("Q") for _ in range(cur.unpack("I")))
                infos.append((name, gguf.GGMLQuantizationType(cur.unpack("I")), shape, cur.unpack("Q")))
            align = scalars.get("general.alignment", gguf.GGUF_DEFAULT_ALIGNMENT)
            # llama.cpp refuses an alignment that is not a power of two (0 included), and so do we,
            # before it divides by it.
            if isinstance(align, bool) or not isinstance(align, int) or align <= 0 or align & (align - 1):
                raise ValueError(f"general.alignment {align!r} is not a power of two")
            start = -(-cur.pos // align) * align
            size = len(buf)
    except (OSError, ValueError, KeyError, struct.error, IndexError, OverflowError, MemoryError) as e:
        log.info("%s: GGUF header: %s: %s", path, e.__class__.__name__, e)
        raise ArtifactError(INCOMPLETE.format(name=path.name)) from None
    tensors = {}
    for name, qtype, shape, offset in infos:
        if qtype not in gguf.GGML_QUANT_SIZES:
            raise ArtifactError(INCOMPLETE.format(name=path.name))
        block, type_size = gguf.GGML_QUANT_SIZES[qtype]
        n = 1
        for d in shape:
            n *= d
        info = TensorInfo(name, qtype, shape, start + offset, n // block * type_size)
        if info.offset + info.n_bytes > size:
            log.info("%s: tensor %s ends past the end of the file", path, name)
            raise ArtifactError(INCOMPLETE.format(name=path.name))
        tensors[name] = info
    return GGUFHeader(scalars, tensors)


def token_texts(path: Path, ids: set[int]) -> dict[int, str]:
    """The texts of a few token ids from a GGUF's ``tokenizer.ggml.tokens`` (walking, not decoding, the rest)."""
    out: dict[int, str] = {}
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        cur = _Cursor(buf)
        cur.pos = 8
        _n_tensors, n_kv = cur.unpack("Q"), cur.unpack("Q")
        for _ in range(n_kv):
            key, vtype = cur.string(), cur.unpack("I")
            if key != "tokenizer.ggml.tokens" or vtype != gguf.GGUFValueType.ARRAY:
                _value(cur, vtype)
                continue
            _etype, count = cur.unpack("I"), cur.unpack("Q")
            for i in range(count):
                n = struct.unpack_from("<Q", buf, cur.pos)[0]
                if i in ids:
                    out[i] = bytes(buf[cur.pos + 8 : cur.pos + 8 + n]).decode("utf-8", "replace")
                cur.pos += 8 + n
            break
    return out
