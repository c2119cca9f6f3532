"""OpenAI's reply shapes for ``edgekit serve`` (serve/http.py's routes hand their events here): one
request's events cut at its stop sequences, a whole chat's choices, usage and logprobs, and the SSE
streams of chat and plain completions (OpenAI's chunks, then usage and ``[DONE]``)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any, Optional

from .chat import StopScanner, StreamSplitter, parse_reply
from .feed import TEXT, _Feed, _sse_writer
from .generate import Event


async def until_stop(q: _Feed, req: Any, stops: list[str]) -> AsyncIterator[list[Event]]:
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


def logprobs(engine: Any, tokens: list[Event]) -> dict[str, Any]:
    """OpenAI's ``logprobs.content``: each generated token (thinking and tool-call markup included:
    the engine does not tell them apart) with the model's log-probability and the likeliest others."""

    def one(tok: int, lp: float) -> dict[str, Any]:
        raw = engine.piece(tok)
        return {"token": raw.decode("utf-8", "replace"), "logprob": lp, "bytes": list(raw)}

    return {
        "content": [
            {**one(e.token, e.logprob[0]), "top_logprobs": [one(t, lp) for t, lp in e.logprob[1]]}
            for e in tokens
            if e.logprob is not None and e.token >= 0
        ]
    }


def usage(stats: dict[str, Any], *more: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's usage: the prompt once, the completion tokens of every choice (``n``) together."""
    done = stats.get("completion_tokens", 0) + sum(m.get("completion_tokens", 0) for m in more)
    return {
        "prompt_tokens": stats.get("prompt_tokens", 0),
        "completion_tokens": done,
        "total_tokens": stats.get("prompt_tokens", 0) + done,
        "prompt_tokens_details": {"cached_tokens": stats.get("cached_tokens", 0)},
    }


def finish_reason(done: Event, reply: Any) -> str:
    if done.finish_reason == "error":
        return "error"
    return "tool_calls" if reply.tool_calls and done.finish_reason == "stop" else done.finish_reason


def chat_choices(
    results: list[tuple[list[Event], Event]], rid: str, with_logprobs: bool, engine: Any
) -> list[dict[str, Any]]:
    """A whole chat reply's choices: each one's text parsed into content, thinking and tool calls."""
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
                "finish_reason": finish_reason(done, reply),
                **({"logprobs": logprobs(engine, tokens)} if with_logprobs else {}),
            }
        )
    return choices


async def chat_sse(
    subs: list[tuple[Any, _Feed]],
    base: dict[str, Any],
    include_usage: bool,
    stops: list[str],
    engine: Any,
    live: dict[int, Any],
) -> AsyncIterator[str]:
    """The stream of every choice (``n`` > 1: their chunks interleaved as they come), then usage and
    [DONE]; at its end (or a disconnect) each request is cancelled and leaves ``live``."""
    head = {**base, "object": "chat.completion.chunk"}
    stats: list[dict[str, Any]] = [{} for _ in subs]
    try:
        if len(subs) == 1:
            async for text in choice_sse(0, *subs[0], head, stops, stats, engine):
                yield text
        else:
            merged: asyncio.Queue[Optional[str]] = asyncio.Queue()

            async def pump(i: int) -> None:
                try:
                    async for text in choice_sse(i, *subs[i], head, stops, stats, engine):
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
        if include_usage:
            tail = "data: " + json.dumps({**head, "choices": [], "usage": usage(*stats)}) + "\n\n"
        yield tail + "data: [DONE]\n\n"
    finally:
        for r, _ in subs:
            r.cancel()  # a disconnect closes this generator mid-stream: free the slots
            live.pop(id(r), None)


async def choice_sse(
    index: int,
    req: Any,
    q: _Feed,
    head: dict[str, Any],
    stops: list[str],
    stats: list[dict[str, Any]],
    engine: Any,
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
    async for batch in until_stop(q, req, stops):
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
            yield chunk({}, logprobs=logprobs(engine, [x for x in batch if x.kind == "token"]))
    tail = [write[kind](text) for kind, text in split.rest()]
    reply = split.finish()
    if reply.tool_calls:
        calls = reply.openai_tool_calls(f"call_{head['id'][-8:]}{index or ''}")
        tail.append(chunk({"tool_calls": [{"index": i, **c} for i, c in enumerate(calls)]}))
    tail.append(chunk({}, finish_reason(e, reply)))
    stats[index] = e.stats
    yield "".join(tail)


async def completion_sse(
    req: Any, q: _Feed, base: dict[str, Any], stops: list[str], include_usage: bool, live: dict[int, Any]
) -> AsyncIterator[str]:
    """A plain completion's stream: its text chunks, the finish chunk, usage if asked, [DONE]."""
    write = _sse_writer(
        {
            **base,
            "object": "text_completion",
            "choices": [{"index": 0, "text": TEXT, "finish_reason": None}],
        }
    )
    try:
        async for batch in until_stop(q, req, stops):
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
        if include_usage:
            yield (
                "data: "
                + json.dumps({**base, "object": "text_completion", "choices": [], "usage": usage(e.stats)})
                + "\n\n"
            )
        yield "data: [DONE]\n\n"
    finally:
        req.cancel()
        live.pop(id(req), None)
