"""Gemma 4's text model in transformers (torch), loaded from a checkpoint folder: the numerical reference
``edgekit eval`` compares artifacts against, and the model ``synth --train`` trains.

The multimodal checkpoint layout keeps the text weights under ``model.language_model.``; transformers'
``Gemma4ForCausalLM`` names them ``model.``. Only the text weights are read (towers dropped), through
edgekit's lazy checkpoint reader, so a real E2B folder loads without its vision/audio tensors.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import EngineMissingError
from ..model.checkpoint import load_checkpoint

DTYPES = ("float32", "bfloat16")


def _torch():
    try:
        # deferred: torch and transformers (seconds to import) load only when the HF reference runs
        import torch
        import transformers  # noqa: F401
    except ImportError:
        raise EngineMissingError(
            "torch and transformers are not installed; `pip install 'edgekit[dev]'` "
            "(or pass an unquantized artifact as the reference)"
        ) from None
    return torch


def text_config(ckpt_dir: Path) -> Any:
    # deferred: transformers, as _torch() above
    from transformers import Gemma4TextConfig

    raw = json.loads((Path(ckpt_dir) / "config.json").read_text())
    text = dict(raw.get("text_config") or raw)
    text.pop("model_type", None)
    return Gemma4TextConfig(**text)


def load_torch_model(ckpt_dir: Path, dtype: str = "float32") -> Any:
    """Gemma4ForCausalLM with the checkpoint's text weights, in eval mode."""
    torch = _torch()
    # deferred: transformers, as _torch() above
    from transformers import Gemma4ForCausalLM

    ckpt = load_checkpoint(ckpt_dir)
    model = Gemma4ForCausalLM(text_config(ckpt.path)).to(getattr(torch, dtype)).eval()
    state = {}
    for name, ref in ckpt.tensors.items():
        arr = ref.load()
        state["model." + name] = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).to(getattr(torch, dtype))
    state["lm_head.weight"] = state["model.embed_tokens.weight"]
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if not m.endswith("rotary_emb.inv_freq")]
    if unexpected or missing:  # a transformers whose Gemma 4 names differ: not a user error
        raise AssertionError(f"state dict mismatch: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return model


def text_state(model: Any, prefix: str = "model.language_model.") -> dict[str, Any]:
    """The model's weights under the checkpoint's names (tied output head left out), as torch tensors."""
    return {
        prefix + k[len("model.") :]: v
        for k, v in model.state_dict().items()
        if k.startswith("model.") and not k.endswith("rotary_emb.inv_freq")
    }
