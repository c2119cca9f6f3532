"""The request bodies ``edgekit serve`` takes, as typed schemas checked at the boundary (pydantic, strict).

``parse_body(raw, kind)`` turns the bytes of a POST into a validated request or raises ``Invalid`` whose
message names the field (``messages[0].content: ...``). Nothing reaches the template, the tokenizer or
the engine before this passes. Strict: ``"false"`` is not a boolean, ``1.0`` is not a token count.
Unknown fields are refused (as OpenAI's API does: a misspelt option is never silently ignored); fields
clients send that change nothing here (``user``, ``metadata``) are taken; sampling options this server
cannot honour are refused with their name (see ``Sampled.refused``).

Content parts: ``text`` now; a media part (``image_url``, ``input_audio``) is checked by the tower that
reads it, found in ``MEDIA_PARTS`` by its type; with no such tower loaded it is a 400 naming the part.
"""

from __future__ import annotations

import json
import math
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .media_parts import media_chars

MAX_DEPTH = 64  # JSON nesting; a tool's JSON schema nests ~10 deep, 10,000 deep was a RecursionError
MAX_STOP = 4  # as OpenAI

# A content part's type → the tower that reads it. The server passes the towers it has loaded
# (``Session.towers``, empty for a text-only model) to ``check_media``.
MEDIA_PARTS = {"image_url": "vision", "input_image": "vision", "input_audio": "audio"}


class Invalid(ValueError):
    """A client's mistake; the message names the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class StreamOptions(_Strict):
    include_usage: bool = False


class ThinkingKwargs(_Strict):
    enable_thinking: Optional[bool] = None


class ToolFunction(_Strict):
    name: str = Field(min_length=1, max_length=256)
    description: Optional[str] = None
    parameters: Optional[dict[str, Any]] = None
    strict: Optional[bool] = None


class Tool(_Strict):
    type: Literal["function"]
    function: ToolFunction


class CallFunction(_Strict):
    name: str = Field(min_length=1, max_length=256)
    arguments: Union[str, dict[str, Any]] = "{}"

    @field_validator("arguments")
    @classmethod
    def _json_object(cls, v: Any) -> dict[str, Any]:
        # OpenAI clients send arguments back as a JSON string; chat templates (Gemma 4's writes each
        # argument as key:value) take a mapping.
        if isinstance(v, str):
            try:
                v = json.loads(v or "{}")
            except ValueError:
                raise ValueError("not valid JSON") from None
        if not isinstance(v, dict):
            raise ValueError("must be a JSON object")
        return v


class ToolCall(_Strict):
    id: Optional[str] = None
    type: Literal["function"] = "function"
    function: CallFunction


ROLES = ("system", "developer", "user", "assistant", "tool")


class Message(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Any = None
    name: Optional[str] = None
    tool_calls: Optional[list[ToolCall]] = None
    tool_call_id: Optional[str] = None
    reasoning_content: Optional[str] = None

    @field_validator("content")
    @classmethod
    def _content(cls, v: Any) -> Any:
        if v is None or isinstance(v, str):
            return v
        if not isinstance(v, list):
            raise ValueError(f"must be a string or a list of content parts, not {_kind(v)}")
        for i, p in enumerate(v):
            if not isinstance(p, dict) or not isinstance(p.get("type"), str):
                raise ValueError(f"part {i} must be an object with a type")
            t = p["type"]
            if t == "text":
                if not isinstance(p.get("text"), str) or set(p) - {"type", "text"}:
                    raise ValueError(f'part {i}: a text part is {{"type": "text", "text": STRING}}')
            elif t not in MEDIA_PARTS:
                raise ValueError(f"part {i}: unknown content part type {t!r} (text, {', '.join(MEDIA_PARTS)})")
        return v

    @model_validator(mode="after")
    def _by_role(self) -> Message:
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError(f"a {self.role} message needs content")
        if self.tool_calls is not None and self.role != "assistant":
            raise ValueError("only an assistant message has tool_calls")
        return self

    def plain(self) -> dict[str, Any]:
        """The message as the chat template takes it: text parts joined by newlines (media parts stay
        for the tower's hook), tool-call arguments as mappings, unset fields left out."""
        d = self.model_dump(exclude_none=True)
        if isinstance(self.content, list) and all(p["type"] == "text" for p in self.content):
            d["content"] = "\n".join(p["text"] for p in self.content)
        return d


class JsonSchema(_Strict):
    name: str = Field("response", min_length=1, max_length=64)
    schema_: Optional[dict[str, Any]] = Field(None, alias="schema")
    description: Optional[str] = None
    strict: Optional[bool] = None


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: Optional[JsonSchema] = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and (self.json_schema is None or self.json_schema.schema_ is None):
            raise ValueError('json_schema needs {"name": ..., "schema": {...}}')
        return self

    def gbnf(self) -> str:
        """The grammar a reply must match (llama.cpp's JSON grammar, or its converter's for the schema);
        "" for text. ValueError when the schema cannot be converted."""
        # deferred: llama-cpp-python loads only for a request with a JSON schema
        from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

        if self.type == "json_object":
            return JSON_GBNF
        if self.type == "json_schema":
            try:
                return json_schema_to_gbnf(json.dumps(self.json_schema.schema_))
            except Exception as e:  # the converter raises bare Exceptions/KeyErrors on what it cannot express
                raise ValueError(f"the schema cannot be turned into a grammar ({e})") from None
        return ""


class Sampled(_Strict):
    """Fields both endpoints share: the model and the sampling options."""

    model: Optional[str] = None
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    max_tokens: Optional[int] = Field(None, ge=1, le=1 << 20)
    temperature: Optional[float] = Field(None, ge=0.0, le=2.0)
    top_p: Optional[float] = Field(None, ge=0.0, le=1.0)
    top_k: Optional[int] = Field(None, ge=0)  # its upper bound is the vocabulary: checked by the App
    min_p: Optional[float] = Field(None, ge=0.0, le=1.0)
    # llama.cpp takes -1 for "random"; any other value is reduced to 32 bits, as both engines seed with them
    seed: Optional[int] = Field(None, ge=-1, lt=1 << 64)
    n: Optional[int] = Field(None, ge=1, le=128)  # as OpenAI; the App bounds it by slots + queue
    ignore_eos: bool = False
    stop: Union[str, list[str], None] = None
    frequency_penalty: Optional[float] = Field(None, ge=-2.0, le=2.0)
    presence_penalty: Optional[float] = Field(None, ge=-2.0, le=2.0)
    logit_bias: Optional[dict[str, float]] = None
    user: Optional[str] = None
    metadata: Optional[dict[str, str]] = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: Any) -> Any:
        stops = [v] if isinstance(v, str) else v or []
        if len(stops) > MAX_STOP or not all(stops) or any(len(s) > 256 for s in stops):
            raise ValueError(f"at most {MAX_STOP} stop sequences, each 1 to 256 characters")
        return v

    @property
    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    @field_validator("temperature", "top_p", "min_p", "frequency_penalty", "presence_penalty")
    @classmethod
    def _finite(cls, v: Optional[float]) -> Optional[float]:
        if v is not None and not math.isfinite(v):
            raise ValueError("must be a finite number")
        return v

    def refused(self) -> list[tuple[str, str]]:
        """(field, why) for each option given that this server does not implement: a 400 rather than
        an option silently ignored."""
        out = []
        if self.frequency_penalty or self.presence_penalty:
            out.append(
                (
                    "frequency_penalty" if self.frequency_penalty else "presence_penalty",
                    "penalties are not implemented; leave them 0",
                )
            )
        if self.logit_bias:
            out.append(("logit_bias", "logit_bias is not implemented"))
        return out


