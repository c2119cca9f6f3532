"""Quantization by llama.cpp itself (``llama_model_quantize``), honouring a recipe's tensor overrides.

It runs in a child process (edgekit.core.child): a C++ abort or crash inside llama.cpp becomes a clean
error instead of killing the build, Ctrl-C or SIGTERM stops it at once (the child's process group
is killed and the partial file removed), the child dies with the build even on SIGKILL, and its
peak memory is the quantizer's, not the converter's.
"""

from __future__ import annotations

import ctypes
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from ...core.child import ChildDied, run_child
from ...core.errors import ConfigError, EngineMissingError, QuantizeError
from ...core.fsutil import atomic_path, low_space_hint
from .header import read_gguf_header
from .imatrix import KV_QUANT_CHUNKS, KV_QUANT_DATASET, KV_QUANT_ENTRIES, KV_QUANT_FILE, read_imatrix

log = logging.getLogger(__name__)

# Unquantized recipes are written by the converter directly, no llama.cpp pass.
FLOAT_FTYPES = {"ALL_F32": "F32", "MOSTLY_F16": "F16", "MOSTLY_BF16": "BF16"}
# Rows kept in memory at once by the quantizer: slabs keep its peak far below one PLE table.
MAX_BUF_BYTES = 256 << 20


def ggml_type(name: str) -> int:
    try:
        return int(gguf.GGMLQuantizationType[name.upper()])
    except KeyError:
        raise ConfigError(
            f"unknown tensor type {name!r} in a recipe override; use a ggml type such as q8_0, q6_k, q4_0, f16"
        ) from None


def llama_ftype(name: str) -> int:
    import llama_cpp  # deferred: llama-cpp-python loads only when a recipe is checked or quantized

    value = getattr(llama_cpp, f"LLAMA_FTYPE_{name.upper()}", None)
    if value is None:
        raise ConfigError(f"unknown llama ftype {name!r}; use e.g. MOSTLY_Q4_0, MOSTLY_Q8_0, MOSTLY_Q4_K_M")
    return int(value)


@dataclass
class QuantizeSpec:
    src: str
    dst: str
    ftype: int
    overrides: list[tuple[str, int]] = field(default_factory=list)
    threads: int = 0
    verbose: bool = False
    imatrix: str = ""  # an importance-matrix file (imatrix.py), applied as llama-quantize --imatrix applies it


@dataclass
class QuantizeResult:
    rc: int


_SILENT_LOG = None  # the ctypes callback must outlive every llama.cpp log call, so it lives here


def quantize_child(spec: QuantizeSpec, step: Callable[[str], None]) -> QuantizeResult:
    """The child half: one llama_model_quantize call."""
    import llama_cpp  # deferred: the engine loads in the quantizing child only

    global _SILENT_LOG
    if not spec.verbose:
        _SILENT_LOG = llama_cpp.llama_log_callback(lambda level, text, data: None)
        llama_cpp.llama_log_set(_SILENT_LOG, ctypes.c_void_p())
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = spec.ftype
    params.nthread = spec.threads
    params.max_buf_size = MAX_BUF_BYTES
    if spec.overrides:
        arr = (llama_cpp.llama_model_tensor_override * (len(spec.overrides) + 1))()
        for i, (pattern, t) in enumerate(spec.overrides):
            arr[i].pattern = pattern.encode()
            arr[i].type = t
        arr[len(spec.overrides)].pattern = None
        params.tt_overrides = ctypes.cast(arr, ctypes.POINTER(llama_cpp.llama_model_tensor_override))
    if spec.imatrix:
        keep = _apply_imatrix(params, Path(spec.imatrix))  # noqa: F841 (the arrays must live through the call)
    return QuantizeResult(
        rc=int(llama_cpp.llama_model_quantize(spec.src.encode(), spec.dst.encode(), ctypes.byref(params)))
    )


