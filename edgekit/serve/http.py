"""``edgekit serve``: an OpenAI-compatible HTTP API (starlette on uvicorn) over edgekit's own engine.

Why not llama-cpp-python's server (llama_cpp.server, 0.3.36): its settings have no lazy mode (Gemma 4's
PLE table would be resident: +1.8 GB on E2B), no repack switch (``use_extra_bufts``: +1 GB anonymous on
Q4_0) and no swa_full; it runs one ``Llama`` behind a lock (no parallel slots, no bounded queue), and it
returns Gemma 4 tool calls as raw text (its issue 2227). Those are the knobs the pi5 budget depends on.

Routes: POST /v1/chat/completions (SSE with ``stream``), POST /v1/completions, GET /v1/models,
GET /health, GET /props (what is served, with which knobs, and the peak RSS so far). Errors are OpenAI-shaped ``{"error": {"message", "type", "code"}}``: 400 for invalid JSON,
an unknown model, bad fields or a prompt longer than the context; 503 with Retry-After when every slot
is busy and the queue is full. A client that disconnects cancels its generation (its slot is free at the
next engine step). Thinking: ``chat_template_kwargs: {"enable_thinking": true}`` (as vLLM and llama.cpp's
server take it) or a top-level ``enable_thinking``; the reply's thinking is ``reasoning_content``.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import socket
import threading
import time
import uuid
from typing import Any, AsyncIterator, Optional

from .chat import StreamSplitter, parse_reply
from ..core.errors import ConfigError, EdgekitError
from .generate import Event, PromptTooLong, QueueFull, Sampling
from ..backends.engines import ENGINES
from .session import Session, peak_rss_bytes

log = logging.getLogger(__name__)
RETRY_AFTER_S = 1
# After sending a chunk, a stream lets this much pass on the loop's own timer before it takes the tokens
# that arrived meanwhile (see _Feed). Far below a token of E2B on a Pi (≈100 ms): only a model faster
# than 250 t/s has tokens to put together; the first token is never held.
COALESCE_S = 0.004


class BadRequest(Exception):
    def __init__(self, message: str, status: int = 400, code: str = "invalid_request_error"):
        super().__init__(message)
        self.message, self.status, self.code = message, status, code


def _error(message: str, status: int, code: str, headers: Optional[dict[str, str]] = None) -> Any:
    from starlette.responses import JSONResponse

    return JSONResponse({"error": {"message": message, "type": code, "code": status}}, status_code=status,
                        headers=headers)


def _sampling(body: dict[str, Any]) -> Sampling:
    def num(key: str, default: Any, kind: type, lo: float, hi: float) -> Any:
        v = body.get(key, default)
        if v is None:
            return default
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
            raise BadRequest(f"{key} must be a number in [{lo}, {hi}], got {v!r}")
        return kind(v)

    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    return Sampling(max_tokens=num(key, 256, int, 1, 1 << 20), temperature=num("temperature", 1.0, float, 0.0, 2.0),
                    seed=num("seed", 0, int, -(1 << 63), 1 << 63), top_p=num("top_p", 1.0, float, 0.0, 1.0),
                    top_k=num("top_k", 0, int, 0, 1 << 20))


def _flag(body: dict[str, Any], key: str) -> bool:
    v = body.get(key, False)
    if not isinstance(v, bool):
        raise BadRequest(f"{key} must be true or false, got {v!r}")
    return v


def _with_dict_arguments(m: dict[str, Any]) -> dict[str, Any]:
    """OpenAI clients send an assistant's tool-call arguments back as a JSON string; chat templates
    (Gemma 4's writes each argument as key:value) take a mapping."""
    calls = m.get("tool_calls")
    if not calls:
        return m
    out = []
    for c in calls:
        f = dict((c or {}).get("function") or {})
        if isinstance(f.get("arguments"), str):
            try:
                f["arguments"] = json.loads(f["arguments"] or "{}")
            except ValueError:
                raise BadRequest(f"tool call {f.get('name')!r}: arguments are not valid JSON") from None
        out.append({**c, "function": f})
    return {**m, "tool_calls": out}


def _resolve(w: "asyncio.Future[None]") -> None:
    if not w.done():
        w.set_result(None)


class _Feed:
    """One request's events, from the engine thread to the coroutine answering it.

    Not an asyncio.Queue fed by ``call_soon_threadsafe`` per token: on the tiny model (≈2.6 ms a token
    with one thread) that hand-off was 13.5% of the engine thread's samples (py-spy): the self-pipe write
    releases the GIL to the loop it wakes, and the engine waits for the loop's Python before its next
    decode. Here the engine appends to a deque and wakes the loop only when the coroutine waits on an
    empty feed (``eager``), or only for the last event (not eager: a reply sent whole needs nothing
    before it)."""

    def __init__(self, eager: bool = True):
        self.loop = asyncio.get_running_loop()
        self.eager = eager
        self.items: "collections.deque[Event]" = collections.deque()
        self.lock = threading.Lock()
        self.waiter: "Optional[asyncio.Future[None]]" = None

    def put(self, e: Event) -> None:
        """Engine thread."""
        with self.lock:
            self.items.append(e)
            w = self.waiter if self.eager or e.kind == "done" else None
            if w is not None:
                self.waiter = None
        if w is not None:
            try:
                self.loop.call_soon_threadsafe(_resolve, w)
            except RuntimeError:   # the loop has closed (shutdown): nobody is waiting any more
                pass

    async def take(self) -> list[Event]:
        """Every event that has arrived (at least one), in order."""
        while True:
            with self.lock:
                if self.items and (self.eager or self.items[-1].kind == "done"):
                    out = list(self.items)
                    self.items.clear()
                    return out
                w = self.waiter = self.loop.create_future()
            await w

    async def stream(self) -> AsyncIterator[list[Event]]:
        """Batches of events, the last ending with "done"; after each, COALESCE_S for more to arrive."""
        while True:
            batch = await self.take()
            yield batch
            if batch[-1].kind == "done":
                return
            await asyncio.sleep(COALESCE_S)


TEXT = "\0"   # where _sse_writer's document takes the text


def _sse_writer(doc: dict[str, Any]) -> Any:
    """``text -> SSE event`` of ``doc`` with the text at TEXT, the JSON around it serialized once per
    request (byte for byte what json.dumps of the whole document writes)."""
    pre, post = json.dumps(doc, ensure_ascii=False).split('"\\u0000"')
    pre, post = "data: " + pre, post + "\n\n"
    return lambda text: pre + json.dumps(text, ensure_ascii=False) + post


class App:
    def __init__(self, session: Session):
        self.s = session
        self.created = int(time.time())

    # -- plumbing
    async def _body(self, request: Any) -> dict[str, Any]:
        try:
            body = json.loads(await request.body())
        except ValueError as e:
            raise BadRequest(f"the request body is not valid JSON ({e})") from None
        if not isinstance(body, dict):
            raise BadRequest("the request body must be a JSON object")
        model = body.get("model")
        if model not in (None, "", self.s.model):
            raise BadRequest(f"unknown model {model!r}; this server serves {self.s.model!r} (GET /v1/models)",
                             code="model_not_found")
        return body

    def _submit(self, ids: list[int], sampling: Sampling, prefix_len: int, stream: bool,
                ignore_eos: bool = False) -> tuple[Any, _Feed]:
        q = _Feed(eager=stream)
        req = self.s.request(ids, sampling, prefix_len, q.put, stop=not ignore_eos)
        try:
            self.s.engine.submit(req)
        except QueueFull as e:
            raise BadRequest(f"server busy: {e}; retry after {RETRY_AFTER_S} s", 503, "server_busy") from None
        except PromptTooLong as e:
            raise BadRequest(e.message, code="context_length_exceeded") from None
        return req, q

    async def _collect(self, request: Any, req: Any, q: _Feed) -> tuple[list[str], Event]:
        """Every token of a non-streamed reply; cancels the generation if the client goes away."""
        async def watch() -> None:
            while not await request.is_disconnected():
                await asyncio.sleep(0.25)
            req.cancel()

        # Not asyncio.wait_for(q.get(), timeout): on Python 3.11 a timeout racing a put loses the item
        # (a request then hung once in ~60 here, its "done" event gone).
        watcher = asyncio.ensure_future(watch())
        try:
            events = await q.take()     # all of them: this feed wakes us for the last one only
            return [e.text for e in events[:-1]], events[-1]
        finally:
            watcher.cancel()

    @staticmethod
    def _usage(stats: dict[str, Any]) -> dict[str, Any]:
        return {"prompt_tokens": stats.get("prompt_tokens", 0), "completion_tokens": stats.get("completion_tokens", 0),
                "total_tokens": stats.get("prompt_tokens", 0) + stats.get("completion_tokens", 0),
                "prompt_tokens_details": {"cached_tokens": stats.get("cached_tokens", 0)}}

    # -- routes
    async def health(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        busy, waiting = self.s.engine.busy()
        return JSONResponse({"status": "ok", "model": self.s.model, "slots": len(self.s.engine.slots),
                             "busy": busy, "waiting": waiting, "n_ctx": self.s.n_ctx})

    async def props(self, request: Any) -> Any:
        """What is served and how (as llama.cpp's server's /props): the artifact, knobs, threads and
        context applied, the engine's memory figures and this process's peak RSS so far."""
        from starlette.responses import JSONResponse

        from ..core.host import host_info
        from ..builder.manifest import versions

        s, a = self.s, self.s.artifact
        if not hasattr(self, "_host"):   # reading the host's CPU and RAM once is enough
            self._host, self._versions = host_info(), versions()
        figures = s.engine.figures() if hasattr(s.engine, "figures") else {}
        return JSONResponse({
            "model": s.model, "model_name": s.model_name, "engine": s.engine_name, "format": s.format,
            "artifact": None if a is None else {"file": a.file, "sha256": a.sha256, "bytes": a.bytes,
                                                "quant": a.quant, "format": a.format},
            "target": s.target, "threads": s.threads, "n_ctx": s.n_ctx, "slots": len(s.engine.slots),
            "runtime": s.runtime, "load_ms": s.load_ms, "budget_bytes": s.budget_bytes,
            "peak_rss_bytes": peak_rss_bytes(), "kv_cache_bytes": figures.get("kv_cache_bytes"),
            "compute_buffer_bytes": figures.get("compute_buffer_bytes"), "host": self._host,
            "versions": self._versions, "hostname": socket.gethostname(),
            "engine_version": self._versions.get(ENGINES.get(s.engine_name).version_key, "") if s.engine_name else ""})

    async def models(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        return JSONResponse({"object": "list", "data": [{"id": self.s.model, "object": "model",
                                                         "created": self.created, "owned_by": "edgekit"}]})

    async def chat(self, request: Any) -> Any:
        from starlette.responses import JSONResponse, StreamingResponse

        body = await self._body(request)
        messages, tools = body.get("messages"), body.get("tools") or None
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) and "role" in m for m in messages):
            raise BadRequest("messages must be a non-empty list of objects with a role")
        if tools is not None and not isinstance(tools, list):
            raise BadRequest("tools must be a list")
        messages = [_with_dict_arguments(m) for m in messages]
        kw = body.get("chat_template_kwargs") or {}
        think = kw.get("enable_thinking", body.get("enable_thinking"))
        try:
            ids, prefix_len = self.s.prompt(messages, tools=tools, enable_thinking=think)
        except ConfigError as e:
            raise BadRequest(e.message) from None
        req, q = self._submit(ids, _sampling(body), prefix_len, bool(body.get("stream")), _flag(body, "ignore_eos"))
        rid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        base = {"id": rid, "created": created, "model": self.s.model}
        if body.get("stream"):
            usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return StreamingResponse(self._chat_sse(req, q, base, usage), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        texts, done = await self._collect(request, req, q)
        reply = parse_reply("".join(texts))
        msg: dict[str, Any] = {"role": "assistant", "content": reply.content or (None if reply.tool_calls else "")}
        if reply.reasoning:
            msg["reasoning_content"] = reply.reasoning
        if reply.tool_calls:
            msg["tool_calls"] = reply.openai_tool_calls(f"call_{rid[-8:]}")
        return JSONResponse({**base, "object": "chat.completion", "usage": self._usage(done.stats),
                             "choices": [{"index": 0, "message": msg, "finish_reason": self._reason(done, reply)}]})

    @staticmethod
    def _reason(done: Event, reply: Any) -> str:
        if done.finish_reason == "error":
            return "error"
        return "tool_calls" if reply.tool_calls and done.finish_reason == "stop" else done.finish_reason

    async def _chat_sse(self, req: Any, q: _Feed, base: dict[str, Any], usage: bool) -> AsyncIterator[str]:
        head = {**base, "object": "chat.completion.chunk"}

        def chunk(delta: dict[str, Any], finish: Optional[str] = None, **extra: Any) -> str:
            return "data: " + json.dumps({**head, **extra, "choices": [
                {"index": 0, "delta": delta, "finish_reason": finish}]}, ensure_ascii=False) + "\n\n"

        # The tokens that arrived together go out as one delta per run of content (or of thinking):
        # joined, they are the text the tokens one by one would have given.
        write = {kind: _sse_writer({**head, "choices": [{"index": 0, "delta": {key: TEXT}, "finish_reason": None}]})
                 for kind, key in (("content", "content"), ("reasoning", "reasoning_content"))}
        split = StreamSplitter()
        try:
            yield chunk({"role": "assistant", "content": ""})
            async for batch in q.stream():
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
            tail = [write[kind](text) for kind, text in split.rest()]
            reply = split.finish()
            if reply.tool_calls:
                calls = reply.openai_tool_calls(f"call_{base['id'][-8:]}")
                tail.append(chunk({"tool_calls": [{"index": i, **c} for i, c in enumerate(calls)]}))
            tail.append(chunk({}, self._reason(e, reply)))
            if usage:
                tail.append("data: " + json.dumps({**head, "choices": [], "usage": self._usage(e.stats)}) + "\n\n")
            yield "".join(tail) + "data: [DONE]\n\n"
        finally:
            req.cancel()  # a disconnect closes this generator mid-stream: free the slot

    async def completions(self, request: Any) -> Any:
        from starlette.responses import JSONResponse, StreamingResponse

        body = await self._body(request)
        prompt = body.get("prompt")
        if not isinstance(prompt, str):
            raise BadRequest("prompt must be a string")
        bos = self.s.template.bos_token
        ids = self.s.engine.tokenize(prompt if prompt.startswith(bos) else bos + prompt)
        req, q = self._submit(ids, _sampling(body), 0, bool(body.get("stream")), _flag(body, "ignore_eos"))
        base = {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": self.s.model}
        if body.get("stream"):
            async def sse() -> AsyncIterator[str]:
                write = _sse_writer({**base, "object": "text_completion", "choices": [
                    {"index": 0, "text": TEXT, "finish_reason": None}]})
                try:
                    async for batch in q.stream():
                        e = batch[-1]
                        text = "".join(x.text for x in batch if x.kind == "token")
                        if text:
                            yield write(text)
                    yield "data: " + json.dumps({**base, "object": "text_completion", "choices": [
                        {"index": 0, "text": "", "finish_reason": e.finish_reason}]}) + "\n\n"
                    yield "data: [DONE]\n\n"
                finally:
                    req.cancel()
            return StreamingResponse(sse(), media_type="text/event-stream")
        texts, done = await self._collect(request, req, q)
        return JSONResponse({**base, "object": "text_completion", "usage": self._usage(done.stats),
                             "choices": [{"index": 0, "text": "".join(texts), "finish_reason": done.finish_reason}]})


def make_app(session: Session) -> Any:
    from starlette.applications import Starlette
    from starlette.routing import Route

    a = App(session)

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

    return Starlette(routes=[
        Route("/health", guarded(a.health), methods=["GET"]),
        Route("/v1/models", guarded(a.models), methods=["GET"]),
        Route("/props", guarded(a.props), methods=["GET"]),
        Route("/v1/chat/completions", guarded(a.chat), methods=["POST"]),
        Route("/v1/completions", guarded(a.completions), methods=["POST"]),
    ])


def serve(session: Session, host: str = "127.0.0.1", port: int = 8080, grace_s: float = 30.0) -> None:
    """Run until SIGTERM/SIGINT: stop accepting, let in-flight requests finish for up to ``grace_s`` (then
    cancel them), free the engine, return (the CLI exits 0)."""
    import signal

    import uvicorn

    config = uvicorn.Config(make_app(session), host=host, port=port, log_level="warning", access_log=False,
                            timeout_graceful_shutdown=grace_s, lifespan="off")
    server = uvicorn.Server(config)
    # uvicorn restores the previous handlers after its graceful shutdown and raises the signal again,
    # which with the default SIGTERM action kills the process (exit 143) after a clean stop. A no-op
    # previous handler turns that re-raise into nothing, so a clean stop exits 0.
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.run()
    finally:
        for sig, h in previous.items():
            signal.signal(sig, h)
        session.close()
