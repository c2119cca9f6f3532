"""`edgekit synth`, `build`, `targets`, `recipes` and `list`: making checkpoints and artifacts, and what there is."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..core.errors import ConfigError
from .app import app
from .options import csv_values, table


@app.command()
def synth(
    out: Path = typer.Option(..., "--out", help="Folder to write the checkpoint to (replaced if present)."),
    preset: str = typer.Option(
        "tiny",
        "--preset",
        help="tiny (seconds), tiny-16k (tiny with 16,384 tokens), mid (≈0.6 GB) or e2b (shape-true, ≈9.3 GB).",
    ),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed writes the same bytes."),
    dtype: str = typer.Option("bf16", "--dtype", help="bf16 (as released), f16 or f32."),
    no_softcap: bool = typer.Option(False, "--no-softcap", help="Write a config without final_logit_softcapping."),
    train_text: Optional[Path] = typer.Option(
        None, "--train", help="Train the preset on this UTF-8 text (torch, CPU) instead of random weights."
    ),
    heldout: Optional[list[Path]] = typer.Option(
        None,
        "--heldout",
        help="With --train: text whose loss is logged before and after (repeat for one per language).",
    ),
    eval_every: int = typer.Option(
        0, "--eval-every", min=0, help="With --train and --heldout: also log the held-out loss every N steps."
    ),
    eval_windows: int = typer.Option(
        8, "--eval-windows", min=1, help="With --heldout: windows of 512 tokens scored per held-out text."
    ),
    steps: int = typer.Option(
        100, "--steps", help="With --train: optimizer steps (the run is reproducible for a seed and step count)."
    ),
    minutes: Optional[float] = typer.Option(
        None, "--minutes", help="With --train: stop after this many minutes even if steps remain."
    ),
    threads: int = typer.Option(2, "--threads", "-t", min=1, help="With --train: torch threads."),
    towers: bool = typer.Option(
        False,
        "--towers",
        help="Add vision and audio towers with E2B's structure (random weights) and the processor configs.",
    ),
) -> None:
    """Write a Gemma 4 checkpoint in Hugging Face layout: random weights, or trained on a text with --train."""
    if towers and train_text is not None:
        raise ConfigError("--towers makes random towers; --train trains the text model only: use one of them")
    if train_text is not None:
        # deferred: the command's library loads when it runs, so --help stays fast (docs/design-notes.md)
        from ..dev.train import TrainOptions, train

        opts = TrainOptions(
            steps=steps, minutes=minutes, seed=seed, threads=threads, eval_every=eval_every, eval_windows=eval_windows
        )
        typer.echo(str(train(out, train_text, preset=preset, opts=opts, heldout_path=heldout or None)))
        return
    # deferred: the command's library loads when it runs, so --help stays fast (docs/design-notes.md)
    from ..dev.synth import synth as run

    path = run(out, preset=preset, seed=seed, dtype=dtype, softcap=not no_softcap, towers=towers)
    typer.echo(str(path))


@app.command()
def build(
    model: str = typer.Option(..., "--model", "-m", help="Checkpoint folder or hub id (owner/name)."),
    target: str = typer.Option("pi5", "--target", help="Target profile (see `edgekit targets`)."),
    quant: Optional[str] = typer.Option(
        None,
        "--quant",
        "-q",
        help=(
            "Comma-separated recipes or llama.cpp types (q5_k_m, iq4_nl ...; `edgekit recipes`); default: the target's."
        ),
    ),
    out: Path = typer.Option(Path("dist"), "--out", help="Output root: artifacts go to OUT/<model>/<target>/."),
    vocab: Optional[int] = typer.Option(
        None, "--vocab", help="Lean vocabulary: keep this many tokens in every artifact (README: Lean vocabulary)."
    ),
    vocab_corpus: Optional[Path] = typer.Option(
        None, "--vocab-corpus", help="UTF-8 text the kept tokens are counted on (default: a built-in corpus)."
    ),
    allow_nonfinite: bool = typer.Option(
        False, "--allow-nonfinite", help="Build even when source weights hold NaN/Inf (the manifest lists the tensors)."
    ),
    q_bits: Optional[int] = typer.Option(
        None, "--q-bits", help="MLX recipes: bits per weight (2, 3, 4, 5, 6, 8), as mlx_lm.convert."
    ),
    q_group_size: Optional[int] = typer.Option(
        None, "--q-group-size", help="MLX recipes: group size (32, 64, 128), as mlx_lm.convert."
    ),
    calibrate: Optional[str] = typer.Option(
        None,
        "--calibrate",
        help=(
            "Quantize with an importance matrix computed over this UTF-8 text (`builtin`: the shipped one); written "
            "beside the artifacts."
        ),
    ),
    imatrix: Optional[Path] = typer.Option(
        None, "--imatrix", help="Quantize with this precomputed importance matrix (llama-imatrix's .gguf or .dat)."
    ),
    modalities: Optional[str] = typer.Option(
        None,
        "--modalities",
        help=(
            "Towers to ship beside the text model: vision, audio, or text (none); default: the target's "
            "(docs/multimodal.md)."
        ),
    ),
) -> None:
    """Convert and quantize a checkpoint into the artifacts a target runs, with a manifest."""
    # deferred: the command's library loads when it runs, so --help stays fast (docs/design-notes.md)
    from ..builder.manifest import format_manifest, read_manifest
    from ..builder.pipeline import build as run

    folder = run(
        model=model,
        target=target,
        quants=csv_values(quant),
        out=out,
        vocab=vocab,
        vocab_corpus=vocab_corpus,
        allow_nonfinite=allow_nonfinite,
        q_bits=q_bits,
        q_group_size=q_group_size,
        calibrate=calibrate,
        imatrix=imatrix,
        modalities=csv_values(modalities),
    )
    typer.echo(format_manifest(folder, read_manifest(folder)))


@app.command()
def targets(name: Optional[str] = typer.Argument(None, help="Show this profile in full.")) -> None:
    """List target profiles, or show one (`edgekit targets pi5`)."""
    # deferred: the command's library loads when it runs, so --help stays fast (docs/design-notes.md)
    from ..profiles.targets import TARGETS
    from .listing import target_detail, target_rows

    if name is not None:
        typer.echo(target_detail(name), nl=False)
        return
    typer.echo(
        table(
            ["TARGET", "ENGINE", "RECIPES", "THREADS", "CTX", "BUDGET", "DESCRIPTION"],
            target_rows(list(TARGETS)),
            right=(3, 4, 5),
        ),
        nl=False,
    )


@app.command()
def recipes() -> None:
    """List quantization recipes."""
    # deferred: the command's library loads when it runs, so --help stays fast (docs/design-notes.md)
    from .listing import recipe_rows

    typer.echo(table(["RECIPE", "FORMAT", "QUANT", "DESCRIPTION"], recipe_rows()), nl=False)


@app.command("list")
def list_(root: Path = typer.Argument(Path("dist"), help="Folder holding builds (default: dist).")) -> None:
    """What was built, as `ollama list`: one row per artifact (* marks a build's recommended one)."""
    # deferred: the command's library loads when it runs, so --help stays fast (docs/design-notes.md)
    from .listing import built

    rows = built(root)
    if not rows:
        typer.echo(f"edgekit: no builds under {root}; make one with `edgekit build --model CKPT`", err=True)
        return
    typer.echo(table(["NAME", "FORMAT", "QUANT", "SIZE", "MODIFIED"], rows, right=(3,)), nl=False)


# ---------------------------------------------------------------- device lab (edgekit/lab/)
