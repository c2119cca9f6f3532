"""llama.cpp's side of images and audio in `edgekit run` and `serve`: mtmd's projector loaded against the
served engine's own model (weights shared), each medium as mtmd's text tokens around a ``MediaSpan``
(backends/mtmd.py) that the generator's prefill decodes. serve/towers.py lays prompts out around them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from ...core.errors import ArtifactError
from ...serve.media import MediaError, prepare_image


class _EngineModel:
    """What backends.mtmd.Projector reads of a llama_cpp.Llama, from the served engine's model."""

    def __init__(self, engine: Any):
        self.engine, self.model = engine, engine.runner.model

    def tokenize(self, text: bytes, add_bos: bool = False, special: bool = True) -> list[int]:
        return self.engine.tokenize(text.decode(), special=special)

    def n_embd(self) -> int:
        return self.engine.L.llama_model_n_embd(self.model)


class GgufProjector:
    """The mmproj of a served GGUF, on the session's engine."""

    def __init__(self, session: Any, mmproj: Path, image_budget: int):
        # deferred: mtmd (and the projector checks it reads) loads when towers are attached, not with the registry
        from ..mtmd import Projector

        eng = session.engine
        model = _EngineModel(eng)
        if eng.L.llama_model_n_embd_inp(model.model) != model.n_embd():
            raise ArtifactError(f"{Path(mmproj).name}: the text model's input width is not its width; not served")
        self.proj = Projector(
            model,
            mmproj,
            session.path,
            threads=session.threads or 2,
            image_budget=image_budget,
            log_callback=eng.runner.log._cb,
        )
        self.path, self.image_budget = Path(mmproj), image_budget
        self.modalities = tuple(self.proj.modalities)
        self.marker = self.proj.marker
        self.n_ubatch = int(eng.L.llama_n_ubatch(eng.ctx))
        self.warning = self._check_ubatch()

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

    def span(self, m: Any) -> tuple[list[int], Any, list[int]]:
        """mtmd's ids before the medium, its span, the ids after (serve/media_parts.Medium ``m``)."""
        bitmap = self.proj._bitmap_image(m.value) if m.kind == "vision" else self.proj._bitmap_audio(m.value)
        before, span, after = self.proj.span(bitmap, "image" if m.kind == "vision" else "audio")
        if span.non_causal and span.n_tokens > self.n_ubatch:
            span.close()
            raise MediaError(
                f"{m.where}: makes {span.n_tokens} soft tokens; this model attends to them all at once, so they "
                f"must fit one ubatch ({self.n_ubatch}): send it smaller, or serve with --ubatch-size "
                f"{max(span.n_tokens, self.image_budget)}"
            )
        return before, span, after

    def encode_span(self, span: Any) -> None:
        self.proj.encode_span(span)

    def close(self) -> None:
        self.proj.close()


def open_projector(session: Any, mmproj: Optional[Path], limits: Any) -> Optional[GgufProjector]:
    """Backend.projector for llama.cpp: the mmproj the manifest links (or ``mmproj``); None without one."""
    # deferred: the manifest's projector checks load when towers are attached, not with the registry
    from ...builder.projector import projector_file
    from ...serve.media_run import find_projector

    if mmproj is None and projector_file(session.path.parent, session.artifact) is None:
        return None
    return GgufProjector(session, find_projector(session.path, session.artifact, mmproj), limits.image_tokens)
