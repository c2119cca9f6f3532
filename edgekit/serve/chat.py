"""A model's chat template, stop tokens and reply parsing (Gemma 4 thinking and tool calls).

The interface (used by ``edgekit run``/``serve`` and by task suites):

    tpl = ChatTemplate.from_artifact(path)        # a .gguf file, an MLX folder or an HF checkpoint folder
    text = tpl.render(messages, tools=None, add_generation_prompt=True, enable_thinking=False)
    tpl.stop_texts                                # token texts that end a reply ("<turn|>", "<eos>", ...)
    reply = parse_reply(generated_text)           # Reply(content, reasoning, tool_calls)
    reply.openai_tool_calls()                     # [{"id", "type": "function", "function": {"name", "arguments"}}]

``render`` returns text with the special tokens written out (``<bos>`` included when the template writes
it): tokenize it with special-token parsing and without adding a BOS again. Rendering follows
transformers' ``apply_chat_template`` (transformers/utils/chat_template_utils.py): an immutable
sandboxed jinja2 environment with ``trim_blocks``/``lstrip_blocks`` and loop controls, its ``tojson``
(no HTML escaping, non-ASCII kept), ``raise_exception``, ``strftime_now``, and the tokenizer's special
tokens (``bos_token``, ``eos_token``) as variables; ``enable_thinking`` is passed only when given, so a
template's own default applies otherwise. Messages and tools must be plain JSON data.

Gemma 4's reply format: thinking in ``<|channel>thought\\n...<channel|>``, tool calls as
``<|tool_call>call:NAME{key:VALUE,...}<tool_call|>`` where strings are quoted with ``<|"|>`` (no escaping
inside), keys are bare, and numbers, ``true``/``false``/``null``, ``{...}`` and ``[...]`` nest; after its
calls the model emits ``<|tool_response>`` to hand over, so that is a stop token too.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ..backends.format import folder_chat_template
from ..backends.registry import detect
from ..core.errors import ArtifactError, ConfigError

QUOTE = '<|"|>'
CALL_OPEN, CALL_CLOSE = "<|tool_call>", "<tool_call|>"
THINK_OPEN, THINK_CLOSE = "<|channel>", "<channel|>"
GEMMA4_STOPS = ("<turn|>", "<|tool_response>")


def _compile(source: str) -> Any:
    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(
        x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None, sort_keys: bool = False
    ) -> str:
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(source)
    except jinja2.exceptions.TemplateSyntaxError as e:
        raise ArtifactError(
            f"the chat template does not parse ({e.message}, line {e.lineno}); "
            "fix chat_template in the checkpoint's tokenizer_config.json and rebuild"
        ) from None


@dataclass
class ChatTemplate:
    source: str
    bos_token: str = "<bos>"
    eos_token: str = "<eos>"
    _compiled: Any = field(default=None, repr=False, compare=False)

    @classmethod
    def from_artifact(cls, path: Path) -> ChatTemplate:
        """The template an artifact carries: a GGUF's ``tokenizer.chat_template``; a folder's
        chat_template.jinja, else tokenizer_config.json's ``chat_template``."""
        path = Path(path)
        fmt = detect(path)
        if fmt is not None:
            return cls(*fmt.chat_template(path))
        if path.is_dir():  # a checkpoint folder: Hugging Face's tokenizer files, as an MLX artifact's
            return cls(*folder_chat_template(path))
        raise ArtifactError(f"{path}: not a .gguf file or a model folder; give an artifact `edgekit build` wrote")

    @property
    def is_gemma4(self) -> bool:
        return "<|turn>" in self.source

    @property
    def stop_texts(self) -> tuple[str, ...]:
        """Token texts that end a reply: end of turn and the hand-over after tool calls (Gemma 4), and eos."""
        return (GEMMA4_STOPS if self.is_gemma4 else ()) + (self.eos_token,)

    def render(
        self,
        messages: list[dict[str, Any]],
        tools: Optional[list[dict[str, Any]]] = None,
        add_generation_prompt: bool = True,
        enable_thinking: Optional[bool] = None,
        **kwargs: Any,
    ) -> str:
        if self._compiled is None:
            self._compiled = _compile(self.source)
        if enable_thinking is not None:
            kwargs["enable_thinking"] = enable_thinking
        kwargs.setdefault("bos_token", self.bos_token)
        kwargs.setdefault("eos_token", self.eos_token)
        try:
            return self._compiled.render(
                messages=messages, tools=tools, documents=None, add_generation_prompt=add_generation_prompt, **kwargs
            )
        except jinja2.exceptions.TemplateError as e:
            raise ConfigError(f"the chat template rejected these messages: {e}") from None


