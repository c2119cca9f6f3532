"""An artifact ready to chat: its engine (loaded with the target's knobs as bench loads them), its chat
template and stop tokens. ``edgekit run`` and ``edgekit serve`` are both thin layers over this."""

from __future__ import annotations

import importlib
import json
import logging
import os
import queue
import resource
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ..backends.gguf import prefix_cache
from ..core.errors import BenchError, ConfigError
from ..measure.memory import read_status
from ..profiles.resolve import DEFAULT_CTX, Overrides, ResolvedArtifact, resolve
from .chat import ChatTemplate, StreamSplitter
from .generate import Event, GenRequest, Sampling, open_engine
from .plain_text import PlainText

log = logging.getLogger(__name__)


@dataclass
class Session:
    engine: Any
    template: ChatTemplate
    model: str  # the id /v1/models lists
    path: Path
    format: str
    target: str
    runtime: dict[str, Any]
    n_ctx: int
    # what the server reports on GET /props (``edgekit lab run --served`` records it)
    artifact: Any = None  # the manifest's Artifact (file, sha256, bytes, quant, format)
    model_name: str = ""  # the manifest's model
    engine_name: str = ""  # ENGINES name
    threads: Optional[int] = None
    load_ms: float = 0.0
    budget_bytes: Optional[int] = None
    towers: frozenset[str] = (
        frozenset()
    )  # encoders loaded beside the text model ("vision", "audio"): schema.check_media
    media: Any = None  # serve/towers.Towers: the projector serving them

    def prompt(
        self,
        messages: list[dict[str, Any]],
        tools: Optional[list[dict[str, Any]]] = None,
        enable_thinking: Optional[bool] = None,
    ) -> tuple[list[int], int]:
        """Token ids of the rendered chat and how many leading ones are its shareable prefix (the system
        turn: everything up to the first user message), 0 when there is none."""
        (messages, tools), marks = self.plain_text.escape(messages, tools)
        text = self.template.render(messages, tools=tools, enable_thinking=enable_thinking)
        ids = self._tokenize(text, marks)
        return ids, self.prefix_len(messages, tools, enable_thinking, marks, ids)

    def prefix_len(
        self,
        messages: list[dict[str, Any]],
        tools: Optional[list[dict[str, Any]]],
        enable_thinking: Optional[bool],
        marks: dict[str, str],
        ids: list[int],
    ) -> int:
        """How many leading ``ids`` (the escaped chat's tokens) are its system turn, 0 when none."""
        if (messages and messages[0].get("role") in ("system", "developer")) or tools or enable_thinking:
            head = self.template.render(
                messages[:1] if messages[0].get("role") in ("system", "developer") else [],
                tools=tools,
                enable_thinking=enable_thinking,
                add_generation_prompt=False,
            )
            head_ids = self._tokenize(head, marks)
            if 0 < len(head_ids) < len(ids) and ids[: len(head_ids)] == head_ids:
                return len(head_ids)
        return 0

    @property
    def plain_text(self) -> PlainText:
        """Client strings tokenized as text (role-injection guard): built once from the engine's specials."""
        if not hasattr(self, "_plain"):
            self._plain = PlainText(getattr(self.engine, "special_texts", lambda: [])())
        return self._plain

    def _tokenize(self, text: str, marks: dict[str, str]) -> list[int]:
        return PlainText.tokenize(text, marks, self.engine.tokenize, lambda t: self.engine.tokenize(t, special=False))

    def request(
        self, ids: list[int], sampling: Sampling, prefix_len: int = 0, on_event=None, stop: bool = True
    ) -> GenRequest:
        """``stop``: end at the end-of-turn tokens (off: exactly ``max_tokens``, as a benchmark wants)."""
        return GenRequest(
            ids,
            sampling,
            stop_ids=self.stop_ids if stop else frozenset(),
            prefix_len=prefix_len,
            on_event=on_event or (lambda e: None),
        )

    @property
    def stop_ids(self) -> frozenset[int]:
        if not hasattr(self, "_stop"):
            self._stop = self.engine.stop_ids(self.template.stop_texts)
        return self._stop

    def stream(self, ids: list[int], sampling: Sampling, prefix_len: int = 0, media: Any = ()) -> Iterator[Event]:
        """Blocking iteration over one request's events (for `edgekit run`, eval and tests); ``media``: the
        towers' spans of a prompt with images or audio (serve/towers.py)."""
        q: queue.SimpleQueue[Event] = queue.SimpleQueue()
        req = self.request(ids, sampling, prefix_len, q.put)
        req.media = tuple(media)
        self.engine.submit(req)
        try:
            while True:
                e = q.get()
                yield e
                if e.kind == "done":
                    return
        finally:
            req.cancel()

    def close(self) -> None:
        self.engine.close()
        if self.media is not None:  # after the engine: its requests hold the projector's chunks
            self.media.close()


