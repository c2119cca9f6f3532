"""`edgekit run ART --image FILE --audio FILE -p ...`: one reply with media, through the same session,
scheduler and sampling as a text `run` (the target's runtime, --set knobs, --temperature, --seed, ...).

The files the user named are read here and handed to serve's towers (serve/towers.py) as OpenAI content
parts (data: URIs, read by serve/media_parts.py): the same decoders and the same prompt as a served
request whose user turn is ``[media..., text]`` (each medium on a line of its own before the prompt, as
in transformers' Gemma 4 examples).
"""

from __future__ import annotations

import base64
import re
import time
from pathlib import Path
from typing import Any, Optional

from ..core.errors import ArtifactError
from .media import MAX_AUDIO_SECONDS, MAX_PIXELS, MediaError
from .media_parts import AUDIO_FORMATS, MediaLimits
from .repl import Chat, clean_text
from .towers import attach

_WHERE = re.compile(r"messages\[\d+\]\.content\[(\d+)\]")


def _read(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise MediaError(f"{path}: cannot read it ({e.strerror or e})") from None


def _audio_format(data: bytes, path: Path) -> str:
    """OpenAI's name for the clip's container, as libsndfile reads it (the part must declare it)."""
    # deferred: libsndfile loads only for audio
    import io

    import soundfile as sf

    try:
        fmt = sf.info(io.BytesIO(data)).format
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        raise MediaError(f"{path}: not audio libsndfile can decode ({str(e).splitlines()[0][:80]})") from None
    names = {v: k for k, v in AUDIO_FORMATS.items()}
    if fmt not in names:
        raise MediaError(f"{path}: {fmt} audio; give WAV, FLAC, OGG or MP3")
    return names[fmt]


def media_message(text: str, images: list[Path], audios: list[Path]) -> tuple[dict[str, Any], list[Path], int]:
    """The user turn: the images, then the audio clips, then the text; the files in part order; the
    largest file's size (the limit the parts are read within)."""
    parts: list[dict[str, Any]] = []
    files: list[Path] = []
    biggest = 1
    for p in images:
        data = _read(p)
        url = "data:image/*;base64," + base64.b64encode(data).decode()
        parts.append({"type": "image_url", "image_url": {"url": url}})
        files.append(p)
        biggest = max(biggest, len(data))
    for p in audios:
        data = _read(p)
        fmt = _audio_format(data, p)
        parts.append({"type": "input_audio", "input_audio": {"data": base64.b64encode(data).decode(), "format": fmt}})
        files.append(p)
        biggest = max(biggest, len(data))
    parts.append({"type": "text", "text": text})
    return {"role": "user", "content": parts}, files, biggest


def reply_with_media(
    chat: Chat,
    text: str,
    images: list[Path],
    audios: list[Path],
    mmproj: Optional[Path],
    image_tokens: int,
) -> float:
    """Attach the towers to ``chat``'s session, send one user turn with the media, stream the reply;
    returns the seconds the towers took (before the reply's ttft)."""
    s = chat.session
    message, files, biggest = media_message(clean_text(text)[0], images, audios)
    limits = MediaLimits(
        max_bytes=biggest, max_pixels=MAX_PIXELS, max_seconds=MAX_AUDIO_SECONDS, image_tokens=image_tokens
    )
    towers = attach(s, limits, mmproj, max_waiting=1)
    if towers is None:
        raise ArtifactError(
            f"{s.path.name} was built without towers; rebuild with `edgekit build --modalities vision,audio` "
            "(a GGUF also takes --mmproj FILE)"
        )
    if towers.warning:
        chat.w.err(f"edgekit: warning: {towers.warning}\n")
    messages = ([{"role": "system", "content": chat.system}] if chat.system else []) + [message]
    t0 = time.perf_counter()
    try:
        ids, prefix, spans = towers.build_prompt(messages, None, chat.think)
    except MediaError as e:  # name the file, not the part
        raise MediaError(_WHERE.sub(lambda m: str(files[int(m.group(1))]), e.message)) from None
    towers_s = time.perf_counter() - t0
    chat.stream(ids, prefix, tuple(spans))
    return towers_s