# ---------------------------------------------------------------- replies


@dataclass
class ToolCall:
    name: str
    arguments: dict[str, Any]


@dataclass
class Reply:
    content: str
    reasoning: Optional[str] = None
    tool_calls: list[ToolCall] = field(default_factory=list)

    def openai_tool_calls(self, prefix: str = "call") -> list[dict[str, Any]]:
        return [
            {
                "id": f"{prefix}_{i}",
                "type": "function",
                "function": {"name": c.name, "arguments": json.dumps(c.arguments, ensure_ascii=False)},
            }
            for i, c in enumerate(self.tool_calls)
        ]


class _Parser:
    """Gemma 4's argument syntax: ``{key:value,...}`` with bare or ``<|"|>``-quoted keys."""

    def __init__(self, s: str):
        self.s, self.i = s, 0

    def ws(self) -> None:
        while self.i < len(self.s) and self.s[self.i] in " \t\r\n":
            self.i += 1

    def fail(self, what: str) -> ValueError:
        return ValueError(f"{what} at offset {self.i} in {self.s[:80]!r}")

    def value(self) -> Any:
        self.ws()
        s, i = self.s, self.i
        if s.startswith(QUOTE, i):
            end = s.find(QUOTE, i + len(QUOTE))
            if end < 0:
                raise self.fail("unterminated string")
            self.i = end + len(QUOTE)
            return s[i + len(QUOTE) : end]
        if i < len(s) and s[i] == '"':
            v, self.i = json.JSONDecoder().raw_decode(s, i)
            return v
        if i < len(s) and s[i] == "{":
            return self.obj()
        if i < len(s) and s[i] == "[":
            out: list[Any] = []
            self.items("]", lambda: out.append(self.value()))
            return out
        m = re.compile(r"[^,}\]]*").match(s, i)
        word = m.group(0).strip()
        self.i = m.end()
        if not word:
            raise self.fail("expected a value")
        lits = {"true": True, "false": False, "null": None}
        if word in lits:
            return lits[word]
        try:
            return json.loads(word)
        except ValueError:
            return word  # a bare word the model did not quote: keep it as a string

    def key(self) -> str:
        self.ws()
        if self.s.startswith(QUOTE, self.i):
            return self.value()
        if self.s.startswith('"', self.i):
            return self.value()
        end = self.s.find(":", self.i)
        if end < 0:
            raise self.fail("expected key:")
        k, self.i = self.s[self.i : end].strip(), end
        return k

    def items(self, close: str, item: Callable[[], None]) -> None:
        """The comma-separated items of a list or object, from its opening bracket through ``close``."""
        self.i += 1  # [ or {
        self.ws()
        if self.s.startswith(close, self.i):
            self.i += 1
            return
        while True:
            item()
            self.ws()
            if self.s.startswith(",", self.i):
                self.i += 1
            elif self.s.startswith(close, self.i):
                self.i += 1
                return
            else:
                raise self.fail(f"expected , or {close}")

    def obj(self) -> dict[str, Any]:
        out: dict[str, Any] = {}

        def member() -> None:
            k = self.key()
            self.ws()
            if not self.s.startswith(":", self.i):
                raise self.fail("expected :")
            self.i += 1
            out[k] = self.value()

        self.items("}", member)
        return out


def parse_tool_call(body: str) -> ToolCall:
    """``call:NAME{...}`` (the text between ``<|tool_call>`` and ``<tool_call|>``) → ToolCall; ValueError if
    malformed."""
    m = re.match(r"\s*call:\s*([^{\s]+)\s*", body)
    if not m or not body[m.end() :].startswith("{"):
        raise ValueError(f"not a Gemma 4 tool call: {body[:80]!r}")
    p = _Parser(body)
    p.i = m.end()
    args = p.obj()
    return ToolCall(m.group(1), args)


