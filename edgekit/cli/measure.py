"""`edgekit bench` and `report`: speed and memory, measured and drawn."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..core.errors import ConfigError, OutputError
from ..profiles.knobs import parse_set
from .app import app
from .options import BATCH, FLASH, MODEL, UBATCH, artifact_arg, knob_items, verbosity


@app.command()
def bench(
    path: Optional[Path] = typer.Argument(
        None, help="A .gguf file, an MLX folder, or a dist folder with manifest.json (or -m)."
    ),
    model: Optional[Path] = MODEL,
    ubatch: Optional[str] = UBATCH,
    batch: Optional[str] = BATCH,
    flash: Optional[str] = FLASH,
    n_prompt: str = typer.Option(
        "512", "-p", "--n-prompt", help="Prompt tokens (pp<p>, TTFT); comma-separated values sweep."
    ),
    n_gen: str = typer.Option("128", "-n", "--n-gen", help="Generated tokens (tg<n>); comma-separated values sweep."),
    depth: str = typer.Option(
        "0", "-d", "--depth", help="Tokens already in the cache before each test (pp512 @ d1024); comma-separated."
    ),
    reps: int = typer.Option(5, "-r", "--reps", help="Measured repetitions after one warm-up."),
    threads: Optional[str] = typer.Option(
        None, "--threads", "-t", help="Default: the target's, capped at this host's cores; comma-separated."
    ),
    ctx: Optional[str] = typer.Option(
        None, "--ctx", "-c", help="Context size. Default: the target's, else p + n + d; comma-separated."
    ),
    target: Optional[str] = typer.Option(
        None, "--target", help="Target profile (knobs, budget). Default: the manifest's."
    ),
    output: str = typer.Option(
        "md", "-o", "--output", help="md (a table, rows as they are measured), csv, json or jsonl (every field)."
    ),
    wide: bool = typer.Option(
        False, "--wide", help="md: every figure (TTFT, load, KV, roofline, limits ...) on one row per test."
    ),
    db: Optional[Path] = typer.Option(
        None, "--db", help="Results store (default: $EDGEKIT_DB or ~/.local/share/edgekit/results.db)."
    ),
    device: Optional[str] = typer.Option(None, "--device", help="Device name in the records (default: hostname)."),
    no_gate: bool = typer.Option(False, "--no-gate", help="Only warn when a peak is over the target's budget."),
    no_store: bool = typer.Option(False, "--no-store", help="Do not append the records to the store."),
    knob: Optional[list[str]] = typer.Option(
        None,
        "--set",
        help=(
            "Engine knob over the target's \\[runtime], e.g. --set repack=false (see edgekit/runners/<engine>.py "
            "KNOBS); --set kv_type=f16,q8_0 sweeps."
        ),
    ),
    limit: Optional[bool] = typer.Option(
        None,
        "--limit/--no-limit",
        help=(
            "Run each child inside a memory cgroup at the target's budget. Default: the target's \\[bench] "
            "enforce_limit."
        ),
    ),
    limit_mb: Optional[float] = typer.Option(
        None, "--limit-mb", help="The limit in MB (1e6 bytes) instead of the budget; implies --limit."
    ),
    refresh_bandwidth: bool = typer.Option(
        False,
        "--refresh-bandwidth",
        help=(
            "Measure this host's memory bandwidth again (the roofline's reference) instead of using the cached figure."
        ),
    ),
    yes: bool = typer.Option(
        False, "--yes", "-y", help="Run a grid of more than 100 rows per artifact (it is refused without)."
    ),
    image: Optional[list[Path]] = typer.Option(
        None, "--image", help="An image in each test's prompt (a row per medium); repeatable. GGUF with a projector."
    ),
    audio: Optional[list[Path]] = typer.Option(
        None, "--audio", help="An audio clip in each test's prompt; repeatable."
    ),
    image_tokens: str = typer.Option(
        "280", "--image-tokens", help="Soft-token budget per image: 70|140|280|560|1120; comma-separated values sweep."
    ),
    mmproj: Optional[Path] = typer.Option(
        None, "--mmproj", help="The projector for a bare .gguf (default: the one the manifest links)."
    ),
) -> None:
    """Measure load time, TTFT, prefill/decode t/s and peak RAM of each artifact; gate on the budget."""
    # deferred: the command's library loads when it runs, so --help stays fast (docs/design-notes.md)
    from ..measure.bench import BenchOptions, bench_sweep, check_budget
    from ..measure.budget import limit_notes, verdict
    from ..measure.roofline import host_bandwidth
    from ..measure.sweep import CONFIRM_ROWS, check_grid, expand, ints, knob_lists, swept_keys
    from ..results import OUTPUTS, Store, printer

    if output not in OUTPUTS:
        raise ConfigError(f"unknown output {output!r}; choose one of: {', '.join(OUTPUTS)}")
    path, _ = artifact_arg(path, model)
    knob = knob_items(knob, ubatch, batch, flash)
    axes = {
        "-p": ints(n_prompt, "-p"),
        "-n": ints(n_gen, "-n"),
        "-d": ints(depth, "-d", minimum=0),
        "--threads": ints(threads, "--threads", None) or [None],
        "--ctx": ints(ctx, "--ctx", None) or [None],
    }
    knobs = knob_lists(parse_set(knob or []))
    points = expand(*axes.values(), knobs)
    rows = check_grid(
        points, {**{k: len(v) for k, v in axes.items()}, **{f"--set {k}": len(v) for k, v in knobs.items()}}, yes
    )
    if rows > CONFIRM_ROWS:
        typer.echo(f"edgekit: a grid of {rows:,} rows per artifact (--yes)", err=True)
    if refresh_bandwidth:
        host_bandwidth(refresh=True)  # the bench then reads the fresh figure from the cache
    verbose = verbosity()
    media = []
    if image or audio:
        from ..measure.media import describe  # deferred: numpy and the media libraries only for a bench with media

        media = describe(list(image or []), list(audio or []), ints(image_tokens, "--image-tokens"))
    elif mmproj is not None or image_tokens != "280":
        raise ConfigError("--mmproj and --image-tokens apply to a bench with --image or --audio; add one")
    opts = BenchOptions(
        media=media,
        mmproj=mmproj,
        reps=reps,
        target=target,
        device=device,
        verbose=verbose,
        limit=True if limit_mb else limit,
        limit_bytes=int(limit_mb * 1e6) if limit_mb else None,
    )
    # The store is opened before measuring (a bad --db fails in a second, not after the runs). Each
    # child's rows are printed, then stored, as it finishes: a later artifact that fails loses none.
    store = None if no_store else Store(db)
    records: list = []
    out = printer(output, wide=wide, sweep=swept_keys(points), verdict=lambda r: verdict(r, records))

    def finished(recs: list) -> None:
        records.extend(recs)
        typer.echo(out.feed(recs), nl=False)
        if store is not None:
            try:
                store.append(recs)
            except OutputError as e:
                raise OutputError(
                    f"{e.message.removesuffix('; pass --db elsewhere')}: the {len(recs)} record(s) "
                    f"above were printed but not stored; rerun with --db elsewhere"
                ) from None

    done = False
    try:
        bench_sweep(path, opts, points, on_records=finished)
        done = True
    finally:
        if done or out.n:  # a run that failed before its first row prints nothing
            typer.echo(out.footer(), nl=False)
        if store is not None:
            store.close()
    for note in limit_notes(records):
        typer.echo(f"edgekit: warning: {note}", err=True)
    for msg in check_budget(records, enforce=not no_gate):
        typer.echo(f"edgekit: warning: over budget: {msg}", err=True)


@app.command()
def report(
    db: Optional[Path] = typer.Option(
        None, "--db", help="Results store (default: $EDGEKIT_DB or ~/.local/share/edgekit/results.db)."
    ),
    out: Path = typer.Option(Path("report"), "--out", help="Folder for report.md and the PNG plots."),
) -> None:
    """Write a markdown report with plots (decode t/s vs peak RAM, TTFT) from the results store."""
    # deferred: the command's library loads when it runs, so --help stays fast (docs/design-notes.md)
    from ..results.report import write_report

    typer.echo(str(write_report(db, out)))
