"""The MLX format: an artifact folder made with mlx-lm's own model, quantizer and writer
(convert.py), the PLE table in its own file for ``edgekit.backends.mlx.ple``. Runs on MLX.

Listing or checking this format imports no mlx: the engine is imported inside ``check``/``build``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from ...core.errors import ArtifactError
from ...model.safetensors_io import read_tensors
from ..format import BuildContext, ChatText, LabelRule, TokenBytes, folder_chat_template
from .towers import TOWERS_FILE

if TYPE_CHECKING:
    from ...builder.manifest import Artifact
    from ...model.checkpoint import Checkpoint

# mlx-lm names: the tables end in these, with .weight/.scales/.biases parts when quantized.
GATHERED = ("embed_tokens_per_layer", "embed_tokens")
UNREADABLE = "{name}: not a readable MLX artifact ({why}); rebuild it with `edgekit build`"


def _config(folder: Path) -> dict[str, Any]:
    try:
        cfg = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise ArtifactError(UNREADABLE.format(name=folder.name, why=e)) from None
    if not isinstance(cfg, dict):
        raise ArtifactError(UNREADABLE.format(name=folder.name, why="config.json is not an object"))
    return cfg


class MlxFormat:
    name = "mlx"
    engine = "mlx"
    recipe_keys = frozenset({"bits", "group_size", "overrides", "dtype"})

    def takes_imatrix(self, recipe: Any) -> bool:
        return False  # mlx-lm's affine quantizer takes no importance matrix

    def needs_imatrix(self, recipe: Any) -> list[str]:
        return []

    def check(self, recipe: Any) -> None:
        # deferred: the converter (model.checkpoint with huggingface_hub, mlx) loads only when a recipe is checked
        from .convert import Plan
        from .ple import require_mlx

        require_mlx()
        Plan(recipe)

    def build(self, ckpt: Checkpoint, recipe: Any, ctx: BuildContext) -> Artifact:
        # deferred: the build's modules (the converter, builder.manifest) load only when building
        from ...builder.manifest import Artifact, artifact_digest
        from .convert import check_towers, convert

        mods = tuple(ctx.modalities)
        check_towers(recipe, mods)  # builder.projector checked them before the build; a direct call too
        out = convert(ckpt, recipe, Path(ctx.out_dir) / f"{ckpt.name}-mlx-{recipe.quant}", mods)
        size, digest = artifact_digest(out)
        cfg = json.loads((out / "config.json").read_text())
        extra = {k: v for k, v in cfg["edgekit"].items() if k in ("ple", "dropped_tensors", "note", "towers")}
        if "towers" in extra:  # inside the folder (its sha256 covers them); the file's own digest for deploy checks
            t_size, t_digest = artifact_digest(out / extra["towers"]["file"])
            extra["towers"].update(bytes=t_size, sha256=t_digest, format="mlx")
        return Artifact(
            file=out.name,
            format=self.name,
            quant=recipe.quant,
            recipe=recipe.name,
            bytes=size,
            sha256=digest,
            extra=extra,
        )

    def detect(self, path: Path) -> bool:
        return path.is_dir() and (path / "config.json").exists() and any(path.glob("*.safetensors"))

    def quant_label(self, path: Path) -> str:
        try:
            q = _config(path).get("quantization") or {}
        except ArtifactError:
            return "unknown"
        return (
            f"{q['bits']}bit-g{q['group_size']}"
            if isinstance(q, dict) and "bits" in q and "group_size" in q
            else "float"
        )

    def model_name(self, path: Path) -> str:
        return path.name

    def token_bytes(self, path: Path) -> TokenBytes:
        folder = Path(path)
        fix = "rebuild it with `edgekit build`"
        entries = {
            k: v
            for p in sorted(folder.glob("*.safetensors"))
            if p.name != TOWERS_FILE  # mlx-vlm's towers: never loaded for text
            for k, v in read_tensors(p, ArtifactError, fix=fix).items()
        }
        cfg = _config(folder)
        text: dict[str, Any] = cfg["text_config"] if isinstance(cfg.get("text_config"), dict) else {}
        tied = cfg.get("tie_word_embeddings", text.get("tie_word_embeddings", True))
        tied = tied and not any(".lm_head." in k or k.startswith("lm_head.") for k in entries)
        whole, total_file = 0, 0
        gathered: dict[str, int] = {}
        for name, ref in entries.items():
            total_file += ref.nbytes
            module = name.rsplit(".", 1)[0]
            table = next((g for g in GATHERED if module.endswith(g)), None)
            if table and not (tied and table == "embed_tokens"):
                gathered[module] = gathered.get(module, 0) + ref.nbytes // max(ref.n_rows, 1)
            else:
                whole += ref.nbytes
        return TokenBytes(
            total=whole + sum(gathered.values()), whole=whole, gathered=gathered, file_tensor_bytes=total_file
        )

    def max_context(self, path: Path) -> Optional[int]:
        cfg = _config(Path(path))
        text: dict[str, Any] = cfg["text_config"] if isinstance(cfg.get("text_config"), dict) else cfg
        n = text.get("max_position_embeddings")
        return n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else None

    def chat_template(self, path: Path) -> ChatText:
        return folder_chat_template(Path(path))

    def recipe_label(self, recipe: Any) -> Optional[LabelRule]:
        if recipe.bits is None:
            return None
        want = f"{recipe.bits}bit"
        return LabelRule(
            want, f"bits = {recipe.bits}", f'set quant = "{want}-g{recipe.group_size or 64}", or the bits it names'
        )


MLX = MlxFormat()