class ChatRequest(Sampled):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1, le=1 << 20)
    tools: Optional[list[Tool]] = None
    tool_choice: Union[Literal["none", "auto", "required"], dict[str, Any], None] = None
    parallel_tool_calls: Optional[bool] = None
    logprobs: Optional[bool] = None
    top_logprobs: Optional[int] = Field(None, ge=0, le=20)
    response_format: Optional[ResponseFormat] = None
    chat_template_kwargs: Optional[ThinkingKwargs] = None
    enable_thinking: Optional[bool] = None

    def refused(self) -> list[tuple[str, str]]:
        out = super().refused()
        if self.top_logprobs is not None and not self.logprobs:
            out.append(("top_logprobs", "needs logprobs: true"))
        if self.tool_choice not in (None, "auto", "none"):
            out.append(("tool_choice", 'only "auto" and "none" are honoured: the model chooses whether to call a tool'))
        if self.parallel_tool_calls is False:
            out.append(("parallel_tool_calls", "false is not enforced: the model may call several tools"))
        return out

    @property
    def thinking(self) -> Optional[bool]:
        kw = self.chat_template_kwargs
        return kw.enable_thinking if kw is not None and kw.enable_thinking is not None else self.enable_thinking

    @property
    def token_cap(self) -> Optional[int]:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class CompletionRequest(Sampled):
    prompt: str
    logprobs: Optional[int] = Field(None, ge=0, le=5)
    echo: bool = False
    best_of: Optional[int] = Field(None, ge=1)
    suffix: Optional[str] = None

    def refused(self) -> list[tuple[str, str]]:
        out = super().refused()
        if self.logprobs:
            out.append(("logprobs", "log-probabilities are not returned by this server"))
        if self.n not in (None, 1):
            out.append(("n", "one choice per completions request; chat completions take n"))
        if self.echo:
            out.append(("echo", "echo is not implemented"))
        if self.best_of not in (None, 1):
            out.append(("best_of", "one choice per request is generated here"))
        if self.suffix:
            out.append(("suffix", "fill-in-the-middle is not implemented"))
        return out

    @property
    def token_cap(self) -> Optional[int]:
        return self.max_tokens


