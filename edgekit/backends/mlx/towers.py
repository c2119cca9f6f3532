"""Gemma 4's vision and audio towers inside an MLX artifact folder, in the layout stock mlx-vlm loads.

mlx-vlm (``mlx_vlm.models.gemma4``) loads a Gemma 4 folder whose config.json carries ``vision_config`` /
``audio_config`` and the media token ids, and whose weights include ``vision_tower.*``, ``embed_vision.*``,
``audio_tower.*`` and ``embed_audio.*``. edgekit writes those tensors to ``towers.safetensors``, named in
the index (mlx-vlm reads the index's shards), already through mlx-vlm's own ``Model.sanitize`` (its names,
its conv layouts) and loaded strictly into mlx-vlm's own tower modules before saving, so a name or shape
mlx-vlm would not take fails the build. mlx-lm never opens the file (it globs ``model*.safetensors`` and its
gemma4 sanitize drops tower names), so the text paths read the folder as before.

The towers stay in floats (F32, F16 or BF16), as mlx-vlm's own convert leaves them (``skip_multimodal_module``).
"""

from __future__ import annotations

import json
import types
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...core.errors import ConfigError, ConversionError, EngineMissingError
from ...model.towers import Towers

if TYPE_CHECKING:
    from ...model.checkpoint import Checkpoint

TOWERS_FILE = "towers.safetensors"
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")
MLX_TYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}
TOKEN_KEYS = ("image_token_id", "audio_token_id", "boi_token_id", "eoi_token_id", "boa_token_id", "eoa_token_id")
MIN_PLE_BITS = 8  # 4-bit PLE gave garbage in a downstream mlx-vlm port of E2B (FACTS.md, Multimodal)


def require_mlx_vlm() -> None:
    try:
        # deferred: mlx-vlm (the mlx extra) loads only when towers are built or run
        import mlx_vlm.models.gemma4  # noqa: F401
    except ImportError:
        raise EngineMissingError("mlx-vlm is not installed (MLX towers); pip install 'edgekit[mlx]'") from None


def check(recipe: Any, modalities: tuple[str, ...], ple_bits: int | None) -> None:
    """Refuse, before anything is written, what the MLX towers cannot honour for ``recipe``."""
    if not modalities:
        return
    require_mlx_vlm()
    where = f"recipe {recipe.name}"
    for m in modalities:
        t = recipe.towers.get(m, "F16")
        if t not in MLX_TYPES:
            raise ConfigError(
                f"{where}: towers.{m} = {t!r}; MLX towers are stored as {', '.join(MLX_TYPES)} "
                "(mlx-vlm keeps them unquantized)"
            )
    if "vision" not in modalities:
        raise ConfigError(f"{where}: mlx-vlm's gemma4 always builds the vision tower; add vision to --modalities")
    if ple_bits is not None and ple_bits < MIN_PLE_BITS:
        raise ConfigError(
            f"{where}: per-layer embeddings at {ple_bits} bits; with towers (mlx-vlm) keep them at "
            f'{MIN_PLE_BITS} bits or more (an override like "embed_tokens_per_layer$" = "8")'
        )
    if recipe.vocab is not None:
        raise ConfigError(
            f"{where}: a lean vocabulary renumbers the media tokens mlx-vlm looks up; build MLX towers "
            "with a full-vocabulary recipe"
        )


def shipped(name: str, modalities: tuple[str, ...]) -> bool:
    """Whether the checkpoint tensor ``name`` goes into the towers file for ``modalities``."""
    return any(name.startswith((f"model.{m}_tower.", f"model.embed_{m}.")) for m in modalities)


def config_part(ckpt: Checkpoint, modalities: tuple[str, ...]) -> dict[str, Any]:
    """What config.json gains for mlx-vlm: the tower configs and the media token ids, as the checkpoint has them."""
    raw = ckpt.config.raw
    missing = [k for k in TOKEN_KEYS if not isinstance(raw.get(k), int)]
    if missing:
        raise ConversionError(f"{ckpt.path}/config.json: no {missing[0]}; mlx-vlm needs the media token ids")
    part: dict[str, Any] = {k: raw[k] for k in TOKEN_KEYS}
    part["vision_config"] = dict(raw["vision_config"])
    part["audio_config"] = dict(raw["audio_config"]) if "audio" in modalities else None
    return part


