"""``edgekit serve``: an OpenAI-compatible HTTP API (starlette on uvicorn) over edgekit's own engine.

Why not llama-cpp-python's server (llama_cpp.server, 0.3.36): its settings have no lazy mode (Gemma 4's
PLE table would be resident: +1.8 GB on E2B), no repack switch (``use_extra_bufts``: +1 GB anonymous on
Q4_0) and no swa_full; it runs one ``Llama`` behind a lock (no parallel slots, no bounded queue), and it
returns Gemma 4 tool calls as raw text (its issue 2227). Those are the knobs the pi5 budget depends on.

Routes: POST /v1/chat/completions (SSE with ``stream``), POST /v1/completions, GET /v1/models,
GET /health. Errors are OpenAI-shaped ``{"error": {"message", "type", "code"}}``: 400 for invalid JSON,
an unknown model, bad fields or a prompt longer than the context; 503 with Retry-After when every slot
is busy and the queue is full. A client that disconnects cancels its generation (its slot is free at the
next engine step). Thinking: ``chat_template_kwargs: {"enable_thinking": true}`` (as vLLM and llama.cpp's
server take it) or a top-level ``enable_thinking``; the reply's thinking is ``reasoning_content``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from typing import Any, AsyncIterator, Optional

from .chat import StreamSplitter, parse_reply
from .errors import ConfigError, EdgekitError
from .generate import Event, PromptTooLong, QueueFull, Sampling
from .session import Session

log = logging.getLogger(__name__)
RETRY_AFTER_S = 1


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

    def _submit(self, ids: list[int], sampling: Sampling, prefix_len: int) -> tuple[Any, "asyncio.Queue[Event]"]:
        loop = asyncio.get_running_loop()
        q: "asyncio.Queue[Event]" = asyncio.Queue()
        req = self.s.request(ids, sampling, prefix_len, lambda e: loop.call_soon_threadsafe(q.put_nowait, e))
        try:
            self.s.engine.submit(req)
        except QueueFull as e:
            raise BadRequest(f"server busy: {e}; retry after {RETRY_AFTER_S} s", 503, "server_busy") from None
        except PromptTooLong as e:
            raise BadRequest(e.message, code="context_length_exceeded") from None
        return req, q

    async def _collect(self, request: Any, req: Any, q: "asyncio.Queue[Event]") -> tuple[list[str], Event]:
        """Every token of a non-streamed reply; cancels the generation if the client goes away."""
        async def watch() -> None:
            while not await request.is_disconnected():
                await asyncio.sleep(0.25)
            req.cancel()

        # Not asyncio.wait_for(q.get(), timeout): on Python 3.11 a timeout racing a put loses the item
        # (a request then hung once in ~60 here, its "done" event gone).
        watcher = asyncio.ensure_future(watch())
        texts: list[str] = []
        try:
            while True:
                e = await q.get()
                if e.kind == "done":
                    return texts, e
                texts.append(e.text)
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
        req, q = self._submit(ids, _sampling(body), prefix_len)
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

    async def _chat_sse(self, req: Any, q: "asyncio.Queue[Event]", base: dict[str, Any], usage: bool) -> AsyncIterator[str]:
        def chunk(delta: dict[str, Any], finish: Optional[str] = None, **extra: Any) -> str:
            return "data: " + json.dumps({**base, "object": "chat.completion.chunk", **extra, "choices": [
                {"index": 0, "delta": delta, "finish_reason": finish}]}, ensure_ascii=False) + "\n\n"

        split = StreamSplitter()
        try:
            yield chunk({"role": "assistant", "content": ""})
            while True:
                e = await q.get()
                if e.kind == "done":
                    break
                for kind, text in split.feed(e.text):
                    yield chunk({"content": text} if kind == "content" else {"reasoning_content": text})
            reply = split.finish()
            if reply.tool_calls:
                calls = reply.openai_tool_calls(f"call_{base['id'][-8:]}")
                yield chunk({"tool_calls": [{"index": i, **c} for i, c in enumerate(calls)]})
            yield chunk({}, self._reason(e, reply))
            if usage:
                yield "data: " + json.dumps({**base, "object": "chat.completion.chunk", "choices": [],
                                             "usage": self._usage(e.stats)}) + "\n\n"
            yield "data: [DONE]\n\n"
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
        req, q = self._submit(ids, _sampling(body), 0)
        base = {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": self.s.model}
        if body.get("stream"):
            async def sse() -> AsyncIterator[str]:
                try:
                    while True:
                        e = await q.get()
                        if e.kind == "done":
                            break
                        yield "data: " + json.dumps({**base, "object": "text_completion", "choices": [
                            {"index": 0, "text": e.text, "finish_reason": None}]}, ensure_ascii=False) + "\n\n"
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
