"""OpenAI content parts with media, read and checked for ``edgekit serve``: the bytes of each part, decoded
by serve/media.py (Pillow, libsndfile), within the server's limits.

Parts (OpenAI's chat format):
- ``{"type": "image_url", "image_url": {"url": URL, "detail": "auto"|"low"|"high"}}``: URL is a
  ``data:image/...;base64,...`` URI; ``file://PATH`` only with ``--media-path DIR`` (PATH relative to
  DIR, never outside it, as llama-server's --media-path); ``http(s)://`` only with
  ``--allow-remote-media`` (then fetched within the byte limit and ``--media-fetch-timeout``).
  ``detail: "low"`` is 70 soft tokens; otherwise the server's ``--image-tokens``.
- ``{"type": "input_audio", "input_audio": {"data": BASE64, "format": "wav"|"mp3"|"flac"|"ogg"}}``;
  the declared format must be what the data is.
Every fault is a ``MediaError`` whose message names the part (``messages[0].content[1]: ...``): the
server answers 400 and goes on.
"""

from __future__ import annotations

import base64
import binascii
import io
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ..core.errors import ConfigError
from .media import (
    DEFAULT_IMAGE_BUDGET,
    MAX_AUDIO_SECONDS,
    MAX_PIXELS,
    Audio,
    MediaError,
    open_audio,
    open_image,
    prepare_image,
)

AUDIO_FORMATS = {"wav": "WAV", "mp3": "MP3", "flac": "FLAC", "ogg": "OGG"}  # OpenAI's name → libsndfile's
LOW_DETAIL_TOKENS = 70  # the smallest of transformers' budgets


@dataclass(frozen=True)
class MediaLimits:
    """What a served request may hold; the serve flags of the same names."""

    max_bytes: int = 20 << 20  # per part, decoded (OpenAI's per-image limit); --max-body-mb bounds inline data too
    max_pixels: int = MAX_PIXELS
    max_seconds: float = MAX_AUDIO_SECONDS
    image_tokens: int = DEFAULT_IMAGE_BUDGET
    media_path: Optional[Path] = None  # file:// parts are read under this folder only
    allow_remote: bool = False
    fetch_timeout_s: float = 10.0

    def check(self) -> None:
        if self.max_bytes < 1 or self.max_pixels < 1:
            raise ConfigError("--max-media-mb and --max-image-pixels must be positive")
        if not 0 < self.max_seconds <= MAX_AUDIO_SECONDS:
            raise ConfigError(f"--max-audio-seconds {self.max_seconds:g}: give 0 < S <= {MAX_AUDIO_SECONDS:g}")
        if not 0 < self.fetch_timeout_s < float("inf"):
            raise ConfigError(f"--media-fetch-timeout {self.fetch_timeout_s}: give a positive number of seconds")
        if self.media_path is not None and not self.media_path.is_dir():
            raise ConfigError(f"--media-path {self.media_path}: not a folder")


@dataclass
class Medium:
    kind: str  # "vision" (a prepared Pillow image) | "audio" (media.Audio)
    value: Any
    where: str  # messages[i].content[j]


def has_media(messages: list[dict[str, Any]]) -> bool:
    return any(isinstance(m.get("content"), list) and any(p["type"] != "text" for p in m["content"]) for m in messages)


def media_chars(messages: list[Any]) -> int:
    """Characters the media parts' strings hold (base64 data is not prompt text)."""
    n = 0
    for m in messages:
        for p in m.content if isinstance(m.content, list) else ():
            if p.get("type") != "text":
                n += sum(len(v) for v in _strings(p))
    return n


def _strings(x: Any) -> list[str]:
    if isinstance(x, str):
        return [x]
    if isinstance(x, dict):
        return [s for v in x.values() for s in _strings(v)]
    if isinstance(x, list):
        return [s for v in x for s in _strings(v)]
    return []


def split(
    messages: list[dict[str, Any]], marker: str, limits: MediaLimits
) -> tuple[list[dict[str, Any]], list[Medium]]:
    """Messages whose contents are strings (each medium replaced by ``marker`` on a line of its own, text
    parts joined by newlines) and the decoded media in prompt order."""
    out: list[dict[str, Any]] = []
    media: list[Medium] = []
    for i, m in enumerate(messages):
        content = m.get("content")
        if not isinstance(content, list):
            if isinstance(content, str) and marker in content:
                raise MediaError(f"messages[{i}].content: holds {marker}, the media marker; send media as parts")
            out.append(m)
            continue
        text: list[str] = []
        for j, part in enumerate(content):
            where = f"messages[{i}].content[{j}]"
            kind = part["type"]
            if kind == "text":
                if marker in part["text"]:
                    raise MediaError(f"{where}: holds {marker}, the media marker; send media as parts")
                text.append(part["text"])
            elif kind == "image_url":
                media.append(Medium("vision", _image(part, where, limits), where))
                text.append(marker)
            elif kind == "input_audio":
                media.append(Medium("audio", _audio(part, where, limits), where))
                text.append(marker)
            else:  # schema.MEDIA_PARTS has it, this reader does not (input_image: the Responses API's)
                raise MediaError(f"{where}: {kind} parts are not read here; send image_url or input_audio")
        out.append({**m, "content": "\n".join(text)})
    return out, media


