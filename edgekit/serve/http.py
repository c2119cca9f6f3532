"""``edgekit serve``: an OpenAI-compatible HTTP API (starlette on uvicorn) over edgekit's own engine.

Why not llama-cpp-python's server (llama_cpp.server, 0.3.36): its settings have no lazy mode (Gemma 4's
PLE table would be resident: +1.8 GB on E2B), no repack switch (``use_extra_bufts``: +1 GB anonymous on
Q4_0) and no swa_full; it runs one ``Llama`` behind a lock (no parallel slots, no bounded queue), and it
returns Gemma 4 tool calls as raw text (its issue 2227). Those are the knobs the pi5 budget depends on.

Routes: POST /v1/chat/completions (SSE with ``stream``), POST /v1/completions, GET /v1/models,
GET /health, GET /props (what is served, with which knobs, and the peak RSS so far). Errors are
OpenAI-shaped ``{"error": {"message", "type", "code"}}``: 400 for a body that fails its schema
(serve/schema.py: the message names the field), an option not implemented (named) or a prompt longer than
the context; 404 for another model's name with ``--strict-model`` (any name is served otherwise, as
llama-server does with one model); 401/403/408/413 from serve/guard.py (key, Host/Origin, slow or big
body); 503 with Retry-After when every slot is busy and the queue is full. Nothing is queued before the
body passed; a client that disconnects cancels its generation (its slot is free at the next engine
step). Thinking: ``chat_template_kwargs: {"enable_thinking": true}`` (as vLLM and llama.cpp's server
take it) or a top-level ``enable_thinking``; the reply's thinking is ``reasoning_content``. The
replies' shapes (choices, SSE chunks, usage, logprobs) are serve/replies.py's.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Optional

from starlette.applications import Starlette
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from ..backends.engines import ENGINES
from ..builder.manifest import versions
from ..core.errors import ConfigError, EdgekitError
from ..core.host import host_info
from .feed import _Feed
from .generate import Event, PromptTooLong, QueueFull, Sampling
from .guard import Guard, Policy
from .media import MediaError
from .media_parts import has_media
from .replies import chat_choices, chat_sse, completion_sse, until_stop, usage
from .schema import Invalid, check_media, parse_body
from .session import Session, peak_rss_bytes
from .towers import Busy as MediaBusy

log = logging.getLogger(__name__)
RETRY_AFTER_S = 1


class BadRequest(Exception):
    def __init__(self, message: str, status: int = 400, code: str = "invalid_request_error"):
        super().__init__(message)
        self.message, self.status, self.code = message, status, code


def _error(message: str, status: int, code: str, headers: Optional[dict[str, str]] = None) -> Any:
    return JSONResponse(
        {"error": {"message": message, "type": code, "code": status}}, status_code=status, headers=headers
    )


def _sampling(req: Any, n_vocab: int) -> Sampling:
    """The validated request's sampling; no seed (or llama.cpp's -1) is a fresh random one per request,
    as OpenAI and llama-server do, so two requests at temperature 1.5 differ."""
    if req.top_k is not None and req.top_k > n_vocab:
        raise BadRequest(f"top_k: at most the vocabulary's {n_vocab} tokens, got {req.top_k}")
    seed = secrets.randbits(32) if req.seed in (None, -1) else req.seed & 0xFFFFFFFF
    cap = req.token_cap
    return Sampling(
        max_tokens=256 if cap is None else cap,
        temperature=1.0 if req.temperature is None else req.temperature,
        seed=seed,
        top_p=1.0 if req.top_p is None else req.top_p,
        top_k=req.top_k or 0,
        min_p=req.min_p or 0.0,
    )


class App:
    def __init__(self, session: Session, strict_model: bool = False, max_prompt_chars: Optional[int] = None):
        self.s = session
        self.created = int(time.time())
        self.strict_model = strict_model
        # A token is rarely over 16 characters: a prompt past this cannot fit and is refused before
        # parsing its template or tokenizing (a 50 MB prompt took 32.7 s and 3,850 MB to refuse).
        self.max_chars = max_prompt_chars or 16 * session.n_ctx
        # JSON parsing, the template and the tokenizer run here, off the event loop (/health answers
        # meanwhile); one worker, so a flood of big prompts queues instead of taking every core.
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="edgekit-prompt")
        self.live: dict[int, Any] = {}  # id → request in the engine, for a shutdown's cancel_all

    # -- plumbing
    async def _parse(self, request: Any, kind: str) -> Any:
        """The body as the kind's schema (schema.py): a 400 naming the field, nothing queued before."""
        raw = await request.body()
        try:
            req, chars = await asyncio.get_running_loop().run_in_executor(self.pool, parse_body, raw, kind)
        except Invalid as e:
            raise BadRequest(str(e)) from None
        if self.strict_model and req.model not in (None, "", self.s.model):
            raise BadRequest(
                f"model {req.model!r} does not exist; this server serves {self.s.model!r} (GET /v1/models)",
                404,
                "model_not_found",
            )
        for name, why in req.refused():
            raise BadRequest(f"{name}: {why}", code="unsupported_parameter")
        if chars > self.max_chars:
            raise BadRequest(
                f"the request holds {chars:,} characters of text; this server takes at most "
                f"{self.max_chars:,} (context {self.s.n_ctx} tokens, --max-prompt-chars)",
                code="context_length_exceeded",
            )
        return req

    def _grammar(self, body: Any) -> str:
        """response_format as llama.cpp grammar (constrained sampling), or a 400 naming it."""
        check = getattr(self.s.engine, "grammar_error", None)
        if check is None:
            raise BadRequest(
                f"response_format: {body.response_format.type} needs grammar-constrained sampling, "
                f"which the {self.s.engine_name or 'this'} engine does not have",
                code="unsupported_parameter",
            )
        try:
            gbnf = body.response_format.gbnf()
        except ValueError as e:
            raise BadRequest(f"response_format.json_schema.schema: {e}") from None
        why = check(gbnf)
        if why:
            raise BadRequest(f"response_format.json_schema.schema: {why}")
        return gbnf

    def cancel_all(self) -> None:
        """Shutdown: end every request in the engine now (each stream then ends with its finish chunk
        and [DONE]; a whole reply is sent with what it has)."""
        for r in list(self.live.values()):
            r.cancel()

    def _submit(
        self,
        ids: list[int],
        sampling: Sampling,
        prefix_len: int,
        stream: bool,
        ignore_eos: bool = False,
        media: tuple[Any, ...] = (),
    ) -> tuple[Any, _Feed]:
        """``stream``: the feed wakes the coroutine for each token (a stream, or stop sequences to scan)."""
        q = _Feed(eager=stream)
        req = self.s.request(ids, sampling, prefix_len, q.put, stop=not ignore_eos)
        req.media = media
        try:
            self.s.engine.submit(req)
        except QueueFull as e:
            raise BadRequest(f"server busy: {e}; retry after {RETRY_AFTER_S} s", 503, "server_busy") from None
        except PromptTooLong as e:
            raise BadRequest(e.message, code="context_length_exceeded") from None
        self.live[id(req)] = req
        return req, q

    def _submit_n(
        self,
        n: int,
        ids: list[int],
        sampling: Sampling,
        prefix_len: int,
        stream: bool,
        ignore_eos: bool,
        media: tuple[Any, ...] = (),
    ) -> list[tuple[Any, _Feed]]:
        """``n`` choices: n requests, the i-th seeded seed + i (n equal replies at temperature 0, as
        OpenAI's); all or none: a full queue part-way cancels those already in."""
        subs: list[tuple[Any, _Feed]] = []
        try:
            for i in range(n):
                sub = Sampling(**{**sampling.__dict__, "seed": (sampling.seed + i) & 0xFFFFFFFF})
                subs.append(self._submit(ids, sub, prefix_len, stream, ignore_eos, media))
        except BaseException:
            for r, _ in subs:
                r.cancel()
                self.live.pop(id(r), None)
            raise
        return subs

    async def _collect(self, request: Any, req: Any, q: _Feed, stops: list[str]) -> tuple[list[Event], Event]:
        """Every token of a non-streamed reply; cancels the generation if the client goes away."""

        async def watch() -> None:
            while not await request.is_disconnected():
                await asyncio.sleep(0.25)
            req.cancel()

        # Not asyncio.wait_for(q.get(), timeout): on Python 3.11 a timeout racing a put loses the item
        # (a request then hung once in ~60 here, its "done" event gone).
        watcher = asyncio.ensure_future(watch())
        try:
            if stops:
                events = [e async for batch in until_stop(q, req, stops) for e in batch]
            else:
                events = await q.take()  # all of them: this feed wakes us for the last one only
            return events[:-1], events[-1]
        finally:
            watcher.cancel()

    # -- routes
    async def health(self, request: Any) -> Any:
        busy, waiting = self.s.engine.busy()
        return JSONResponse(
            {
                "status": "ok",
                "model": self.s.model,
                "slots": len(self.s.engine.slots),
                "busy": busy,
                "waiting": waiting,
                "n_ctx": self.s.n_ctx,
            }
        )

    async def props(self, request: Any) -> Any:
        """What is served and how (as llama.cpp's server's /props): the artifact, knobs, threads and
        context applied, the engine's memory figures and this process's peak RSS so far."""
        s, a = self.s, self.s.artifact
        if not hasattr(self, "_host"):  # reading the host's CPU and RAM once is enough
            self._host, self._versions = host_info(), versions()
        figures = s.engine.figures() if hasattr(s.engine, "figures") else {}
        return JSONResponse(
            {
                "model": s.model,
                "model_name": s.model_name,
                "engine": s.engine_name,
                "format": s.format,
                "artifact": None
                if a is None
                else {"file": a.file, "sha256": a.sha256, "bytes": a.bytes, "quant": a.quant, "format": a.format},
                "target": s.target,
                "threads": s.threads,
                "n_ctx": s.n_ctx,
                "slots": len(s.engine.slots),
                "runtime": s.runtime,
                "load_ms": s.load_ms,
                "budget_bytes": s.budget_bytes,
                # as llama-server's /props: what the projector serves (serve/towers.py)
                "modalities": {"vision": "vision" in s.towers, "audio": "audio" in s.towers},
                "mmproj": None if s.media is None else s.media.mmproj.name,
                # towers = on_demand (a llama.cpp knob): loaded per prompt with media, freed once it is encoded
                "towers": None if s.media is None else s.media.state(),
                "peak_rss_bytes": peak_rss_bytes(),
                "kv_cache_bytes": figures.get("kv_cache_bytes"),
                "compute_buffer_bytes": figures.get("compute_buffer_bytes"),
                "host": self._host,
                "versions": self._versions,
                "hostname": socket.gethostname(),
                "pid": os.getpid(),
                "engine_version": self._versions.get(ENGINES.get(s.engine_name).version_key, "")
                if s.engine_name
                else "",
            }
        )

    async def models(self, request: Any) -> Any:
        return JSONResponse(
            {
                "object": "list",
                "data": [
                    {
                        "id": self.s.model,
                        "object": "model",
                        "created": self.created,
                        "owned_by": "edgekit",
                        "modalities": ["text", *(t for t in ("vision", "audio") if t in self.s.towers)],
                    }
                ],
            }
        )

    async def chat(self, request: Any) -> Any:
        body = await self._parse(request, "chat")
        try:
            check_media(body, self.s.towers)
        except Invalid as e:
            raise BadRequest(str(e)) from None
        sampling = _sampling(body, self.s.engine.n_vocab)
        if body.logprobs:
            if not getattr(self.s.engine, "logprobs_supported", False):
                raise BadRequest(
                    f"logprobs: not available on the {self.s.engine_name or 'this'} engine",
                    code="unsupported_parameter",
                )
            sampling.logprobs = body.top_logprobs or 0
        if body.response_format is not None and body.response_format.type != "text":
            sampling.grammar = await asyncio.get_running_loop().run_in_executor(self.pool, self._grammar, body)
        messages = [m.plain() for m in body.messages]
        tools = (
            [t.model_dump(exclude_none=True) for t in body.tools] if body.tools and body.tool_choice != "none" else None
        )
        media: tuple[Any, ...] = ()
        try:
            if self.s.media is not None and has_media(messages):
                ids, prefix_len, media = await self.s.media.prompt(messages, tools, body.thinking)
            else:
                ids, prefix_len = await asyncio.get_running_loop().run_in_executor(
                    self.pool, lambda: self.s.prompt(messages, tools=tools, enable_thinking=body.thinking)
                )
        except MediaBusy as e:
            raise BadRequest(f"server busy: {e}; retry after {RETRY_AFTER_S} s", 503, "server_busy") from None
        except PromptTooLong as e:
            raise BadRequest(e.message, code="context_length_exceeded") from None
        except (ConfigError, MediaError) as e:  # media: corrupt, unsupported or over a limit
            raise BadRequest(e.message) from None
        stops = body.stops
        room = len(self.s.engine.slots) + getattr(self.s.engine, "max_queue", 0)
        if (body.n or 1) > room:
            raise BadRequest(f"n: at most {room} choices on this server (--parallel + --queue), got {body.n}")
        subs = self._submit_n(
            body.n or 1, ids, sampling, prefix_len, body.stream or bool(stops), body.ignore_eos, media
        )
        try:
            rid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
            base = {"id": rid, "created": created, "model": self.s.model}
            if body.stream:
                include_usage = bool(body.stream_options and body.stream_options.include_usage)
                return StreamingResponse(
                    chat_sse(subs, base, include_usage, stops, self.s.engine, self.live),
                    media_type="text/event-stream",
                    headers={"Cache-Control": "no-cache"},
                )
            results = await asyncio.gather(*(self._collect(request, r, q, stops) for r, q in subs))
        except BaseException:
            for r, _ in subs:
                r.cancel()  # nothing will read it: free the slot at the next engine step
            raise
        finally:
            if not body.stream:
                for r, _ in subs:
                    self.live.pop(id(r), None)
        choices = chat_choices(results, rid, bool(body.logprobs), self.s.engine)
        return JSONResponse(
            {
                **base,
                "object": "chat.completion",
                "choices": choices,
                "usage": usage(*(done.stats for _, done in results)),
            }
        )

    async def completions(self, request: Any) -> Any:
        body = await self._parse(request, "completions")
        sampling = _sampling(body, self.s.engine.n_vocab)
        bos = self.s.template.bos_token
        prompt = body.prompt
        # A raw prompt is the client's whole text, template markers included (as llama-server's
        # /completion parses them): special tokens are parsed here, unlike chat messages.
        ids = await asyncio.get_running_loop().run_in_executor(
            self.pool, self.s.engine.tokenize, prompt if prompt.startswith(bos) else bos + prompt
        )
        stops = body.stops
        req, q = self._submit(ids, sampling, 0, body.stream or bool(stops), body.ignore_eos)
        base = {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": self.s.model}
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(
                completion_sse(req, q, base, stops, include_usage, self.live), media_type="text/event-stream"
            )
        try:
            tokens, done = await self._collect(request, req, q, stops)
        finally:
            req.cancel()
            self.live.pop(id(req), None)
        return JSONResponse(
            {
                **base,
                "object": "text_completion",
                "usage": usage(done.stats),
                "choices": [{"index": 0, "text": "".join(e.text for e in tokens), "finish_reason": done.finish_reason}],
            }
        )


def make_app(
    session: Session,
    policy: Optional[Policy] = None,
    strict_model: bool = False,
    max_prompt_chars: Optional[int] = None,
) -> Any:
    a = App(session, strict_model=strict_model, max_prompt_chars=max_prompt_chars)

    def guarded(fn: Any) -> Any:
        async def handler(request: Any) -> Any:
            try:
                return await fn(request)
            except BadRequest as e:
                headers = {"Retry-After": str(RETRY_AFTER_S)} if e.status == 503 else None
                return _error(e.message, e.status, e.code, headers)
            except EdgekitError as e:
                return _error(e.message, 500, "server_error")

        return handler

    app = Starlette(
        routes=[
            Route("/health", guarded(a.health), methods=["GET"]),
            Route("/v1/models", guarded(a.models), methods=["GET"]),
            Route("/props", guarded(a.props), methods=["GET"]),
            Route("/v1/chat/completions", guarded(a.chat), methods=["POST"]),
            Route("/v1/completions", guarded(a.completions), methods=["POST"]),
        ]
    )
    app.state.api = a
    return Guard(app, policy or Policy())
