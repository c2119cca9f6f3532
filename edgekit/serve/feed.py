"""How one request's events travel from the engine thread to the coroutine answering it, and how a
streamed chunk is written (``edgekit serve``; see server.py)."""

from __future__ import annotations

import asyncio
import collections
import json
import threading
from collections.abc import AsyncIterator
from typing import Any, Optional

from .generate import Event

# After sending a chunk, a stream lets this much pass on the loop's own timer before it takes the tokens
# that arrived meanwhile (see _Feed). Far below a token of E2B on a Pi (≈100 ms): only a model faster
# than 250 t/s has tokens to put together; the first token is never held.
COALESCE_S = 0.004


def _resolve(w: asyncio.Future[None]) -> None:
    if not w.done():
        w.set_result(None)


class _Feed:
    """One request's events, from the engine thread to the coroutine answering it.

    Not an asyncio.Queue fed by ``call_soon_threadsafe`` per token: waking the loop for every token makes
    the engine wait for the loop's Python before its next decode (docs/design-notes.md measures it). Here
    the engine appends to a deque and wakes the loop only when the coroutine waits on an empty feed
    (``eager``), or only for the last event (not eager: a reply sent whole needs nothing before it)."""

    def __init__(self, eager: bool = True):
        self.loop = asyncio.get_running_loop()
        self.eager = eager
        self.items: collections.deque[Event] = collections.deque()
        self.lock = threading.Lock()
        self.waiter: Optional[asyncio.Future[None]] = None

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
            except RuntimeError:  # the loop has closed (shutdown): nobody is waiting any more
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


TEXT = "\0"  # where _sse_writer's document takes the text


def _sse_writer(doc: dict[str, Any]) -> Any:
    """``text -> SSE event`` of ``doc`` with the text at TEXT, the JSON around it serialized once per
    request (byte for byte what json.dumps of the whole document writes)."""
    pre, post = json.dumps(doc, ensure_ascii=False).split('"\\u0000"')
    pre, post = "data: " + pre, post + "\n\n"
    return lambda text: pre + json.dumps(text, ensure_ascii=False) + post
