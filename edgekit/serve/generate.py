"""Streaming generation on the runners: the engine behind ``edgekit run`` and ``edgekit serve``.

An engine loads an artifact with the target's [runtime] knobs through the same runner ``bench`` uses
(so the memory served is the memory measured), and runs requests on a worker thread:

    eng = open_engine(path, "llama.cpp", RunOptions(threads=4, ctx=2048, knobs=typed_knobs), slots=1)
    req = GenRequest(eng.tokenize(text), Sampling(max_tokens=128), stop_ids=eng.stop_ids(tpl.stop_texts),
                     on_event=callback)       # callback(Event) from the worker thread
    eng.submit(req); ...; eng.close()

Events: ``token`` (id, text piece; UTF-8 sequences split across tokens are held until complete) and a
last ``done`` (finish_reason "stop" | "length" | "cancelled" | "error", and timings).

llama.cpp: one context holds ``slots`` sequences in one unified KV buffer, decoded together in one
batch per step (a token per decoding sequence, prompt chunks of the prefilling ones), each with its
own sampler chain (llama.cpp's: greedy at temperature 0, else top-k → top-p → temperature → seeded
dist). One context rather than one per slot: a context's compute buffer (68 MB on E2B at ubatch 64,
README) would be paid per slot; here the KV cache grows by one sequence's cells per slot. A finished
sequence's cells are removed (``llama_memory_seq_rm``), so memory does not grow with requests served.
A shareable prefix (the system turn) is kept in an extra sequence and copied into a slot's sequence
(``llama_memory_seq_cp`` only tags the cells) when a prompt starts with it; ``prefix_file`` saves it
with ``llama_state_seq_save_file`` and loads it at start, so a restart does not prefill it again.

MLX: the MLX runner's prefill and decode steps (generate_step's chunking) with mlx-lm's samplers, one
request at a time (slots = 1).
"""

from __future__ import annotations

import codecs
import ctypes
import logging
import queue
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..backends.engines import ENGINES
from ..backends.runner import RunOptions
from ..core.errors import BenchError, ConfigError

log = logging.getLogger(__name__)
# LLAMA_TOKEN_ATTR_CONTROL: what only special-token parsing matches (user-defined tokens, such as
# Gemma's runs of newlines, are matched in plain text too and mean nothing more than their text)
L_ATTR_CONTROL = 1 << 3


@dataclass
class Sampling:
    max_tokens: int = 256
    temperature: float = 0.0  # 0: greedy
    seed: int = 0
    top_p: float = 1.0
    top_k: int = 0  # 0: off
    min_p: float = 0.0  # 0: off
    grammar: str = ""  # GBNF the reply must match (llama.cpp); "": free text
    logprobs: int = -1  # -1: none; N >= 0: each token's log-probability and the N likeliest
    repeat_penalty: float = 1.0  # 1: off; over the last REPEAT_LAST_N tokens, as llama.cpp's default


@dataclass
class Event:
    kind: str  # "token" | "done"
    token: int = -1
    text: str = ""
    finish_reason: str = ""
    stats: dict[str, Any] = field(default_factory=dict)
    logprob: Any = None  # (logprob, [(token id, logprob), ...]) when the request asked (Sampling.logprobs)


@dataclass
class GenRequest:
    prompt: list[int]
    sampling: Sampling
    stop_ids: frozenset[int] = frozenset()
    on_event: Callable[[Event], None] = lambda e: None
    prefix_len: int = 0  # leading prompt tokens that may be shared with other requests (cached)
    # images/audio in the prompt (backends.mtmd.MediaSpan, by start): their positions hold -1 in ``prompt``
    media: Sequence[Any] = ()
    cancelled: threading.Event = field(default_factory=threading.Event)
    t_submit: float = field(default_factory=time.perf_counter)

    def cancel(self) -> None:
        self.cancelled.set()


REPEAT_LAST_N = 64  # llama.cpp's --repeat-last-n default


class QueueFull(Exception):
    """Every slot is busy and the waiting queue is at its bound."""


class PromptTooLong(ConfigError):
    pass


