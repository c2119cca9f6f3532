"""The importance matrix, computed by llama.cpp itself: an eval callback on the lossless intermediate.

Why this way: llama-imatrix is a ``cb_eval`` on llama.cpp's own graph, and so is this, through
llama-cpp-python's ``llama_context_params.cb_eval``. The activations are the ones llama.cpp computes
(its GELU table, its attention, Gemma 4's KV sharing and per-layer inputs), every GGUF tensor name is
the graph's own, E2B runs memory-mapped (a torch reference would hold 18 GB of fp32 weights), and the
result can be checked against llama-imatrix figure for figure (tests/test_imatrix.py). What is
accumulated follows tools/imatrix/imatrix.cpp (collect_imatrix) line by line:

* a MUL_MAT whose weight is named ``blk.*`` and whose F32 input has at least 16 rows (llama-imatrix
  skips smaller batches), and every MUL_MAT_ID (MoE experts, by the routed expert ids);
* per weight, the running float32 sum of each input column's square, row after row in batch order
  (the same order of additions), and a token count; a weight read by several matmuls sums them all;
* the text is tokenized once with BOS, cut into ``ctx``-token chunks (a partial last chunk dropped),
  each chunk's first token replaced by BOS, decoded from an empty cache ``n_batch // ctx`` chunks at a
  time as that many sequences, every token an output (so the last layer runs on every row).

It runs in a child process (edgekit.core.child), as the quantizer does.
"""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...builder.manifest import versions
from ...core.child import ChildDied, run_child
from ...core.errors import ConfigError, QuantizeError
from ...core.fsutil import atomic_path
from ...model.checkpoint import sha256_file
from .imatrix import Entry, Imatrix, read_imatrix, write_imatrix

log = logging.getLogger(__name__)

CHUNK = 512  # llama-imatrix's default context (-c 512)
N_BATCH = 512  # one chunk per decode; llama-imatrix's default -b 2048 decodes 4 at once, whose logits
# buffer is 2 GB on E2B's 262,144-token vocabulary (4 x 512 outputs); the figures agree either way
MIN_ROWS = 16  # llama-imatrix ignores matmuls over fewer rows


class _Tensor(ctypes.Structure):
    """struct ggml_tensor (ggml/include/ggml.h of the vendored llama.cpp); checked against ggml's own
    accessors on the first tensor, so a layout change fails loudly instead of reading garbage."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("buffer", ctypes.c_void_p),
        ("ne", ctypes.c_int64 * 4),
        ("nb", ctypes.c_size_t * 4),
        ("op", ctypes.c_int),
        ("op_params", ctypes.c_int32 * 16),
        ("flags", ctypes.c_int32),
        ("src", ctypes.c_void_p * 10),
        ("view_src", ctypes.c_void_p),
        ("view_offs", ctypes.c_size_t),
        ("data", ctypes.c_void_p),
        ("name", ctypes.c_char * 64),
        ("extra", ctypes.c_void_p),
        ("padding", ctypes.c_char * 8),
    ]


@dataclass
class CalibrateSpec:
    model: str  # the lossless GGUF
    text: str  # calibration text file
    out: str  # imatrix GGUF to write
    dataset: str  # the text's name recorded in the file (imatrix.datasets)
    ctx: int = CHUNK
    n_batch: int = N_BATCH
    threads: int = 0
    verbose: bool = False
    max_chunks: int = 0  # 0: every chunk the text has (llama-imatrix --chunks)


@dataclass
class CalibrateResult:
    tokens: int  # tokens the text made
    chunks: int  # chunks evaluated (tokens used: chunks * ctx)
    entries: int  # weights with a matrix


def _ggml() -> Any:
    from llama_cpp._ggml import libggml as g  # deferred: the engine loads in the calibrating child only

    g.ggml_get_name.restype = ctypes.c_char_p
    g.ggml_get_name.argtypes = [ctypes.c_void_p]
    g.ggml_nelements.restype = ctypes.c_int64
    g.ggml_nelements.argtypes = [ctypes.c_void_p]
    g.ggml_nbytes.restype = ctypes.c_size_t
    g.ggml_nbytes.argtypes = [ctypes.c_void_p]
    g.ggml_op_name.restype = ctypes.c_char_p
    g.ggml_op_name.argtypes = [ctypes.c_int]
    g.ggml_backend_tensor_get.restype = None
    g.ggml_backend_tensor_get.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t]
    return g


def _weight_name(raw: bytes) -> str:
    """llama-imatrix's filter_tensor_name: ``CUDA0#blk.0.attn_k.weight#0`` → ``blk.0.attn_k.weight``."""
    name = raw.decode("utf-8", "replace")
    if "#" in name:
        name = name.split("#", 2)[1]
    return name


