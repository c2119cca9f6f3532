"""MLX's side of `edgekit bench --image/--audio` (backends/bench_media.py has the shared loop), on the
served path's own code (backends/mlx/media.py): the towers in the artifact folder loaded into mlx-vlm's
modules (``MlxProjector``), a medium laid out as `edgekit run` lays it out (``<|image>`` + its soft
positions + ``<image|>``; audio ``<|audio>`` ... ``<audio|>``) and encoded, and the prompt evaluated by
``prefill_media`` (the soft tokens in place of the media rows of mlx-lm's input embeddings).

Everything runs on the bench child's one thread (MLX arrays belong to the thread that made them).

Towers: ``resident`` = ``towers.safetensors`` read into MLX arrays once, before the first medium, kept to
the end. ``on_demand`` = loaded per prompt and dropped before the text is evaluated: the module and its
arrays released, MLX's buffer cache cleared and glibc's heap trimmed (``MlxTowers.close``).

Memory on Linux (this host, MLX's CPU backend): MLX allocates arrays with malloc, so the towers' weights
and compute are anonymous memory and RSS counts them (RssAnon's growth in the towers' windows is their
part). On a Mac, MLX's arrays are Metal buffers in unified memory, which RSS does not count the same way;
there ``phys_footprint`` (the record's) is the figure memory limits enforce, and these splits do not carry.
"""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any, Optional

from ...core.errors import ArtifactError, ConfigError
from ...core.host import trim_heap
from ..bench_media import TOWERS_MODES, MediaBench, MediaSpec, Segment
from .media import MlxProjector, MlxSpan, _Medium, prefill_media, towers_entry
from .towers import TOWERS_FILE, require_mlx_vlm

KINDS = {"image": "vision", "audio": "audio"}  # a bench medium's kind -> the tower it needs


class MlxTowers:
    """mlx-vlm's towers of an MLX folder on this thread (bench_media.Loaded)."""

    def __init__(self, runner: Any, towers: Path, text: Path, threads: int, budget: int):
        self.proj: Optional[MlxProjector] = MlxProjector(Path(text), budget, call=lambda fn: fn())
        self._compute = 0

    def prepare(self, spec: MediaSpec, decoded: Any) -> Any:
        """``MlxProjector.span``: the pixels (mlx-vlm's image processor at the medium's budget) or the log-mel,
        and the marker ids around the soft positions."""
        assert self.proj is not None
        self.proj.image_budget = spec.budget or self.proj.image_budget
        return self.proj.span(_Medium(KINDS[spec.kind], decoded, spec.path))

    def encode(self, prepared: Any) -> tuple[list[Segment], int, float]:
        import mlx.core as mx  # deferred: the mlx extra, loaded by now

        assert self.proj is not None
        before, span, after = prepared
        # MLX's own count of the encode's compute: its allocator's peak over what is live before (the
        # weights). The record's mlx_peak_bytes is then the peak since the last encode.
        mx.reset_peak_memory()
        base = mx.get_active_memory()
        self.proj.encode_span(span)
        self._compute = max(int(mx.get_peak_memory()) - base, 0)
        embd = span.embd
        segs = [
            Segment(tokens=list(before), n_pos=len(before)),
            Segment(embd=embd, n_pos=span.n_pos),
            Segment(tokens=list(after), n_pos=len(after)),
        ]
        return segs, span.n_tokens, span.encode_s * 1e3

    def compute_bytes(self) -> Optional[int]:
        """The last encode's compute (MLX's allocator): mlx-vlm's arrays are freed once the soft tokens are
        copied out, back to MLX's buffer cache, which the runner's reset clears before the text."""
        return self._compute

    def close(self) -> None:
        import mlx.core as mx  # deferred: the mlx extra, loaded by now

        if self.proj is not None:
            self.proj.close()  # the module and its weights: the last references to the towers' arrays
            self.proj = None
        gc.collect()
        mx.clear_cache()  # MLX keeps freed buffers for reuse; hand them back
        trim_heap()  # and glibc its freed heap (core.host)


def evaluate(runner: Any, segments: list[Segment]) -> int:
    """Every segment into the runner's emptied cache: the ids with -1 at the soft positions, and the soft
    tokens spliced in by ``prefill_media`` (run's and serve's prefill); returns the positions used."""
    runner.reset()
    ids: list[int] = []
    spans = []
    for seg in segments:
        if seg.embd is not None:
            sp = MlxSpan("media", seg.n_pos, {})
            sp.embd, sp.start = seg.embd, len(ids)
            spans.append(sp)
            ids += [-1] * seg.n_pos
        else:
            ids += seg.tokens or []
    prefill_media(runner, ids, spans)
    return len(ids)


def projector(path: Path, artifact: Any, mmproj: Optional[Path], kinds: tuple[str, ...] = ()) -> Path:
    """The towers file config.json names in the folder; one line for --mmproj, a text-only build, or a
    medium whose tower the build lacks."""
    folder = Path(path)
    if mmproj is not None:
        raise ConfigError(f"--mmproj: {folder.name} is MLX, whose towers live in its folder ({TOWERS_FILE}); drop it")
    entry = towers_entry(folder)
    if entry is None:
        raise ArtifactError(
            f"{folder.name} was built without towers; rebuild with `edgekit build --modalities vision,audio`"
        )
    file = folder / entry["file"]
    if not file.is_file():
        raise ArtifactError(f"{file}: missing; config.json names it: rebuild with `edgekit build --modalities ...`")
    have = tuple(entry.get("modalities", ()))
    for k in kinds:
        if KINDS[k] not in have:
            raise ArtifactError(f"{folder.name}: this build has no {KINDS[k]} tower (it has: {', '.join(have)})")
    return file


def _setup() -> None:
    """mlx-vlm's Gemma 4 modules imported before the towers' first window (code that stays when they go)."""
    require_mlx_vlm()
    # deferred: the mlx extra, imported only by a bench with media
    import mlx_vlm.models.gemma4.audio_feature_extractor
    import mlx_vlm.models.gemma4.processing_gemma4  # noqa: F401


BENCH = MediaBench(
    modes=TOWERS_MODES,
    projector=projector,
    load=MlxTowers,
    evaluate=evaluate,
    setup=_setup,
    memory=(
        "Linux, MLX CPU: RssAnon growth while mlx-vlm's towers load and first encode (MLX arrays are malloc'd, "
        "so RSS counts them); on a Mac, Metal buffers: use phys_footprint"
    ),
)
