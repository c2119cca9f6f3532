"""MLX's side of images and audio in `edgekit run` and `serve`: the towers inside the artifact folder
(``towers.safetensors``, mlx-vlm's layout, backends/mlx/towers.py) loaded into mlx-vlm's own tower
modules, and their soft tokens spliced into the text model's input embeddings at prefill.

serve/towers.py lays a chat with media out as prompt ids (the text around each medium tokenized as
usual) and asks this projector for each medium's ids and ``MlxSpan``: ``<|image>`` + n soft positions +
``<image|>`` (audio: ``<|audio>`` ... ``<audio|>``), as mlx-vlm's Gemma4Processor expands them. The pixels
come from the image serve/media.prepare_image already sized for the token budget (transformers' size,
so mlx-vlm's processor only rescales); the log-mel from mlx-vlm's Gemma4AudioFeatureExtractor.

The prefill (``prefill_media``, on the engine's thread) follows mlx-vlm's get_input_embeddings: text
rows from the text model's embedding table, the soft tokens in place of the media positions, and the
per-layer inputs looked up with token 0 at those positions. mlx-lm's text model multiplies its input
embeddings by ``embed_scale``; mlx-vlm scales only the text rows, so the soft tokens go in divided by it.

MLX arrays belong to the thread that made them, and an MLX thread other than the engine's aborted
`edgekit run --image` at exit ("terminate called without an active exception", every run): the towers
load and run on the engine's own thread (Scheduler.call, between requests), their soft tokens kept as
float32 numpy. MLX serves one request at a time, so this costs no concurrency.
"""

from __future__ import annotations

import gc
import json
import time
import warnings
from pathlib import Path
from typing import Any, Optional, cast

import numpy as np

from ...core.errors import ArtifactError, ConfigError
from ...core.host import trim_heap
from ...serve.media import MS_PER_AUDIO_TOKEN, SAMPLE_RATE, MediaError, image_tokens
from .ple import _text_model
from .towers import TOWERS_FILE, _tower_modules, require_mlx_vlm

MARKER = "<__media__>"  # where a medium stands in the rendered chat (mtmd's default marker, for the same refusals)
MAX_AUDIO_TOKENS = 750  # mlx-vlm's audio_seq_length: 30 s at 40 ms a token


class MlxSpan:
    """One medium's soft tokens and where they go in the prompt (the generator's ``GenRequest.media``)."""

    non_causal = False  # mlx-lm's text model is causal; open_projector refuses a config asking otherwise

    def __init__(self, kind: str, n_tokens: int, inputs: dict[str, Any]):
        self.kind, self.n_tokens, self.n_pos = kind, n_tokens, n_tokens
        self.inputs = inputs  # the tower's numpy inputs, dropped once encoded
        self.start = -1
        self.embd: Optional[np.ndarray] = None  # [n_tokens, text width] float32
        self.encode_s = 0.0

    def close(self) -> None:
        self.inputs, self.embd = {}, None


def towers_entry(folder: Path) -> Optional[dict[str, Any]]:
    """The towers config.json names (``edgekit.towers``: file, modalities, types), None for a text build."""
    try:
        cfg = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    t = (cfg.get("edgekit") or {}).get("towers")
    return t if isinstance(t, dict) and t.get("file") else None


