"""Projector precision: each projector type (F16, BF16, Q8_0, ...) against the F16 one, on the same text
model and the same media, through llama.cpp's mtmd (GGUF projectors) or mlx-vlm's towers (MLX builds).

Per projector and medium: the soft tokens' relative L2 error against F16's, and the next-token KL(F16 ‖ P)
after a chat prompt holding the medium (the distribution the reply's first token is drawn from), with
whether the greedy token agrees. On random-weight towers these figures show each type is wired right and
what its rounding costs in that tower; they cannot rank types for a trained tower (a random deep tower
amplifies rounding: docs/multimodal.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..backends.mlx.media import MARKER, soft_and_logits
from ..core.errors import ConfigError
from ..serve.chat import ChatTemplate
from ..serve.media_run import MediaModel, MediaPrompt, media_marker
from .metrics import full_kl

REFERENCE = "F16"
PROMPT = "Describe this."


@dataclass(frozen=True)
class Medium:
    label: str  # e.g. "image 300x400", "audio 2.0 s"
    kind: str  # "image" | "audio"
    data: Any  # a prepared Pillow image, or serve.media.Audio


@dataclass(frozen=True)
class PrecisionRow:
    projector: str
    medium: str
    tokens: int
    soft_rel_l2: float  # vs the F16 projector's soft tokens
    next_kl: float  # KL(F16 ‖ this) of the next-token distribution, nats
    same_top: bool


def _measure(text_gguf: Path, mmproj: Path, media: list[Medium], threads: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(soft tokens, next-token logits) per medium for one projector."""

    template = ChatTemplate.from_artifact(Path(text_gguf))
    text = template.render([{"role": "user", "content": media_marker() + "\n" + PROMPT}], enable_thinking=False)
    # F32 K/V: the cache type must not be what differs between projectors
    model = MediaModel(Path(text_gguf), Path(mmproj), n_ctx=2048, threads=threads, f32_cache=True)
    out = []
    try:
        for m in media:
            enc = model.proj.encode_image(m.data) if m.kind == "image" else model.proj.encode_audio(m.data)
            prompt = MediaPrompt([m.data], []) if m.kind == "image" else MediaPrompt([], [m.data])
            model.eval_prompt(text, prompt)
            out.append((enc.embeddings, model._logits().astype(np.float64).copy()))
    finally:
        model.close()
    return out


def compare_projectors(
    text_gguf: Path, projectors: dict[str, Path], media: list[Medium], threads: int = 2
) -> list[PrecisionRow]:
    """Rows for every projector (the F16 one included, as its own zero) and medium."""
    if REFERENCE not in projectors:
        raise ConfigError(f"projector precision is measured against an {REFERENCE} projector; none given")
    return _rows({name: _measure(text_gguf, path, media, threads) for name, path in projectors.items()}, media)


def compare_mlx_towers(folders: dict[str, Path], media: list[Medium], image_tokens: int = 70) -> list[PrecisionRow]:
    """The same rows for MLX builds of one text model whose towers differ in type (``folders``: type ->
    MLX folder), through the path `edgekit run` takes on MLX (backends/mlx/media.py)."""
    if REFERENCE not in folders:
        raise ConfigError(f"projector precision is measured against {REFERENCE} towers; none given")
    items = [(m.kind, m.data) for m in media]
    got = {}
    for t, f in folders.items():
        text = ChatTemplate.from_artifact(Path(f)).render(
            [{"role": "user", "content": MARKER + "\n" + PROMPT}], enable_thinking=False
        )
        head, tail = text.split(MARKER)
        got[t] = soft_and_logits(f, items, (head, tail), image_tokens)
    return _rows(got, media)


def _rows(got: dict[str, list[tuple[np.ndarray, np.ndarray]]], media: list[Medium]) -> list[PrecisionRow]:
    rows = []
    for name, per_medium in got.items():
        for m, (soft, logits), (ref_soft, ref_logits) in zip(media, per_medium, got[REFERENCE], strict=True):
            rows.append(
                PrecisionRow(
                    projector=name,
                    medium=m.label,
                    tokens=int(soft.shape[0]),
                    soft_rel_l2=float(np.linalg.norm(soft - ref_soft) / np.linalg.norm(ref_soft)),
                    next_kl=float(full_kl(ref_logits[None], logits[None])[0]),
                    same_top=bool(np.argmax(logits) == np.argmax(ref_logits)),
                )
            )
    return rows


def format_rows(rows: list[PrecisionRow]) -> str:
    lines = [f"| projector | medium | tokens | soft-token rel. L2 vs {REFERENCE} | next-token KL (nats) | same top-1 |"]
    lines.append("|---|---|---|---|---|---|")
    for r in rows:
        lines.append(
            f"| {r.projector} | {r.medium} | {r.tokens} | {r.soft_rel_l2:.2e} | {r.next_kl:.2e} | "
            f"{'yes' if r.same_top else 'no'} |"
        )
    return "\n".join(lines)
