"""llama.cpp runner over llama-cpp-python's low-level C API (ctypes).

The high-level ``Llama`` class tokenizes, samples and times as one, so prefill and decode could not
be timed apart; the C API gives llama_decode per batch, as llama-bench uses it. Memory figures the
engine knows (KV cache, compute buffers, model buffers per buffer type: CPU_Mapped is the mmap'd
file, CPU_REPACK a repacked anonymous copy; and which tables are read lazily) are only printed to
llama.cpp's log, and the C API has no call that returns them, so the log callback parses those lines.

Knobs: ``KNOBS`` below (a target's [runtime], or ``--set``), checked in the parent before any
child starts; each line says what it does. What the record keeps is ``applied()``: the knobs as
passed, with n_ctx, n_batch, n_ubatch and threads read back from the context.
"""

from __future__ import annotations

import ctypes
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ...core.errors import BenchError, EngineMissingError
from ...profiles.knobs import Knob, Schema
from ..runner import RunOptions

_LAZY = re.compile(r"tensor (\S+) \(size = \d+ MiB\) lazy read enabled")
_BUF = re.compile(r"(?P<name>\S+)\s+(?P<kind>model|KV|compute) buffer size\s*=\s*(?P<mib>[\d.]+) MiB")

KV_TYPES = {
    "f32": "F32",
    "f16": "F16",
    "bf16": "BF16",
    "q8_0": "Q8_0",
    "q4_0": "Q4_0",
    "q4_1": "Q4_1",
    "q5_0": "Q5_0",
    "q5_1": "Q5_1",
    "iq4_nl": "IQ4_NL",
}
FLASH = {"auto": -1, "off": 0, "on": 1}
LAZY = {"off": 0, "auto": 1, "on": 2}
N_CTX_MAX = 2**32 - 1  # llama_context_params.n_ctx is a uint32

KNOBS = Schema(
    "llama.cpp",
    [
        Knob("use_mmap", bool, "map the file (weights then count as file-backed, reclaimable pages)"),
        Knob("mlock", bool, "lock the weights in RAM"),
        Knob("lazy", str, "read rows of tables the architecture marks (Gemma 4's PLE) on demand", choices=tuple(LAZY)),
        Knob("repack", bool, "let llama.cpp repack weights into CPU-friendly layouts (an anonymous copy)"),
        Knob("kv_type", str, "KV cache type for K and V", choices=tuple(KV_TYPES)),
        Knob("flash_attn", str, "flash attention", choices=tuple(FLASH)),
        Knob("n_batch", int, "logical batch for prefill (capped at the context)", default=2048, min=1, max=N_CTX_MAX),
        Knob("n_ubatch", int, "physical batch for prefill (capped at n_batch)", default=512, min=1, max=N_CTX_MAX),
        # The C default keeps a full-context cache for sliding-window layers; llama-bench and llama.cpp's
        # own tools size it to the window (swa_full = false), which is what a deployment runs.
        Knob("swa_full", bool, "full-context cache for sliding-window layers", default=False),
        # bench --image/--audio (edgekit.measure.media): "on_demand" loads the projector per medium and frees it
        # before the text is evaluated, so the towers' memory and the full context's never coexist
        Knob(
            "towers",
            str,
            "projector: resident, or loaded per medium and freed before the text",
            choices=("resident", "on_demand"),
        ),
        Knob("n_gpu_layers", int, "layers to offload where the build has a GPU backend (Metal); -1 all", min=-1),
    ],
)


def _import() -> Any:
    try:
        import llama_cpp  # deferred: the engine loads only when an artifact is opened
    except ImportError:
        raise EngineMissingError("llama-cpp-python is not installed; `pip install 'edgekit[runtime]'`") from None
    return llama_cpp