class _Slot:
    def __init__(self, seq: int):
        self.seq = seq
        self.req: Optional[GenRequest] = None

    def start(self, req: GenRequest, L: Any, cached: int, ctx: Any = None, vocab: Any = None) -> None:
        self.req, self.pos, self.n_gen, self.last = req, cached, 0, -1
        self.t_first: Optional[float] = None
        self.t_start = time.perf_counter()
        self.cached = cached
        self.utf8 = codecs.getincrementaldecoder("utf-8")("replace")
        s = req.sampling
        self.smpl = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
        if s.repeat_penalty != 1.0:  # first, as llama.cpp's sampler chain (greedy included)
            pen = L.llama_sampler_init_penalties(
                L.llama_vocab_n_tokens(L.llama_model_get_vocab(L.llama_get_model(ctx))),
                REPEAT_LAST_N,
                s.repeat_penalty,
                0.0,
                0.0,
            )
            for tok in req.prompt[-REPEAT_LAST_N:]:  # the prompt's tokens to this sampler alone: a grammar
                if tok >= 0:  # in the chain would refuse them; -1: a medium's position
                    L.llama_sampler_accept(pen, tok)
            L.llama_sampler_chain_add(self.smpl, pen)
        if s.grammar:  # the rest sample among the tokens the grammar allows (checked by LlamaEngine.grammar_error)
            L.llama_sampler_chain_add(self.smpl, L.llama_sampler_init_grammar(vocab, s.grammar.encode(), b"root"))
        if s.temperature <= 0:
            L.llama_sampler_chain_add(self.smpl, L.llama_sampler_init_greedy())
        else:
            if s.top_k > 0:
                L.llama_sampler_chain_add(self.smpl, L.llama_sampler_init_top_k(s.top_k))
            if s.top_p < 1.0:
                L.llama_sampler_chain_add(self.smpl, L.llama_sampler_init_top_p(s.top_p, 1))
            if s.min_p > 0.0:
                L.llama_sampler_chain_add(self.smpl, L.llama_sampler_init_min_p(s.min_p, 1))
            L.llama_sampler_chain_add(self.smpl, L.llama_sampler_init_temp(s.temperature))
            L.llama_sampler_chain_add(self.smpl, L.llama_sampler_init_dist(s.seed & 0xFFFFFFFF))

    @property
    def prefilling(self) -> bool:
        return self.req is not None and self.pos < len(self.req.prompt)


class _Scheduler:
    """Slots, the bounded waiting queue and the worker thread, shared by both engines."""

    def __init__(self, slots: int, max_queue: int):
        self.slots = [_Slot(i) for i in range(slots)]
        self.max_queue = max_queue
        self.waiting: queue.SimpleQueue[GenRequest] = queue.SimpleQueue()
        self.n_waiting = 0
        self.lock = threading.Condition()
        self.stopping = False
        self.thread = threading.Thread(target=self._run, name="edgekit-engine", daemon=True)

    def submit(self, req: GenRequest) -> None:
        if len(req.prompt) > self.n_ctx - 1:
            raise PromptTooLong(
                f"the prompt is {len(req.prompt)} tokens; the context is {self.n_ctx} tokens "
                f"(prompt + reply): shorten the prompt or start with a larger --ctx"
            )
        with self.lock:
            busy = sum(s.req is not None for s in self.slots)
            if busy + self.n_waiting >= len(self.slots) + self.max_queue:
                raise QueueFull(f"{busy} requests in progress and {self.n_waiting} waiting (the bound)")
            self.n_waiting += 1
            self.waiting.put(req)
            self.lock.notify()

    def busy(self) -> tuple[int, int]:
        with self.lock:
            return sum(s.req is not None for s in self.slots), self.n_waiting

    def _admit(self) -> None:
        for slot in self.slots:
            if slot.req is None:
                try:
                    req = self.waiting.get_nowait()
                except queue.Empty:
                    return
                self.n_waiting -= 1
                if req.cancelled.is_set():
                    req.on_event(Event("done", finish_reason="cancelled"))
                    continue
                self._start(slot, req)

    def _run(self) -> None:
        while True:
            with self.lock:
                while not self.stopping and self.waiting.empty() and all(s.req is None for s in self.slots):
                    self.lock.wait()
                if self.stopping:
                    break
                self._admit()
            try:
                self._step()
            except Exception as e:  # an engine failure ends every request in flight, never the thread silently
                log.exception("generation step failed")
                for s in self.slots:
                    if s.req is not None:
                        self._finish(s, "error", str(e))
        for s in self.slots:
            if s.req is not None:
                self._finish(s, "cancelled")
        while not self.waiting.empty():
            self.waiting.get_nowait().on_event(Event("done", finish_reason="cancelled"))

    def _emit(self, slot: _Slot, tok: int, piece: bytes, logprob: Any = None) -> Optional[str]:
        """Send the token; the finish reason when the request is complete after it."""
        req = slot.req
        now = time.perf_counter()
        if slot.t_first is None:
            slot.t_first = now
        if tok in req.stop_ids:
            return "stop"
        slot.n_gen += 1
        req.on_event(Event("token", token=tok, text=slot.utf8.decode(piece), logprob=logprob))
        if slot.n_gen >= req.sampling.max_tokens or len(req.prompt) + slot.n_gen >= self.n_ctx:
            return "length"
        return None

    def _stats(self, slot: _Slot) -> dict[str, Any]:
        req, now = slot.req, time.perf_counter()
        first = slot.t_first or now
        return {
            "prompt_tokens": len(req.prompt),
            "cached_tokens": slot.cached,
            "completion_tokens": slot.n_gen,
            "queue_ms": (slot.t_start - req.t_submit) * 1e3,
            "ttft_ms": (first - req.t_submit) * 1e3,
            "decode_tps": (slot.n_gen - 1) / (now - first) if slot.n_gen > 1 and now > first else 0.0,
        }

    def close(self) -> None:
        with self.lock:
            self.stopping = True
            self.lock.notify()
        if self.thread.is_alive():
            self._wait_stopped()

    def _wait_stopped(self) -> None:
        self.thread.join()