SCHEMAS = {"chat": ChatRequest, "completions": CompletionRequest}


_TYPES = {
    "dict_type": "an object",
    "model_type": "an object",
    "model_attributes_type": "an object",
    "bool_type": "true or false",
    "int_type": "a whole number",
    "float_type": "a number",
    "string_type": "a string",
    "list_type": "a list",
}


def _kind(v: Any) -> str:
    return {
        dict: "an object",
        list: "a list",
        bool: "a boolean",
        int: "a whole number",
        float: "a decimal number",
        str: "a string",
        type(None): "null",
    }.get(type(v), type(v).__name__)


def _path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif "[" in part or part in ("str", "int", "float", "bool", "none"):
            continue  # pydantic's name for a union member, not a field of the request
        else:
            out += ("." if out else "") + part
    return out or "body"


def _reject_constant(name: str) -> Any:
    raise Invalid(f"{name} is not JSON (numbers must be finite)")


def _walk(v: Any, path: str = "body") -> int:
    """Depth and text check without recursion: raise Invalid for nesting beyond MAX_DEPTH or a string
    that is not text (a lone surrogate such as "\\ud800"); return how many characters the strings hold."""
    chars = 0
    stack = [(v, path, 0)]
    while stack:
        x, p, d = stack.pop()
        if d > MAX_DEPTH:
            raise Invalid(f"{p}: nested deeper than {MAX_DEPTH} levels")
        if isinstance(x, str):
            try:
                x.encode("utf-8")
            except UnicodeEncodeError as e:
                raise Invalid(f"{p}: holds {x[e.start]!r}, a lone surrogate, which is not text") from None
            chars += len(x)
        elif isinstance(x, dict):
            for k, y in x.items():
                stack.append((k, p, d + 1))
                stack.append((y, f"{p}.{k}" if p != "body" else k, d + 1))
        elif isinstance(x, list):
            stack.extend((y, f"{p}[{i}]", d + 1) for i, y in enumerate(x))
    return chars


def parse_body(raw: bytes, kind: str) -> tuple[Any, int]:
    """The POST body as ``SCHEMAS[kind]`` and the characters its strings hold; Invalid otherwise."""
    try:
        # JSON on the wire is UTF-8 (RFC 8259); json.loads would guess UTF-16 from a body's first bytes
        body = json.loads(raw.decode("utf-8-sig"), parse_constant=_reject_constant)
    except RecursionError:
        raise Invalid(f"the request body is nested deeper than {MAX_DEPTH} levels") from None
    except UnicodeDecodeError as e:
        raise Invalid(f"the request body is not UTF-8 ({e.reason} at byte {e.start})") from None
    except ValueError as e:
        if isinstance(e, Invalid):
            raise
        raise Invalid(f"the request body is not valid JSON ({e})") from None
    if not isinstance(body, dict):
        raise Invalid(f"the request body must be a JSON object, not {_kind(body)}")
    chars = _walk(body)
    try:
        req = SCHEMAS[kind].model_validate(body)
    except ValidationError as e:
        err = e.errors(include_url=False)[0]
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field (misspelt, or not supported by this server)"
        elif err["type"] == "missing":
            msg = "required"
        elif err["type"] == "too_short":
            msg = "must not be empty"
        elif err["type"] in _TYPES:
            msg = f"must be {_TYPES[err['type']]}, not {_kind(err.get('input'))}"
        raise Invalid(f"{_path(err['loc'])}: {msg}") from None
    if kind == "chat":  # base64 media is not prompt text (--max-prompt-chars); its own limits are media_parts'
        chars -= media_chars(req.messages)
    return req, chars


def check_media(req: ChatRequest, towers: frozenset[str]) -> None:
    """The hook for image and audio parts: each needs the tower ``MEDIA_PARTS`` names for its type.
    Issue 24's towers extend ``Session.towers``; until one is loaded a media part is a 400 here."""
    for i, m in enumerate(req.messages):
        if not isinstance(m.content, list):
            continue
        for j, p in enumerate(m.content):
            tower = MEDIA_PARTS.get(p["type"])
            if tower and tower not in towers:
                raise Invalid(
                    f"messages[{i}].content[{j}]: this model has no {tower} tower ({p['type']} parts need one)"
                )
