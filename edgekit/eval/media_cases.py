"""Suite cases with an image or an audio clip, run on the path `edgekit run --image/--audio` takes (any
backend with towers: llama.cpp's mtmd, MLX's mlx-vlm towers).

A case names its media beside the suite file, pinned by sha256:

    {"id": "cat-1", "suite": "vision", "prompt": "What animal is this?", "expected": "cat", "scorer": "contains",
     "image": {"file": "media/cat.png", "sha256": "9f2c..."}}

``file`` is relative to the suite file's folder (a pack's media travel with the pack); ``audio`` takes the
same form. A missing file, a path that leaves the folder, or bytes whose sha256 differs is refused at load,
naming FILE:LINE. The suite's own sha256 (in every record) therefore pins the media too.

Each medium stands before the case's last user message, images first, as `edgekit run` places them. The
reply is greedy, up to max_tokens, on the artifact's session with its towers (the projector its manifest
links, or an MLX folder's towers): the target's runtime and --set knobs apply as for text cases. Images
get the default budget (280 soft tokens, transformers' default).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.errors import BenchError, ConfigError
from ..serve.generate import Sampling
from ..serve.media import DEFAULT_IMAGE_BUDGET, MAX_AUDIO_SECONDS, MAX_PIXELS, MediaError
from ..serve.media_parts import MediaLimits
from ..serve.media_reply import media_message
from ..serve.session import open_resolved
from ..serve.towers import attach

KINDS = ("image", "audio")


@dataclass(frozen=True)
class CaseMedium:
    kind: str  # "image" | "audio"
    path: Path
    sha256: str


def parse_media(d: dict[str, Any], suite: Path, where: str) -> tuple[CaseMedium, ...]:
    """The case's media (image first), checked against the files beside ``suite``; ConfigError naming ``where``."""
    out = []
    root = Path(suite).resolve().parent
    for kind in KINDS:
        if kind not in d:
            continue
        spec = d[kind]
        if not (isinstance(spec, dict) and isinstance(spec.get("file"), str) and isinstance(spec.get("sha256"), str)):
            raise ConfigError(f'{where}: {kind} must be {{"file": "relative/path", "sha256": "hex digest"}}')
        rel = Path(spec["file"])
        path = (root / rel).resolve()
        if rel.is_absolute() or not path.is_relative_to(root):
            raise ConfigError(
                f"{where}: {kind} file {spec['file']!r} is outside the suite's folder; keep media beside it"
            )
        if not path.is_file():
            raise ConfigError(f"{where}: {kind} file {spec['file']} not found beside {Path(suite).name}")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != spec["sha256"].lower():
            raise ConfigError(
                f"{where}: {spec['file']} has sha256 {digest[:12]}…, the case pins {spec['sha256'][:12]}…; "
                "restore the file or update the case's sha256"
            )
        out.append(CaseMedium(kind, path, digest))
    return tuple(out)


def run_media_cases(ra: Any, cases: list[Any], opts: Any) -> list[tuple[Any, str]]:
    """(case, greedy reply) for ``cases`` (each with media) on the resolved artifact ``ra``, through the path
    `edgekit run --image/--audio` takes: its session (the target's runtime and --set knobs applied), its
    backend's towers (serve/towers.py), the media as content parts of the last user turn."""

    biggest = max(m.path.stat().st_size for c in cases for m in c.media)
    limits = MediaLimits(max(biggest, 1), MAX_PIXELS, MAX_AUDIO_SECONDS, DEFAULT_IMAGE_BUDGET)
    session = open_resolved(ra)
    results = []
    try:
        towers = attach(session, limits, max_waiting=1)
        if towers is None:
            raise ConfigError(
                f"{ra.path.name}: built without towers, so its suite cases with images or audio cannot run; "
                "rebuild with `edgekit build --modalities vision,audio` or use a suite without media"
            )
        for c in cases:
            msgs = [dict(m) for m in c.messages]
            last = max(i for i, m in enumerate(msgs) if m["role"] == "user")
            msgs[last], _, _ = media_message(
                str(msgs[last]["content"]),
                [m.path for m in c.media if m.kind == "image"],
                [m.path for m in c.media if m.kind == "audio"],
            )
            try:
                ids, prefix, spans = towers.build_prompt(msgs, None, False)
            except MediaError as e:
                raise MediaError(f"case {c.id}: {e.message}") from None
            text = ""
            for e in session.stream(ids, Sampling(max_tokens=opts.max_tokens, temperature=0.0), prefix, spans):
                if e.kind == "done":
                    if e.finish_reason == "error":
                        raise BenchError(f"{ra.path.name}: generation failed on case {c.id} ({e.text})")
                    break
                text += e.text
            results.append((c, text))
    finally:
        session.close()
    return results
