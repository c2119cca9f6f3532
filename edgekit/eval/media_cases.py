"""Suite cases with an image or an audio clip, run through llama.cpp's mtmd (the path `edgekit run --image`
takes).

A case names its media beside the suite file, pinned by sha256:

    {"id": "cat-1", "suite": "vision", "prompt": "What animal is this?", "expected": "cat", "scorer": "contains",
     "image": {"file": "media/cat.png", "sha256": "9f2c..."}}

``file`` is relative to the suite file's folder (a pack's media travel with the pack); ``audio`` takes the
same form. A missing file, a path that leaves the folder, or bytes whose sha256 differs is refused at load,
naming FILE:LINE. The suite's own sha256 (in every record) therefore pins the media too.

Each medium stands before the case's last user message, images first, as `edgekit run` places them. The
reply is greedy, up to max_tokens, on a plain llama.cpp context with the artifact's projector (the one its
manifest links): the target's runtime knobs are not applied there, so a run that sets knobs is refused.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.errors import ConfigError
from ..core.host import physical_cores
from ..serve.chat import ChatTemplate
from ..serve.media_run import MediaModel, find_projector, load_media, media_marker

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


def run_media_cases(pl: Any, cases: list[Any], opts: Any) -> list[tuple[Any, str]]:
    """(case, greedy reply) for ``cases`` (each with media) on ``pl`` (a resolved GGUF artifact with a projector)."""

    if pl.artifact.format != "gguf":
        raise ConfigError(
            f"{pl.path.name}: suite cases with images or audio run on GGUF builds with a projector (llama.cpp's "
            "mtmd); evaluate this MLX artifact on a suite without media"
        )
    if opts.runtime:
        raise ConfigError(
            f"--set {next(iter(opts.runtime))}: cases with media run on llama.cpp's defaults, which the knob "
            "would not change; drop it or use a suite without media"
        )
    proj = find_projector(pl.path, pl.artifact, None)
    template = ChatTemplate.from_artifact(pl.path)
    marker = media_marker()
    model = MediaModel(pl.path, proj, n_ctx=2048, threads=opts.threads or min(4, physical_cores()))
    results = []
    try:
        stop = model.stop_ids(template)
        for c in cases:
            media = load_media(
                [m.path for m in c.media if m.kind == "image"], [m.path for m in c.media if m.kind == "audio"]
            )
            msgs = [dict(m) for m in c.messages]
            last = max(i for i, m in enumerate(msgs) if m["role"] == "user")
            msgs[last]["content"] = "".join(marker + "\n" for _ in c.media) + str(msgs[last]["content"])
            figures = model.eval_prompt(template.render(msgs, enable_thinking=False), media)
            room = model.llm.n_ctx() - int(figures["prompt_positions"])
            toks = [t for t in model.greedy(min(room, opts.max_tokens), stop) if t not in stop]
            text = b"".join(model.piece(t) for t in toks).decode("utf-8", errors="replace")
            results.append((c, text))
    finally:
        model.close()
    return results
