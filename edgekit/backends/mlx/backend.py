"""MLX's registration: MLX artifact folders run by mlx-lm (runner, generator, logits source)."""

from __future__ import annotations

from ..backend import Backend
from .bench_media import BENCH
from .format import MLX
from .generator import MlxGenerator
from .logits import MlxSource
from .media import open_projector
from .runner import KNOBS, MlxRunner

BACKEND = Backend(
    name="mlx",
    format=MLX,
    knobs=KNOBS,
    version_key="mlx",
    runner=MlxRunner,
    generator=MlxGenerator,
    logits=MlxSource,
    # mlx-lm imports transformers, which imports torch whenever it is installed (a dev venv): ≈180 MB
    # resident that a device running edgekit[mlx] does not have, for nothing the runner uses (it feeds
    # token ids); E2B 4-bit at kv_fill 2044 measured 1,625 MB with it. transformers treats a blocked
    # torch as absent.
    block=("torch",),
    threads=False,
    projector=open_projector,
    bench_media=BENCH,
)
