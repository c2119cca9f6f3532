"""llama.cpp's file types by the names llama-quantize takes (`--quant q5_k_m`), as recipes without a TOML.

The table is llama-quantize's own list (tools/quantize/quantize.cpp QUANT_OPTIONS in the llama.cpp that
llama-cpp-python 0.3.36 vendors; `COPY` left out, it quantizes nothing): name → LLAMA_FTYPE_<value>.
tests/test_quant_types.py checks it against the compiled llama-quantize's `--help`.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

# name (as llama-quantize prints it) → LLAMA_FTYPE_ suffix, in llama-quantize's order.
FILE_TYPES: dict[str, str] = {
    "Q1_0": "MOSTLY_Q1_0",
    "Q2_0": "MOSTLY_Q2_0",
    "Q4_0": "MOSTLY_Q4_0",
    "Q4_1": "MOSTLY_Q4_1",
    "MXFP4_MOE": "MOSTLY_MXFP4_MOE",
    "Q5_0": "MOSTLY_Q5_0",
    "Q5_1": "MOSTLY_Q5_1",
    "IQ2_XXS": "MOSTLY_IQ2_XXS",
    "IQ2_XS": "MOSTLY_IQ2_XS",
    "IQ2_S": "MOSTLY_IQ2_S",
    "IQ2_M": "MOSTLY_IQ2_M",
    "IQ1_S": "MOSTLY_IQ1_S",
    "IQ1_M": "MOSTLY_IQ1_M",
    "TQ1_0": "MOSTLY_TQ1_0",
    "TQ2_0": "MOSTLY_TQ2_0",
    "Q2_K": "MOSTLY_Q2_K",
    "Q2_K_S": "MOSTLY_Q2_K_S",
    "IQ3_XXS": "MOSTLY_IQ3_XXS",
    "IQ3_S": "MOSTLY_IQ3_S",
    "IQ3_M": "MOSTLY_IQ3_M",
    "Q3_K": "MOSTLY_Q3_K_M",
    "IQ3_XS": "MOSTLY_IQ3_XS",
    "Q3_K_S": "MOSTLY_Q3_K_S",
    "Q3_K_M": "MOSTLY_Q3_K_M",
    "Q3_K_L": "MOSTLY_Q3_K_L",
    "IQ4_NL": "MOSTLY_IQ4_NL",
    "IQ4_XS": "MOSTLY_IQ4_XS",
    "Q4_K": "MOSTLY_Q4_K_M",
    "Q4_K_S": "MOSTLY_Q4_K_S",
    "Q4_K_M": "MOSTLY_Q4_K_M",
    "Q5_K": "MOSTLY_Q5_K_M",
    "Q5_K_S": "MOSTLY_Q5_K_S",
    "Q5_K_M": "MOSTLY_Q5_K_M",
    "Q6_K": "MOSTLY_Q6_K",
    "Q8_0": "MOSTLY_Q8_0",
    "F16": "MOSTLY_F16",
    "BF16": "MOSTLY_BF16",
    "F32": "ALL_F32",
}
ALIASES = {"Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M"}  # llama-quantize's "alias for ..."

# File types llama.cpp refuses to write without an importance matrix: their layers get a tensor type
# that src/llama-quant.cpp tensor_requires_imatrix names (IQ1_S/M, IQ2_XXS/XS/S, IQ3_XXS, and Q2_K in a
# Q2_K_S file); IQ3_XS gives IQ3_XXS to attention and middle FFN layers, IQ2_M gives IQ2_S.
NEEDS_IMATRIX_FTYPES = frozenset(
    {
        "MOSTLY_IQ1_S",
        "MOSTLY_IQ1_M",
        "MOSTLY_IQ2_XXS",
        "MOSTLY_IQ2_XS",
        "MOSTLY_IQ2_S",
        "MOSTLY_IQ2_M",
        "MOSTLY_IQ3_XXS",
        "MOSTLY_IQ3_XS",
        "MOSTLY_Q2_K_S",
    }
)
# The same rule for a recipe's per-tensor override types (ggml type names).
NEEDS_IMATRIX_TYPES = frozenset({"iq1_s", "iq1_m", "iq2_xxs", "iq2_xs", "iq2_s", "iq3_xxs"})


def needs_imatrix(recipe: Any) -> list[str]:
    """What in ``recipe`` llama.cpp will only quantize with an importance matrix (empty: nothing)."""
    out = [recipe.ftype.removeprefix("MOSTLY_")] if recipe.ftype in NEEDS_IMATRIX_FTYPES else []
    return out + [f"{pattern} = {t}" for pattern, t in recipe.overrides.items() if t.lower() in NEEDS_IMATRIX_TYPES]


def type_recipes(template: Any) -> dict[str, Any]:
    """One recipe per llama-quantize name, lower case (q5_k_m, iq3_xxs ...), from ``template`` (a Recipe)."""
    out = {}
    for name, ftype in FILE_TYPES.items():
        canon = ALIASES.get(name, name)
        desc = f"llama.cpp {canon} (llama-quantize's own tensor-type mix)" + (
            f"; alias for {canon.lower()}" if name in ALIASES else ""
        )
        if ftype in NEEDS_IMATRIX_FTYPES:
            desc += "; needs an importance matrix (--calibrate)"
        # quant (the file name's label) is the name asked for, as llama-quantize names its output (ggml-model-Q4_K.gguf)
        out[name.lower()] = replace(template, name=name.lower(), quant=name, description=desc, ftype=ftype)
    return out
