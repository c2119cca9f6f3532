"""`edgekit eval`: quality against a reference, and task suites."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..core.errors import ConfigError
from ..profiles.knobs import parse_set
from .app import app
from .options import BATCH, FLASH, UBATCH, knob_items


@app.command("eval")
def eval_(
    paths: list[Path] = typer.Argument(
        ..., help="Artifacts: .gguf files, MLX folders, or dist folders with manifest.json."
    ),
    reference: Optional[str] = typer.Option(
        None,
        "--reference",
        help="HF checkpoint folder (transformers), an unquantized .gguf / MLX folder, or a reference cache (.npz).",
    ),
    text: Optional[list[Path]] = typer.Option(
        None, "--text", help="UTF-8 text to score; repeatable. Default: edgekit's held-out Python docs + code."
    ),
    ctx: int = typer.Option(512, "--ctx", "-c", help="Window length in tokens (the second half of each is scored)."),
    chunks: Optional[int] = typer.Option(None, "--chunks", help="At most this many windows per text (default: all)."),
    top_k: Optional[int] = typer.Option(
        None,
        "--top-k",
        help="Reference log-probabilities kept per position (default 1024; KL beyond them is binned, a lower bound).",
    ),
    threads: Optional[int] = typer.Option(
        None, "--threads", "-t", help="llama.cpp / torch threads (default: this host's cores)."
    ),
    target: Optional[str] = typer.Option(
        None, "--target", help="Target profile whose \\[runtime] knobs apply. Default: the manifest's."
    ),
    knob: Optional[list[str]] = typer.Option(
        None, "--set", help="Engine knob over the target's \\[runtime], e.g. --set kv_type=f16."
    ),
    ubatch: Optional[str] = UBATCH,
    batch: Optional[str] = BATCH,
    flash: Optional[str] = FLASH,
    reference_dtype: str = typer.Option(
        "float32", "--reference-dtype", help="transformers reference: float32 or bfloat16."
    ),
    ref_cache: Optional[Path] = typer.Option(
        None, "--ref-cache", help="Reference cache file to read or write (default: ~/.cache/edgekit/eval/)."
    ),
    suite: Optional[str] = typer.Option(
        None,
        "--suite",
        help="Run a task suite instead of the KL pass: a JSONL file, or a shipped pack (enterprise, example).",
    ),
    max_tokens: int = typer.Option(256, "--max-tokens", "-n", min=1, help="With --suite: generation cap per case."),
    output: str = typer.Option("md", "-o", "--output", help="md, csv, json or jsonl."),
    db: Optional[Path] = typer.Option(
        None, "--db", help="Results store (default: $EDGEKIT_DB or ~/.local/share/edgekit/results.db)."
    ),
    device: Optional[str] = typer.Option(None, "--device", help="Device name in the records (default: hostname)."),
    no_store: bool = typer.Option(False, "--no-store", help="Do not append the records to the store."),
    force_reference: bool = typer.Option(
        False,
        "--force-reference",
        help="Use a quantized reference, or one of other weights than the artifacts' manifest records, anyway.",
    ),
) -> None:
    """Quality of each artifact against a reference: PPL, bits/byte, KL, same top, RMS Δp (or a task suite).
    A lean-vocabulary artifact gets bits and tokens per byte of the whole text beside the reference's."""
    # deferred: the command's library loads when it runs, so --help stays fast (docs/design-notes.md)
    from ..results.quality import PRINTERS

    if output not in PRINTERS:
        raise ConfigError(f"unknown output {output!r}; choose one of: {', '.join(PRINTERS)}")
    knob = knob_items(knob, ubatch, batch, flash)
    # deferred: the command's library loads when it runs, so --help stays fast (docs/design-notes.md)
    from ..eval.store import stored_after_printing

    if suite is not None:
        # deferred: the command's library loads when it runs, so --help stays fast (docs/design-notes.md)
        from ..eval.suite import SuiteOptions, load_suite, run_suites
        from ..results.quality import SUITE_PRINTERS

        load_suite(suite)  # a malformed suite fails before the store is opened
        with stored_after_printing(db, "suites", store=not no_store) as keep:
            results = run_suites(
                paths,
                suite,
                SuiteOptions(
                    reference=reference,
                    max_tokens=max_tokens,
                    threads=threads,
                    target=target,
                    runtime=parse_set(knob or []),
                    device=device,
                ),
            )
            keep(results, SUITE_PRINTERS[output])
        return
    if reference is None:
        raise ConfigError("--reference is required for the KL pass: the HF checkpoint or an unquantized artifact")
    # deferred: the command's library loads when it runs, so --help stays fast (docs/design-notes.md)
    from ..eval import EvalOptions, evaluate

    # The store is opened and tried before measuring; the records are printed before they are stored.
    with stored_after_printing(db, "quality", store=not no_store) as keep:
        records = evaluate(
            paths,
            EvalOptions(
                reference=reference,
                texts=text,
                ctx=ctx,
                chunks=chunks,
                **({} if top_k is None else {"top_k": top_k}),
                threads=threads,
                target=target,
                runtime=parse_set(knob or []),
                reference_dtype=reference_dtype,
                ref_cache=ref_cache,
                device=device,
                force_reference=force_reference,
            ),
        )
        keep(records, PRINTERS[output])