def add_rows(acc: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """acc + rows[0]² + rows[1]² + ..., one float32 addition per row in row order, as llama-imatrix's loop
    adds them: numpy reduces a C-ordered axis 0 row after row (tests/test_imatrix.py checks it against
    the explicit loop), so the sums can match llama-imatrix's bit for bit."""
    return np.add.reduce(np.concatenate([acc[None], rows * rows]), axis=0)


class Collector:
    """The eval callback's state: per weight, float32 sums [n_mat, n_cols] and int64 counts [n_mat]."""

    def __init__(self, g: Any) -> None:
        self.g = g
        self.op_names: dict[int, bytes] = {}  # op id → ggml's name, asked only for ids the graph holds
        self.stats: dict[str, list[np.ndarray]] = {}
        self.checked = False
        self.error: str | None = None

    def _read(self, t: _Tensor, ptr: int) -> np.ndarray:
        """A F32 tensor's bytes as a float32 array of its 4-d shape (reversed: numpy [ne3, ne2, ne1, ne0])."""
        n = self.g.ggml_nbytes(ptr)
        buf = np.empty((n + 3) // 4, dtype=np.float32)
        self.g.ggml_backend_tensor_get(ptr, buf.ctypes.data, 0, n)
        shape = tuple(int(t.ne[i]) for i in (3, 2, 1, 0))
        strides = tuple(int(t.nb[i]) for i in (3, 2, 1, 0))
        return np.lib.stride_tricks.as_strided(buf, shape=shape, strides=strides)

    def _check_layout(self, t: _Tensor, ptr: int) -> None:
        ne = int(np.prod([int(x) for x in t.ne]))
        if t.name != self.g.ggml_get_name(ptr) or ne != self.g.ggml_nelements(ptr):
            raise RuntimeError("struct ggml_tensor's layout differs from this llama.cpp's; update calibrate._Tensor")
        self.checked = True

    def __call__(self, ptr: int, ask: bool, user_data: int) -> bool:
        try:
            return self._collect(ptr, ask)
        except Exception as e:  # an exception must not cross the C callback: stop the decode instead
            self.error = f"{type(e).__name__}: {e}"
            return False

    def _collect(self, ptr: int, ask: bool) -> bool:
        t = _Tensor.from_address(ptr)
        if not self.checked:
            self._check_layout(t, ptr)
        op = self.op_names.get(t.op)
        if op is None:
            op = self.op_names[t.op] = self.g.ggml_op_name(t.op)
        if op not in (b"MUL_MAT", b"MUL_MAT_ID"):
            return False
        src0 = _Tensor.from_address(t.src[0])
        src1 = _Tensor.from_address(t.src[1])
        wname = _weight_name(src0.name)
        if ask:
            if op == b"MUL_MAT_ID":
                return True
            return src1.ne[1] >= MIN_ROWS and src1.type == 0 and wname.startswith("blk.")  # 0: GGML_TYPE_F32
        if src1.nb[0] != 4:
            raise RuntimeError(f"{wname}: input rows are not contiguous F32")
        x = self._read(src1, t.src[1])
        ne0 = int(src1.ne[0])
        if op == b"MUL_MAT_ID":
            ids_t = _Tensor.from_address(t.src[2])
            n_as = int(src0.ne[2])
            ids = self._read_ids(ids_t, t.src[2])  # [n_tokens, n_ids]
            sums, counts = self._entry(wname, n_as, ne0)
            n_tokens = int(src1.ne[2])
            for idx in range(ids.shape[1]):
                for row in range(n_tokens):
                    ex = int(ids[row, idx])
                    counts[ex] += 1
                    v = x[0, row, idx % int(src1.ne[1])]
                    sums[ex] += v * v
            if not np.isfinite(sums).all():
                raise RuntimeError(f"non-finite activations in {wname}")
            return True
        n_mat = int(src0.ne[2] * src0.ne[3])
        sums, counts = self._entry(wname, n_mat, ne0)
        for i3 in range(int(src1.ne[3])):
            for i2 in range(int(src1.ne[2])):
                mat = (i3 % int(src0.ne[3])) * int(src0.ne[2]) + (i2 % int(src0.ne[2]))
                sums[mat] = add_rows(sums[mat], x[i3, i2])
        if not np.isfinite(sums).all():
            raise RuntimeError(f"non-finite activations in {wname}")
        counts += (int(src1.ne[1]) * int(src1.ne[2]) * int(src1.ne[3])) // n_mat
        return True

    def _read_ids(self, t: _Tensor, ptr: int) -> np.ndarray:
        n = self.g.ggml_nbytes(ptr)
        buf = np.empty((n + 3) // 4, dtype=np.int32)
        self.g.ggml_backend_tensor_get(ptr, buf.ctypes.data, 0, n)
        return np.lib.stride_tricks.as_strided(
            buf, shape=(int(t.ne[1]), int(t.ne[0])), strides=(int(t.nb[1]), int(t.nb[0]))
        )

    def _entry(self, name: str, n_mat: int, ne0: int) -> list[np.ndarray]:
        e = self.stats.get(name)
        if e is None:
            e = self.stats[name] = [np.zeros((n_mat, ne0), dtype=np.float32), np.zeros(n_mat, dtype=np.int64)]
        elif e[0].shape != (n_mat, ne0):
            raise RuntimeError(f"{name}: inconsistent size {e[0].shape} vs {(n_mat, ne0)}")
        return e


_SILENT_LOG = None


def tokenize_text(L: Any, vocab: Any, text: str) -> list[int]:
    """llama-imatrix's tokens: the file minus one trailing newline, BOS added, specials not parsed."""
    if text.endswith("\n"):
        text = text[:-1]
    raw = text.encode("utf-8")
    buf = (L.llama_token * (len(raw) + 2))()
    n = L.llama_tokenize(vocab, raw, len(raw), buf, len(buf), True, False)
    if n < 0:
        buf = (L.llama_token * -n)()
        n = L.llama_tokenize(vocab, raw, len(raw), buf, len(buf), True, False)
    return list(buf[:n])


def calibrate_child(spec: CalibrateSpec, step: Callable[[str], None]) -> CalibrateResult:
    """The child half: load the model with the eval callback, decode the chunks, write the matrix."""
    import llama_cpp as L  # deferred: the engine loads in the calibrating child only

    global _SILENT_LOG
    if not spec.verbose:
        _SILENT_LOG = L.llama_log_callback(lambda level, text, data: None)
        L.llama_log_set(_SILENT_LOG, ctypes.c_void_p())
    L.llama_backend_init()
    mp = L.llama_model_default_params()
    mp.use_mmap = True
    model = L.llama_model_load_from_file(spec.model.encode(), mp)
    if not model:
        raise QuantizeError(f"llama.cpp could not load {Path(spec.model).name} to calibrate")
    vocab = L.llama_model_get_vocab(model)
    text = Path(spec.text).read_text(encoding="utf-8")
    tokens = tokenize_text(L, vocab, text)
    n_ctx = spec.ctx
    if len(tokens) < 2 * n_ctx:  # llama-imatrix's own minimum
        raise ConfigError(
            f"{Path(spec.text).name}: {len(tokens)} tokens; calibration needs at least {2 * n_ctx} "
            f"(two chunks of {n_ctx}); pass a longer text"
        )
    n_chunk = len(tokens) // n_ctx if spec.max_chunks <= 0 else min(spec.max_chunks, len(tokens) // n_ctx)
    n_seq = max(1, spec.n_batch // n_ctx)
    n_kv = n_seq * n_ctx
    n_batch = min(spec.n_batch, n_kv)
    collector = Collector(_ggml())
    cb = L.ggml_backend_sched_eval_callback(collector)
    cp = L.llama_context_default_params()
    # llama-imatrix's context: common_params' defaults through common_context_params_to_llama
    cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_seq_max = n_kv, n_batch, 512, n_seq
    cp.swa_full, cp.kv_unified = False, False
    cp.n_threads = cp.n_threads_batch = spec.threads or os.cpu_count() or 1
    cp.cb_eval, cp.cb_eval_user_data = cb, None
    ctx = L.llama_init_from_model(model, cp)
    if not ctx:
        raise QuantizeError("llama.cpp could not make a context to calibrate in")
    bos = L.llama_vocab_bos(vocab)
    add_bos = bool(L.llama_vocab_get_add_bos(vocab))
    num_batches = (n_ctx + n_batch - 1) // n_batch
    batch = L.llama_batch_init(n_batch, 0, 1)
    try:
        for i in range(0, n_chunk, n_seq):
            L.llama_memory_clear(L.llama_get_memory(ctx), True)
            start = i * n_ctx
            n_seq_batch = min(n_seq, n_chunk - i)
            for j in range(num_batches):
                b0 = start + j * n_batch
                size = min(start + n_ctx - b0, n_batch)
                k = 0
                for seq in range(n_seq_batch):
                    s0 = b0 + seq * n_ctx
                    for m in range(size):
                        tok = bos if (add_bos and j == 0 and m == 0) else tokens[s0 + m]
                        batch.token[k] = tok
                        batch.pos[k] = j * n_batch + m
                        batch.n_seq_id[k] = 1
                        batch.seq_id[k][0] = seq
                        batch.logits[k] = True
                        k += 1
                batch.n_tokens = k
                rc = L.llama_decode(ctx, batch)
                if collector.error:
                    raise QuantizeError(f"importance matrix: {collector.error}")
                if rc != 0:
                    raise QuantizeError(f"llama_decode failed while calibrating (code {rc})")
            step(f"calibrated {min(i + n_seq, n_chunk)}/{n_chunk} chunks")
        L.llama_synchronize(ctx)
    finally:
        L.llama_batch_free(batch)
        L.llama_free(ctx)
        L.llama_model_free(model)
    imat = Imatrix(datasets=[spec.dataset], chunk_count=n_chunk, chunk_size=n_ctx)
    for name, (sums, counts) in collector.stats.items():
        imat.entries[name] = Entry(sums, counts)
    write_imatrix(Path(spec.out), imat)
    return CalibrateResult(tokens=len(tokens), chunks=n_chunk, entries=len(imat.entries))


def calibrate(
    model: Path, text: Path, out: Path, dataset: str, threads: int = 0, n_batch: int = N_BATCH, max_chunks: int = 0
) -> CalibrateResult:
    """Compute the importance matrix of GGUF ``model`` over ``text`` into ``out`` (llama.cpp's GGUF imatrix)."""
    spec = CalibrateSpec(
        str(model),
        str(text),
        str(out),
        dataset,
        threads=max(threads, 0),
        n_batch=n_batch,
        verbose=log.isEnabledFor(logging.DEBUG),
        max_chunks=max_chunks,
    )
    try:
        return run_child(
            "edgekit.backends.gguf.calibrate:calibrate_child",
            spec,
            CalibrateResult,
            verbose=spec.verbose,
            on_step=lambda s: log.info("%s", s),
        )
    except ChildDied as e:
        raise QuantizeError(
            f"llama.cpp failed computing the importance matrix of {Path(model).name} ({e.why}); "
            "run with -v for llama.cpp's log"
        ) from None


def importance_matrix(ckpt: Any, ctx: Any, src: Path) -> dict[str, Any]:
    """The build's matrix for ``ckpt`` beside its artifacts (``ctx.calibration``: a text to compute it over
    on the intermediate ``src``, or a precomputed file copied in), and what the manifest records of it."""
    cal = ctx.calibration
    if cal.imatrix is not None:
        name = f"{ckpt.name}.imatrix{'.gguf' if cal.imatrix.read_bytes()[:4] == b'GGUF' else '.dat'}"
        with atomic_path(Path(ctx.out_dir) / name) as tmp:
            shutil.copyfile(cal.imatrix, tmp)
        m = read_imatrix(Path(ctx.out_dir) / name)
        info = {
            "computed": f"precomputed ({cal.imatrix.name}, as given to --imatrix)",
            "text": m.datasets[0] if m.datasets else None,
            "chunks": m.chunk_count,
        }
    else:
        name = f"{ckpt.name}.imatrix.gguf"
        text = Path(cal.text)
        r = calibrate(src, text, Path(ctx.out_dir) / name, dataset=text.name)
        info = {
            "computed": f"edgekit: llama.cpp eval callback as llama-imatrix (-c {CHUNK} -b {N_BATCH}) on the "
            f"{src.name.split('-')[-1].split('.')[0]} intermediate, "
            f"llama-cpp-python {versions().get('llama-cpp-python', '?')}",
            "text": text.name,
            "text_sha256": sha256_file(text),
            "tokens": r.tokens,
            "chunks": r.chunks,
            "chunk_size": CHUNK,
        }
        log.info("importance matrix: %d weights over %d chunks of %s", r.entries, r.chunks, text.name)
    return {"file": name, "sha256": sha256_file(Path(ctx.out_dir) / name), **info}
