"""llama.cpp as eval's logits source: the runner's ``logits_all`` batch call with the target's runtime
knobs (KV-cache type, flash attention, ubatch …), so the quality measured is the deployment's."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..logits import Vocab
from ..runner import RunOptions
from .runner import LlamaCppRunner


class GgufSource:
    def __init__(self, path: Path, opts: RunOptions):
        self.label, self.runner = Path(path).name, LlamaCppRunner()
        # One batch holds a whole window (llama-perplexity: n_batch = n_ctx); ubatch is the runtime's.
        knobs = {**opts.knobs, "n_batch": opts.ctx}
        self.runner.load(Path(path), RunOptions(threads=opts.threads, ctx=opts.ctx, knobs=knobs))

    def vocab(self) -> Vocab:
        pieces, control = self.runner.vocab_pieces()
        return Vocab(pieces, frozenset(control), self.runner.bos())

    def tokenize(self, text: str) -> list[int]:
        return self.runner.tokenize(text)

    def logits(self, window: Sequence[int], first: int) -> np.ndarray:
        return self.runner.logits_all(window, first)

    def close(self) -> None:
        self.runner.close()
