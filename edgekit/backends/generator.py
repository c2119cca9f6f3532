"""What every engine's generator provides (the ``Generator`` protocol), and the scheduler they share.

A generator loads an artifact through its backend's runner, with the knobs bench uses (so the memory
served is the memory measured), and runs requests on a worker thread:

    gen = BACKENDS.get("llama.cpp").generator(path, RunOptions(threads=4, ctx=2048, knobs=typed), GenOptions())
    req = GenRequest(gen.tokenize(text), Sampling(max_tokens=128), stop_ids=gen.stop_ids(tpl.stop_texts),
                     on_event=callback)       # callback(Event) from the worker thread
    gen.submit(req); ...; gen.close()

Events: ``token`` (id, text piece; UTF-8 sequences split across tokens are held until complete) and a
last ``done`` (finish_reason "stop" | "length" | "cancelled" | "error", and timings).

``Scheduler`` below is the engine-neutral half: the slots, the bounded waiting queue, the worker
thread, stop tokens, length limits, cancellation and the per-request timings. A backend's generator
subclasses it with ``_start`` (a slot takes a request), ``_step`` (one engine step over the busy
slots, calling ``_emit`` per sampled token) and ``_finish`` (free the slot, send ``done``).
"""

from __future__ import annotations

import codecs
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Protocol

import numpy as np

from ..core.errors import ConfigError
from .runner import RunOptions

log = logging.getLogger(__name__)

REPEAT_LAST_N = 64  # llama.cpp's --repeat-last-n default


def logprobs_of(logits: Any, tok: int, top: int) -> tuple[float, list[tuple[int, float]]]:
    """The model's log-probability of ``tok`` (log-softmax of its raw ``logits``, before the sampler's
    temperature, top-k, top-p and penalties, as OpenAI reports them) and the ``top`` likeliest tokens."""
    x = np.asarray(logits, dtype=np.float64).reshape(-1)
    m = x.max()
    lp = x - (m + np.log(np.exp(x - m).sum()))
    best = np.argpartition(-lp, top)[:top] if 0 < top < len(lp) else np.arange(len(lp) if top else 0)
    best = best[np.argsort(-lp[best], kind="stable")]
    return float(lp[tok]), [(int(i), float(lp[i])) for i in best]


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


class QueueFull(Exception):
    """Every slot is busy and the waiting queue is at its bound."""


class PromptTooLong(ConfigError):
    pass


class Generator(Protocol):
    n_ctx: int  # tokens one request holds (prompt + reply)
    max_queue: int  # requests that may wait for a slot
    slots: list[Slot]
    logprobs_supported: bool  # whether Sampling.logprobs is honoured

    def submit(self, req: GenRequest) -> None:
        """Queue ``req`` (PromptTooLong, QueueFull); its events come from the worker thread."""

    def busy(self) -> tuple[int, int]:
        """(requests in a slot, requests waiting)."""

    def tokenize(self, text: str, special: bool = True) -> list[int]:
        """Text → ids, no BOS added; ``special``: control-token texts become their ids (a rendered chat),
        else every character is text (client text)."""

    @property
    def n_vocab(self) -> int: ...

    def special_texts(self) -> list[str]:
        """The texts only special-token parsing turns into one id (what client text must not forge)."""

    def piece(self, tok: int) -> bytes:
        """The bytes token ``tok`` stands for."""

    def stop_ids(self, texts: Sequence[str]) -> frozenset[int]:
        """The ids of ``texts`` that are one token each, and end of sequence."""

    def figures(self) -> dict[str, Any]:
        """The runner's engine-reported memory (Runner.figures)."""

    def close(self) -> None:
        """End every request (``cancelled``), stop the worker, free the engine."""


@dataclass(frozen=True)
class GenOptions:
    """How a generator serves, beyond how its runner loads (RunOptions)."""

    slots: int = 1  # requests decoded together
    max_queue: int = 16  # requests that may wait for a slot
    prefix_file: Optional[Path] = None  # where a shared prompt prefix's state is kept (Backend.prefix_cache)
    prefix_key: str = ""  # the artifact's sha256, which that file must name


