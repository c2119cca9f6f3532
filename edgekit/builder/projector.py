"""Projectors beside text artifacts: which to build, how the manifest links them, and the pair check.

A build with modalities (``--modalities vision,audio`` or a target's ``modalities``) writes one
projector per distinct set of tower types among its recipes (a recipe's ``towers`` table; F16 when
unnamed) and records it in each text artifact's ``extra["projector"]``: file, bytes, sha256, its
modalities and tower types, and the sha256 of the text artifact it belongs to. ``deploy`` sends it
as a sidecar; ``run`` loads it with the text model after ``check_pair``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..backends.gguf.header import read_gguf_header
from ..backends.gguf.mmproj import write_mmproj
from ..backends.mlx.convert import check_towers
from ..core.errors import ArtifactError, ConfigError
from ..model.checkpoint import sha256_file
from ..model.towers import MODALITIES, Towers
from .manifest import artifact_digest

if TYPE_CHECKING:
    from ..backends.format import BuildContext
    from ..model.checkpoint import Checkpoint
    from ..profiles.recipe import Recipe
    from .manifest import Artifact

# The strings mtmd wraps soft tokens in (tools/mtmd/mtmd.cpp, gemma4v / gemma4a): the text model's
# vocabulary must hold them as single tokens, else the markers reach the model as plain text.
MARKERS = {"vision": ("<|image>", "<image|>"), "audio": ("<|audio>", "<audio|>")}


def check_request(recipes: list[Recipe], ckpt_config: dict[str, Any], modalities: tuple[str, ...], where: str) -> None:
    """Fail before anything is written: a format without a projector writer, or a missing tower."""
    if not modalities:
        return
    for r in recipes:
        if r.format == "mlx":  # the towers go inside the MLX folder, in mlx-vlm's layout
            check_towers(r, modalities)
        elif r.format != "gguf":
            raise ConfigError(
                f"recipe {r.name}: {r.format} artifacts carry no towers yet (GGUF projectors and MLX "
                f"folders only, docs/multimodal.md); build it without --modalities"
            )
    towers = Towers.from_hf(ckpt_config, where)
    missing = [m for m in modalities if getattr(towers, m) is None]
    if missing:
        raise ConfigError(
            f"{where}: the checkpoint has no {missing[0]} tower (it has: "
            f"{', '.join(towers.modalities) or 'text only'}); build without --modalities {missing[0]}"
        )


def attach(
    ckpt: Checkpoint, recipe: Recipe, art: Artifact, ctx: BuildContext, modalities: tuple[str, ...]
) -> Path | None:
    """Write (once per tower types) the projector for ``art`` and link it in ``art.extra``; return its path
    (None for an MLX folder, which carries its towers inside: ``extra["towers"]``)."""
    if art.format == "mlx":
        return None

    types = {m: recipe.towers.get(m, "F16") for m in modalities}
    label = "-".join(f"{m}-{t}" for m, t in types.items())
    out = Path(ctx.out_dir) / f"{ckpt.name}-mmproj-{label}.gguf"

    def make(_: BuildContext) -> tuple[int, str]:
        write_mmproj(ckpt, out, modalities, types, name=ckpt.name)
        return artifact_digest(out)

    size, digest = ctx.shared(f"mmproj:{label}", make)
    art.extra["projector"] = {
        "file": out.name,
        "bytes": size,
        "sha256": digest,
        "modalities": list(modalities),
        "types": types,
        "text_sha256": art.sha256,
        "format": "gguf",
    }
    return out


def projector_of(folder: Path, art: Artifact) -> dict[str, Any] | None:
    p = art.extra.get("projector") if isinstance(art.extra, dict) else None
    return p if isinstance(p, dict) and p.get("file") else None


def projector_file(folder: Path, art: Artifact) -> Path | None:
    """The artifact's projector beside the manifest, its sha256 and text link checked; None if it has none."""

    p = projector_of(folder, art)
    if p is None:
        return None
    path = Path(folder) / p["file"]
    if not path.is_file():
        raise ArtifactError(
            f"{path}: {art.file}'s projector is missing beside manifest.json; copy it from the "
            "build folder or rebuild with `edgekit build --modalities ...`"
        )
    if p.get("text_sha256") != art.sha256 or sha256_file(path) != p.get("sha256"):
        raise ArtifactError(
            f"{path}: does not match the sha256 manifest.json records for {art.file}'s projector; "
            "rebuild with `edgekit build --modalities ...`"
        )
    return path


def check_pair(text_gguf: Path, mmproj: Path, has_token: Any = None) -> tuple[str, ...]:
    """The modalities ``mmproj`` gives ``text_gguf``; ArtifactError (one line) when they do not belong
    together: a projection width other than the text model's, or a vocabulary without the markers mtmd
    wraps soft tokens in. ``has_token(text) -> bool`` checks a marker against the loaded text model."""

    text = read_gguf_header(text_gguf).scalars
    proj = read_gguf_header(mmproj).scalars
    if proj.get("general.architecture") != "clip":
        raise ArtifactError(
            f"{mmproj.name}: not a multimodal projector (general.architecture "
            f"{proj.get('general.architecture')!r}); pass the mmproj file built beside the model"
        )
    width = text.get(f"{text.get('general.architecture')}.embedding_length")
    mods = tuple(m for m in MODALITIES if proj.get(f"clip.has_{m}_encoder"))
    for m in mods:
        dim = proj.get(f"clip.{m}.projection_dim")
        if dim != width:
            raise ArtifactError(
                f"{mmproj.name} does not belong to {text_gguf.name}: its {m} tower projects to width "
                f"{dim}, the text model is {width} wide"
            )
        if has_token is not None:
            absent = [t for t in MARKERS[m] if not has_token(t)]
            if absent:
                raise ArtifactError(
                    f"{mmproj.name} does not belong to {text_gguf.name}: the text model has no "
                    f"{absent[0]} token to frame {m} soft tokens"
                )
    return mods
