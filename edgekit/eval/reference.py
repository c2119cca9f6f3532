"""Whether a reference can judge an artifact: the weights it was built from, unquantized.

A KL measures what a build lost only against the model it was built from. Against another checkpoint
of the same tokenizer (issue 23: KL 1.92) it measures two models; against a quantized build, the
distance between two builds. llama-perplexity --kl-divergence takes whatever logits file it is given;
edgekit knows both sides (an artifact's manifest records its source's file sha256s, a reference cache
keeps its reference's), so it refuses such a pairing unless asked with --force-reference.
"""

from __future__ import annotations

from typing import Any, Optional

from ..core.errors import ConfigError

UNQUANTIZED = frozenset({"f32", "f16", "bf16"})
FORCE = "--force-reference"


def weights_of(source: Optional[dict[str, Any]]) -> Optional[list[str]]:
    """The sha256s of a checkpoint's weight files (sorted), from a manifest's source or a fingerprint;
    None when not recorded."""
    files = (source or {}).get("files")
    if not isinstance(files, dict):
        return None
    return sorted(str(v) for k, v in files.items() if str(k).endswith(".safetensors")) or None


def reference_identity(source: Optional[dict[str, Any]], quant: Optional[str]) -> dict[str, Any]:
    """What a reference is (kept in its cache): its source's weight sha256s (None: unknown, e.g. a
    .gguf no manifest lists) and its quant label (None: a Hugging Face checkpoint)."""
    return {"weights": weights_of(source), "quant": quant}


def check_quant(ref_name: str, identity: dict[str, Any], force: bool) -> None:
    quant = identity.get("quant")
    if force or not isinstance(quant, str) or quant.lower() in UNQUANTIZED:
        return
    raise ConfigError(
        f"--reference {ref_name} is quantized ({quant}): the KL would measure the distance between "
        f"two quantized builds, not what the build lost; pass the checkpoint or its f32/f16/bf16 "
        f"build, or {FORCE} to use it anyway"
    )


def check_reference(
    ref_name: str, identity: dict[str, Any], artifact: str, source: Optional[dict[str, Any]], force: bool
) -> None:
    """Refuse a quantized reference, or one whose weights are not those ``artifact`` was built from
    (``source``: its manifest's), unless ``force``. Unknown on either side: nothing to compare."""
    check_quant(ref_name, identity, force)
    mine, ref = weights_of(source), identity.get("weights")
    if force or not mine or not ref or mine == ref:
        return
    raise ConfigError(
        f"{artifact} was built from other weights than the reference {ref_name} (safetensors sha256 "
        f"{mine[0][:12]} by its manifest, the reference's {ref[0][:12]}): the KL would compare two "
        f"models, not measure the build; pass the checkpoint it was built from or its f32/f16 build, "
        f"or {FORCE} to use it anyway"
    )