def open_session(
    path: Path,
    target: Optional[str] = None,
    threads: Optional[int] = None,
    ctx: Optional[int] = None,
    knobs: Optional[dict[str, Any]] = None,
    slots: int = 1,
    max_queue: int = 16,
    prefix_file: Optional[Path] = None,
    verbose: bool = False,
    block: bool = False,
) -> Session:
    """PATH as bench takes it (a .gguf, an MLX folder, or a dist folder: its first, recommended artifact),
    verified against its manifest; threads, context and [runtime] knobs resolved as for bench (without
    --ctx or a target: min(n_ctx_train, 4096)). ``block``: treat the modules the engine's bench child
    blocks as absent (a process of its own only)."""
    (ra,) = resolve(path, target=target, overrides=Overrides(threads, ctx, dict(knobs or {})), first=True)
    return open_resolved(ra, slots, max_queue, prefix_file, verbose, block)


def open_resolved(
    ra: ResolvedArtifact,
    slots: int = 1,
    max_queue: int = 16,
    prefix_file: Optional[Path] = None,
    verbose: bool = False,
    block: bool = False,
) -> Session:
    """A resolved artifact (edgekit.profiles.resolve) loaded for chat with its settings."""
    tgt, engine, st = ra.target, ra.engine, ra.settings
    template = ChatTemplate.from_artifact(ra.path)
    if prefix_file is not None:
        if not engine.prefix_cache:
            raise ConfigError(f"--prefix-cache is a llama.cpp feature; {engine.name} artifacts are served without it")
        prefix_cache.check(prefix_file, ra.sha256)
    for mod in engine.block if block else ():  # as the bench child does (mlx: transformers' torch import, ≈180 MB)
        sys.modules.setdefault(mod, None)  # type: ignore[assignment]
    if block and engine.block and "transformers" not in sys.modules:
        _import_without_advice("transformers")
    t0 = time.perf_counter()
    gen = open_engine(
        ra.path,
        engine.name,
        st.run_options(verbose),
        slots=slots,
        max_queue=max_queue,
        prefix_file=prefix_file,
        prefix_key=ra.sha256 if prefix_file else "",
    )
    log.info(
        "%s: %s, target %s, ctx %d, threads %d, knobs %s",
        ra.path.name,
        ra.artifact.format,
        tgt.name if tgt else "-",
        st.ctx,
        st.threads,
        st.knobs,
    )
    # A context that cannot hold an empty chat turn and one token of reply refuses every request.
    floor = len(gen.tokenize(template.render([{"role": "user", "content": ""}]))) + 2
    if st.ctx < floor:
        gen.close()
        raise ConfigError(
            f"--ctx {st.ctx} cannot hold an empty chat turn ({floor - 1} tokens) and a reply; "
            f"use --ctx {max(floor, 64)} or more (default: min(n_ctx_train, {DEFAULT_CTX}))"
        )
    load_ms = (time.perf_counter() - t0) * 1e3
    return Session(
        gen,
        template,
        ra.path.stem if ra.path.is_file() else ra.path.name,
        ra.path,
        ra.artifact.format,
        tgt.name if tgt else "",
        st.knobs,
        st.ctx,
        artifact=ra.artifact,
        model_name=ra.model,
        engine_name=engine.name,
        threads=st.threads,
        load_ms=load_ms,
        budget_bytes=tgt.memory_budget_bytes if tgt else None,
    )


def _import_without_advice(name: str) -> None:
    """Import transformers with its advisory notes off: torch is blocked on purpose (only the tokenizer
    is used), so its "PyTorch was not found" note would be wrong; later warnings stay on."""
    before = os.environ.get("TRANSFORMERS_NO_ADVISORY_WARNINGS")
    os.environ["TRANSFORMERS_NO_ADVISORY_WARNINGS"] = "1"
    try:
        importlib.import_module(name)
    except ImportError:
        pass  # the engine reports what is missing, with the install line
    finally:
        if before is None:
            del os.environ["TRANSFORMERS_NO_ADVISORY_WARNINGS"]
        else:
            os.environ["TRANSFORMERS_NO_ADVISORY_WARNINGS"] = before


def peak_rss_bytes() -> int:
    """This process's peak RSS (Linux VmHWM; ru_maxrss elsewhere)."""
    try:
        return read_status().hwm
    except OSError:
        r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return r if sys.platform == "darwin" else r * 1024


def chat_turn(
    session: Session,
    messages: list[dict[str, Any]],
    sampling: Sampling,
    enable_thinking: Optional[bool],
    write: Any,
    write_err: Any,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """One reply streamed through ``write`` (content) and ``write_err`` (thinking); returns the assistant
    message to append to the history and the request's stats."""
    ids, prefix_len = session.prompt(messages, enable_thinking=enable_thinking)
    split = StreamSplitter()
    done = None
    for e in session.stream(ids, sampling, prefix_len):
        if e.kind == "done":
            done = e
            break
        for kind, text in split.feed(e.text):
            (write if kind == "content" else write_err)(text)
    for kind, text in split.rest():
        (write if kind == "content" else write_err)(text)
    reply = split.finish()
    msg: dict[str, Any] = {"role": "assistant", "content": reply.content}
    if reply.tool_calls:
        msg["tool_calls"] = reply.openai_tool_calls()
        write("\n" + "\n".join(json.dumps(c["function"]) for c in msg["tool_calls"]))
    if done.finish_reason == "error":
        raise BenchError(f"generation failed: {done.text}")
    return msg, done.stats