def _fields(spec: Any, where: str, name: str, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(spec, dict):
        raise MediaError(f"{where}.{name}: must be an object")
    extra = set(spec) - allowed
    if extra:
        raise MediaError(f"{where}.{name}.{sorted(extra)[0]}: unknown field")
    return spec


def _part(part: dict[str, Any], where: str, name: str, allowed: set[str]) -> dict[str, Any]:
    extra = set(part) - {"type", name}
    if extra:
        raise MediaError(f"{where}.{sorted(extra)[0]}: unknown field")
    return _fields(part.get(name), where, name, allowed)


def _b64(data: Any, where: str, limits: MediaLimits) -> bytes:
    if not isinstance(data, str) or not data:
        raise MediaError(f"{where}: base64 data must be a non-empty string")
    if len(data) * 3 // 4 > limits.max_bytes + 2:
        raise MediaError(
            f"{where}: {len(data) * 3 // 4:,} bytes; this server takes at most {limits.max_bytes:,} per part"
        )
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise MediaError(f"{where}: not valid base64") from None


def _image(part: dict[str, Any], where: str, limits: MediaLimits) -> Any:
    spec = _part(part, where, "image_url", {"url", "detail"})
    url, detail = spec.get("url"), spec.get("detail", "auto")
    if detail not in ("auto", "low", "high"):
        raise MediaError(f'{where}.image_url.detail: "auto", "low" or "high", not {detail!r}')
    if not isinstance(url, str) or not url:
        raise MediaError(f"{where}.image_url.url: required, a data: URI")
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme == "data":
        head, _, payload = url.partition(",")
        if not head.lower().endswith(";base64"):
            raise MediaError(f"{where}: a data: URI must be base64 (data:image/png;base64,...)")
        data = _b64(payload, where, limits)
    elif scheme == "file" or not scheme:
        data = _local(url, where, limits)
    elif scheme in ("http", "https"):
        data = _fetch(url, where, limits)
    else:
        raise MediaError(f"{where}.image_url.url: {scheme}: URLs are not read; send a data: URI")
    budget = min(LOW_DETAIL_TOKENS, limits.image_tokens) if detail == "low" else limits.image_tokens
    return prepare_image(open_image(data, where, limits.max_pixels), budget)


def _local(url: str, where: str, limits: MediaLimits) -> bytes:
    if limits.media_path is None:
        raise MediaError(
            f"{where}: local files are not read by this server (start it with --media-path DIR); send a data: URI"
        )
    name = urllib.parse.unquote(url[len("file://") :] if url.startswith("file://") else url)
    root = limits.media_path.resolve()
    path = (root / name.lstrip("/") if not Path(name).is_absolute() else Path(name)).resolve()
    if not path.is_relative_to(root):
        raise MediaError(f"{where}: {name} is outside --media-path")
    if not path.is_file():
        raise MediaError(f"{where}: no file {name} under --media-path")
    size = path.stat().st_size
    if size > limits.max_bytes:
        raise MediaError(f"{where}: {size:,} bytes; this server takes at most {limits.max_bytes:,} per part")
    return path.read_bytes()


class _HttpOnly(urllib.request.HTTPRedirectHandler):
    max_redirections = 3

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> Any:
        if urllib.parse.urlsplit(newurl).scheme.lower() not in ("http", "https"):
            raise MediaError(f"redirected to {newurl.split(':')[0]}:, which is not fetched")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _fetch(url: str, where: str, limits: MediaLimits) -> bytes:
    """GET ``url`` (http/https, redirects to those only) within the byte limit and the whole-fetch timeout."""
    if not limits.allow_remote:
        raise MediaError(
            f"{where}: remote URLs are not fetched by this server (start it with --allow-remote-media); "
            "send a data: URI"
        )
    deadline = time.monotonic() + limits.fetch_timeout_s
    opener = urllib.request.build_opener(_HttpOnly())
    req = urllib.request.Request(url, headers={"User-Agent": "edgekit-serve"})
    try:
        with opener.open(req, timeout=limits.fetch_timeout_s) as r:
            declared = r.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > limits.max_bytes:
                raise MediaError(f"{where}: {int(declared):,} bytes; this server takes at most {limits.max_bytes:,}")
            buf = io.BytesIO()
            while chunk := r.read(1 << 16):
                buf.write(chunk)
                if buf.tell() > limits.max_bytes:
                    raise MediaError(f"{where}: over {limits.max_bytes:,} bytes; this server takes no more per part")
                if time.monotonic() > deadline:
                    raise MediaError(f"{where}: the fetch took over {limits.fetch_timeout_s:g} s")
            return buf.getvalue()
    except MediaError as e:
        raise MediaError(e.message if e.message.startswith(where) else f"{where}: {e.message}") from None
    except (OSError, ValueError) as e:  # URLError, HTTPError, timeouts, a bad URL
        why = getattr(e, "reason", None) or getattr(e, "code", None) or e
        raise MediaError(f"{where}: could not fetch it ({str(why).splitlines()[0][:80]})") from None


def _audio(part: dict[str, Any], where: str, limits: MediaLimits) -> Audio:
    # deferred: libsndfile loads only for audio
    import soundfile as sf

    spec = _part(part, where, "input_audio", {"data", "format"})
    fmt = spec.get("format")
    if fmt not in AUDIO_FORMATS:
        raise MediaError(f"{where}.input_audio.format: one of {', '.join(AUDIO_FORMATS)}, not {fmt!r}")
    data = _b64(spec.get("data"), where, limits)
    try:  # the header first: a long clip is refused before it is decoded whole
        info = sf.info(io.BytesIO(data))
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        raise MediaError(f"{where}: not audio libsndfile can decode ({str(e).splitlines()[0][:80]})") from None
    if info.format != AUDIO_FORMATS[fmt]:
        raise MediaError(f"{where}.input_audio.format: says {fmt}, but the data is {info.format}")
    if info.samplerate and info.frames / info.samplerate > limits.max_seconds:
        raise MediaError(
            f"{where}: {info.frames / info.samplerate:.1f} s is over the {limits.max_seconds:g} s a clip may last"
        )
    return open_audio(data, where, limits.max_seconds)
