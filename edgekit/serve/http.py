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
take it) or a top-level ``enable_thinking``; the reply's thinking is ``reasoning_content``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import socket
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, Optional

from ..backends.engines import ENGINES
from ..core.errors import ConfigError, EdgekitError
from .chat import StopScanner, StreamSplitter, parse_reply
from .feed import TEXT, _Feed, _sse_writer
from .generate import Event, PromptTooLong, QueueFull, Sampling
from .guard import Guard, Policy
from .media import MediaError
from .media_parts import has_media
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
    from starlette.responses import JSONResponse

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
        from concurrent.futures import ThreadPoolExecutor

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

    @staticmethod
    async def _events(q: _Feed, req: Any, stops: list[str]) -> AsyncIterator[list[Event]]:
        """``q.stream()`` cut at the first stop sequence: the generation is cancelled there, the text
        before it goes out, and the last event says "stop"."""
        if not stops:
            async for batch in q.stream():
                yield batch
            return
        scan = StopScanner(stops)
        async for batch in q.stream():
            out = []
            for e in batch:
                if e.kind == "token":
                    text = scan.feed(e.text)
                    if scan.hit:
                        req.cancel()
                    if text:
                        out.append(Event("token", e.token, text, logprob=e.logprob))
                    continue
                tail = scan.rest()
                if tail:
                    out.append(Event("token", -1, tail))
                out.append(Event("done", finish_reason="stop", stats=e.stats) if scan.hit else e)
            if out:
                yield out

    def _logprobs(self, tokens: list[Event]) -> dict[str, Any]:
        """OpenAI's ``logprobs.content``: each generated token (thinking and tool-call markup included:
        the engine does not tell them apart) with the model's log-probability and the likeliest others."""

        def one(tok: int, lp: float) -> dict[str, Any]:
            raw = self.s.engine.piece(tok)
            return {"token": raw.decode("utf-8", "replace"), "logprob": lp, "bytes": list(raw)}

        return {
            "content": [
                {**one(e.token, e.logprob[0]), "top_logprobs": [one(t, lp) for t, lp in e.logprob[1]]}
                for e in tokens
                if e.logprob is not None and e.token >= 0
            ]
        }

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
                events = [e async for batch in self._events(q, req, stops) for e in batch]
            else:
                events = await q.take()  # all of them: this feed wakes us for the last one only
            return events[:-1], events[-1]
        finally:
            watcher.cancel()

    @staticmethod
    def _usage(stats: dict[str, Any], *more: dict[str, Any]) -> dict[str, Any]:
        """OpenAI's usage: the prompt once, the completion tokens of every choice (``n``) together."""
        done = stats.get("completion_tokens", 0) + sum(m.get("completion_tokens", 0) for m in more)
        return {
            "prompt_tokens": stats.get("prompt_tokens", 0),
            "completion_tokens": done,
            "total_tokens": stats.get("prompt_tokens", 0) + done,
            "prompt_tokens_details": {"cached_tokens": stats.get("cached_tokens", 0)},
        }

    # -- routes
    async def health(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

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
        from starlette.responses import JSONResponse

        from ..builder.manifest import versions
        from ..core.host import host_info

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
        from starlette.responses import JSONResponse

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
        from starlette.responses import JSONResponse, StreamingResponse

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
                usage = bool(body.stream_options and body.stream_options.include_usage)
                return StreamingResponse(
                    self._chat_sse(subs, base, usage, stops),
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
        choices = []
        for i, (tokens, done) in enumerate(results):
            reply = parse_reply("".join(e.text for e in tokens))
            msg: dict[str, Any] = {"role": "assistant", "content": reply.content or (None if reply.tool_calls else "")}
            if reply.reasoning:
                msg["reasoning_content"] = reply.reasoning
            if reply.tool_calls:
                msg["tool_calls"] = reply.openai_tool_calls(f"call_{rid[-8:]}{i or ''}")
            choices.append(
                {
                    "index": i,
                    "message": msg,
                    "finish_reason": self._reason(done, reply),
                    **({"logprobs": self._logprobs(tokens)} if body.logprobs else {}),
                }
            )
        return JSONResponse(
            {
                **base,
                "object": "chat.completion",
                "choices": choices,
                "usage": self._usage(*(done.stats for _, done in results)),
            }
        )

    @staticmethod
    def _reason(done: Event, reply: Any) -> str:
        if done.finish_reason == "error":
            return "error"
        return "tool_calls" if reply.tool_calls and done.finish_reason == "stop" else done.finish_reason

    async def _chat_sse(
        self, subs: list[tuple[Any, _Feed]], base: dict[str, Any], usage: bool, stops: list[str]
    ) -> AsyncIterator[str]:
        """The stream of every choice (``n`` > 1: their chunks interleaved as they come), then usage and
        [DONE]."""
        head = {**base, "object": "chat.completion.chunk"}
        stats: list[dict[str, Any]] = [{} for _ in subs]
        try:
            if len(subs) == 1:
                async for text in self._choice_sse(0, *subs[0], head, stops, stats):
                    yield text
            else:
                merged: asyncio.Queue[Optional[str]] = asyncio.Queue()

                async def pump(i: int) -> None:
                    try:
                        async for text in self._choice_sse(i, *subs[i], head, stops, stats):
                            await merged.put(text)
                    finally:
                        await merged.put(None)

                tasks = [asyncio.ensure_future(pump(i)) for i in range(len(subs))]
                try:
                    left = len(subs)
                    while left:
                        text = await merged.get()
                        if text is None:
                            left -= 1
                        else:
                            yield text
                finally:
                    for t in tasks:
                        t.cancel()
            tail = ""
            if usage:
                tail = "data: " + json.dumps({**head, "choices": [], "usage": self._usage(*stats)}) + "\n\n"
            yield tail + "data: [DONE]\n\n"
        finally:
            for r, _ in subs:
                r.cancel()  # a disconnect closes this generator mid-stream: free the slots
                self.live.pop(id(r), None)

    async def _choice_sse(
        self, index: int, req: Any, q: _Feed, head: dict[str, Any], stops: list[str], stats: list[dict[str, Any]]
    ) -> AsyncIterator[str]:
        def chunk(delta: dict[str, Any], finish: Optional[str] = None, **extra: Any) -> str:
            return (
                "data: "
                + json.dumps(
                    {**head, "choices": [{"index": index, "delta": delta, "finish_reason": finish, **extra}]},
                    ensure_ascii=False,
                )
                + "\n\n"
            )

        # The tokens that arrived together go out as one delta per run of content (or of thinking):
        # joined, they are the text the tokens one by one would have given.
        write = {
            kind: _sse_writer({**head, "choices": [{"index": index, "delta": {key: TEXT}, "finish_reason": None}]})
            for kind, key in (("content", "content"), ("reasoning", "reasoning_content"))
        }
        split = StreamSplitter()
        yield chunk({"role": "assistant", "content": ""})
        async for batch in self._events(q, req, stops):
            e = batch[-1]
            pieces = split.feed("".join(x.text for x in batch if x.kind == "token"))
            out = []
            for i, (kind, text) in enumerate(pieces):
                if i and pieces[i - 1][0] == kind:
                    out[-1] = (kind, out[-1][1] + text)
                else:
                    out.append((kind, text))
            if out:
                yield "".join(write[kind](text) for kind, text in out)
            if req.sampling.logprobs >= 0 and any(x.logprob is not None for x in batch):
                yield chunk({}, logprobs=self._logprobs([x for x in batch if x.kind == "token"]))
        tail = [write[kind](text) for kind, text in split.rest()]
        reply = split.finish()
        if reply.tool_calls:
            calls = reply.openai_tool_calls(f"call_{head['id'][-8:]}{index or ''}")
            tail.append(chunk({"tool_calls": [{"index": i, **c} for i, c in enumerate(calls)]}))
        tail.append(chunk({}, self._reason(e, reply)))
        stats[index] = e.stats
        yield "".join(tail)

    async def completions(self, request: Any) -> Any:
        from starlette.responses import JSONResponse, StreamingResponse

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
            usage = bool(body.stream_options and body.stream_options.include_usage)

            async def sse() -> AsyncIterator[str]:
                write = _sse_writer(
                    {
                        **base,
                        "object": "text_completion",
                        "choices": [{"index": 0, "text": TEXT, "finish_reason": None}],
                    }
                )
                try:
                    async for batch in self._events(q, req, stops):
                        e = batch[-1]
                        text = "".join(x.text for x in batch if x.kind == "token")
                        if text:
                            yield write(text)
                    yield (
                        "data: "
                        + json.dumps(
                            {
                                **base,
                                "object": "text_completion",
                                "choices": [{"index": 0, "text": "", "finish_reason": e.finish_reason}],
                            }
                        )
                        + "\n\n"
                    )
                    if usage:
                        yield (
                            "data: "
                            + json.dumps(
                                {**base, "object": "text_completion", "choices": [], "usage": self._usage(e.stats)}
                            )
                            + "\n\n"
                        )
                    yield "data: [DONE]\n\n"
                finally:
                    req.cancel()
                    self.live.pop(id(req), None)

            return StreamingResponse(sse(), media_type="text/event-stream")
        try:
            tokens, done = await self._collect(request, req, q, stops)
        finally:
            req.cancel()
            self.live.pop(id(req), None)
        return JSONResponse(
            {
                **base,
                "object": "text_completion",
                "usage": self._usage(done.stats),
                "choices": [{"index": 0, "text": "".join(e.text for e in tokens), "finish_reason": done.finish_reason}],
            }
        )


def make_app(
    session: Session,
    policy: Optional[Policy] = None,
    strict_model: bool = False,
    max_prompt_chars: Optional[int] = None,
) -> Any:
    from starlette.applications import Starlette
    from starlette.routing import Route

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