def _apply_imatrix(params: Any, path: Path) -> list[Any]:
    """Set ``params.imatrix`` and the ``quantize.imatrix.*`` KV overrides exactly as llama-quantize
    --imatrix does (tools/quantize/quantize.cpp), so the file is byte-identical to its output; returns the
    ctypes arrays, which must outlive the llama_model_quantize call."""
    import llama_cpp  # deferred: the engine loads in the quantizing child only

    m = read_imatrix(path)
    means = m.means()
    data = (llama_cpp.llama_model_imatrix_data * (len(means) + 1))()
    keep: list[Any] = [data]
    for i, (name, v) in enumerate(means.items()):
        v = np.ascontiguousarray(v, dtype=np.float32)
        keep.append(v)
        data[i].name = name.encode()
        data[i].data = v.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        data[i].size = v.size
    data[len(means)].name = None
    params.imatrix = ctypes.cast(data, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
    kvs: list[tuple[str, Any]] = [(KV_QUANT_FILE, path.name)]
    if m.datasets:
        kvs.append((KV_QUANT_DATASET, m.datasets[0]))
    kvs.append((KV_QUANT_ENTRIES, len(means)))
    if m.chunk_count > 0:
        kvs.append((KV_QUANT_CHUNKS, m.chunk_count))
    kv: Any = (llama_cpp.llama_model_kv_override * (len(kvs) + 1))()
    for i, (key, value) in enumerate(kvs):
        kv[i].key = key.encode()
        if isinstance(value, str):
            kv[i].tag = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_STR
            kv[i].value.val_str = value.encode()[:127]  # llama-quantize's strncpy(…, 127)
        else:
            kv[i].tag = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_INT
            kv[i].value.val_i64 = value
    kv[len(kvs)].key = b""
    params.kv_overrides = ctypes.cast(kv, ctypes.POINTER(llama_cpp.llama_model_kv_override))
    keep.append(kv)
    return keep


def check(recipe: Any) -> tuple[int, list[tuple[str, int]]]:
    """(ftype, overrides) for ``recipe``, or the error quantizing it would end in, before any work."""
    try:
        # deferred: llama-cpp-python loads only when a recipe is checked or quantized
        import llama_cpp  # noqa: F401
    except ImportError:
        raise EngineMissingError(
            "llama-cpp-python is not installed; run `make setup` or pip install edgekit[runtime]"
        ) from None
    return llama_ftype(recipe.ftype), [(pattern, ggml_type(t)) for pattern, t in recipe.overrides.items()]


def quantize(src: Path, out: Path, recipe: Any, threads: int = 0, imatrix: Path | None = None) -> Path:
    """Quantize the unquantized GGUF ``src`` into ``out`` following ``recipe`` (atomically), with the
    importance matrix in file ``imatrix`` if given (its name is what the GGUF records)."""
    ftype, overrides = check(recipe)
    with atomic_path(Path(out)) as tmp:
        spec = QuantizeSpec(
            str(src),
            str(tmp),
            ftype,
            overrides,
            max(threads, 0),
            log.isEnabledFor(logging.DEBUG),
            str(imatrix) if imatrix else "",
        )
        try:
            rc = run_child(
                "edgekit.backends.gguf.quantize:quantize_child", spec, QuantizeResult, verbose=spec.verbose
            ).rc
            how = f"return code {rc}"
        except ChildDied as e:
            rc, how = -1, e.why
        if rc != 0 or not tmp.is_file():
            raise QuantizeError(
                f"llama.cpp could not quantize {src.name} to {recipe.quant} ({how})"
                + (low_space_hint(tmp) or "; run with -v for llama.cpp's log")
            )
        unmet = unmet_overrides(tmp, recipe.overrides)
    for pattern, want, names in unmet:
        if names:
            log.warning(
                "recipe %s: override %s = %s had no effect on %s (llama.cpp keeps its own type for "
                "some tensors, e.g. per_layer_model_proj, and falls back where a row does not fit the type)",
                recipe.name,
                pattern,
                want,
                ", ".join(names[:3]) + (" …" if len(names) > 3 else ""),
            )
        else:
            log.warning(
                "recipe %s: override %s = %s matches no tensor; check the pattern against the GGUF "
                "tensor names (`gguf-dump`)",
                recipe.name,
                pattern,
                want,
            )
    log.info("quantized %s → %s", src.name, Path(out).name)
    return Path(out)


def unmet_overrides(path: Path, overrides: dict[str, str]) -> list[tuple[str, str, list[str]]]:
    """(pattern, type, tensor names) for each override the quantized file does not show: tensors that
    match but kept another type, or no match at all (names empty). llama.cpp skips some tensors and
    falls back where a type's block does not fit a row, without saying so."""
    if not overrides:
        return []
    types = {n: t.type for n, t in read_gguf_header(path).tensors.items()}
    out = []
    for pattern, want in overrides.items():
        rx = re.compile(pattern)
        matched = [n for n in types if rx.search(n)]
        wrong = [n for n in matched if types[n] != gguf.GGMLQuantizationType[want.upper()]]
        if wrong or not matched:
            out.append((pattern, want, wrong))
    return out
