"""The vision and audio towers beside a served GGUF: chat requests with media laid out as prompts the
scheduler runs like any other (slots, sampling, stop, max_tokens, streaming, n).

A request with media: its parts are decoded (media_parts, Pillow and libsndfile) and the chat rendered
with a marker where each medium stands; the text between markers is tokenized as a text request's is
(Session._tokenize, client text as text); each medium becomes mtmd's own text tokens around it
(Gemma 4: ``<|image>`` ... ``<image|>``) and a ``MediaSpan`` of its soft-token positions, which the
prompt holds as LLAMA_TOKEN_NULL (-1, as llama-server does). The towers run here, on one thread of their
own, one medium at a time (mtmd's context is not re-entrant): text requests keep decoding meanwhile.
The embeddings are decoded into the slot's sequence by the generator's prefill when it reaches them.

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

from ..backends.mtmd import Projector
from ..builder.projector import projector_file
from ..core.errors import ArtifactError, ConfigError
from ..serve.media_run import find_projector
from .generate import PromptTooLong
from .media import MediaError, prepare_image
from .media_parts import MediaLimits, Medium, split

log = logging.getLogger(__name__)
NULL_TOKEN = -1  # LLAMA_TOKEN_NULL: a position an embedding fills


class Busy(Exception):
    """Every place in the towers' queue is taken."""


class _EngineModel:
    """What backends.mtmd.Projector reads of a llama_cpp.Llama, from the served engine's model."""

    def __init__(self, engine: Any):
        self.engine, self.model = engine, engine.runner.model

    def tokenize(self, text: bytes, add_bos: bool = False, special: bool = True) -> list[int]:
        return self.engine.tokenize(text.decode(), special=special)

    def n_embd(self) -> int:
        return self.engine.L.llama_model_n_embd(self.model)


class Towers:
    """The projector of a served artifact, loaded against its engine's model (weights shared)."""

    def __init__(self, session: Any, mmproj: Path, limits: MediaLimits, max_waiting: int = 16):
        eng = session.engine
        self.session, self.limits = session, limits
        model = _EngineModel(eng)
        if eng.L.llama_model_n_embd_inp(model.model) != model.n_embd():
            raise ArtifactError(f"{Path(mmproj).name}: the text model's input width is not its width; not served")
        self.proj = Projector(
            model,
            mmproj,
            session.path,
            threads=session.threads or 2,
            image_budget=limits.image_tokens,
            log_callback=eng.runner.log._cb,
        )
        self.modalities = tuple(self.proj.modalities)
        self.mmproj = Path(mmproj)
        self.n_ubatch = int(eng.L.llama_n_ubatch(eng.ctx))
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="edgekit-towers")
        self.warning = self._check_ubatch()
        self.max_waiting = max_waiting
        self._waiting = 0
        self._lock = threading.Lock()

    def _check_ubatch(self) -> str:
        """What a full-budget image would meet: llama.cpp decodes image tokens with non-causal attention
        for some widths (not E2B's or E4B's) and then needs them all in one ubatch (pi5: 64)."""
        if "vision" not in self.modalities:
            return ""
        # deferred: Pillow loads only for an image
        from PIL import Image

        _, span, _ = self.proj.span(self.proj._bitmap_image(prepare_image(Image.new("RGB", (48, 48)), 70)), "image")
        span.close()
        if span.non_causal and self.limits.image_tokens > self.n_ubatch:
            return (
                f"images attend to themselves at once on this model: those over {self.n_ubatch} soft tokens "
                f"(the ubatch) are refused; --ubatch-size {self.limits.image_tokens} takes --image-tokens' budget"
            )
        return ""

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
                    before, span, after = self._span(media[i])
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
        except BaseException:
            for span in spans:
                span.close()
            raise
        log.info(
            "media: %s encoded in %.0f ms",
            ", ".join(f"{sp.kind} {sp.n_tokens} tokens" for sp in spans),
            sum(sp.encode_s for sp in spans) * 1e3,
        )
        # The system turn is shared between requests as text only: never past the first medium.
        prefix_len = s.prefix_len(messages, tools, enable_thinking, marks, ids)
        return ids, min(prefix_len, spans[0].start if spans else len(ids)), spans

    def _span(self, m: Medium) -> tuple[list[int], Any, list[int]]:
        bitmap = self.proj._bitmap_image(m.value) if m.kind == "vision" else self.proj._bitmap_audio(m.value)
        before, span, after = self.proj.span(bitmap, "image" if m.kind == "vision" else "audio")
        if span.non_causal and span.n_tokens > self.n_ubatch:
            span.close()
            raise MediaError(
                f"{m.where}: makes {span.n_tokens} soft tokens; this model attends to them all at once, so they "
                f"must fit one ubatch ({self.n_ubatch}): send it smaller, or serve with --ubatch-size "
                f"{max(span.n_tokens, self.limits.image_tokens)}"
            )
        return before, span, after


def attach(
    session: Any, limits: MediaLimits, mmproj: Optional[Path] = None, off: bool = False, max_waiting: int = 16
) -> Optional[Towers]:
    """Load the projector beside ``session``'s engine (the one the manifest links, or ``mmproj``) and set
    ``session.towers``; None when the artifact has none, ``off`` (--no-mmproj) or it is not a GGUF."""

    limits.check()
    if off:
        return None
    if session.format != "gguf":
        if mmproj is not None:
            raise ConfigError(f"--mmproj: images and audio are served from GGUF artifacts; {session.path.name} is MLX")
        return None
    if mmproj is None and projector_file(session.path.parent, session.artifact) is None:
        return None
    towers = Towers(session, find_projector(session.path, session.artifact, mmproj), limits, max_waiting)
    session.media, session.towers = towers, frozenset(towers.modalities)
    return towers