class _Log:
    """Collects llama.cpp's log lines (and echoes them with -v); keeps the buffer-size lines."""

    def __init__(self, L: Any, verbose: bool):
        self.verbose = verbose
        self.lines: list[str] = []
        self._partial = ""
        self._buffers: list[tuple[str, str, int]] = []
        self.lazy: list[str] = []  # tensors llama.cpp reads row by row from the mapping

        self._level = 0
        self.count = 0  # lines seen (``lines`` keeps the tail)

        @L.llama_log_callback
        def cb(level: int, text: bytes, _user: ctypes.c_void_p) -> None:
            s = text.decode("utf-8", "replace")
            if level != 5:  # GGML_LOG_LEVEL_CONT continues the previous line's level
                self._level = level
            # -vv echoes llama.cpp's whole log (≈970 lines for E2B); -v gets load()'s summary line
            if self.verbose >= 2 and self._level != 4:
                sys.stderr.write(s)
            self._partial += s
            while "\n" in self._partial:
                line, self._partial = self._partial.split("\n", 1)
                self._line(line)

        self._cb = cb  # ctypes callbacks must outlive their registration
        L.llama_log_set(cb, ctypes.c_void_p(0))

    def _line(self, line: str) -> None:
        m = _BUF.search(line)
        if m:
            self._buffers.append((m["kind"], m["name"], round(float(m["mib"]) * 2**20)))
        lazy = _LAZY.search(line)
        if lazy:
            self.lazy.append(lazy[1])
        self.lines.append(line)
        self.count += 1
        del self.lines[:-50]  # the tail holds the error that ends a failed load

    def buffers(self, kind: str) -> list[tuple[str, int]]:
        """(buffer type, bytes) per buffer of ``kind`` (model | KV | compute), in log order; a lazily read
        table gets its own CPU_Mapped buffer beside the main one, so names repeat."""
        return [(name, b) for k, name, b in self._buffers if k == kind]

    def last_error(self) -> str:
        for line in reversed(self.lines):
            if "error" in line.lower() or "failed" in line.lower():
                return line.strip()
        return self.lines[-1].strip() if self.lines else "no log"


