"""build(model, target, quants, out): checkpoint → artifacts + manifest, nothing else."""

from __future__ import annotations

import contextlib
import logging
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .checkpoint import load_checkpoint
from .formats import FORMATS, BuildContext
from .fsutil import output_error
from .manifest import Manifest, versions, write_manifest, MANIFEST
from .recipes import RECIPES
from .targets import TARGETS
from .vocab import VocabTrims, effective_vocab

log = logging.getLogger(__name__)


def model_slug(path: Path) -> str:
    name = path.name
    if "snapshots" in path.parts:  # a hub cache path: models--owner--name/snapshots/<sha>
        name = next((p for p in path.parts if p.startswith("models--")), name).removeprefix("models--")
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "model"


def build(model: str, target: str = "pi5", quants: list[str] | None = None, out: Path = Path("dist"),
          vocab: int | None = None, vocab_corpus: Path | None = None) -> Path:
    """Build the artifacts ``target`` runs (or ``quants``) from ``model``; return the output folder.
    ``vocab`` trims every recipe's vocabulary to that many tokens, counted on ``vocab_corpus``."""
    tgt = TARGETS.get(target)
    recipes = effective_vocab([RECIPES.get(q) for q in (quants or list(tgt.quants))], vocab)
    # Everything that can fail before a byte is written fails here, leaving an earlier build whole.
    for r in recipes:
        FORMATS.get(r.format).check(r)
    ckpt = load_checkpoint(model)
    if ckpt.dropped:
        log.warning("dropped %d vision/audio tensors: text-only deployment", len(ckpt.dropped))
    # Lean vocabularies are selected now (bad sizes and corpora fail here), written on first use.
    trims = VocabTrims(ckpt, {r.vocab for r in recipes if r.vocab is not None}, vocab_corpus)
    folder = Path(out) / model_slug(ckpt.path) / tgt.name
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise output_error(Path(out), e) from None
    # Writing starts now: a stale manifest from an earlier build must not vouch for files this build
    # is replacing.
    (folder / MANIFEST).unlink(missing_ok=True)
    # Hashing the source (9 GB for E2B) runs beside the conversion: hashlib releases the GIL.
    # The stack unwinds however the build ends (an error, Ctrl-C, SIGTERM raised as an exception):
    # intermediates are removed and the hasher is stopped before the exception leaves.
    with contextlib.ExitStack() as stack:
        stop = threading.Event()
        hasher = ThreadPoolExecutor(1, thread_name_prefix="edgekit-sha256")
        stack.callback(hasher.shutdown, wait=True)
        stack.callback(stop.set)
        fingerprint = hasher.submit(ckpt.fingerprint, stop)
        stack.callback(trims.close)
        ctx = BuildContext(target=tgt, out_dir=folder, stack=stack)
        artifacts = []
        for r in recipes:
            src, src_ctx = trims.source(r.vocab, ctx)   # a lean vocabulary: its own checkpoint and context
            artifacts.append(trims.annotate(FORMATS.get(r.format).build(src, r, src_ctx), r.vocab))
        source = fingerprint.result()
    manifest = Manifest(
        model=model_slug(ckpt.path),
        target=tgt.name,
        source={"path": str(ckpt.path), **source, "dropped_tensors": len(ckpt.dropped)},
        artifacts=artifacts,
        recipes={r.name: r.to_json() for r in recipes},
        versions=versions(),
    )
    write_manifest(folder, manifest)
    return folder
