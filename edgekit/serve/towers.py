"""The vision and audio towers beside a served model: chat requests with media laid out as prompts the
scheduler runs like any other (slots, sampling, stop, max_tokens, streaming, n).

A request with media: its parts are decoded (media_parts, Pillow and libsndfile) and the chat rendered
with a marker where each medium stands; the text between markers is tokenized as a text request's is
(Session._tokenize, client text as text); each medium becomes its projector's text tokens around it
(Gemma 4: ``<|image>`` ... ``<image|>``) and a span of its soft-token positions, which the prompt holds
as -1 (LLAMA_TOKEN_NULL, as llama-server does). The projector is the backend's (``Backend.projector``:
llama.cpp's mtmd in backends/gguf/towers.py, mlx-vlm's towers in backends/mlx/media.py). The towers run
here, on one thread of their own, one medium at a time: text requests keep decoding meanwhile. The
generator's prefill puts the soft tokens in when the sequence reaches them. With ``towers = on_demand``
(llama.cpp; MLX keeps its towers loaded) the projector is loaded per prompt with media and freed once
they are encoded.

Limits: requests waiting for the towers are bounded like the engine's queue (503 beyond); a prompt that
cannot fit the context is refused before any tower runs.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Optional

from ..backends.registry import BACKENDS
from ..core.errors import ConfigError
from .generate import PromptTooLong
from .media import MediaError
from .media_parts import MediaLimits, split

log = logging.getLogger(__name__)
NULL_TOKEN = -1  # LLAMA_TOKEN_NULL: a position an embedding fills (MLX's prefill too)


class Busy(Exception):
    """Every place in the towers' queue is taken."""


class Towers:
    """A served artifact's projector (its backend's, ``Backend.projector``) and the prompts laid out around it."""

    def __init__(self, session: Any, proj: Any, limits: MediaLimits, max_waiting: int = 16):
        self.session, self.proj, self.limits = session, proj, limits
        self.modalities = tuple(proj.modalities)
        self.mmproj = Path(proj.path)
        self.warning = proj.warning
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="edgekit-towers")
        self.max_waiting = max_waiting
        self._waiting = 0
        self._lock = threading.Lock()

    def state(self) -> dict[str, Any]:
        """How the projector lives: its mode, whether it is loaded now, and how often it was loaded."""
        return {"mode": self.proj.mode, "loaded": self.proj.loaded, "loads": self.proj.loads}

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.proj.close()

    async def prompt(
        self, messages: list[dict[str, Any]], tools: Optional[list[dict[str, Any]]], enable_thinking: Optional[bool]
    ) -> tuple[list[int], int, list[Any]]:
        """(ids, shareable prefix length, media spans) for a chat with media; MediaError (400), Busy (503),
        PromptTooLong (400)."""
        with self._lock:
            if self._waiting >= self.max_waiting:
                raise Busy(f"{self._waiting} requests with media are waiting for the towers (the bound)")
            self._waiting += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self.pool, self.build_prompt, messages, tools, enable_thinking
            )
        finally:
            with self._lock:
                self._waiting -= 1

    def build_prompt(
        self, messages: list[dict[str, Any]], tools: Optional[list[dict[str, Any]]], enable_thinking: Optional[bool]
    ) -> tuple[list[int], int, list[Any]]:
        s, marker = self.session, self.proj.marker
        messages, media = split(messages, marker, self.limits)
        for m in media:
            if m.kind not in self.modalities:  # schema.check_media refused it already; kept for a direct call
                raise MediaError(f"{m.where}: this build has no {m.kind} tower")
        (messages, tools), marks = s.plain_text.escape(messages, tools)
        text = s.template.render(messages, tools=tools, enable_thinking=enable_thinking)
        pieces = text.split(marker)
        if len(pieces) != len(media) + 1:
            raise MediaError(f"the chat template kept {len(pieces) - 1} of {len(media)} media; send them in user turns")
        ids: list[int] = []
        spans: list[Any] = []
        try:
            for i, piece in enumerate(pieces):
                ids += s._tokenize(piece, marks) if piece else []
                if i < len(media):
                    before, span, after = self.proj.span(media[i])
                    spans.append(span)
                    span.start = len(ids) + len(before)
                    ids += before + [NULL_TOKEN] * span.n_pos + after
            if len(ids) > s.n_ctx - 1:  # before any tower runs
                raise PromptTooLong(
                    f"the prompt with its media is {len(ids)} positions; the context is {s.n_ctx} tokens "
                    f"(prompt + reply): send fewer or smaller media, or start with a larger --ctx"
                )
            for span in spans:
                self.proj.encode_span(span)
            self.proj.release(spans)  # towers = on_demand: freed here, before the text is decoded
        except BaseException:
            for span in spans:
                span.close()
            self.proj.release([])
            raise
        log.info(
            "media: %s encoded in %.0f ms",
            ", ".join(f"{sp.kind} {sp.n_tokens} tokens" for sp in spans),
            sum(sp.encode_s for sp in spans) * 1e3,
        )
        # The system turn is shared between requests as text only: never past the first medium.
        prefix_len = s.prefix_len(messages, tools, enable_thinking, marks, ids)
        return ids, min(prefix_len, spans[0].start if spans else len(ids)), spans


def attach(
    session: Any, limits: MediaLimits, mmproj: Optional[Path] = None, off: bool = False, max_waiting: int = 16
) -> Optional[Towers]:
    """Load the projector beside ``session``'s engine (its backend's: the one the manifest links, or
    ``mmproj``) and set ``session.towers``; None when the artifact has none or ``off`` (--no-mmproj)."""

    limits.check()
    open_projector = None if off else BACKENDS.get(session.engine_name).projector
    if open_projector is None and mmproj is not None and not off:
        raise ConfigError(f"--mmproj: {session.engine_name} artifacts run without towers; drop it")
    proj = None if open_projector is None else open_projector(session, mmproj, limits)
    if proj is None:
        session.runtime.pop("towers", None)  # no projector: the knob applied to nothing (/props, lab records)
        return None
    towers = Towers(session, proj, limits, max_waiting)
    session.media, session.towers = towers, frozenset(towers.modalities)
    return towers