class LlamaEngine(_Scheduler):
    logprobs_supported = True  # the logits of each sampled row are at hand (MLX: not wired)

    def __init__(
        self,
        path: Path,
        opts: RunOptions,
        slots: int = 1,
        max_queue: int = 16,
        prefix_file: Optional[Path] = None,
        prefix_key: str = "",
    ):
        super().__init__(slots, max_queue)
        self.n_ctx = opts.ctx
        self.prefix_seq = slots  # the extra sequence holding the cached prefix
        self.runner = ENGINES.get("llama.cpp").make()
        ctx_all = opts.ctx * slots + opts.ctx  # every slot's context plus the prefix's (shared cells)
        self.runner.load(
            Path(path),
            RunOptions(threads=opts.threads, ctx=ctx_all, knobs=opts.knobs, verbose=opts.verbose, n_seq=slots + 1),
        )
        r = self.runner
        self.L, self.ctx, self.mem = r.L, r.ctx, r.mem
        self.vocab = self.L.llama_model_get_vocab(r.model)
        self.n_batch = r.n_batch
        self.batch = self.L.llama_batch_init(self.n_batch, 0, 1)
        self.prefix: list[int] = []
        self.prefix_file = Path(prefix_file) if prefix_file else None
        self.prefix_key = prefix_key
        if self.prefix_file and self.prefix_file.exists():
            self._load_prefix()
        self.thread.start()

    # -- vocabulary
    def tokenize(self, text: str, special: bool = True) -> list[int]:
        """Text with special tokens written out (a rendered chat) → ids; no BOS added (the template writes it).
        ``special=False``: every character as text (client text; see plain_text)."""
        raw = text.encode("utf-8")
        cap = len(raw) + 8
        buf = (ctypes.c_int32 * cap)()
        n = self.L.llama_tokenize(self.vocab, raw, len(raw), buf, cap, False, special)
        if n < 0:
            raise BenchError(f"llama.cpp could not tokenize the prompt ({-n} tokens needed)")
        return list(buf[:n])

    @property
    def n_vocab(self) -> int:
        return self.L.llama_vocab_n_tokens(self.vocab)

    def special_texts(self) -> list[str]:
        """The texts only special-token parsing turns into one id: the control tokens."""
        if not hasattr(self, "_special"):
            L, v, want = self.L, self.vocab, L_ATTR_CONTROL
            self._special = [
                L.llama_vocab_get_text(v, i).decode("utf-8", "replace")
                for i in range(self.n_vocab)
                if L.llama_vocab_get_attr(v, i) & want
            ]
        return self._special

    def piece(self, tok: int) -> bytes:
        buf = ctypes.create_string_buffer(256)
        n = self.L.llama_token_to_piece(self.vocab, tok, buf, 256, 0, True)
        return buf.raw[: max(n, 0)]

    def stop_ids(self, texts: Sequence[str]) -> frozenset[int]:
        ids = {self.L.llama_vocab_eos(self.vocab)}
        for t in texts:
            toks = self.tokenize(t)
            if len(toks) == 1:
                ids.add(toks[0])
        return frozenset(i for i in ids if i >= 0)

    def figures(self) -> dict[str, Any]:
        return self.runner.figures()

    def grammar_error(self, gbnf: str) -> str:
        """ "" if llama.cpp parses ``gbnf`` (root rule ``root``), else why not (its parser logs the detail)."""
        smpl = self.L.llama_sampler_init_grammar(self.vocab, gbnf.encode(), b"root")
        if not smpl:
            return "llama.cpp could not parse the grammar made from it"
        self.L.llama_sampler_free(smpl)
        return ""

    # -- prefix cache
    def _load_prefix(self) -> None:
        cap = self.n_ctx
        toks, n = (ctypes.c_int32 * cap)(), ctypes.c_size_t(0)
        got = self.L.llama_state_seq_load_file(
            self.ctx, str(self.prefix_file).encode(), self.prefix_seq, toks, cap, ctypes.byref(n)
        )
        if got == 0:
            log.warning(
                "%s: not a prefix cache this model and context can load; it will be prefilled again", self.prefix_file
            )
            self.L.llama_memory_seq_rm(self.mem, self.prefix_seq, -1, -1)
            return
        self.prefix = list(toks[: n.value])
        log.info("prefix cache: %d tokens loaded from %s", len(self.prefix), self.prefix_file)

    def _keep_prefix(self, slot: _Slot) -> None:
        """The slot has just prefilled its prompt's shareable prefix: keep a copy of those cells."""
        n = slot.req.prefix_len
        self.L.llama_memory_seq_rm(self.mem, self.prefix_seq, -1, -1)
        self.L.llama_memory_seq_cp(self.mem, slot.seq, self.prefix_seq, 0, n)
        self.prefix = list(slot.req.prompt[:n])
        if self.prefix_file:
            from . import prefix_cache

            arr = (ctypes.c_int32 * n)(*self.prefix)
            try:
                prefix_cache.save(
                    self.prefix_file,
                    self.prefix_key,
                    lambda tmp: bool(
                        self.L.llama_state_seq_save_file(self.ctx, str(tmp).encode(), self.prefix_seq, arr, n)
                    ),
                )
            except OSError as e:  # a full disk costs the cache, never the request
                log.warning("%s: prefix cache not saved (%s)", self.prefix_file, e)

    def _start(self, slot: _Slot, req: GenRequest) -> None:
        self.L.llama_memory_seq_rm(self.mem, slot.seq, -1, -1)
        cached = 0
        p = len(self.prefix)
        if req.prefix_len and p and req.prefix_len == p and req.prompt[:p] == self.prefix and len(req.prompt) > p:
            self.L.llama_memory_seq_cp(self.mem, self.prefix_seq, slot.seq, -1, -1)
            cached = p
        slot.start(req, self.L, cached, self.ctx, self.vocab)

    def _finish(self, slot: _Slot, reason: str, error: str = "") -> None:
        req = slot.req
        stats = self._stats(slot)
        self.L.llama_memory_seq_rm(self.mem, slot.seq, -1, -1)
        self.L.llama_sampler_free(slot.smpl)
        slot.req = None
        req.on_event(Event("done", finish_reason=reason, stats=stats, text=error))

    def _step(self) -> None:
        L, b = self.L, self.batch
        for s in self.slots:
            if s.req is not None and s.req.cancelled.is_set():
                self._finish(s, "cancelled")
        rows: list[tuple[_Slot, int]] = []  # (slot, batch row whose logits it samples)
        n = 0
        for s in self.slots:  # decoding sequences first: one token each
            if s.req is not None and not s.prefilling and n < self.n_batch:
                self._put(n, s.last, s.pos, s.seq, True)
                rows.append((s, n))
                s.pos += 1
                n += 1
        for s in self.slots:  # then prompt chunks, up to the batch
            if s.prefilling and n < self.n_batch:
                end = len(s.req.prompt)
                if s.req.prefix_len and s.pos < s.req.prefix_len and s.req.prompt[: s.req.prefix_len] != self.prefix:
                    end = s.req.prefix_len  # stop at the prefix, to keep its cells before the rest lands
                for m in s.req.media:  # a medium here is decoded now (its own llama_decode); text stops at the next
                    if m.start == s.pos:
                        s.pos = m.decode(self.ctx, s.seq, s.pos, self.n_batch)
                    elif m.start > s.pos:
                        end = min(end, m.start)
                        break
                take = min(end - s.pos, self.n_batch - n)
                for i in range(take):
                    last = s.pos + i == len(s.req.prompt) - 1
                    self._put(n, s.req.prompt[s.pos + i], s.pos + i, s.seq, last)
                    if last:
                        rows.append((s, n))
                    n += 1
                s.pos += take
        if not n:
            return
        b.n_tokens = n
        rc = L.llama_decode(self.ctx, b)
        if rc != 0:
            raise BenchError(f"llama_decode failed (code {rc}: {self.runner.log.last_error()})")
        for s in self.slots:
            if (
                s.req is not None
                and s.req.prefix_len
                and s.pos == s.req.prefix_len
                and s.cached == 0
                and s.req.prompt[: s.pos] != self.prefix
                and s.pos < len(s.req.prompt)
            ):
                self._keep_prefix(s)
        for s, row in rows:
            tok = L.llama_sampler_sample(s.smpl, self.ctx, row)
            s.last = tok
            lp = self._logprob(row, tok, s.req.sampling.logprobs) if s.req.sampling.logprobs >= 0 else None
            reason = self._emit(s, tok, self.piece(tok), lp)
            if reason:
                self._finish(s, reason)

    def _logprob(self, row: int, tok: int, top: int) -> tuple[float, list[tuple[int, float]]]:
        """The model's log-probability of ``tok`` at batch row ``row`` (log-softmax of its logits, before
        the sampler's temperature, top-k and top-p, as OpenAI reports them) and the ``top`` likeliest."""
        import numpy as np

        x = np.ctypeslib.as_array(self.L.llama_get_logits_ith(self.ctx, row), shape=(self.n_vocab,)).astype(np.float64)
        m = x.max()
        lp = x - (m + np.log(np.exp(x - m).sum()))
        best = np.argpartition(-lp, top)[:top] if 0 < top < len(lp) else np.arange(len(lp) if top else 0)
        best = best[np.argsort(-lp[best], kind="stable")]
        return float(lp[tok]), [(int(i), float(lp[i])) for i in best]

    def _put(self, i: int, tok: int, pos: int, seq: int, logits: bool) -> None:
        b = self.batch
        b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = tok, pos, 1, logits
        b.seq_id[i][0] = seq

    def close(self) -> None:
        super().close()
        if self.batch is not None:
            self.L.llama_batch_free(self.batch)
            self.batch = None
        self.runner.close()