def parse_reply(text: str) -> Reply:
    """Split a generated reply into content, thinking and tool calls. The content keeps its whitespace (so a
    streamed reply's deltas join to it); a call that does not parse stays in the content as the model
    wrote it (a client sees what came out rather than losing it)."""
    reasoning = []
    while THINK_OPEN in text:
        a = text.index(THINK_OPEN)
        b = text.find(THINK_CLOSE, a)
        inner = text[a + len(THINK_OPEN) :] if b < 0 else text[a + len(THINK_OPEN) : b]
        reasoning.append(inner.removeprefix("thought").lstrip("\n"))
        text = text[:a] + ("" if b < 0 else text[b + len(THINK_CLOSE) :])
    calls, kept, pos = [], [], 0
    while True:
        a = text.find(CALL_OPEN, pos)
        if a < 0:
            kept.append(text[pos:])
            break
        b = text.find(CALL_CLOSE, a)
        end = len(text) if b < 0 else b
        kept.append(text[pos:a])
        try:
            calls.append(parse_tool_call(text[a + len(CALL_OPEN) : end]))
        except ValueError:
            kept.append(text[a : end + (len(CALL_CLOSE) if b >= 0 else 0)])
        pos = len(text) if b < 0 else b + len(CALL_CLOSE)
    return Reply("".join(kept), "".join(reasoning).strip() or None, calls)


class StreamSplitter:
    """Splits streamed pieces into ``("content" | "reasoning", text)`` events as they arrive, holding back
    tool-call markup (returned whole by ``finish`` as a Reply) and any tail that may start a marker."""

    _MARKS = (THINK_OPEN, THINK_CLOSE, CALL_OPEN)

    def __init__(self) -> None:
        self.buf = ""
        self.all = ""
        self.mode = "content"  # content | reasoning | call
        self.head = False

    def feed(self, piece: str) -> list[tuple[str, str]]:
        self.all += piece
        self.buf += piece
        out: list[tuple[str, str]] = []
        while self.buf and self.mode != "call":
            if self.head:  # the channel's name after <|channel> ("thought\n") is not reasoning text
                if "thought\n".startswith(self.buf):
                    break
                self.buf, self.head = self.buf.removeprefix("thought").removeprefix("\n"), False
                continue
            marks = [(self.buf.find(m), m) for m in self._MARKS if m in self.buf]
            if marks:
                i, m = min(marks)
                if i:
                    out.append((self.mode, self.buf[:i]))
                self.buf = self.buf[i + len(m) :]
                self.mode = {THINK_OPEN: "reasoning", THINK_CLOSE: "content", CALL_OPEN: "call"}[m]
                self.head = m == THINK_OPEN
                continue
            hold = max((k for m in self._MARKS for k in range(1, len(m)) if self.buf.endswith(m[:k])), default=0)
            if len(self.buf) > hold:
                out.append((self.mode, self.buf[: len(self.buf) - hold]))
                self.buf = self.buf[len(self.buf) - hold :]
            break
        return [(k, t) for k, t in out if t]

    def rest(self) -> list[tuple[str, str]]:
        """At the end: the tail held back because it might have started a marker (a reply ending in "<"),
        unless it is tool-call markup (finish returns that as calls)."""
        if self.mode == "call" or self.head or not self.buf:
            return []
        out, self.buf = [(self.mode, self.buf)], ""
        return out

    def finish(self) -> Reply:
        return parse_reply(self.all)


class StopScanner:
    """Cuts streamed text before the first of ``stops`` (the API's ``stop`` sequences): text goes out as
    soon as no stop sequence can start in it; a tail that may begin one is held back."""

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self.buf = ""
        self.hit = False

    def feed(self, piece: str) -> str:
        if self.hit:
            return ""
        self.buf += piece
        found = [i for i in (self.buf.find(s) for s in self.stops) if i >= 0]
        if found:
            out, self.buf, self.hit = self.buf[: min(found)], "", True
            return out
        hold = max((k for s in self.stops for k in range(1, len(s)) if self.buf.endswith(s[:k])), default=0)
        out, self.buf = self.buf[: len(self.buf) - hold], self.buf[len(self.buf) - hold :]
        return out

    def rest(self) -> str:
        """At the end with no stop found: the held tail."""
        out, self.buf = ("" if self.hit else self.buf), ""
        return out
