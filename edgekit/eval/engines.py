"""eval's reference logits source: transformers' Gemma 4 (torch, fp32 or bf16) on a Hugging Face
checkpoint folder. The artifacts' sources are their backends' (edgekit.backends.registry.BACKENDS:
``Backend.logits``); all follow ``edgekit.backends.logits.LogitsSource``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import numpy as np

from ..backends.logits import TokenizerJson, Vocab, fit_vocab, tokenizer_json_vocab
from ..core.errors import ConfigError


def _bos_of(folder: Path) -> Optional[int]:
    cfg = json.loads((folder / "config.json").read_text())
    bos = cfg.get("bos_token_id", (cfg.get("text_config") or {}).get("bos_token_id"))
    return int(bos) if isinstance(bos, int) else None


class HfSource(TokenizerJson):
    """transformers' Gemma4ForCausalLM on a checkpoint folder."""

    def __init__(self, folder: Path, dtype: str = "float32", threads: int = 2):
        # deferred: torch and transformers (seconds to import) load only when a checkpoint is the reference
        from ..dev.hf_model import DTYPES, load_torch_model

        if dtype not in DTYPES:
            raise ConfigError(f"--reference-dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
        import torch  # deferred: the reference's engine, as above

        torch.set_num_threads(threads)
        self.label, self.folder = Path(folder).name, Path(folder)
        self.model = load_torch_model(folder, dtype)
        self.n_vocab = int(self.model.config.vocab_size)

    def vocab(self) -> Vocab:
        return fit_vocab(tokenizer_json_vocab(self.folder, _bos_of(self.folder)), self.n_vocab, self.label)

    def logits(self, window: Sequence[int], first: int) -> np.ndarray:
        import torch  # deferred: see __init__

        with torch.no_grad():
            out = self.model(torch.tensor([list(window)], dtype=torch.long), use_cache=False).logits
        return out[0, first:].float().numpy()

    def close(self) -> None:
        self.model = None
