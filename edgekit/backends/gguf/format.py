"""The GGUF format: Gemma 4 → GGUF (convert.py, vocab.py), llama.cpp's quantizer (quantize.py), and a
fast header reader (header.py) for what the bench asks of an artifact. Runs on llama.cpp.

Unquantized recipes without overrides are written by the converter directly; every other recipe is
quantized by llama.cpp from one lossless intermediate per build (the source's own float type),
shared through the BuildContext and removed when the build ends.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from ...core.errors import ArtifactError, ConfigError, EdgekitError
from ...model.dtypes import lossless
from ..format import BuildContext, ChatText, LabelRule, TokenBytes
from .ftypes import needs_imatrix

if TYPE_CHECKING:
    from ...builder.manifest import Artifact
    from ...model.checkpoint import Checkpoint

# Read a row per token (the token's entry), not whole: the PLE table always, the embedding unless it
# is also the output head (tied embeddings, no output.weight), whose matmul then reads it whole.
GATHERED = ("per_layer_token_embd.weight", "token_embd.weight")


class GgufFormat:
    name = "gguf"
    engine = "llama.cpp"
    recipe_keys = frozenset({"ftype", "overrides"})

    @staticmethod
    def _direct(recipe: Any) -> bool:
        """Whether the converter writes ``recipe`` itself (unquantized, no overrides): no llama.cpp needed."""
        from .quantize import FLOAT_FTYPES  # deferred: quantize.py imports gguf, numpy and the child protocol

        return recipe.ftype in FLOAT_FTYPES and not recipe.overrides

    def takes_imatrix(self, recipe: Any) -> bool:
        return not self._direct(recipe)

    def needs_imatrix(self, recipe: Any) -> list[str]:
        return needs_imatrix(recipe) if recipe.ftype else []

    def check(self, recipe: Any) -> None:
        if not recipe.ftype:
            raise ConfigError(f'recipe {recipe.name}: a gguf recipe needs ftype (e.g. "MOSTLY_Q4_0")')
        if not self._direct(recipe):
            from .quantize import check  # deferred: as in _direct

            check(recipe)

    def build(self, ckpt: Checkpoint, recipe: Any, ctx: BuildContext) -> Artifact:
        # deferred: the build's modules (gguf's writer, numpy, builder.manifest) load only when building
        from ...builder.manifest import Artifact, artifact_digest
        from .convert import convert
        from .quantize import FLOAT_FTYPES, quantize

        out = Path(ctx.out_dir) / f"{ckpt.name}-{recipe.quant}.gguf"
        imatrix = None
        if self._direct(recipe):
            convert(ckpt, out, FLOAT_FTYPES[recipe.ftype], name=ckpt.name)
        else:

            def intermediate(c: BuildContext) -> Path:
                dtype = lossless(ckpt.source_dtypes())
                src = Path(c.out_dir) / f".{ckpt.name}-{dtype}.intermediate.gguf"
                c.stack.callback(src.unlink, missing_ok=True)  # registered first: a failed convert leaves nothing
                convert(ckpt, src, dtype, name=ckpt.name)
                return src

            if ctx.calibration is not None:
                from .calibrate import importance_matrix  # deferred: only a build with --calibrate/--imatrix

                # One matrix per checkpoint (a lean vocabulary has its own context), on its intermediate.
                imatrix = ctx.shared(
                    "gguf.imatrix", lambda c: importance_matrix(ckpt, c, c.shared("gguf.intermediate", intermediate))
                )
            # The build host quantizes with all its cores; the target's thread count is for running.
            quantize(
                ctx.shared("gguf.intermediate", intermediate),
                out,
                recipe,
                threads=0,
                imatrix=Path(ctx.out_dir) / imatrix["file"] if imatrix else None,
            )
        size, digest = artifact_digest(out)
        extra = {"imatrix": dict(imatrix)} if imatrix else {}
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
        return path.is_file() and path.suffix == ".gguf"

    def quant_label(self, path: Path) -> str:
        # deferred: gguf (with its reader, ~50 ms) loads only when a GGUF file is read
        import gguf

        from .header import read_gguf_header

        try:
            ftype = read_gguf_header(path).scalars["general.file_type"]
            return gguf.LlamaFileType(int(ftype)).name.removeprefix("MOSTLY_").removeprefix("ALL_")
        except (EdgekitError, KeyError, ValueError, TypeError):  # no such key (or a file token_bytes rejects)
            return "unknown"

    def model_name(self, path: Path) -> str:
        return path.stem

    def token_bytes(self, path: Path) -> TokenBytes:
        # deferred: gguf (with its reader, ~50 ms) loads only when a GGUF file is read
        from .header import read_gguf_header

        tensors = read_gguf_header(path).tensors  # ArtifactError for a corrupt or truncated file
        tied = "output.weight" not in tensors
        whole, gathered = 0, {}
        for name, t in tensors.items():
            if name in GATHERED and not (tied and name == "token_embd.weight"):
                rows = int(t.shape[-1])  # ggml order: ne[1] counts the rows (vocabulary entries)
                gathered[name] = int(t.n_bytes) // max(rows, 1)
            else:
                whole += int(t.n_bytes)
        sizes = {name: int(t.n_bytes) for name, t in tensors.items()}
        return TokenBytes(
            total=whole + sum(gathered.values()),
            whole=whole,
            gathered=gathered,
            file_tensor_bytes=sum(sizes.values()),
            sizes=sizes,
        )

    def max_context(self, path: Path) -> Optional[int]:
        from .header import read_gguf_header  # deferred: as in token_bytes

        scalars = read_gguf_header(path).scalars
        n = scalars.get(f"{scalars.get('general.architecture', '')}.context_length")
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ArtifactError(f"{path.name}: context_length {n!r} is not a size; rebuild it with `edgekit build`")
        return n

    def chat_template(self, path: Path) -> ChatText:
        from .header import read_gguf_header, token_texts  # deferred: as in token_bytes

        scalars = read_gguf_header(path).scalars
        source = scalars.get("tokenizer.chat_template")
        if not source:
            raise ArtifactError(
                f"{path.name}: no tokenizer.chat_template in its metadata; rebuild it with `edgekit build` "
                "from a checkpoint whose tokenizer_config.json has a chat template"
            )
        want = {k: scalars.get(f"tokenizer.ggml.{k}_token_id") for k in ("bos", "eos")}
        texts: dict[Any, str] = token_texts(path, {i for i in want.values() if isinstance(i, int)})  # None: absent
        return ChatText(source, texts.get(want["bos"], "<bos>"), texts.get(want["eos"], "<eos>"))

    def recipe_label(self, recipe: Any) -> Optional[LabelRule]:
        if not recipe.ftype:
            return None
        want = recipe.ftype.upper().removeprefix("MOSTLY_").removeprefix("ALL_")
        fix = f'set quant = "{want}" (or "{want}-<suffix>"), or the ftype that writes {recipe.quant}'
        return LabelRule(want, f"ftype {recipe.ftype!r}, which writes {want}", fix)


GGUF = GgufFormat()