def _tower_modules(config: dict[str, Any]) -> Any:
    """mlx-vlm's own tower modules (no language model) and its Model.sanitize bound to them."""
    # deferred: mlx-vlm (the mlx extra) loads only when towers are built or run
    import mlx.nn as nn
    import mlx_vlm.models.gemma4 as family
    from mlx_vlm.models.gemma4 import gemma4
    from mlx_vlm.utils import update_module_configs

    cfg = family.ModelConfig.from_dict({**config, "text_config": {}})
    cfg = update_module_configs(cfg, family, config, ["vision", "audio"])
    text_width = config["text_config"]["hidden_size"]
    m = nn.Module()
    m.vision_tower = gemma4.VisionModel(cfg.vision_config)
    m.embed_vision = gemma4.MultimodalEmbedder(
        cfg.vision_config.hidden_size, text_width, eps=cfg.vision_config.rms_norm_eps
    )
    if cfg.audio_config is not None:
        a = cfg.audio_config
        m.audio_tower = gemma4.AudioEncoder(a)
        m.embed_audio = gemma4.MultimodalEmbedder(a.output_proj_dims or a.hidden_size, text_width, eps=a.rms_norm_eps)
    # Model.sanitize reads only .config and .audio_tower: the same mapping stock mlx-vlm applies at load.
    owner: Any = types.SimpleNamespace(config=cfg, audio_tower=getattr(m, "audio_tower", None))
    return m, lambda w: gemma4.Model.sanitize(owner, w)


def write(
    ckpt: Checkpoint, folder: Path, config: dict[str, Any], modalities: tuple[str, ...], types_: dict[str, str]
) -> int:
    """Write ``towers.safetensors`` into ``folder`` (the artifact's private stage) and name its tensors in the
    index; return its size. ``config`` is the artifact's config.json with ``config_part`` merged in."""
    # deferred: mlx (the mlx extra) loads only when an MLX model is built or run
    import mlx.core as mx
    from mlx.utils import tree_flatten

    towers = Towers.from_hf(ckpt.config.raw, str(ckpt.path / "config.json"))
    width = ckpt.config.hidden_size
    if towers.vision is None or ("audio" in modalities and towers.audio is None):
        raise ConversionError(f"{ckpt.path}: the checkpoint lacks a tower asked for ({', '.join(modalities)})")
    shapes = towers.shapes(width, modalities)
    absent = [n for n in shapes if n not in ckpt.tower_tensors]
    if absent:
        raise ConversionError(f"{ckpt.path}: tower tensor {absent[0]} missing ({len(absent)} in all)")
    files: dict[Path, Any] = {}  # mx.load: name -> lazy array
    weights = {}
    for name in shapes:
        ref = ckpt.tower_tensors[name]
        if ref.path not in files:
            files[ref.path] = mx.load(str(ref.path))
        weights[name] = files[ref.path][ref.name]
    module, sanitize = _tower_modules(config)
    weights = sanitize(weights)
    try:
        module.load_weights(list(weights.items()), strict=True)
    except ValueError as e:
        raise ConversionError(f"{ckpt.path}: mlx-vlm's gemma4 towers do not accept these weights ({e})") from None

    def dtype_of(name: str) -> Any:
        kind = "audio" if name.startswith(("audio_tower.", "embed_audio.")) else "vision"
        return getattr(mx, MLX_TYPES[types_[kind]])

    out: dict[str, Any] = {}
    params: list[tuple[str, Any]] = tree_flatten(module.parameters())  # type: ignore[assignment]  # (path, array)
    for name, v in params:
        out[name] = v.astype(dtype_of(name)) if mx.issubdtype(v.dtype, mx.floating) else v
    path = Path(folder) / TOWERS_FILE
    mx.save_safetensors(str(path), out, metadata={"format": "mlx"})
    index_path = Path(folder) / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    index["weight_map"].update(dict.fromkeys(out, TOWERS_FILE))
    index["weight_map"] = dict(sorted(index["weight_map"].items()))
    size = path.stat().st_size
    index["metadata"]["total_size"] = index["metadata"].get("total_size", 0) + size
    index_path.write_text(json.dumps(index, indent=4))
    for name in PROCESSOR_FILES:
        if not (ckpt.path / name).is_file():
            raise ConversionError(f"{ckpt.path}: no {name}; mlx-vlm's processor needs it beside the towers")
        (Path(folder) / name).write_bytes((ckpt.path / name).read_bytes())
    return size
