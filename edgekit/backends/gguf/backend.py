"""llama.cpp's registration: GGUF artifacts run by llama-cpp-python (runner, generator, logits source)."""

from __future__ import annotations

from ..backend import Backend
from .bench_media import BENCH
from .format import GGUF
from .generator import LlamaGenerator
from .logits import GgufSource
from .runner import KNOBS, N_CTX_MAX, LlamaCppRunner
from .towers import open_projector

BACKEND = Backend(
    name="llama.cpp",
    format=GGUF,
    knobs=KNOBS,
    version_key="llama-cpp-python",
    runner=LlamaCppRunner,
    generator=LlamaGenerator,
    logits=GgufSource,
    max_ctx=N_CTX_MAX,
    prefix_cache=True,
    projector=open_projector,
    bench_media=BENCH,
)
