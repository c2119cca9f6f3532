"""MLX as eval's logits source: mlx-lm's model call through edgekit's MLX runner, the artifact folder's
tokenizer.json for text."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..logits import TokenizerJson, Vocab, fit_vocab, tokenizer_json_vocab
from ..runner import RunOptions
from .runner import MlxRunner


class MlxSource(TokenizerJson):
    def __init__(self, path: Path, opts: RunOptions):
        self.label, self.folder, self.runner = Path(path).name, Path(path), MlxRunner()
        knobs = {k: v for k, v in opts.knobs.items() if k != "kv_fill"}  # kv_fill would fake the context
        self.runner.load(Path(path), RunOptions(threads=1, ctx=opts.ctx, knobs={**knobs, "n_batch": opts.ctx}))

    def vocab(self) -> Vocab:
        return fit_vocab(tokenizer_json_vocab(self.folder, self.runner.bos()), self.runner.n_vocab(), self.label)

    def logits(self, window: Sequence[int], first: int) -> np.ndarray:
        return self.runner.logits_all(window, first)

    def close(self) -> None:
        self.runner.close()
