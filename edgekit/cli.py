"""The edgekit command line: each command is a short adapter over a library function.

Library code raises EdgekitError; only here does that become one line on stderr and an exit code.
Results go to stdout, progress and logging to stderr.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import click
import typer
from typer.core import TyperGroup

from .errors import EdgekitError


class _Group(TyperGroup):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except EdgekitError as e:
            click.echo(f"edgekit: error: {e}", err=True)
            ctx.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("edgekit: interrupted; partial files were removed", err=True)
            ctx.exit(130)


app = typer.Typer(cls=_Group, no_args_is_help=True, add_completion=False, pretty_exceptions_show_locals=False,
                  help="Convert, quantize, deploy and measure Gemma 4 E2B on Raspberry Pi 5 and Apple Silicon.")


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress details to stderr.")) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    # Keep edgekit's own notes (one-liners such as dropped towers) visible without -v.
    logging.getLogger("edgekit").setLevel(logging.INFO if verbose else logging.WARNING)


def _csv(value: Optional[str]) -> Optional[list[str]]:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


@app.command()
def synth(
    out: Path = typer.Option(..., "--out", "-o", help="Folder to write the checkpoint to (replaced if present)."),
    preset: str = typer.Option("tiny", "--preset", help="tiny (seconds) or e2b (shape-true, ≈9.3 GB)."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed writes the same bytes."),
    dtype: str = typer.Option("bf16", "--dtype", help="bf16 (as released), f16 or f32."),
    no_softcap: bool = typer.Option(False, "--no-softcap", help="Write a config without final_logit_softcapping."),
) -> None:
    """Write a random-weight Gemma 4 checkpoint in Hugging Face layout."""
    from .synth import synth as run

    path = run(out, preset=preset, seed=seed, dtype=dtype.upper(), softcap=not no_softcap)
    typer.echo(str(path))


@app.command()
def build(
    model: str = typer.Option(..., "--model", "-m", help="Checkpoint folder or hub id (owner/name)."),
    target: str = typer.Option("pi5", "--target", "-t", help="Target profile (see `edgekit targets`)."),
    quant: Optional[str] = typer.Option(None, "--quant", "-q", help="Comma-separated recipes; default: the target's."),
    out: Path = typer.Option(Path("dist"), "--out", "-o", help="Output root: artifacts go to OUT/<model>/<target>/."),
) -> None:
    """Convert and quantize a checkpoint into the artifacts a target runs, with a manifest."""
    from .build import build as run
    from .manifest import format_manifest, read_manifest

    folder = run(model=model, target=target, quants=_csv(quant), out=out)
    typer.echo(format_manifest(folder, read_manifest(folder)))


@app.command()
def targets() -> None:
    """List target profiles."""
    from .targets import TARGETS

    for name in TARGETS:
        t = TARGETS.get(name)
        typer.echo(f"{name}\t{t.engine}\t{','.join(t.quants)}\t{t.memory_budget_gb} GB\t{t.description}")


@app.command()
def recipes() -> None:
    """List quantization recipes."""
    from .recipes import RECIPES

    for name in RECIPES:
        r = RECIPES.get(name)
        typer.echo(f"{name}\t{r.format}\t{r.quant}\t{r.description}")


@app.command()
def bench(
    path: Path = typer.Argument(..., help="A .gguf file, an MLX folder, or a dist folder with manifest.json."),
    n_prompt: int = typer.Option(512, "-p", "--n-prompt", help="Prompt tokens (pp<p>, TTFT)."),
    n_gen: int = typer.Option(128, "-n", "--n-gen", help="Generated tokens (tg<n>)."),
    reps: int = typer.Option(5, "-r", "--reps", help="Measured repetitions after one warm-up."),
    threads: Optional[int] = typer.Option(None, "--threads", "-t", help="Default: the target's, capped at this host's cores."),
    ctx: Optional[int] = typer.Option(None, "--ctx", "-c", help="Context size. Default: the target's, else p + n."),
    target: Optional[str] = typer.Option(None, "--target", help="Target profile (knobs, budget). Default: the manifest's."),
    output: str = typer.Option("md", "-o", "--output", help="md, csv, json or jsonl."),
    db: Optional[Path] = typer.Option(None, "--db", help="Results store (default: $EDGEKIT_DB or ~/.local/share/edgekit/results.db)."),
    device: Optional[str] = typer.Option(None, "--device", help="Device name in the records (default: hostname)."),
    no_gate: bool = typer.Option(False, "--no-gate", help="Only warn when a peak is over the target's budget."),
    no_store: bool = typer.Option(False, "--no-store", help="Do not append the records to the store."),
) -> None:
    """Measure load time, TTFT, prefill/decode t/s and peak RAM of each artifact; gate on the budget."""
    from .bench import BenchOptions, bench as run, check_budget
    from .errors import ConfigError
    from .results import PRINTERS, Store

    if output not in PRINTERS:
        raise ConfigError(f"unknown output {output!r}; choose one of: {', '.join(PRINTERS)}")
    verbose = logging.getLogger("edgekit").isEnabledFor(logging.INFO)
    records = run(path, BenchOptions(n_prompt=n_prompt, n_gen=n_gen, reps=reps, threads=threads, ctx=ctx,
                                     target=target, device=device, verbose=verbose))
    if not no_store:
        with Store(db) as store:
            store.append(records)
    typer.echo(PRINTERS[output](records), nl=False)
    for msg in check_budget(records, enforce=not no_gate):
        typer.echo(f"edgekit: warning: over budget: {msg}", err=True)


@app.command()
def report(
    db: Optional[Path] = typer.Option(None, "--db", help="Results store (default: $EDGEKIT_DB or ~/.local/share/edgekit/results.db)."),
    out: Path = typer.Option(Path("report"), "--out", "-o", help="Folder for report.md and the PNG plots."),
) -> None:
    """Write a markdown report with plots (decode t/s vs peak RAM, TTFT) from the results store."""
    from .report import write_report

    typer.echo(str(write_report(db, out)))


def main() -> None:  # pragma: no cover - console entry point alias
    app()