class MlxEngine(_Scheduler):
    """One request at a time: the runner's prefill/decode with mlx-lm's samplers."""

    def __init__(
        self,
        path: Path,
        opts: RunOptions,
        slots: int = 1,
        max_queue: int = 16,
        prefix_file: Optional[Path] = None,
        prefix_key: str = "",
    ):
        super().__init__(1, max_queue)
        from transformers import AutoTokenizer

        self.n_ctx = opts.ctx
        self.runner = ENGINES.get("mlx").make()
        self.tok = AutoTokenizer.from_pretrained(str(path))
        # MLX arrays and streams belong to the thread that made them (a model loaded here and run on the
        # worker failed with "There is no Stream(cpu, 0) in current thread"): the worker loads it.
        loaded: queue.SimpleQueue[Optional[BaseException]] = queue.SimpleQueue()
        self._ended = threading.Event()

        def load_then_run() -> None:
            # Signals go to the main thread (which handles them); a signal landing here would wake the
            # parked thread below during interpreter shutdown.
            signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
            try:
                self.runner.load(Path(path), opts)
            except BaseException as e:  # handed to the constructor, which raises it
                loaded.put(e)
                return
            loaded.put(None)
            try:
                self._run()
            finally:
                self.runner.close()
                self._ended.set()
            # Parked, never ended: MLX keeps a compile cache per OS thread whose destructor takes the GIL
            # when the thread ends; if that falls while the interpreter shuts down, the thread is killed
            # inside the destructor and the process aborts ("terminate called without an active
            # exception", exit 134, seen on every `edgekit run` of an MLX artifact). A parked daemon
            # thread is simply gone at exit, without running thread-local destructors.
            threading.Event().wait()

        self.thread = threading.Thread(target=load_then_run, name="edgekit-engine", daemon=True)
        self.thread.start()
        err = loaded.get()
        if err is not None:
            raise err

    def _wait_stopped(self) -> None:
        self._ended.wait()  # the thread itself stays, parked (see load_then_run)

    def tokenize(self, text: str, special: bool = True) -> list[int]:
        return list(self.tok(text, add_special_tokens=False, split_special_tokens=not special)["input_ids"])

    @property
    def n_vocab(self) -> int:
        return len(self.tok)

    def special_texts(self) -> list[str]:
        """The special added tokens (``split_special_tokens`` leaves the others matched in text too)."""
        return [t.content for t in self.tok.added_tokens_decoder.values() if t.special]

    def piece(self, tok: int) -> bytes:
        return self.tok.convert_tokens_to_string([self.tok.convert_ids_to_tokens(tok)]).encode("utf-8")

    def stop_ids(self, texts: Sequence[str]) -> frozenset[int]:
        ids = {self.tok.convert_tokens_to_ids(t) for t in texts}
        return frozenset(i for i in ids if isinstance(i, int) and i >= 0 and i != self.tok.unk_token_id)

    def figures(self) -> dict[str, Any]:
        return self.runner.figures()

    def _start(self, slot: _Slot, req: GenRequest) -> None:
        slot.req, slot.pos, slot.n_gen, slot.t_first, slot.cached = req, 0, 0, None, 0
        slot.t_start = time.perf_counter()
        slot.utf8 = codecs.getincrementaldecoder("utf-8")("replace")

    def _finish(self, slot: _Slot, reason: str, error: str = "") -> None:
        req, stats = slot.req, self._stats(slot)
        slot.req = None
        req.on_event(Event("done", finish_reason=reason, stats=stats, text=error))

    def _step(self) -> None:
        import mlx.core as mx
        from mlx_lm.sample_utils import make_sampler

        slot = self.slots[0]
        if slot.req is None:
            return
        req, s = slot.req, slot.req.sampling
        mx.random.seed(s.seed)
        sampler = make_sampler(temp=s.temperature, top_p=s.top_p if s.top_p < 1 else 0.0, top_k=s.top_k, min_p=s.min_p)
        self._generate(slot, req, s, sampler)

    def _generate(self, slot: _Slot, req: GenRequest, s: Sampling, sampler: Any) -> None:
        # The runner's own prefill (generate_step's chunking: all but the last token, then the last) and
        # decode steps, sampled with mlx-lm's sampler. Not generate_step itself: it runs on a stream
        # mlx-lm makes when imported, in whichever thread imports it first.
        import mlx.core as mx

        r = self.runner
        r.reset()
        r.prefill(req.prompt)
        reason = "length"
        penalize = None
        if s.repeat_penalty != 1.0:  # mlx-lm's processor over the same window as llama.cpp's
            from mlx_lm.sample_utils import make_logits_processors

            penalize = make_logits_processors(
                repetition_penalty=s.repeat_penalty, repetition_context_size=REPEAT_LAST_N
            )[0]
            seen = list(req.prompt[-REPEAT_LAST_N:])
        for _ in range(s.max_tokens):
            if req.cancelled.is_set():
                reason = "cancelled"
                break
            logits = r.logits if penalize is None else penalize(mx.array(seen[-REPEAT_LAST_N:]), r.logits)
            tok = int(sampler(logits).item())
            if penalize is not None:
                seen.append(tok)
            done = self._emit(slot, tok, self.piece(tok))
            if done:
                reason = done
                break
            r.decode(tok)
        mx.clear_cache()
        self._finish(slot, reason)


GENERATORS = {"llama.cpp": LlamaEngine, "mlx": MlxEngine}  # by ENGINES name


def open_engine(
    path: Path,
    engine: str,
    opts: RunOptions,
    slots: int = 1,
    max_queue: int = 16,
    prefix_file: Optional[Path] = None,
    prefix_key: str = "",
) -> Any:
    """The engine for ``engine`` (an ENGINES name) with ``opts.knobs`` already typed by its schema."""
    if engine == "mlx" and slots > 1:
        raise ConfigError("the MLX engine serves one request at a time; use --parallel 1 with an MLX artifact")
    return GENERATORS[engine](
        path, opts, slots=slots, max_queue=max_queue, prefix_file=prefix_file, prefix_key=prefix_key
    )