class MlxProjector:
    """mlx-vlm's Gemma 4 towers of an MLX artifact folder, run on the engine's thread."""

    def __init__(self, folder: Path, image_budget: int, call: Any, on_demand: bool = False):
        self.call = call  # runs a function on the MLX engine's thread (Scheduler.call)
        self.folder, self.image_budget, self.on_demand = Path(folder), image_budget, on_demand
        self.config = json.loads((self.folder / "config.json").read_text())
        entry = towers_entry(self.folder) or {}
        self.path = self.folder / entry.get("file", TOWERS_FILE)
        self.modalities = tuple(entry.get("modalities", ()))
        self.marker, self.warning = MARKER, ""
        # resident: loaded with the engine, kept; on_demand: the tower modules loaded per prompt with media
        # and dropped once they are encoded (the processors, a few KB, stay). serve's /props shows both.
        self.mode, self.loads = ("on_demand" if on_demand else "resident"), 1
        self.module: Any = None
        text = self.config.get("text_config") or {}
        if text.get("use_bidirectional_attention"):
            raise ArtifactError(
                f"{self.folder.name}: its text config asks for bidirectional attention over "
                f"{text['use_bidirectional_attention']}; mlx-lm's Gemma 4 attends causally, so its media are not served"
            )
        self.width = int(text["hidden_size"])
        self.ids = {k: int(self.config[k]) for k in ("boi_token_id", "eoi_token_id", "boa_token_id", "eoa_token_id")}
        self.call(self._load)
        if on_demand:
            self.call(self._free)

    def _load_module(self) -> None:
        # deferred: mlx and mlx-vlm (the mlx extra) load with towers, on the engine's thread
        import mlx.core as mx

        module, _ = _tower_modules(self.config)
        try:
            weights = cast(dict[str, Any], mx.load(str(self.path)))  # a .safetensors file: name -> array
            module.load_weights(list(weights.items()), strict=True)
        except (OSError, ValueError, RuntimeError) as e:
            raise ArtifactError(
                f"{self.path}: mlx-vlm's towers do not load it ({str(e).splitlines()[0][:120]}); rebuild with "
                "`edgekit build --modalities ...`"
            ) from None
        mx.eval(module.parameters())
        self.module = module

    def _free(self) -> None:
        import mlx.core as mx  # deferred: the mlx extra, as _load_module

        self.module = None  # the last reference to the towers' arrays
        gc.collect()
        mx.clear_cache()  # MLX keeps freed buffers for reuse; hand them back
        trim_heap()  # and glibc its freed heap (core.host)

    def _load(self) -> None:
        require_mlx_vlm()
        # deferred: mlx-vlm (the mlx extra) loads with towers, on the engine's thread
        from mlx_vlm.models.gemma4.audio_feature_extractor import Gemma4AudioFeatureExtractor
        from mlx_vlm.models.gemma4.processing_gemma4 import Gemma4ImageProcessor

        self._load_module()
        proc = {}
        try:
            proc = json.loads((self.folder / "processor_config.json").read_text())
        except (OSError, ValueError):
            pass  # mlx-vlm's defaults, as its processor takes a folder without one
        ip = dict(proc.get("image_processor") or {})
        ip.pop("image_processor_type", None)
        fe = dict(proc.get("feature_extractor") or {})
        fe.pop("feature_extractor_type", None)
        self.image_processor = Gemma4ImageProcessor(**ip)
        with warnings.catch_warnings():  # 128 mel bins over 257 FFT bins leave the lowest filters empty, by design
            warnings.filterwarnings("ignore", "At least one mel filter has all zero values")
            self.feature_extractor = Gemma4AudioFeatureExtractor(**fe)
        vc = self.config["vision_config"]
        self.patch, self.pool = int(vc.get("patch_size", 16)), int(vc.get("pooling_kernel_size", 3))

    @property
    def loaded(self) -> bool:
        return self.module is not None

    def close(self) -> None:
        self.module = None  # after the engine stopped (Session.close): nothing runs it any more

    def span(self, m: Any) -> tuple[list[int], MlxSpan, list[int]]:
        """The ids before the medium's soft positions, its span, the ids after (serve/towers.py's Medium)."""
        return self.call(lambda: self._span(m))  # on the engine's thread, as all MLX work

    def _span(self, m: Any) -> tuple[list[int], MlxSpan, list[int]]:
        if m.kind not in self.modalities:
            raise MediaError(f"{m.where}: this build has no {m.kind} tower")
        if m.kind == "vision":
            data, counts = self.image_processor([m.value], max_soft_tokens=self.image_budget)
            pixels = np.asarray(data["pixel_values"], np.float32)
            n = counts[0]
            h, w = pixels.shape[-2:]
            if n != image_tokens(h, w, self.patch, self.pool):  # the prepared size is the processor's own
                raise MediaError(f"{m.where}: {w}x{h} pixels give {n} soft tokens in mlx-vlm's processor")
            ids = self.ids["boi_token_id"], self.ids["eoi_token_id"]
            return [ids[0]], MlxSpan("vision", n, {"pixel_values": pixels}), [ids[1]]
        samples = np.asarray(m.value.samples, np.float32)
        n = min(int(np.ceil(len(samples) / SAMPLE_RATE * 1000.0 / MS_PER_AUDIO_TOKEN)), MAX_AUDIO_TOKENS)
        if n < 1:
            raise MediaError(f"{m.where}: the clip is empty")
        feats = self.feature_extractor([samples])
        inputs = {
            "features": np.asarray(feats["input_features"], np.float32),
            "mask": np.asarray(feats["input_features_mask"]).astype(bool),
        }
        return [self.ids["boa_token_id"]], MlxSpan("audio", n, inputs), [self.ids["eoa_token_id"]]

    def release(self, spans: list[MlxSpan]) -> None:
        """A prompt's media are encoded (or it failed): on_demand, drop the tower modules; resident, nothing."""
        if self.on_demand and self.module is not None:
            self.call(self._free)

    def encode_span(self, span: MlxSpan) -> None:
        if self.module is None:
            self.call(self._load_module)
            self.loads += 1
        span.embd = self.call(lambda: self._encode(span))

    def _encode(self, span: MlxSpan) -> np.ndarray:
        import mlx.core as mx  # deferred: the mlx extra, as _load

        t0 = time.perf_counter()
        mod, x = self.module, span.inputs
        if span.kind == "vision":
            out = mod.embed_vision(mod.vision_tower(mx.array(x["pixel_values"])))
        else:  # mlx-vlm's mask: True marks padding
            enc, _ = mod.audio_tower(mx.array(x["features"]), ~mx.array(np.asarray(x["mask"], bool)))
            out = mod.embed_audio(enc)
        out = out.astype(mx.float32)
        mx.eval(out)
        embd = np.array(out)[0]
        if embd.shape[0] < span.n_tokens or embd.shape[1] != self.width:
            raise MediaError(f"the {span.kind} tower made {embd.shape} soft tokens, not {span.n_tokens} x {self.width}")
        span.encode_s, span.inputs = time.perf_counter() - t0, {}
        return embd[: span.n_tokens]  # mlx-vlm's scatter takes the first n (audio: the padded tail left)