class MakeGenerator(Protocol):
    def __call__(self, path: Path, opts: RunOptions, gen: GenOptions) -> Generator:
        """Load ``path`` and start the worker (a ConfigError for what the engine cannot serve)."""


class Slot:
    """One sequence a generator decodes; ``req`` is None while it is free. A backend keeps its own
    per-request state (a sampler, the last token) on the slot too."""

    def __init__(self, seq: int):
        self.seq = seq
        self.req: Optional[GenRequest] = None
        self.pos = self.n_gen = self.cached = 0
        self.last = -1
        self.t_first: Optional[float] = None
        self.t_start = 0.0
        self.utf8: Any = None

    def start(self, req: GenRequest, cached: int) -> None:
        self.req, self.pos, self.n_gen, self.last, self.cached = req, cached, 0, -1, cached
        self.t_first = None
        self.t_start = time.perf_counter()
        self.utf8 = codecs.getincrementaldecoder("utf-8")("replace")

    @property
    def prefilling(self) -> bool:
        return self.req is not None and self.pos < len(self.req.prompt)


class Scheduler:
    """Slots, the bounded waiting queue and the worker thread, shared by every backend's generator."""

    n_ctx: int

    def __init__(self, slots: int, max_queue: int):
        self.slots = [Slot(i) for i in range(slots)]
        self.max_queue = max_queue
        self.waiting: queue.SimpleQueue[GenRequest] = queue.SimpleQueue()
        self.n_waiting = 0
        self.lock = threading.Condition()
        self.stopping = False
        self.jobs: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name="edgekit-engine", daemon=True)

    # -- what a backend provides
    def _start(self, slot: Slot, req: GenRequest) -> None:
        raise NotImplementedError

    def _step(self) -> None:
        raise NotImplementedError

    def _finish(self, slot: Slot, reason: str, error: str = "") -> None:
        raise NotImplementedError

    # -- shared
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

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the worker thread between steps and return its result (an engine whose arrays
        belong to the thread that made them, MLX, runs its towers there)."""
        fut: Future[Any] = Future()
        with self.lock:
            if self.stopping:
                raise RuntimeError("the engine is closed")
            self.jobs.put((fn, fut))
            self.lock.notify()
        return fut.result()

    def _run_jobs(self) -> None:
        while not self.jobs.empty():
            fn, fut = self.jobs.get_nowait()
            try:
                fut.set_result(fn())
            except BaseException as e:  # the caller's to raise
                fut.set_exception(e)

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
                while (
                    not self.stopping
                    and self.waiting.empty()
                    and self.jobs.empty()
                    and all(s.req is None for s in self.slots)
                ):
                    self.lock.wait()
                if self.stopping:
                    break
                self._admit()
            self._run_jobs()
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
        while not self.jobs.empty():
            self.jobs.get_nowait()[1].set_exception(RuntimeError("the engine is closed"))

    def _emit(self, slot: Slot, tok: int, piece: bytes, logprob: Any = None) -> Optional[str]:
        """Send the token; the finish reason when the request is complete after it."""
        req = slot.req
        assert req is not None
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

    def _stats(self, slot: Slot) -> dict[str, Any]:
        req, now = slot.req, time.perf_counter()
        assert req is not None
        first = slot.t_first or now
        return {
            "prompt_tokens": len(req.prompt),
            "cached_tokens": slot.cached,
            "completion_tokens": slot.n_gen,
            "queue_ms": (slot.t_start - req.t_submit) * 1e3,
            "ttft_ms": (first - req.t_submit) * 1e3,
            "decode_tps": (slot.n_gen - 1) / (now - first) if slot.n_gen > 1 and now > first else 0.0,
        }

    def _done(self, slot: Slot, reason: str, error: str = "") -> None:
        """Free the slot and send the request's last event (a backend's ``_finish`` ends with this)."""
        req, stats = slot.req, self._stats(slot)
        assert req is not None
        slot.req = None
        req.on_event(Event("done", finish_reason=reason, stats=stats, text=error))

    def close(self) -> None:
        with self.lock:
            self.stopping = True
            self.lock.notify()
        if self.thread.is_alive():
            self._wait_stopped()

    def _wait_stopped(self) -> None:
        self.thread.join()
