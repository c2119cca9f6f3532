"""MLX's generator: the MLX runner's prefill and decode steps (generate_step's chunking) with mlx-lm's
samplers, one request at a time (one slot)."""

from __future__ import annotations

import queue
import signal
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional, cast

import numpy as np

from ...core.errors import ConfigError
from ..generator import REPEAT_LAST_N, GenOptions, GenRequest, Sampling, Scheduler, Slot, logprobs_of
from ..runner import RunOptions
from .media import prefill_media
from .runner import MlxRunner


class MlxGenerator(Scheduler):
    """One request at a time: the runner's prefill/decode with mlx-lm's samplers."""

    logprobs_supported = True  # from the raw logits, before the sampler (backends.generator.logprobs_of)

    def __init__(self, path: Path, opts: RunOptions, gen: GenOptions):
        if gen.slots > 1:
            raise ConfigError("the MLX engine serves one request at a time; use --parallel 1 with an MLX artifact")
        super().__init__(1, gen.max_queue)
        from transformers import AutoTokenizer  # deferred: heavy (and torch where installed): only when serving MLX

        self.n_ctx = opts.ctx
        self.runner = MlxRunner()
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
            # inside the destructor and the process aborts (exit 134 on every `edgekit run` of an MLX
            # artifact). A parked daemon thread is simply gone at exit, without thread-local destructors.
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
        text = cast(str, self.tok.convert_ids_to_tokens(tok))  # one id in: one token's text out
        return self.tok.convert_tokens_to_string([text]).encode("utf-8")

    def stop_ids(self, texts: Sequence[str]) -> frozenset[int]:
        ids = {self.tok.convert_tokens_to_ids(t) for t in texts}
        return frozenset(i for i in ids if isinstance(i, int) and i >= 0 and i != self.tok.unk_token_id)

    def figures(self) -> dict[str, Any]:
        return self.runner.figures()

    def _start(self, slot: Slot, req: GenRequest) -> None:
        slot.start(req, 0)

    def _finish(self, slot: Slot, reason: str, error: str = "") -> None:
        self._done(slot, reason, error)

    def _step(self) -> None:
        # deferred: the engine, imported on the worker thread that runs it
        import mlx.core as mx
        from mlx_lm.sample_utils import make_sampler

        slot = self.slots[0]
        if slot.req is None:
            return
        req, s = slot.req, slot.req.sampling
        mx.random.seed(s.seed)
        sampler = make_sampler(temp=s.temperature, top_p=s.top_p if s.top_p < 1 else 0.0, top_k=s.top_k, min_p=s.min_p)
        self._generate(slot, req, s, sampler)

    def _generate(self, slot: Slot, req: GenRequest, s: Sampling, sampler: Any) -> None:
        # The runner's own prefill (generate_step's chunking: all but the last token, then the last) and
        # decode steps, sampled with mlx-lm's sampler. Not generate_step itself: it runs on a stream
        # mlx-lm makes when imported, in whichever thread imports it first.
        import mlx.core as mx  # deferred: the engine (see _step)

        r = self.runner
        r.reset()
        if req.media:  # images/audio: their soft tokens in place of the prompt's -1 positions
            prefill_media(r, req.prompt, req.media)
        else:
            r.prefill(req.prompt)
        reason = "length"
        penalize = None
        if s.repeat_penalty != 1.0:  # mlx-lm's processor over the same window as llama.cpp's
            from mlx_lm.sample_utils import make_logits_processors  # deferred: the engine (see _step)

            penalize = make_logits_processors(
                repetition_penalty=s.repeat_penalty, repetition_context_size=REPEAT_LAST_N
            )[0]
            seen = [t for t in req.prompt if t >= 0][-REPEAT_LAST_N:]  # media positions hold -1
        for _ in range(s.max_tokens):
            if req.cancelled.is_set():
                reason = "cancelled"
                break
            # raw logits for logprobs, copied first: mlx-lm's repetition penalty writes into the array it gets
            raw = np.array(r.logits.astype(mx.float32)) if s.logprobs >= 0 else None
            logits = r.logits if penalize is None else penalize(mx.array(seen[-REPEAT_LAST_N:]), r.logits)
            tok = int(sampler(logits).item())
            if penalize is not None:
                seen.append(tok)
            lp = logprobs_of(raw, tok, s.logprobs) if raw is not None else None
            done = self._emit(slot, tok, self.piece(tok), lp)
            if done:
                reason = done
                break
            r.decode(tok)
        mx.clear_cache()
        self._finish(slot, reason)
