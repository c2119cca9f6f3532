"""The edgekit command line: each command is a short adapter over a library function.

Library code raises EdgekitError; only here does that become one line on stderr and an exit code.
Results go to stdout, progress and logging to stderr.
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import Optional

import click
import typer
from typer.core import TyperGroup

from .cliopts import BATCH, FLASH, HELP, MODEL, UBATCH, add_verbose, artifact_arg, knob_items, verbosity
from .core.errors import ConfigError, EdgekitError


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the main thread is, so it unwinds through the same cleanup as Ctrl-C."""


def _on_sigterm(signum: int, frame: object) -> None:
    # Once: a second SIGTERM must not cut the cleanup the first one started (SIGKILL still ends it).
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise _Terminated()


class _Group(TyperGroup):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        add_verbose(self)

    def invoke(self, ctx: click.Context):
        # `kill`, systemd, a CI timeout and `docker stop` send SIGTERM: treat it like Ctrl-C (every
        # `finally` and `except BaseException` removes its partial files), then exit 128 + 15.
        previous = signal.signal(signal.SIGTERM, _on_sigterm) if threading.current_thread() is threading.main_thread() else None
        try:
            return super().invoke(ctx)
        except EdgekitError as e:
            click.echo(f"edgekit: error: {e}", err=True)
            ctx.exit(e.exit_code)
        except _Terminated:
            click.echo("edgekit: terminated (SIGTERM); partial files were removed", err=True)
            ctx.exit(143)
        except KeyboardInterrupt:
            click.echo("edgekit: interrupted; partial files were removed", err=True)
            ctx.exit(130)
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)


app = typer.Typer(cls=_Group, no_args_is_help=True, add_completion=False, pretty_exceptions_show_locals=False,
                  context_settings=HELP,
                  help="Convert, quantize, deploy and measure Gemma 4 E2B on Raspberry Pi 5 and Apple Silicon.")


def _version(value: bool) -> None:
    if value:
        from .cliopts import version_line

        typer.echo(version_line())
        raise typer.Exit()