class LlamaCppRunner:
    engine = "llama.cpp"
    # set by load()
    knobs: dict[str, Any]
    log: _Log
    mem: Any
    n_batch: int
    _n_vocab: int
    _bos: Optional[int]
    _applied_ctx: int
    _threads: int

    def __init__(self) -> None:
        self.L = _import()
        self.model = self.ctx = None
        self._tok = (ctypes.c_int32 * 1)()

    def load(self, path: Path, opts: RunOptions) -> None:
        L, rt = self.L, opts.knobs
        self.knobs = dict(rt)
        self.log = _Log(L, opts.verbose)
        L.llama_backend_init()
        mp = L.llama_model_default_params()
        if "use_mmap" in rt or "mlock" in rt:  # else llama.cpp's auto mode (mmap where supported)
            mmap, mlock = bool(rt.get("use_mmap", True)), bool(rt.get("mlock", False))
            mp.load_mode = {
                (True, False): L.LLAMA_LOAD_MODE_MMAP,
                (False, False): L.LLAMA_LOAD_MODE_NONE,
                (True, True): L.LLAMA_LOAD_MODE_MMAP_MLOCK,
                (False, True): L.LLAMA_LOAD_MODE_MLOCK,
            }[mmap, mlock]
        if "lazy" in rt:
            mp.lazy_mode = LAZY[rt["lazy"]]
        if "repack" in rt:
            mp.use_extra_bufts = bool(rt["repack"])
        if "n_gpu_layers" in rt:
            mp.n_gpu_layers = int(rt["n_gpu_layers"])
        self.model = L.llama_model_load_from_file(str(path).encode(), mp)
        if not self.model:
            raise BenchError(
                f"{path.name}: llama.cpp could not load it ({self.log.last_error()}); rebuild it with `edgekit build`"
            )
        cp = L.llama_context_default_params()
        cp.n_ctx = opts.ctx
        cp.n_batch = min(rt.get("n_batch", 2048), opts.ctx)
        cp.n_ubatch = min(rt.get("n_ubatch", 512), cp.n_batch)
        cp.n_threads = cp.n_threads_batch = opts.threads
        cp.no_perf = True
        cp.swa_full = bool(rt.get("swa_full", False))
        if "kv_type" in rt:
            cp.type_k = cp.type_v = getattr(L, "GGML_TYPE_" + KV_TYPES[rt["kv_type"]])
        if "flash_attn" in rt:
            cp.flash_attn_type = FLASH[rt["flash_attn"]]
        if opts.n_seq > 1:
            # One context, several sequences in one KV buffer (serve's slots): one compute buffer for all,
            # and a shared prefix's cells are shared by every sequence copied from it (llama_memory_seq_cp).
            cp.n_seq_max, cp.kv_unified = opts.n_seq, True
        self.ctx = L.llama_init_from_model(self.model, cp)
        if not self.ctx:
            raise BenchError(
                f"{path.name}: llama.cpp could not create a context of {opts.ctx} tokens "
                f"({self.log.last_error()}); try a smaller --ctx"
            )
        # What the context really has (llama.cpp may round or cap what it was asked for).
        self.n_batch = int(L.llama_n_batch(self.ctx))
        self.knobs.update(n_batch=self.n_batch, n_ubatch=int(L.llama_n_ubatch(self.ctx)))
        self._applied_ctx = int(L.llama_n_ctx(self.ctx))
        self._threads = int(L.llama_n_threads(self.ctx))
        vocab = L.llama_model_get_vocab(self.model)
        self._n_vocab = L.llama_vocab_n_tokens(vocab)
        self._bos = L.llama_vocab_bos(vocab) if L.llama_vocab_get_add_bos(vocab) else None
        self.mem = L.llama_get_memory(self.ctx)
        if opts.verbose == 1:
            mib = lambda kind: sum(b for _, b in self.log.buffers(kind)) / 1e6
            sys.stderr.write(
                f"llama.cpp: {path.name}: {self.log.count} log lines (-vv shows them); model "
                f"{mib('model'):.1f} MB, KV {mib('KV'):.1f} MB, compute {mib('compute'):.1f} MB, "
                f"ctx {self._applied_ctx}, batch {self.n_batch}/{self.knobs['n_ubatch']}, "
                f"threads {self._threads}\n"
            )

    def n_vocab(self) -> int:
        return self._n_vocab

    def bos(self) -> Optional[int]:
        return self._bos

    def reset(self) -> None:
        self.L.llama_memory_clear(self.mem, True)

    def _decode(self, arr: Any, n: int) -> None:
        rc = self.L.llama_decode(self.ctx, self.L.llama_batch_get_one(arr, n))
        if rc != 0:
            raise BenchError(f"llama_decode failed (code {rc}: {self.log.last_error()}); try a larger --ctx")

    def prefill(self, tokens: Sequence[int]) -> None:
        # Copying the ids into ctypes arrays costs microseconds; llama_batch_get_one only points at them.
        arrs = [
            (ctypes.c_int32 * len(c))(*c)
            for c in (tokens[i : i + self.n_batch] for i in range(0, len(tokens), self.n_batch))
        ]
        for a in arrs:
            self._decode(a, len(a))
        self.L.llama_synchronize(self.ctx)

    def decode(self, token: int) -> None:
        self._tok[0] = token
        self._decode(self._tok, 1)
        self.L.llama_synchronize(self.ctx)

    def next_token(self) -> int:
        logits = self.L.llama_get_logits_ith(self.ctx, -1)
        return int(np.ctypeslib.as_array(logits, shape=(self._n_vocab,)).argmax())

    # --- whole-sequence logits, tokenizer and vocabulary (edgekit eval) ------------------------
    def logits_all(self, tokens: Sequence[int], first: int = 0) -> np.ndarray:
        """Logits [len(tokens) - first, n_vocab] of positions ``first``.. of one sequence decoded from an
        empty cache in batches of n_batch: a llama_batch whose per-token logits flags ask llama.cpp for
        just the positions wanted, as llama-perplexity does (the output buffer holds only those rows)."""
        L, n, nv = self.L, len(tokens), self._n_vocab
        self.reset()
        out = np.empty((max(n - first, 0), nv), dtype=np.float32)
        batch = L.llama_batch_init(self.n_batch, 0, 1)
        try:
            row = 0
            for start in range(0, n, self.n_batch):
                m = min(self.n_batch, n - start)
                for j in range(m):
                    pos = start + j
                    batch.token[j] = int(tokens[pos])
                    batch.pos[j] = pos
                    batch.n_seq_id[j] = 1
                    batch.seq_id[j][0] = 0
                    batch.logits[j] = pos >= first
                batch.n_tokens = m
                rc = L.llama_decode(self.ctx, batch)
                if rc != 0:
                    raise BenchError(f"llama_decode failed (code {rc}: {self.log.last_error()}); try a smaller --ctx")
                k = max(0, start + m - max(first, start))
                if k:
                    ptr = L.llama_get_logits(self.ctx)
                    out[row : row + k] = np.ctypeslib.as_array(ptr, shape=(k, nv))
                    row += k
        finally:
            L.llama_batch_free(batch)
        return out

    def tokenize(self, text: str) -> list[int]:
        """The model's own tokenizer (llama_tokenize), without BOS and with special-token text parsed as text."""
        L = self.L
        vocab = L.llama_model_get_vocab(self.model)
        raw = text.encode("utf-8")
        cap = len(raw) + 16
        buf = (L.llama_token * cap)()
        n = L.llama_tokenize(vocab, raw, len(raw), buf, cap, False, False)
        if n < 0:  # cannot happen with a byte-per-token cap, but llama.cpp reports the size it needs
            buf = (L.llama_token * -n)()
            n = L.llama_tokenize(vocab, raw, len(raw), buf, -n, False, False)
        return list(buf[:n])

    def vocab_pieces(self) -> tuple[list[str], set[int]]:
        """Every token's text as stored in the file, and the ids llama.cpp marks CONTROL."""
        L = self.L
        vocab = L.llama_model_get_vocab(self.model)
        pieces = [L.llama_vocab_get_text(vocab, i).decode("utf-8", "replace") for i in range(self._n_vocab)]
        control = {i for i in range(self._n_vocab) if L.llama_vocab_get_attr(vocab, i) & L.LLAMA_TOKEN_ATTR_CONTROL}
        return pieces, control

    def figures(self) -> dict[str, Any]:
        kv, compute = self.log.buffers("KV"), self.log.buffers("compute")
        return {
            "kv_cache_bytes": sum(b for _, b in kv) if kv else None,
            "compute_buffer_bytes": sum(b for _, b in compute) if compute else None,
            "model_buffers": self.log.buffers("model"),
            "lazy_tensors": list(self.log.lazy),
        }

    def applied(self) -> dict[str, Any]:
        return {"ctx": self._applied_ctx, "threads": self._threads, "knobs": dict(self.knobs)}

    def close(self) -> None:
        if self.ctx:
            self.L.llama_free(self.ctx)
            self.ctx = None
        if self.model:
            self.L.llama_model_free(self.model)
            self.model = None
        if getattr(self, "log", None) is not None:
            # llama.cpp keeps calling the last callback set; ours dies with this runner, and in a process
            # that goes on (edgekit run/serve, tests) the next llama.cpp log line then jumps into freed
            # memory (a segfault in the next Llama's free_ctx). Hand logging back to llama-cpp-python.
            from llama_cpp import _logger  # deferred: the engine, as _import() above

            self.L.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))
            del self.log
