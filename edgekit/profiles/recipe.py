"""The Recipe record: what one quantization recipe says (profiles/recipes.py reads quant/*.toml into it and
registers it). Its own module, importing nothing of edgekit, so the backends' formats can name it without a
circle through the recipe registry (which asks the formats for their keys).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Recipe:
    name: str  # what the CLI shows: q4_0, q4_k_m, mlx-4bit, ...
    format: str  # "gguf" | "mlx"
    quant: str  # label in the manifest: Q4_0, Q4_K_M, 4bit-g64, ...
    description: str = ""
    # gguf: llama_ftype name (e.g. "MOSTLY_Q4_0", or "ALL_F32"/"MOSTLY_F16" for unquantized)
    ftype: str | None = None
    # tensor-name regex → type name: gguf ggml types ("q8_0", "f16") or mlx bits ("8", "bf16")
    overrides: dict[str, str] = field(default_factory=dict)
    # mlx: bits and group size
    bits: int | None = None
    group_size: int | None = None
    # mlx: float type of what stays unquantized (bf16, f16, f32); default: the source's
    dtype: str | None = None
    # Lean vocabulary, any format: keep this many tokens (edgekit/vocab); None keeps the full vocabulary.
    vocab: int | None = None
    # The projector's type per tower when a build includes modalities ({vision = "Q8_0", audio = "BF16"});
    # a tower not named is F16.
    towers: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "format": self.format, "quant": self.quant}
        for k in ("ftype", "bits", "group_size", "dtype", "vocab"):
            if getattr(self, k) is not None:
                d[k] = getattr(self, k)
        if self.overrides:
            d["overrides"] = dict(self.overrides)
        if self.towers:
            d["towers"] = dict(self.towers)
        return d
