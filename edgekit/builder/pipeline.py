"""build(model, target, quants, out): checkpoint → artifacts + manifest, nothing else."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from ..backends.formats import FORMATS, BuildContext
from ..backends.gguf.vocab import check_tokenizer
from ..core.errors import ConfigError, ConversionError, EdgekitError
from ..core.names import check_plain_name
from ..model.checkpoint import load_checkpoint
from ..profiles.recipes import check_names, get_recipe
from ..profiles.targets import TARGETS, parse_modalities
from . import projector
from .calibration import calibration
from .manifest import MANIFEST, Manifest, versions, write_manifest
from .source_scan import NonFinite, source_fingerprint
from .staging import BuildStage
from .vocab import VocabTrims, effective_vocab, no_op_trims

log = logging.getLogger(__name__)


def model_slug(path: Path) -> str:
    name = path.name
    if "snapshots" in path.parts:  # a hub cache path: models--owner--name/snapshots/<sha>
        name = next((p for p in path.parts if p.startswith("models--")), name).removeprefix("models--")
    # Dots are stripped at the ends too: a checkpoint passed as "ckpt/.." must not name the folder "..".
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "model"


def _nonfinite_cause(fingerprint: Future, error: ConversionError) -> EdgekitError:
    """The source scan's NonFinite error if it finds NaN/Inf (waiting for it), else ``error``, with a
    note when the weights were allowed to be non-finite (--allow-nonfinite) and the quantizer failed."""
    try:
        _, nonfinite = fingerprint.result()
    except NonFinite as cause:
        return cause
    except EdgekitError:
        return error
    if nonfinite:
        error.message += (
            f"; the source holds NaN/Inf in {len(nonfinite)} tensor(s) (--allow-nonfinite), which "
            "llama.cpp refuses to quantize"
        )
        error.args = (error.message,)
    return error


MLX_GROUP_SIZES = (32, 64, 128)  # what mlx.core.quantize takes
MLX_BITS = (2, 3, 4, 5, 6, 8)


def with_mlx_quant(recipes: list, bits: int | None, group_size: int | None) -> list:
    """mlx_lm.convert's --q-bits / --q-group-size over the MLX recipes that quantize (the others kept);
    a recipe so changed is named and labelled for what it now writes (mlx-3bit-g32)."""
    if bits is None and group_size is None:
        return recipes
    if bits is not None and bits not in MLX_BITS:
        raise ConfigError(f"--q-bits {bits}: MLX quantizes to {', '.join(map(str, MLX_BITS))} bits")
    if group_size is not None and group_size not in MLX_GROUP_SIZES:
        raise ConfigError(
            f"--q-group-size {group_size}: MLX quantizes in groups of {', '.join(map(str, MLX_GROUP_SIZES))}"
        )
    out, changed = [], []
    for r in recipes:
        if r.format == "mlx" and r.bits is not None:
            b, g = bits or r.bits, group_size or r.group_size or 64
            was = r.name
            r = dataclasses.replace(
                r,
                name=f"mlx-{b}bit-g{g}",
                quant=f"{b}bit-g{g}",
                bits=b,
                group_size=g,
                description=f"{r.description} (--q-bits {b} --q-group-size {g})",
            )
            if r.name in changed:  # m2's mlx-4bit and mlx-8bit both become this one: build it once
                log.warning("%s: --q-bits %d --q-group-size %d makes it %s, built once", was, b, g, r.name)
                continue
            changed.append(r.name)
        out.append(r)
    if not changed:
        raise ConfigError(
            "--q-bits and --q-group-size set an MLX recipe's quantization, and none of these recipes is a "
            f"quantized MLX one ({', '.join(r.name for r in recipes)}); pass --quant mlx-4bit or --target m2"
        )
    return out


def build(
    model: str,
    target: str = "pi5",
    quants: list[str] | None = None,
    out: Path = Path("dist"),
    vocab: int | None = None,
    vocab_corpus: Path | None = None,
    allow_nonfinite: bool = False,
    q_bits: int | None = None,
    q_group_size: int | None = None,
    calibrate: str | None = None,
    imatrix: Path | None = None,
    modalities: list[str] | None = None,
) -> Path:
    """Build the artifacts ``target`` runs (or ``quants``) from ``model``; return the output folder.
    ``vocab`` trims every recipe's vocabulary to that many tokens, counted on ``vocab_corpus``.
    NaN/Inf in the source weights refuse the build unless ``allow_nonfinite`` (then the manifest says so).
    ``calibrate`` (a text, or "builtin") or ``imatrix`` (a precomputed file) quantizes with an importance matrix.
    ``modalities`` (default: the target's) adds a projector for those towers beside each text artifact."""
    tgt = TARGETS.get(target)
    mods = tgt.modalities if modalities is None else parse_modalities(modalities, "--modalities")
    check_plain_name(tgt.name, "name", f"target {tgt.name!r}", "fix the target profile")
    names = quants or list(tgt.build_quants(mods))
    twice = next((q for i, q in enumerate(names) if q in names[:i]), None)
    if twice is not None:  # two artifacts of one name: the second would replace the first mid-commit
        where = f"--quant {','.join(names)}" if quants else f"target {tgt.name}'s quants"
        raise ConfigError(f"{where}: recipe {twice!r} is listed twice; list each recipe once")
    recipes = effective_vocab([get_recipe(q) for q in names], vocab)
    recipes = with_mlx_quant(recipes, q_bits, q_group_size)
    # Everything that can fail before a byte is written fails here, leaving an earlier build whole.
    cal = calibration(calibrate, imatrix)
    for r in recipes:
        check_names(r, f"recipe {r.name!r}")
        FORMATS.get(r.format).check(r)
        need = FORMATS.get(r.format).needs_imatrix(r) if cal is None else []
        if need:  # llama-quantize refuses these too, after the conversion; say so before it
            raise ConfigError(
                f"{r.name}: llama.cpp quantizes {', '.join(need)} only with an importance matrix; "
                "add --calibrate builtin (or --calibrate TEXT, or --imatrix FILE)"
            )
    untaken = [r.name for r in recipes if cal is not None and not FORMATS.get(r.format).takes_imatrix(r)]
    if untaken and len(untaken) < len(recipes):
        log.warning(
            "%s: built without the importance matrix (unquantized, or a quantizer that takes none)", ", ".join(untaken)
        )
    if cal is not None and len(untaken) == len(recipes):
        raise ConfigError(
            f"{cal.label.split()[0]}: none of {', '.join(r.name for r in recipes)} is quantized by "
            "llama.cpp, so no importance matrix would be used; drop the option or add a quantized recipe"
        )
    ckpt = load_checkpoint(model)
    projector.check_request(recipes, ckpt.config.raw, mods, str(ckpt.path / "config.json"))
    if ckpt.dropped and not mods:
        log.warning("dropped %d vision/audio tensors: text-only deployment", len(ckpt.dropped))
    check_tokenizer(ckpt.path)
    # A recipe's vocab is a cap, and so is --vocab N at or above the vocabulary: a trim that keeps every
    # token would write a full copy under a lean name, so the recipe is skipped (the manifest says why).
    recipes, skipped = no_op_trims(recipes, ckpt.config.vocab_size)
    if not recipes:
        if vocab is not None:
            raise ConfigError(
                f"--vocab {vocab}: the model's vocabulary has {ckpt.config.vocab_size} tokens, so there "
                f"is nothing to trim; build without --vocab, or with --vocab below "
                f"{ckpt.config.vocab_size}"
            )
        raise ConfigError(
            f"{', '.join(skipped)}: the model's vocabulary of {ckpt.config.vocab_size} tokens is "
            "already within the recipe's vocab, so there is nothing to trim; build the "
            "full-vocabulary recipe instead (e.g. --quant iq4_xs-edge)"
        )
    # Lean vocabularies are selected now (bad sizes and corpora fail here), written on first use.
    trims = VocabTrims(ckpt, {r.vocab for r in recipes if r.vocab is not None}, vocab_corpus)
    folder = Path(out) / model_slug(ckpt.path) / tgt.name
    # One build per folder at a time; this build writes only into its private stage, and the earlier
    # build (manifest included) stays whole until commit swaps the new artifacts in (edgekit/staging.py).
    with BuildStage(folder, MANIFEST) as stage:
        # Hashing and scanning the source (9 GB for E2B) runs beside the conversion: hashlib and
        # numpy release the GIL. The stack unwinds however the build ends (an error, Ctrl-C, SIGTERM
        # raised as an exception): intermediates are removed and the hasher is stopped before the
        # exception leaves, and the stage goes after them.
        with contextlib.ExitStack() as stack:
            stop = threading.Event()
            hasher = ThreadPoolExecutor(1, thread_name_prefix="edgekit-sha256")
            stack.callback(hasher.shutdown, wait=True)
            stack.callback(stop.set)
            fingerprint = hasher.submit(source_fingerprint, ckpt, stop, not allow_nonfinite)
            stack.callback(trims.close)
            ctx = BuildContext(target=tgt, out_dir=stage.path, stack=stack, calibration=cal, modalities=mods)
            try:
                artifacts = []
                projectors: set[str] = set()
                for r in recipes:
                    src, src_ctx = trims.source(r.vocab, ctx)  # a lean vocabulary: its own checkpoint and context
                    a = trims.annotate(FORMATS.get(r.format).build(src, r, src_ctx), r.vocab)
                    first = next((x for x in artifacts if x.file == a.file), None)
                    if first is not None:
                        raise ConfigError(
                            f"recipes {first.recipe!r} and {r.name!r} both make {a.file}; build them "
                            "apart, or give one a different quant label"
                        )
                    artifacts.append(a)
                    if mods:  # the towers do not depend on the vocabulary: built from the source checkpoint
                        p = projector.attach(ckpt, r, artifacts[-1], ctx, mods)
                        projectors.update([p.name] if p else [])
                    if fingerprint.done():
                        fingerprint.result()  # NaN/Inf in the source: stop before the next recipe
                source, nonfinite = fingerprint.result()
            except ConversionError as e:
                # llama.cpp's quantizer refuses NaN weights without naming them: when the source scan
                # (still running beside the conversion) finds them, that is the error to report.
                raise _nonfinite_cause(fingerprint, e) from None
        if nonfinite:
            log.warning(
                "%s: building despite NaN/Inf in %d tensor(s) (--allow-nonfinite): %s",
                ckpt.path,
                len(nonfinite),
                ", ".join(f"{k} ({v})" for k, v in list(nonfinite.items())[:3]),
            )
            source["nonfinite_tensors"] = nonfinite
        manifest = Manifest(
            model=model_slug(ckpt.path),
            target=tgt.name,
            source={"path": str(ckpt.path), **source, "dropped_tensors": len(ckpt.dropped)},
            artifacts=artifacts,
            recipes={r.name: r.to_json() for r in recipes},
            versions=versions(),
            skipped=skipped,
        )
        # A lean vocabulary's id map (written beside its artifacts, named in extra["vocab"]) goes in with them.
        id_maps = sorted({a.extra["vocab"]["id_map"] for a in artifacts if "vocab" in a.extra})
        imatrices = sorted({a.extra["imatrix"]["file"] for a in artifacts if "imatrix" in a.extra})  # beside, for reuse
        stage.commit(
            [a.file for a in artifacts] + id_maps + imatrices + sorted(projectors),
            lambda f: write_manifest(f, manifest),
        )
    return folder