@app.callback()
def _main(verbose: int = typer.Option(0, "--verbose", "-v", count=True, help="Log progress details to stderr; -vv adds llama.cpp's full log."),
          version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print edgekit's version and its engines' and exit.")) -> None:
    from .cliopts import set_verbosity

    set_verbosity(verbose, reset=True)


def _csv(value: Optional[str]) -> Optional[list[str]]:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


@app.command()
def synth(
    out: Path = typer.Option(..., "--out", help="Folder to write the checkpoint to (replaced if present)."),
    preset: str = typer.Option("tiny", "--preset", help="tiny (seconds), tiny-16k (tiny with 16,384 tokens), mid (≈0.6 GB) or e2b (shape-true, ≈9.3 GB)."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed writes the same bytes."),
    dtype: str = typer.Option("bf16", "--dtype", help="bf16 (as released), f16 or f32."),
    no_softcap: bool = typer.Option(False, "--no-softcap", help="Write a config without final_logit_softcapping."),
    train_text: Optional[Path] = typer.Option(None, "--train", help="Train the preset on this UTF-8 text (torch, CPU) instead of random weights."),
    heldout: Optional[list[Path]] = typer.Option(None, "--heldout", help="With --train: text whose loss is logged before and after (repeat for one per language)."),
    eval_every: int = typer.Option(0, "--eval-every", min=0, help="With --train and --heldout: also log the held-out loss every N steps."),
    eval_windows: int = typer.Option(8, "--eval-windows", min=1, help="With --heldout: windows of 512 tokens scored per held-out text."),
    steps: int = typer.Option(100, "--steps", help="With --train: optimizer steps (the run is reproducible for a seed and step count)."),
    minutes: Optional[float] = typer.Option(None, "--minutes", help="With --train: stop after this many minutes even if steps remain."),
    threads: int = typer.Option(2, "--threads", "-t", min=1, help="With --train: torch threads."),
    towers: bool = typer.Option(False, "--towers", help="Add vision and audio towers with E2B's structure (random weights) and the processor configs."),
) -> None:
    """Write a Gemma 4 checkpoint in Hugging Face layout: random weights, or trained on a text with --train."""
    if towers and train_text is not None:
        raise ConfigError("--towers makes random towers; --train trains the text model only: use one of them")
    if train_text is not None:
        from .dev.train import TrainOptions, train

        opts = TrainOptions(steps=steps, minutes=minutes, seed=seed, threads=threads, eval_every=eval_every,
                            eval_windows=eval_windows)
        typer.echo(str(train(out, train_text, preset=preset, opts=opts, heldout_path=heldout or None)))
        return
    from .dev.synth import synth as run

    path = run(out, preset=preset, seed=seed, dtype=dtype, softcap=not no_softcap, towers=towers)
    typer.echo(str(path))


@app.command()
def build(
    model: str = typer.Option(..., "--model", "-m", help="Checkpoint folder or hub id (owner/name)."),
    target: str = typer.Option("pi5", "--target", help="Target profile (see `edgekit targets`)."),
    quant: Optional[str] = typer.Option(None, "--quant", "-q", help="Comma-separated recipes or llama.cpp types (q5_k_m, iq4_nl ...; `edgekit recipes`); default: the target's."),
    out: Path = typer.Option(Path("dist"), "--out", help="Output root: artifacts go to OUT/<model>/<target>/."),
    vocab: Optional[int] = typer.Option(None, "--vocab", help="Lean vocabulary: keep this many tokens in every artifact (README: Lean vocabulary)."),
    vocab_corpus: Optional[Path] = typer.Option(None, "--vocab-corpus", help="UTF-8 text the kept tokens are counted on (default: a built-in corpus)."),
    allow_nonfinite: bool = typer.Option(False, "--allow-nonfinite", help="Build even when source weights hold NaN/Inf (the manifest lists the tensors)."),
    q_bits: Optional[int] = typer.Option(None, "--q-bits", help="MLX recipes: bits per weight (2, 3, 4, 5, 6, 8), as mlx_lm.convert."),
    q_group_size: Optional[int] = typer.Option(None, "--q-group-size", help="MLX recipes: group size (32, 64, 128), as mlx_lm.convert."),
    calibrate: Optional[str] = typer.Option(None, "--calibrate", help="Quantize with an importance matrix computed over this UTF-8 text (`builtin`: the shipped one); written beside the artifacts."),
    imatrix: Optional[Path] = typer.Option(None, "--imatrix", help="Quantize with this precomputed importance matrix (llama-imatrix's .gguf or .dat)."),
    modalities: Optional[str] = typer.Option(None, "--modalities", help="Towers to ship beside the text model: vision, audio, or text (none); default: the target's (docs/multimodal.md)."),
) -> None:
    """Convert and quantize a checkpoint into the artifacts a target runs, with a manifest."""
    from .builder.pipeline import build as run
    from .builder.manifest import format_manifest, read_manifest

    folder = run(model=model, target=target, quants=_csv(quant), out=out, vocab=vocab, vocab_corpus=vocab_corpus,
                 allow_nonfinite=allow_nonfinite, q_bits=q_bits, q_group_size=q_group_size,
                 calibrate=calibrate, imatrix=imatrix, modalities=_csv(modalities))
    typer.echo(format_manifest(folder, read_manifest(folder)))


@app.command()
def targets(name: Optional[str] = typer.Argument(None, help="Show this profile in full.")) -> None:
    """List target profiles, or show one (`edgekit targets pi5`)."""
    from .cliopts import table
    from .listing import target_detail, target_rows
    from .profiles.targets import TARGETS

    if name is not None:
        typer.echo(target_detail(name), nl=False)
        return
    typer.echo(table(["TARGET", "ENGINE", "RECIPES", "THREADS", "CTX", "BUDGET", "DESCRIPTION"],
                     target_rows(list(TARGETS)), right=(3, 4, 5)), nl=False)


@app.command()
def recipes() -> None:
    """List quantization recipes."""
    from .cliopts import table
    from .listing import recipe_rows

    typer.echo(table(["RECIPE", "FORMAT", "QUANT", "DESCRIPTION"], recipe_rows()), nl=False)


@app.command("list")
def list_(root: Path = typer.Argument(Path("dist"), help="Folder holding builds (default: dist).")) -> None:
    """What was built, as `ollama list`: one row per artifact (* marks a build's recommended one)."""
    from .cliopts import table
    from .listing import built

    rows = built(root)
    if not rows:
        typer.echo(f"edgekit: no builds under {root}; make one with `edgekit build --model CKPT`", err=True)
        return
    typer.echo(table(["NAME", "FORMAT", "QUANT", "SIZE", "MODIFIED"], rows, right=(3,)), nl=False)


# ---------------------------------------------------------------- device lab (edgekit/lab/)

_INVENTORY = typer.Option(None, "--inventory", "-i", help="Lab inventory: edgekit's TOML, or an Ansible inventory (INI or YAML; hosts need edgekit_target) (default: targets/lab.toml).")
_METHOD = typer.Option("auto", "--method", help="Copy with rsync (auto: when both ends have rsync >= 3) or scp.")
_VIA = typer.Option("ssh", "--via", help="ssh: edgekit's own fan-out (small labs); ansible: the shipped playbook (deploy/ansible) run by ansible-runner (fleets).")
_FORKS = typer.Option(16, "--forks", min=1, help="Devices worked on at once (Ansible forks; SSH threads).")
lab_app = typer.Typer(no_args_is_help=True, help="Deploy to and bench on the devices of a lab inventory (TOML, or an Ansible INI/YAML inventory) over SSH or Ansible.")
app.add_typer(lab_app, name="lab")


@app.command()
def deploy(
    dist: Path = typer.Argument(..., help="A build folder, or dist/<model> holding one folder per target."),
    device: Optional[list[str]] = typer.Option(None, "--device", help="Device name from the inventory; repeatable."),
    inventory: Optional[Path] = _INVENTORY,
    host: Optional[str] = typer.Option(None, "--host", help="One device without an inventory: user@host[:port] (ssh's config supplies the rest)."),
    target: Optional[str] = typer.Option(None, "--target", help="With --host: the device's target profile (default: the build folder's)."),
    identity: Optional[Path] = typer.Option(None, "--identity", help="With --host: private key file (ssh -i)."),
    ssh_config: Optional[Path] = typer.Option(None, "--ssh-config", help="With --host: ssh config file (ssh -F)."),
    workdir: Optional[str] = typer.Option(None, "--workdir", help="With --host: remote work dir (default ~/edgekit)."),
    bootstrap: bool = typer.Option(False, "--bootstrap", help="Also make a venv there with edgekit[runtime] (no torch)."),
    wheel: Optional[Path] = typer.Option(None, "--wheel", help="edgekit wheel for --bootstrap (default: built from this checkout)."),
    method: str = _METHOD,
    serve: bool = typer.Option(False, "--serve", help="Then run `edgekit serve` there (systemd user unit; nohup fallback; launchd on macOS) and wait for /health."),
    serve_host: str = typer.Option("127.0.0.1", "--serve-host", help="Address the device's server listens on (default: its loopback only; 0.0.0.0 needs --api-key-file or --insecure)."),
    serve_key: Optional[Path] = typer.Option(None, "--api-key-file", help="With --serve: the key clients must send, copied to the device (mode 600)."),
    insecure: bool = typer.Option(False, "--insecure", help="With --serve: allow a non-loopback bind without an API key."),
    port: int = typer.Option(8080, "--port", help="The device server's port."),
    parallel: int = typer.Option(1, "--parallel", min=1, help="The device server's slots."),
    via: str = _VIA,
) -> None:
    """Copy a build to devices: only files whose sha256 differs, verified on the device, manifest last."""
    from .lab.run import deploy_devices
    from .serve.guard import is_loopback, read_api_key

    key = read_api_key(None, serve_key) if serve else None
    if serve and not serve_host:
        raise EdgekitError("--serve-host is empty: give an address (127.0.0.1: the device only; 0.0.0.0: every interface)")
    if serve and not is_loopback(serve_host) and not key and not insecure:
        raise EdgekitError(f"--serve-host {serve_host} lets anyone on that network use the model: give "
                           "--api-key-file FILE, or --insecure to serve it without a key")
    devices = _deploy_devices(dist, device, inventory, host, target, identity, ssh_config, workdir)
    if _via(via) == "ansible":
        from .lab.ansible_run import ansible_run
        from .lab.inventory import Inventory

        lab = load_inventory(inventory) if host is None else Inventory(Path(host), {d.name: d for d in devices})
        outcomes = ansible_run(dist, lab, devices, [], bootstrap=bootstrap, wheel=wheel, serve=serve, serve_host=serve_host,
                               port=port, serve_args=["--parallel", str(parallel)], bench=False,
                               on_outcome=lambda o: typer.echo(o.message if o.ok else f"edgekit: error: {o.message}", err=not o.ok))
        raise typer.Exit(0 if all(o.ok for o in outcomes) else 1)
    failed = False
    for line, ok in deploy_devices(dist, devices, bootstrap=bootstrap, wheel=wheel, method=method):
        typer.echo(line if ok else f"edgekit: error: {line}", err=not ok)
        failed |= not ok
    if serve and not failed:
        from .lab.serve import deploy_served

        for d in devices:
            try:
                s = deploy_served(dist, d, host=serve_host, port=d.serve_port or port, serve_args=["--parallel", str(parallel)],
                                  method=method, api_key=key)
                typer.echo(f"{s.device}: serving at {s.url} ({s.mode}: {s.where})")
            except EdgekitError as e:
                typer.echo(f"edgekit: error: {e}", err=True)
                failed = True
    raise typer.Exit(1 if failed else 0)


def _via(via: str) -> str:
    if via not in ("ssh", "ansible"):
        raise ConfigError(f"--via {via!r}: use ssh or ansible")
    return via


def _deploy_devices(dist, device, inventory, host, target, identity, ssh_config, workdir):
    from .core.errors import ConfigError
    from .lab.inventory import device_from_address, load_inventory

    if host is None:
        if not device:
            raise ConfigError("name the devices: --device NAME (from the inventory) or --host user@host[:port]")
        if target or identity or ssh_config or workdir:
            raise ConfigError("--target, --identity, --ssh-config and --workdir go with --host (an inventory device has its own)")
        return load_inventory(inventory).select(device)
    if device or inventory:
        raise ConfigError("--host names one device without an inventory; drop --device/--inventory, or use them alone")
    if target is None:
        from .builder.manifest import MANIFEST, read_manifest

        if not (Path(dist) / MANIFEST).is_file():
            raise ConfigError(f"{dist}: not a build folder; with --host pass --target (the device's profile)")
        target = read_manifest(Path(dist)).target
    return [device_from_address(host, target, identity=str(identity) if identity else None,
                                ssh_config=str(ssh_config) if ssh_config else None, workdir=workdir)]


@lab_app.command("list")
def lab_list(
    inventory: Optional[Path] = _INVENTORY,
    names: bool = typer.Option(False, "--names", help="Names only, for make: names make cannot quote are left out."),
    origin: bool = typer.Option(False, "--origin", help="Also show where each field came from (file, [defaults], group or host var)."),
) -> None:
    """List the inventory's devices: name, target, ssh address, remote work dir."""
    from .lab.inventory import load_inventory

    for d in load_inventory(inventory).devices.values():
        if not names:
            typer.echo(f"{d.name}\t{d.target}\t{d.address()}\t{d.workdir}")
            if origin:
                for key, value, where in d.fields():
                    typer.echo(f"  {key} = {value}\t({where})")
        elif d.make_safe:
            typer.echo(d.name)
        else:
            typer.echo(f"edgekit: note: `make lab` skips device {d.name!r} (make cannot quote its name); "
                       f"run it with `edgekit lab run --devices`", err=True)


@lab_app.command("run", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def lab_run(
    ctx: typer.Context,
    dist: Path = typer.Argument(Path("dist"), help="dist, dist/<model> (a build per target) or one build folder."),
    devices: Optional[str] = typer.Option(None, "--devices", help="Comma-separated device names (default: all)."),
    inventory: Optional[Path] = _INVENTORY,
    db: Optional[Path] = typer.Option(None, "--db", help="Results store (default: $EDGEKIT_DB or ~/.local/share/edgekit/results.db)."),
    no_deploy: bool = typer.Option(False, "--no-deploy", help="Bench what the devices already hold."),
    method: str = _METHOD,
    served: bool = typer.Option(False, "--served", help="Bench each device's `edgekit serve` endpoint as an HTTP client sees it (deployed and started here; with --no-deploy the one already running), instead of `edgekit bench`: takes -p, -n, -r; records say via served."),
    port: int = typer.Option(8080, "--port", help="With --served: the device servers' port."),
    via: str = _VIA,
    forks: int = _FORKS,
) -> None:
    """Deploy, then bench on every device in parallel; each device's records go to the local store.

    Other options (after DIST, or after `--`), e.g. `--reps 3`, are passed to `edgekit bench` on the devices.
    """
    from .lab.inventory import load_inventory
    from .lab.run import exit_code, lab_run as run
    from .results import Store

    lab = load_inventory(inventory)
    chosen = lab.select(_csv(devices))
    kw = {}
    if served and _via(via) == "ansible":
        raise ConfigError("--served runs over edgekit's SSH path only; drop --via ansible")
    if served:
        from .lab.serve import lab_run_served as run   # noqa: F811
        kw = {"port": port}
    elif _via(via) == "ansible":
        from .lab.ansible_run import ansible_run

        def run(dist, chosen, args, parallel, **k):   # noqa: F811
            k.pop("method")
            return ansible_run(dist, lab, chosen, args, forks=parallel, **k)
    with Store(db) as store:
        def show(o):
            typer.echo(o.message if o.ok else f"edgekit: error: {o.message}", err=not o.ok)
        outcomes = run(dist, chosen, list(ctx.args), store=store, push=not no_deploy, method=method, on_outcome=show,
                       parallel=forks, **kw)
        stored = sum(len(o.records) for o in outcomes)
        typer.echo(f"{stored} record(s) from {sum(o.ok for o in outcomes)}/{len(outcomes)} device(s) in {store.path}")
    raise typer.Exit(exit_code(outcomes))


@lab_app.command("serve")
def lab_serve(
    dist: Path = typer.Argument(Path("dist"), help="dist, dist/<model> (a build per target) or one build folder."),
    devices: Optional[str] = typer.Option(None, "--devices", help="Comma-separated device names (default: all)."),
    inventory: Optional[Path] = _INVENTORY,
    front: bool = typer.Option(False, "--front", help="Put HAProxy in front of the devices' servers (health checks on /health, retries on another device) and run it until Ctrl-C."),
    front_host: str = typer.Option("127.0.0.1", "--front-host", help="Address the front listens on."),
    front_port: int = typer.Option(8000, "--front-port", help="The front's port."),
    front_key: Optional[str] = typer.Option(None, "--front-key", envvar="EDGEKIT_FRONT_KEY", help="API key clients must send to the front (Bearer)."),
    config: Optional[Path] = typer.Option(None, "--config", help="Where to write haproxy.cfg (default: ~/.cache/edgekit/front/haproxy.cfg)."),
    config_only: bool = typer.Option(False, "--config-only", help="Write and check the configuration, run nothing (for a system haproxy)."),
    no_deploy: bool = typer.Option(False, "--no-deploy", help="The devices' servers are already running: only put the front before them."),
    port: int = typer.Option(8080, "--port", help="The devices' server port (an inventory serve_port / edgekit_serve_port wins)."),
    serve_host: str = typer.Option("0.0.0.0", "--serve-host", help="Address the devices' servers listen on (the front reaches them there)."),
    insecure: bool = typer.Option(False, "--insecure", help="Allow devices without an api_key on a non-loopback --serve-host."),
    parallel: int = typer.Option(1, "--parallel", min=1, help="Each device server's slots."),
    via: str = _VIA,
    method: str = _METHOD,
    forks: int = _FORKS,
) -> None:
    """Start `edgekit serve` on every device (deployed first, sha256-checked), optionally behind a load balancer."""
    from .lab.front import run_front, start_devices
    from .lab.inventory import load_inventory

    lab = load_inventory(inventory)
    chosen = lab.select(_csv(devices))
    if (no_deploy or config_only or config or front_key) and not front:
        raise ConfigError("--no-deploy, --config, --config-only and --front-key only make sense with --front")
    failed = 0
    if not no_deploy and not config_only:
        from .serve.guard import is_loopback

        open_ = [d.name for d in chosen if not d.api_key]
        if open_ and not is_loopback(serve_host) and not insecure:
            raise ConfigError(f"--serve-host {serve_host} would let anyone on that network use {', '.join(open_)}: "
                              f"give each device an api_key (edgekit_api_key), or pass --insecure")
        for _, ok, line in start_devices(dist, lab, chosen, via=_via(via), port=port, serve_host=serve_host,
                                         serve_args=["--parallel", str(parallel)], method=method, forks=forks):
            typer.echo(line if ok else f"edgekit: error: {line}", err=not ok)
            failed += not ok
    if not front:
        raise typer.Exit(1 if failed else 0)
    run_front(chosen, port=port, host=front_host, front_port=front_port, front_key=front_key, config=config,
              config_only=config_only, echo=typer.echo)


@app.command()
def bench(
    path: Optional[Path] = typer.Argument(None, help="A .gguf file, an MLX folder, or a dist folder with manifest.json (or -m)."),
    model: Optional[Path] = MODEL,
    ubatch: Optional[str] = UBATCH,
    batch: Optional[str] = BATCH,
    flash: Optional[str] = FLASH,
    n_prompt: str = typer.Option("512", "-p", "--n-prompt", help="Prompt tokens (pp<p>, TTFT); comma-separated values sweep."),
    n_gen: str = typer.Option("128", "-n", "--n-gen", help="Generated tokens (tg<n>); comma-separated values sweep."),
    depth: str = typer.Option("0", "-d", "--depth", help="Tokens already in the cache before each test (pp512 @ d1024); comma-separated."),
    reps: int = typer.Option(5, "-r", "--reps", help="Measured repetitions after one warm-up."),
    threads: Optional[str] = typer.Option(None, "--threads", "-t", help="Default: the target's, capped at this host's cores; comma-separated."),
    ctx: Optional[str] = typer.Option(None, "--ctx", "-c", help="Context size. Default: the target's, else p + n + d; comma-separated."),
    target: Optional[str] = typer.Option(None, "--target", help="Target profile (knobs, budget). Default: the manifest's."),
    output: str = typer.Option("md", "-o", "--output", help="md (a table, rows as they are measured), csv, json or jsonl (every field)."),
    wide: bool = typer.Option(False, "--wide", help="md: every figure (TTFT, load, KV, roofline, limits ...) on one row per test."),
    db: Optional[Path] = typer.Option(None, "--db", help="Results store (default: $EDGEKIT_DB or ~/.local/share/edgekit/results.db)."),
    device: Optional[str] = typer.Option(None, "--device", help="Device name in the records (default: hostname)."),
    no_gate: bool = typer.Option(False, "--no-gate", help="Only warn when a peak is over the target's budget."),
    no_store: bool = typer.Option(False, "--no-store", help="Do not append the records to the store."),
    knob: Optional[list[str]] = typer.Option(None, "--set", help="Engine knob over the target's \\[runtime], e.g. --set repack=false (see edgekit/runners/<engine>.py KNOBS); --set kv_type=f16,q8_0 sweeps."),
    limit: Optional[bool] = typer.Option(None, "--limit/--no-limit", help="Run each child inside a memory cgroup at the target's budget. Default: the target's \\[bench] enforce_limit."),
    limit_mb: Optional[float] = typer.Option(None, "--limit-mb", help="The limit in MB (1e6 bytes) instead of the budget; implies --limit."),
    refresh_bandwidth: bool = typer.Option(False, "--refresh-bandwidth", help="Measure this host's memory bandwidth again (the roofline's reference) instead of using the cached figure."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Run a grid of more than 100 rows per artifact (it is refused without)."),
) -> None:
    """Measure load time, TTFT, prefill/decode t/s and peak RAM of each artifact; gate on the budget."""
    from .measure.bench import BenchOptions, bench_sweep, check_budget, parse_knobs
    from .measure.budget import limit_notes, verdict
    from .core.errors import ConfigError, OutputError
    from .results import OUTPUTS, Store, printer
    from .measure.roofline import host_bandwidth
    from .measure.sweep import CONFIRM_ROWS, check_grid, expand, ints, knob_lists, swept_keys

    if output not in OUTPUTS:
        raise ConfigError(f"unknown output {output!r}; choose one of: {', '.join(OUTPUTS)}")
    path, _ = artifact_arg(path, model)
    knob = knob_items(knob, ubatch, batch, flash)
    axes = {"-p": ints(n_prompt, "-p"), "-n": ints(n_gen, "-n"), "-d": ints(depth, "-d", minimum=0),
            "--threads": ints(threads, "--threads", None) or [None], "--ctx": ints(ctx, "--ctx", None) or [None]}
    knobs = knob_lists(parse_knobs(knob or []))
    points = expand(*axes.values(), knobs)
    rows = check_grid(points, {**{k: len(v) for k, v in axes.items()}, **{f"--set {k}": len(v) for k, v in knobs.items()}}, yes)
    if rows > CONFIRM_ROWS:
        typer.echo(f"edgekit: a grid of {rows:,} rows per artifact (--yes)", err=True)
    if refresh_bandwidth:
        host_bandwidth(refresh=True)   # the bench then reads the fresh figure from the cache
    verbose = verbosity()
    opts = BenchOptions(reps=reps, target=target, device=device, verbose=verbose,
                        limit=True if limit_mb else limit, limit_bytes=int(limit_mb * 1e6) if limit_mb else None)
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
                raise OutputError(f"{e.message.removesuffix('; pass --db elsewhere')}: the {len(recs)} record(s) "
                                  f"above were printed but not stored; rerun with --db elsewhere") from None
    done = False
    try:
        bench_sweep(path, opts, points, on_records=finished)
        done = True
    finally:
        if done or out.n:   # a run that failed before its first row prints nothing
            typer.echo(out.footer(), nl=False)
        if store is not None:
            store.close()
    for note in limit_notes(records):
        typer.echo(f"edgekit: warning: {note}", err=True)
    for msg in check_budget(records, enforce=not no_gate):
        typer.echo(f"edgekit: warning: over budget: {msg}", err=True)


_ART = typer.Argument(None, help="A .gguf file, an MLX folder, or a dist folder (its first, recommended artifact); or -m.")
_TARGET = typer.Option(None, "--target", help="Target profile whose \\[runtime] knobs to use. Default: the manifest's.")
_KNOB = typer.Option(None, "--set", help="Engine knob over the target's \\[runtime], e.g. --set n_ubatch=128.")
_CTX = typer.Option(None, "--ctx", "-c", "--ctx-size", min=1, help="Context size. Default: the target's, else min(the model's n_ctx_train, 4096).")
_THREADS = typer.Option(None, "--threads", "-t", min=1, help="Default: the target's, capped at this host's cores.")


def _picked(session, artifact: Path) -> None:
    """Name the artifact a build folder resolved to (its manifest's first, recommended one)."""
    a = session.artifact
    typer.echo(f"edgekit: {session.path} ({a.format} {a.quant}, {a.bytes / 1e6:.1f} MB; ctx {session.n_ctx}, "
               f"threads {session.threads or '-'}, target {session.target or '-'})"
               + ("; the build's first, recommended artifact" if Path(artifact).is_dir() and session.path != Path(artifact) else ""),
               err=True)


@app.command()
def run(
    artifact: Optional[Path] = _ART,
    prompt_arg: Optional[str] = typer.Argument(None, metavar="[PROMPT]", help="The prompt, as `ollama run MODEL PROMPT`."),
    model: Optional[Path] = MODEL,
    target: Optional[str] = _TARGET,
    prompt: Optional[str] = typer.Option(None, "--prompt", "-p", help="One prompt; without a prompt, an interactive chat."),
    file: Optional[Path] = typer.Option(None, "--file", "-f", help="Read the prompt from FILE (- for stdin)."),
    system: Optional[str] = typer.Option(None, "--system", "-sys", help="System prompt."),
    max_tokens: int = typer.Option(256, "--max-tokens", "-n", "--n-predict", help="Most tokens per reply; -1: until the turn or the context ends."),
    think: Optional[bool] = typer.Option(None, "--think/--no-think", help="Gemma 4 thinking on/off (default: the template's, off)."),
    temperature: float = typer.Option(0.0, "--temperature", "--temp", help="0 is greedy."),
    top_p: float = typer.Option(1.0, "--top-p", help="Nucleus sampling (1: off)."),
    top_k: int = typer.Option(0, "--top-k", help="Keep the k most likely tokens (0: off)."),
    min_p: float = typer.Option(0.0, "--min-p", help="Drop tokens under min_p x the top probability (0: off)."),
    repeat_penalty: float = typer.Option(1.0, "--repeat-penalty", help="Penalize the last 64 tokens (1: off), as llama.cpp's."),
    seed: Optional[int] = typer.Option(None, "--seed", "-s", help="Sampling seed (default: a random one, printed with -v)."),
    ctx: Optional[int] = _CTX,
    threads: Optional[int] = _THREADS,
    knob: Optional[list[str]] = _KNOB,
    ubatch: Optional[str] = UBATCH,
    batch: Optional[str] = BATCH,
    flash: Optional[str] = FLASH,
    image: Optional[list[Path]] = typer.Option(None, "--image", help="An image for the prompt (any format Pillow reads); repeatable. Needs -p."),
    audio: Optional[list[Path]] = typer.Option(None, "--audio", help="An audio clip for the prompt (WAV, FLAC, OGG, MP3; ≤ 30 s); repeatable. Needs -p."),
    mmproj: Optional[Path] = typer.Option(None, "--mmproj", help="The projector file (default: the one the manifest links to the artifact)."),
    image_tokens: int = typer.Option(280, "--image-tokens", help="Soft tokens per image: 70, 140, 280, 560 or 1120 (transformers' budgets)."),
) -> None:
    """Chat with an artifact through its own chat template; timings and peak RSS on stderr at exit.

    `edgekit run ART "Hi"` answers once; `edgekit run ART` opens a chat (/help lists its commands)."""
    import random

    from .measure.bench import parse_knobs
    from .serve.generate import Sampling
    from .repl import Chat, Writer, check_sampling, clean_text, interactive, max_tokens as check_n, read_prompt
    from .serve.session import open_session, peak_rss_bytes

    artifact, prompt_arg = artifact_arg(artifact, model, prompt_arg)
    check_sampling(temperature, top_p, top_k, min_p, repeat_penalty)
    n = check_n(max_tokens)
    text = read_prompt(prompt, prompt_arg, file)
    if image or audio:
        from .serve.media_run import run_cli

        run_cli(artifact, text, image, audio, target=target, system=system, max_tokens=n, think=think,
                   threads=threads, ctx=ctx, mmproj=mmproj, image_tokens=image_tokens,
                   ignored={"--temperature": temperature != 0.0, "--top-p": top_p != 1.0, "--top-k": top_k != 0,
                            "--min-p": min_p != 0.0, "--repeat-penalty": repeat_penalty != 1.0,
                            "--knob/--ubatch/--batch/--flash": bool(knob or ubatch or batch or flash)})
        return
    if mmproj is not None:
        raise ConfigError("--mmproj is for --image/--audio")
    if seed is None:
        seed = random.SystemRandom().randrange(2**32)
        logging.getLogger("edgekit").info("seed %d", seed)
    knobs = parse_knobs(knob_items(knob, ubatch, batch, flash))
    session = open_session(artifact, target=target, threads=threads, ctx=ctx, knobs=knobs,
                           verbose=verbosity(), block=True)
    w = Writer()
    if text is None or verbosity() or Path(artifact).is_dir():
        _picked(session, artifact)
    sampling = Sampling(max_tokens=n, temperature=temperature, seed=seed, top_p=top_p, top_k=top_k,  # type: ignore[arg-type]
                        min_p=min_p, repeat_penalty=repeat_penalty)
    chat = Chat(session, sampling, think, w, system=clean_text(system)[0] if system else None)
    try:
        if text is not None:
            if not chat.reply(text):
                raise typer.Exit(1)
        else:
            interactive(chat, f"edgekit: chatting with {session.path.name}. Type /help for commands; "
                              f"/bye, Ctrl-D or Ctrl-C at an empty prompt to exit; Ctrl-C stops a reply.\n")
    finally:
        session.close()
    st = chat.stats
    if st:
        w.err(f"ttft {st['ttft_ms']:.0f} ms, {st['decode_tps']:.1f} t/s ({st['completion_tokens']} tokens, "
              f"prompt {st['prompt_tokens']}), peak RSS {peak_rss_bytes() / 1e6:.0f} MB"
              + (f", {chat.turns} replies" if chat.turns > 1 else "") + "\n")


@app.command()
def serve(
    artifact: Optional[Path] = _ART,
    model: Optional[Path] = MODEL,
    target: Optional[str] = _TARGET,
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0: every interface; then give --api-key)."),
    port: int = typer.Option(8080, "--port", help="TCP port."),
    parallel: int = typer.Option(1, "--parallel", "-np", min=1, help="Requests generated at once (slots of one context)."),
    queue: int = typer.Option(8, "--queue", min=0, help="Requests that may wait for a slot; beyond it: 503 + Retry-After."),
    ctx: Optional[int] = typer.Option(None, "--ctx", "-c", "--ctx-size", min=1, help="Context per request. Default: the target's, else min(the model's n_ctx_train, 4096)."),
    threads: Optional[int] = _THREADS,
    prefix_cache: Optional[Path] = typer.Option(None, "--prefix-cache", help="File keeping the shared system prefix's KV state across restarts (llama.cpp), keyed by the artifact's sha256."),
    grace: float = typer.Option(30.0, "--grace", help="Seconds in-flight requests may finish after SIGTERM; then they end with finish_reason \"cancelled\"."),
    alias: Optional[str] = typer.Option(None, "--alias", "-a", help="The model id /v1/models lists and replies name (default: the artifact's file name)."),
    strict_model: bool = typer.Option(False, "--strict-model", help="Refuse (404) a request naming another model; by default any name is served, as llama-server does with one model."),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="EDGEKIT_API_KEY", help="Require Authorization: Bearer KEY (or X-Api-Key) on every route but /health."),
    api_key_file: Optional[Path] = typer.Option(None, "--api-key-file", help="Read the key from this file (first line)."),
    allowed_origin: Optional[list[str]] = typer.Option(None, "--allowed-origin", help="A web origin (https://app.example) allowed besides localhost's; repeatable; * allows any."),
    max_body_mb: float = typer.Option(8.0, "--max-body-mb", help="Largest request body (413 beyond)."),
    max_prompt_chars: Optional[int] = typer.Option(None, "--max-prompt-chars", help="Most characters of text a request may hold (default 16 per token of context)."),
    header_timeout: float = typer.Option(10.0, "--header-timeout", help="Seconds a client may take to send its request headers (slowloris guard)."),
    body_timeout: float = typer.Option(30.0, "--body-timeout", help="Seconds a client may take to send its request body (408 beyond)."),
    reuse_port: bool = typer.Option(False, "--reuse-port", hidden=True, help="Share the port with the server being replaced (deploy --serve)."),
    knob: Optional[list[str]] = _KNOB,
    ubatch: Optional[str] = UBATCH,
    batch: Optional[str] = BATCH,
    flash: Optional[str] = FLASH,
) -> None:
    """An OpenAI-compatible API (/v1/chat/completions, /v1/completions, /v1/models, /health) on the target's knobs."""
    from .measure.bench import parse_knobs
    from .serve.guard import Limits, Policy, is_loopback, read_api_key
    from .serve.lifecycle import bind, serve as run_server
    from .serve.session import open_session

    if not (grace >= 0 and grace < float("inf")):
        raise EdgekitError(f"--grace {grace}: give the seconds in-flight requests may finish, 0 or more")
    if not (0 < max_body_mb < float("inf")):
        raise EdgekitError(f"--max-body-mb {max_body_mb}: give a positive size")
    for name, v in (("--header-timeout", header_timeout), ("--body-timeout", body_timeout)):
        if not (0 < v < float("inf")):
            raise EdgekitError(f"{name} {v}: give a positive number of seconds")
    if max_prompt_chars is not None and max_prompt_chars < 1:
        raise EdgekitError(f"--max-prompt-chars {max_prompt_chars}: give a positive count")
    if alias is not None and not alias.strip():
        raise EdgekitError("--alias is empty: give the model id clients will use")
    key = read_api_key(api_key, api_key_file)
    artifact, _ = artifact_arg(artifact, model)
    bind(host, port, reuse_port).close()      # a bad --host/--port or a busy port: one line before the model loads
    policy = Policy(api_key=key, origins=tuple(allowed_origin or ()), loopback_only=is_loopback(host),
                    limits=Limits(max_body=int(max_body_mb * (1 << 20)), header_timeout_s=header_timeout,
                                  body_timeout_s=body_timeout))
    session = open_session(artifact, target=target, threads=threads, ctx=ctx, knobs=parse_knobs(knob_items(knob, ubatch, batch, flash)),
                           slots=parallel, max_queue=queue, prefix_file=prefix_cache, verbose=verbosity(), block=True)
    _picked(session, artifact)
    if alias:
        session.model = alias.strip()
    shown = f"[{host}]" if ":" in host else host

    def announce() -> None:
        typer.echo(f"edgekit: serving {session.model} at http://{shown}:{port}/v1 ({parallel} slot(s), "
                   f"ctx {session.n_ctx}, target {session.target or '-'}{', API key required' if key else ''})", err=True)
        if not policy.loopback_only and not key:
            typer.echo(f"edgekit: warning: listening on {host} without --api-key: anyone who reaches this "
                       "port can use the model", err=True)

    run_server(session, host=host, port=port, grace_s=grace, policy=policy, strict_model=strict_model,
               max_prompt_chars=max_prompt_chars, announce=announce, reuse_port=reuse_port)


@app.command("eval")
def eval_(
    paths: list[Path] = typer.Argument(..., help="Artifacts: .gguf files, MLX folders, or dist folders with manifest.json."),
    reference: Optional[str] = typer.Option(None, "--reference", help="HF checkpoint folder (transformers), an unquantized .gguf / MLX folder, or a reference cache (.npz)."),
    text: Optional[list[Path]] = typer.Option(None, "--text", help="UTF-8 text to score; repeatable. Default: edgekit's held-out Python docs + code."),
    ctx: int = typer.Option(512, "--ctx", "-c", help="Window length in tokens (the second half of each is scored)."),
    chunks: Optional[int] = typer.Option(None, "--chunks", help="At most this many windows per text (default: all)."),
    top_k: Optional[int] = typer.Option(None, "--top-k", help="Reference log-probabilities kept per position (default 1024; KL beyond them is binned, a lower bound)."),
    threads: Optional[int] = typer.Option(None, "--threads", "-t", help="llama.cpp / torch threads (default: this host's cores)."),
    target: Optional[str] = typer.Option(None, "--target", help="Target profile whose \\[runtime] knobs apply. Default: the manifest's."),
    knob: Optional[list[str]] = typer.Option(None, "--set", help="Engine knob over the target's \\[runtime], e.g. --set kv_type=f16."),
    ubatch: Optional[str] = UBATCH,
    batch: Optional[str] = BATCH,
    flash: Optional[str] = FLASH,
    reference_dtype: str = typer.Option("float32", "--reference-dtype", help="transformers reference: float32 or bfloat16."),
    ref_cache: Optional[Path] = typer.Option(None, "--ref-cache", help="Reference cache file to read or write (default: ~/.cache/edgekit/eval/)."),
    suite: Optional[str] = typer.Option(None, "--suite", help="Run a task suite instead of the KL pass: a JSONL file, or a shipped pack (enterprise, example)."),
    max_tokens: int = typer.Option(256, "--max-tokens", "-n", min=1, help="With --suite: generation cap per case."),
    output: str = typer.Option("md", "-o", "--output", help="md, csv, json or jsonl."),
    db: Optional[Path] = typer.Option(None, "--db", help="Results store (default: $EDGEKIT_DB or ~/.local/share/edgekit/results.db)."),
    device: Optional[str] = typer.Option(None, "--device", help="Device name in the records (default: hostname)."),
    no_store: bool = typer.Option(False, "--no-store", help="Do not append the records to the store."),
    force_reference: bool = typer.Option(False, "--force-reference", help="Use a quantized reference, or one of other weights than the artifacts' manifest records, anyway."),
) -> None:
    """Quality of each artifact against a reference: PPL, bits/byte, KL, same top, RMS Δp (or a task suite).
    A lean-vocabulary artifact gets bits and tokens per byte of the whole text beside the reference's."""
    from .measure.bench import parse_knobs
    from .core.errors import ConfigError
    from .results.quality import PRINTERS

    if output not in PRINTERS:
        raise ConfigError(f"unknown output {output!r}; choose one of: {', '.join(PRINTERS)}")
    knob = knob_items(knob, ubatch, batch, flash)
    from .eval.store import stored_after_printing

    if suite is not None:
        from .results.quality import SUITE_PRINTERS
        from .eval.suite import SuiteOptions, load_suite, run_suites

        load_suite(suite)   # a malformed suite fails before the store is opened
        with stored_after_printing(db, "suites", store=not no_store) as keep:
            results = run_suites(paths, suite, SuiteOptions(reference=reference, max_tokens=max_tokens, threads=threads,
                                                            target=target, runtime=parse_knobs(knob or []), device=device))
            keep(results, SUITE_PRINTERS[output])
        return
    if reference is None:
        raise ConfigError("--reference is required for the KL pass: the HF checkpoint or an unquantized artifact")
    from .eval import EvalOptions, evaluate

    # The store is opened and tried before measuring; the records are printed before they are stored.
    with stored_after_printing(db, "quality", store=not no_store) as keep:
        records = evaluate(paths, EvalOptions(reference=reference, texts=text, ctx=ctx, chunks=chunks,
                                              **({} if top_k is None else {"top_k": top_k}), threads=threads, target=target, runtime=parse_knobs(knob or []),
                                              reference_dtype=reference_dtype, ref_cache=ref_cache, device=device,
                                              force_reference=force_reference))
        keep(records, PRINTERS[output])


@app.command()
def report(
    db: Optional[Path] = typer.Option(None, "--db", help="Results store (default: $EDGEKIT_DB or ~/.local/share/edgekit/results.db)."),
    out: Path = typer.Option(Path("report"), "--out", help="Folder for report.md and the PNG plots."),
) -> None:
    """Write a markdown report with plots (decode t/s vs peak RAM, TTFT) from the results store."""
    from .results.report import write_report

    typer.echo(str(write_report(db, out)))


def main() -> None:  # pragma: no cover - console entry point alias
    app()


if __name__ == "__main__":
    app()
