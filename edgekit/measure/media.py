"""`edgekit bench --image/--audio`, the parent's side: the media read once, the towers found, the records.

Each file is decoded once with the runtime's own decoders (serve/media.py: Pillow, libsndfile), so bad
media fail in one line before any child starts; its sha256, dimensions or duration and the soft-token
count transformers' processor gives it go into the record. The child's side, shared by every engine, is
backends/bench_media.py; what differs per engine (where its towers are, how they load, encode and free,
how a prompt with a medium is evaluated) is its Backend's ``bench_media``: llama.cpp's mtmd in
backends/gguf/bench_media.py, mlx-vlm's towers in backends/mlx/bench_media.py. backends/bench_media.py
says how the towers live (``towers`` = resident | on_demand) and how the memory split is measured.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

from ..backends.bench_media import TOWERS_MODES, MediaSpec, check_mode
from ..backends.runner import mean_sd
from ..core.errors import ConfigError
from ..model.checkpoint import sha256_file
from ..profiles.resolve import ResolvedArtifact
from ..results import Record
from ..serve.media import (
    DEFAULT_IMAGE_BUDGET,
    IMAGE_BUDGETS,
    image_size_for_budget,
    image_tokens,
    open_audio,
    open_image,
)

__all__ = ["TOWERS_MODES", "MediaSpec", "check_media", "describe", "media_record", "projector_for"]


def describe(images: list[Path], audios: list[Path], budgets: list[int]) -> list[MediaSpec]:
    """The media of a run: each image once per budget (a sweep), each clip once; MediaError (one line)
    for a file that cannot be read or decoded, or is over a limit."""
    for b in budgets:
        if b not in IMAGE_BUDGETS:
            raise ConfigError(f"--image-tokens {b}: choose among {', '.join(map(str, IMAGE_BUDGETS))}")
    out = []
    for p in images:
        img = open_image(Path(p), str(p))
        sha = sha256_file(Path(p))
        for b in budgets or [DEFAULT_IMAGE_BUDGET]:
            h, w = image_size_for_budget(img.height, img.width, b)
            out.append(
                MediaSpec("image", str(p), sha, width=img.width, height=img.height, budget=b, tokens=image_tokens(h, w))
            )
    for p in audios:
        a = open_audio(Path(p), str(p))
        out.append(MediaSpec("audio", str(p), sha256_file(Path(p)), seconds=a.seconds, tokens=a.tokens))
    return out


# ---------------------------------------------------------------- the parent's records


def check_media(ra: ResolvedArtifact) -> None:
    """The artifact's engine benches media, in the towers mode asked (one line otherwise; before any child)."""
    check_mode(ra.engine.bench_media, ra.engine.name, ra.settings.knobs.get("towers") or "resident")


def projector_for(ra: ResolvedArtifact, mmproj: Optional[Path], media: Sequence[MediaSpec] = ()) -> Path:
    """The towers' file of the artifact (its engine's ``bench_media.projector``: a GGUF's manifest-linked
    mmproj or --mmproj, an MLX folder's towers.safetensors); one line when it has none (for a medium)."""
    check_media(ra)
    bench = ra.engine.bench_media
    assert bench is not None  # check_media refused it
    return bench.projector(ra.path, ra.artifact, mmproj, tuple(dict.fromkeys(m.kind for m in media)))


def media_record(rec: Record, medium: Any, res: dict[str, Any], mmproj: str, measured: str = "") -> Record:
    """A record of a test with a medium in its prompt: what the medium is, its encode time, and the peak
    split into text and towers (``measured``: what those bytes are on this engine, its MediaBench's)."""
    got = res.get("medium") or {}
    reps = res["reps"]
    rec.media_kind, rec.media_sha256 = medium.kind, medium.sha256
    rec.media_width, rec.media_height, rec.media_seconds = medium.width, medium.height, medium.seconds
    rec.image_tokens_budget = medium.budget
    rec.media_tokens = got.get("n_tokens")
    rec.n_positions = got.get("positions")
    if reps:
        rec.encode_ms, rec.encode_ms_sd = mean_sd([r["encode_ms"] for r in reps])
        rec.towers_load_ms = mean_sd([r["towers_load_ms"] for r in reps])[0]
    rec.samples.update({k: [r[k] for r in reps] for k in ("encode_ms", "towers_load_ms")})
    if got:
        rec.towers_bytes = got["towers_bytes"]
        resident = rec.runtime.get("towers", "resident") == "resident"
        # resident: the towers' part at its largest (weights + compute: kept by mtmd; on MLX the encode's,
        # handed back after it) is the split of the peak; on_demand: the text's part is the largest RSS seen
        # with the towers freed
        rec.text_bytes = rec.peak_rss_bytes - rec.towers_bytes if resident else got["rss_without_towers"]
        rec.extra["towers"] = {
            "measured": measured,
            "load_bytes": got["towers_load_bytes"],
            "rss_with_towers": got["rss_with_towers"],
            "rss_without_towers": got["rss_without_towers"],
            "freed_bytes": got.get("towers_freed_bytes", 0),
            "compute_kept": got.get("compute_kept", True),
            "rss_text": got.get("rss_text", 0),
            "libs_bytes": got.get("libs_bytes", 0),
        }
    rec.extra["media"] = {"file": Path(medium.path).name, "processor_tokens": medium.tokens}
    rec.extra["projector"] = {"file": Path(mmproj).name}
    return rec
