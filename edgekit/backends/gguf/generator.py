"""llama.cpp's generator: several requests decoded together in one context, on the runner's C API.

One context holds ``slots`` sequences in one unified KV buffer, decoded together in one batch per step
(a token per decoding sequence, prompt chunks of the prefilling ones), each with its own sampler chain
(llama.cpp's: greedy at temperature 0, else top-k → top-p → temperature → seeded dist). One context
rather than one per slot: a context's compute buffer (68 MB on E2B at ubatch 64, docs/e2b.md) would be
paid per slot; here the KV cache grows by one sequence's cells per slot. A finished sequence's cells
are removed (``llama_memory_seq_rm``), so memory does not grow with requests served. A shareable
prefix (the system turn) is kept in an extra sequence and copied into a slot's sequence
(``llama_memory_seq_cp`` only tags the cells) when a prompt starts with it; ``prefix_file`` saves it
with ``llama_state_seq_save_file`` and loads it at start, so a restart does not prefill it again.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ...core.errors import BenchError
from ..generator import REPEAT_LAST_N, GenOptions, GenRequest, Scheduler, Slot, logprobs_of
from ..runner import RunOptions
from . import prefix_cache
from .runner import LlamaCppRunner

log = logging.getLogger(__name__)
# LLAMA_TOKEN_ATTR_CONTROL: what only special-token parsing matches (user-defined tokens, such as
# Gemma's runs of newlines, are matched in plain text too and mean nothing more than their text)
L_ATTR_CONTROL = 1 << 3


def sampler_chain(L: Any, ctx: Any, vocab: Any, req: GenRequest) -> Any:
    """The request's llama.cpp sampler chain (freed with llama_sampler_free when the request ends)."""
    s = req.sampling
    smpl = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
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
        L.llama_sampler_chain_add(smpl, pen)
    if s.grammar:  # the rest sample among the tokens the grammar allows (checked by grammar_error)
        L.llama_sampler_chain_add(smpl, L.llama_sampler_init_grammar(vocab, s.grammar.encode(), b"root"))
    if s.temperature <= 0:
        L.llama_sampler_chain_add(smpl, L.llama_sampler_init_greedy())
    else:
        if s.top_k > 0:
            L.llama_sampler_chain_add(smpl, L.llama_sampler_init_top_k(s.top_k))
        if s.top_p < 1.0:
            L.llama_sampler_chain_add(smpl, L.llama_sampler_init_top_p(s.top_p, 1))
        if s.min_p > 0.0:
            L.llama_sampler_chain_add(smpl, L.llama_sampler_init_min_p(s.min_p, 1))
        L.llama_sampler_chain_add(smpl, L.llama_sampler_init_temp(s.temperature))
        L.llama_sampler_chain_add(smpl, L.llama_sampler_init_dist(s.seed & 0xFFFFFFFF))
    return smpl


class LlamaGenerator(Scheduler):
    logprobs_supported = True  # the logits of each sampled row are at hand

    def __init__(self, path: Path, opts: RunOptions, gen: GenOptions):
        super().__init__(gen.slots, gen.max_queue)
        slots = gen.slots
        self.n_ctx = opts.ctx
        self.prefix_seq = slots  # the extra sequence holding the cached prefix
        self.runner = LlamaCppRunner()
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
        self.prefix_file = Path(gen.prefix_file) if gen.prefix_file else None
        self.prefix_key = gen.prefix_key
        self._special: Optional[list[str]] = None
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
        return int(self.L.llama_vocab_n_tokens(self.vocab))

    def special_texts(self) -> list[str]:
        """The texts only special-token parsing turns into one id: the control tokens."""
        if self._special is None:
            L, v = self.L, self.vocab
            self._special = [
                L.llama_vocab_get_text(v, i).decode("utf-8", "replace")
                for i in range(self.n_vocab)
                if L.llama_vocab_get_attr(v, i) & L_ATTR_CONTROL
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

    def _keep_prefix(self, slot: Slot) -> None:
        """The slot has just prefilled its prompt's shareable prefix: keep a copy of those cells."""
        req = slot.req
        assert req is not None
        n = req.prefix_len
        self.L.llama_memory_seq_rm(self.mem, self.prefix_seq, -1, -1)
        self.L.llama_memory_seq_cp(self.mem, slot.seq, self.prefix_seq, 0, n)
        self.prefix = list(req.prompt[:n])
        if self.prefix_file:
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

    # -- the scheduler's three steps
    def _start(self, slot: Slot, req: GenRequest) -> None:
        self.L.llama_memory_seq_rm(self.mem, slot.seq, -1, -1)
        cached = 0
        p = len(self.prefix)
        if req.prefix_len and p and req.prefix_len == p and req.prompt[:p] == self.prefix and len(req.prompt) > p:
            self.L.llama_memory_seq_cp(self.mem, self.prefix_seq, slot.seq, -1, -1)
            cached = p
        slot.start(req, cached)
        slot.smpl = sampler_chain(self.L, self.ctx, self.vocab, req)  # type: ignore[attr-defined]

    def _finish(self, slot: Slot, reason: str, error: str = "") -> None:
        self.L.llama_memory_seq_rm(self.mem, slot.seq, -1, -1)
        self.L.llama_sampler_free(slot.smpl)  # type: ignore[attr-defined]
        self._done(slot, reason, error)

    def _step(self) -> None:
        L, b = self.L, self.batch
        for s in self.slots:
            if s.req is not None and s.req.cancelled.is_set():
                self._finish(s, "cancelled")
        rows: list[tuple[Slot, int]] = []  # (slot, batch row whose logits it samples)
        n = 0
        for s in self.slots:  # decoding sequences first: one token each
            if s.req is not None and not s.prefilling and n < self.n_batch:
                self._put(n, s.last, s.pos, s.seq, True)
                rows.append((s, n))
                s.pos += 1
                n += 1
        for s in self.slots:  # then prompt chunks, up to the batch
            if s.prefilling and n < self.n_batch:
                req = s.req
                assert req is not None
                end = len(req.prompt)
                if req.prefix_len and s.pos < req.prefix_len and req.prompt[: req.prefix_len] != self.prefix:
                    end = req.prefix_len  # stop at the prefix, to keep its cells before the rest lands
                for m in req.media:  # a medium here is decoded now (its own llama_decode); text stops at the next
                    if m.start == s.pos:
                        s.pos = m.decode(self.ctx, s.seq, s.pos, self.n_batch)
                    elif m.start > s.pos:
                        end = min(end, m.start)
                        break
                take = min(end - s.pos, self.n_batch - n)
                for i in range(take):
                    last = s.pos + i == len(req.prompt) - 1
                    self._put(n, req.prompt[s.pos + i], s.pos + i, s.seq, last)
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
            assert s.req is not None
            tok = L.llama_sampler_sample(s.smpl, self.ctx, row)  # type: ignore[attr-defined]
            s.last = tok
            lp = self._logprob(row, tok, s.req.sampling.logprobs) if s.req.sampling.logprobs >= 0 else None
            reason = self._emit(s, tok, self.piece(tok), lp)
            if reason:
                self._finish(s, reason)

    def _logprob(self, row: int, tok: int, top: int) -> tuple[float, list[tuple[int, float]]]:
        """``tok``'s log-probability at batch row ``row`` and the ``top`` likeliest (backends.generator)."""
        return logprobs_of(
            np.ctypeslib.as_array(self.L.llama_get_logits_ith(self.ctx, row), shape=(self.n_vocab,)), tok, top
        )

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
