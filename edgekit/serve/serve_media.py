"""Images and audio in `edgekit serve`: OpenAI content parts decoded and checked, then one reply on mtmd.

Parts: ``{"type": "text"}``, ``{"type": "image_url", "image_url": {"url": "data:image/...;base64,..."}}``
and ``{"type": "input_audio", "input_audio": {"data": base64, "format": "wav"|"mp3"|...}}``. Remote
URLs and file paths are never fetched or read. Anything unusable is a ``MediaError`` the server answers
with a 400 (the message says what), and the server keeps serving: a corrupt or unsupported file, too
many bytes, pixels or seconds, or media this build has no tower for.

Replies with media run one at a time on their own llama.cpp context with the artifact's projector
(media_run.MediaModel, greedy, loaded on the first such request), beside the text engine's slots.
"""

from __future__ import annotations

import base64
import binascii
import threading
from pathlib import Path
from typing import Any, Optional

from .media import (
    DEFAULT_IMAGE_BUDGET,
    MediaError,
    open_audio,
    open_image,
    prepare_image,
)
from .media_run import MediaModel, MediaPrompt, media_marker

MAX_MEDIA_BYTES = 20 << 20   # per part, decoded
AUDIO_FORMATS = ("wav", "mp3", "flac", "ogg")


def has_media(messages: list[dict[str, Any]]) -> bool:
    """Whether any message has a content part other than text (those go through split_parts)."""
    return any(isinstance(m.get("content"), list) and any(not (isinstance(p, dict) and p.get("type") == "text")
                                                          for p in m["content"]) for m in messages)


def _b64(data: Any, what: str) -> bytes:
    if not isinstance(data, str):
        raise MediaError(f"{what}: base64 data must be a string")
    if len(data) > MAX_MEDIA_BYTES * 4 // 3 + 4:
        raise MediaError(f"{what}: over {MAX_MEDIA_BYTES >> 20} MB")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise MediaError(f"{what}: not valid base64") from None


def _image_bytes(part: dict[str, Any], what: str) -> bytes:
    spec = part.get("image_url")
    url = spec.get("url") if isinstance(spec, dict) else spec
    if not isinstance(url, str):
        raise MediaError(f"{what}: image_url needs a url")
    if not url.startswith("data:"):
        raise MediaError(f"{what}: only data: URIs are accepted (remote URLs and file paths are not fetched)")
    head, _, payload = url.partition(",")
    if not head.endswith(";base64"):
        raise MediaError(f"{what}: a data: URI must be base64 (data:image/png;base64,...)")
    return _b64(payload, what)


def split_parts(messages: list[dict[str, Any]], modalities: tuple[str, ...],
                budget: int = DEFAULT_IMAGE_BUDGET) -> tuple[list[dict[str, Any]], MediaPrompt]:
    """Messages with string contents (each medium replaced by mtmd's marker) and the decoded media in
    prompt order: images first, then audio (the order media_run.MediaModel evaluates bitmaps in)."""
    marker = media_marker()
    images: list[Any] = []
    audios: list[Any] = []
    order: list[str] = []
    out = []
    for i, m in enumerate(messages):
        content = m.get("content")
        if not isinstance(content, list):
            out.append(m)
            continue
        text = []
        for j, part in enumerate(content):
            what = f"messages[{i}].content[{j}]"
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                text.append(str(part.get("text", "")))
            elif kind == "image_url":
                if "vision" not in modalities:
                    raise MediaError(f"{what}: this build has no vision tower; build it with --modalities vision")
                images.append(prepare_image(open_image(_image_bytes(part, what), what), budget))
                order.append("image")
                text.append(marker + "\n")
            elif kind == "input_audio":
                if "audio" not in modalities:
                    raise MediaError(f"{what}: this build has no audio tower; build it with --modalities audio")
                spec = part.get("input_audio") if isinstance(part.get("input_audio"), dict) else {}
                fmt = spec.get("format")
                if fmt not in AUDIO_FORMATS:
                    raise MediaError(f"{what}: input_audio.format {fmt!r}; one of {', '.join(AUDIO_FORMATS)}")
                audios.append(open_audio(_b64(spec.get("data"), what), what))
                order.append("audio")
                text.append(marker + "\n")
            else:
                raise MediaError(f"{what}: unknown content part type {kind!r}")
        out.append({**m, "content": "".join(text)})
    if "image" in order and "audio" in order and order != sorted(order, key=lambda k: k != "image"):
        raise MediaError("put images before audio in a request (mtmd takes the media in that order here)")
    return out, MediaPrompt(images, audios)


class MediaReplies:
    """The projector beside a served artifact, and one greedy reply at a time with media."""

    def __init__(self, text_gguf: Path, mmproj: Path, modalities: tuple[str, ...], n_ctx: int, threads: int):
        self.text_gguf, self.mmproj, self.modalities = text_gguf, mmproj, modalities
        self.n_ctx, self.threads = n_ctx, threads
        self._model: Optional[MediaModel] = None
        self._lock = threading.Lock()

    @classmethod
    def for_session(cls, session: Any) -> Optional["MediaReplies"]:
        """None when the served artifact has no projector (text only)."""
        from ..builder.projector import check_pair, projector_file

        a = session.artifact
        if a is None or session.format != "gguf":
            return None
        proj = projector_file(Path(session.path).parent, a)
        if proj is None:
            return None
        return cls(Path(session.path), proj, check_pair(Path(session.path), proj), session.n_ctx, session.threads or 2)

    def reply(self, template: Any, messages: list[dict[str, Any]], media: MediaPrompt, max_tokens: int,
              enable_thinking: Optional[bool]) -> dict[str, Any]:
        with self._lock:
            if self._model is None:
                self._model = MediaModel(self.text_gguf, self.mmproj, n_ctx=self.n_ctx, threads=self.threads)
            m = self._model
            text = template.render(messages, enable_thinking=enable_thinking)
            stop = m.stop_ids(template)
            figures = m.eval_prompt(text, media)
            toks = []
            finish = "length"
            for tok in m.greedy(max_tokens, stop):
                if tok in stop:
                    finish = "stop"
                    break
                toks.append(tok)
            body = b"".join(m.piece(t) for t in toks).decode("utf-8", errors="replace")
            return {"text": body, "finish_reason": finish, "prompt_tokens": int(figures["prompt_positions"]),
                    "completion_tokens": len(toks)}

    def close(self) -> None:
        with self._lock:
            if self._model is not None:
                self._model.close()
                self._model = None