def open_projector(session: Any, mmproj: Optional[Path], limits: Any) -> Optional[MlxProjector]:
    """Backend.projector for MLX: the folder's towers (None for a text-only build). The resolver checked
    them already: an MLX artifact's sha256 in the manifest covers every file of the folder."""
    folder = Path(session.path)
    if mmproj is not None:
        raise ConfigError(f"--mmproj: {folder.name} is MLX, whose towers live in its folder ({TOWERS_FILE}); drop it")
    entry = towers_entry(folder)
    if entry is None:
        return None
    path = folder / entry["file"]
    if not path.is_file():
        raise ArtifactError(f"{path}: missing; config.json names it: rebuild with `edgekit build --modalities ...`")
    on_demand = session.runtime.get("towers", "resident") == "on_demand"
    return MlxProjector(folder, limits.image_tokens, session.engine.call, on_demand)


def prefill_media(runner: Any, prompt: list[int], media: Any) -> None:
    """The runner's prefill (its chunking: all but the last position, then the last) from input
    embeddings: ``prompt``'s rows with each span's soft tokens at its positions (which hold -1)."""
    mx = runner.mx
    text = _text_model(runner.model)
    ids = np.asarray(prompt, np.int64)
    ids = np.where(ids < 0, 0, ids)  # media positions: token 0 for the embedding and per-layer lookups
    toks = mx.array(ids, dtype=mx.int32)[None]
    emb = text.embed_tokens(toks)
    parts, at = [], 0
    for sp in sorted(media, key=lambda s: s.start):
        if sp.embd is None:
            raise MediaError(f"the {sp.kind} was never encoded")
        parts += [emb[:, at : sp.start], mx.array(sp.embd / text.embed_scale)[None].astype(emb.dtype)]
        at = sp.start + sp.n_pos
    emb = mx.concatenate([*parts, emb[:, at:]], axis=1)
    per_layer = text._get_per_layer_inputs(toks) if text.hidden_size_per_layer_input else None
    n = toks.shape[1]

    def run(lo: int, hi: int) -> Any:
        pl = None if per_layer is None else per_layer[:, lo:hi]
        return runner.model(None, cache=runner.cache, input_embeddings=emb[:, lo:hi], per_layer_inputs=pl)

    for i in range(0, n - 1, runner.step):
        run(i, min(i + runner.step, n - 1))
        mx.eval([c.state for c in runner.cache])
    runner.logits = run(n - 1, n)[:, -1, :]
    mx.eval(runner.logits)
    runner.kv_max = max(runner.kv_max, runner._kv_bytes() or 0)


def soft_and_logits(folder: Path, media: list[tuple[str, Any]], chat: tuple[str, str], image_budget: int) -> list[Any]:
    """(soft tokens, next-token logits as float64) per ``(kind, value)`` medium ("image": a prepared Pillow
    image, "audio": serve.media.Audio) after the rendered chat ``chat`` = (text before the medium, text
    after), on this thread (eval's projector precision: each tower type of an MLX build against F16)."""
    # deferred: the artifact's tokenizer and runner load with a measurement only
    from transformers import AutoTokenizer

    from ..runner import RunOptions
    from .runner import MlxRunner

    tok = AutoTokenizer.from_pretrained(str(folder))
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in chat]
    proj = MlxProjector(Path(folder), image_budget, call=lambda fn: fn())
    runner = MlxRunner()
    runner.load(Path(folder), RunOptions(threads=1, ctx=4096))
    out = []
    try:
        for kind, value in media:
            before, span, after = proj.span(_Medium("vision" if kind == "image" else "audio", value, kind))
            proj.encode_span(span)
            span.start = len(ids[0]) + len(before)
            runner.reset()
            prefill_media(runner, [*ids[0], *before, *[-1] * span.n_pos, *after, *ids[1]], [span])
            logits = np.array(runner.logits.astype(runner.mx.float32))[0].astype(np.float64)
            out.append((span.embd, logits))
    finally:
        proj.close()
        runner.close()
    return out


class _Medium:
    """serve/media_parts.Medium's shape (kind, value, where), for media that did not come as parts."""

    def __init__(self, kind: str, value: Any, where: str):
        self.kind, self.value, self.where = kind, value, where
