"""llama.cpp's side of images and audio in `edgekit run` and `serve`: mtmd's projector loaded against the
served engine's own model (weights shared), each medium as mtmd's text tokens around a ``MediaSpan``
(backends/mtmd.py) that the generator's prefill decodes. serve/towers.py lays prompts out around them.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ...core.errors import ArtifactError, ConfigError
from ...serve.media import Audio, MediaError, prepare_image


class _EngineModel:
    """What backends.mtmd.Projector reads of a llama_cpp.Llama, from the served engine's model."""

    def __init__(self, engine: Any):
        self.engine, self.model = engine, engine.runner.model

    def tokenize(self, text: bytes, add_bos: bool = False, special: bool = True) -> list[int]:
        return self.engine.tokenize(text.decode(), special=special)

    def n_embd(self) -> int:
        return self.engine.L.llama_model_n_embd(self.model)


class GgufProjector:
    """The mmproj of a served GGUF, on the session's engine. ``on_demand`` (the ``towers`` knob): mtmd's
    context is loaded for each prompt with media and freed once its media are encoded (``release``), so the
    towers' weights and compute (E2B's Q8_0 vision tower: 542 MB while it runs) never sit beside a full
    context; each such prompt pays the load. ``resident``: loaded once, kept."""

    def __init__(self, session: Any, mmproj: Path, image_budget: int, on_demand: bool = False):
        eng = session.engine
        self._model = _EngineModel(eng)
        if eng.L.llama_model_n_embd_inp(self._model.model) != self._model.n_embd():
            raise ArtifactError(f"{Path(mmproj).name}: the text model's input width is not its width; not served")
        self._args = (mmproj, session.path, session.threads or 2, image_budget, eng.runner.log._cb)
        self.path, self.image_budget, self.on_demand = Path(mmproj), image_budget, on_demand
        self.mode = "on_demand" if on_demand else "resident"
        self.proj: Any = None
        self.loads, self.load_s = 0, 0.0  # projector loads and the seconds they took (on_demand: one per prompt)
        proj = self._open()
        self.modalities = tuple(proj.modalities)
        self.marker = proj.marker
        self.n_ubatch = int(eng.L.llama_n_ubatch(eng.ctx))
        self.warning = self._check_ubatch()
        if on_demand:
            self._check_detachable()
            self._free()

    def _open(self) -> Any:
        """mtmd's context, loaded now if it is not."""
        if self.proj is None:
            # deferred: mtmd (and the projector checks it reads) loads when towers are attached, not with the registry
            from ..mtmd import Projector

            mmproj, text, threads, budget, log_cb = self._args
            t0 = time.perf_counter()
            self.proj = Projector(self._model, mmproj, text, threads=threads, image_budget=budget, log_callback=log_cb)
            self.load_s += time.perf_counter() - t0
            self.loads += 1
        return self.proj

    @property
    def loaded(self) -> bool:
        return self.proj is not None

    def _free(self) -> None:
        if self.proj is not None:
            self.proj.close()  # frees mtmd's context and trims the heap (core.host.trim_heap)
            self.proj = None

    def _check_ubatch(self) -> str:
        """What a full-budget image would meet: llama.cpp decodes image tokens with non-causal attention
        for some widths (not E2B's or E4B's) and then needs them all in one ubatch (pi5: 64)."""
        if "vision" not in self.modalities:
            return ""
        # deferred: Pillow loads only for an image
        from PIL import Image

        _, span, _ = self.proj.span(self.proj._bitmap_image(prepare_image(Image.new("RGB", (48, 48)), 70)), "image")
        span.close()
        if span.non_causal and self.image_budget > self.n_ubatch:
            return (
                f"images attend to themselves at once on this model: those over {self.n_ubatch} soft tokens "
                f"(the ubatch) are refused; --ubatch-size {self.image_budget} takes --image-tokens' budget"
            )
        return ""

    def _check_detachable(self) -> None:
        """on_demand decodes a medium after its projector is gone (MediaSpan.detach), which needs one text
        position per soft token: refused at load for a model whose media take 2-D positions."""
        proj, kinds = self.proj, [k for k in ("vision", "audio") if k in self.modalities]
        for kind in kinds:
            if kind == "vision":
                # deferred: Pillow loads only for an image
                from PIL import Image

                bitmap = proj._bitmap_image(prepare_image(Image.new("RGB", (48, 48)), 70))
            else:
                bitmap = proj._bitmap_audio(Audio(np.zeros(16000, dtype=np.float32), 16000))
            _, span, _ = proj.span(bitmap, "image" if kind == "vision" else "audio")
            span.close()
            if not span.plain_positions:
                raise ConfigError(
                    f"towers = on_demand: {self.path.name} places {kind} soft tokens in 2-D, which only "
                    "llama.cpp's helper decodes with the projector loaded; use towers = resident"
                )

    def span(self, m: Any) -> tuple[list[int], Any, list[int]]:
        """mtmd's ids before the medium, its span, the ids after (serve/media_parts.Medium ``m``)."""
        proj = self._open()
        bitmap = proj._bitmap_image(m.value) if m.kind == "vision" else proj._bitmap_audio(m.value)
        before, span, after = proj.span(bitmap, "image" if m.kind == "vision" else "audio")
        if span.non_causal and span.n_tokens > self.n_ubatch:
            span.close()
            raise MediaError(
                f"{m.where}: makes {span.n_tokens} soft tokens; this model attends to them all at once, so they "
                f"must fit one ubatch ({self.n_ubatch}): send it smaller, or serve with --ubatch-size "
                f"{max(span.n_tokens, self.image_budget)}"
            )
        return before, span, after

    def encode_span(self, span: Any) -> None:
        self._open().encode_span(span)

    def release(self, spans: list[Any]) -> None:
        """A prompt's media are encoded (or it failed): on_demand, cut the spans' ties to mtmd's context
        and free it before the text is decoded; resident, nothing."""
        if not self.on_demand:
            return
        for span in spans:
            span.detach()
        self._free()

    def close(self) -> None:
        self._free()


def open_projector(session: Any, mmproj: Optional[Path], limits: Any) -> Optional[GgufProjector]:
    """Backend.projector for llama.cpp: the mmproj the manifest links (or ``mmproj``); None without one."""
    # deferred: the manifest's projector checks load when towers are attached, not with the registry
    from ...builder.projector import projector_file
    from ...serve.media_run import find_projector

    if mmproj is None and projector_file(session.path.parent, session.artifact) is None:
        return None
    mode = session.runtime.get("towers") or "resident"
    return GgufProjector(
        session, find_projector(session.path, session.artifact, mmproj), limits.image_tokens, mode == "on_demand"
    )
