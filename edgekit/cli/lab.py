"""`edgekit deploy` and `edgekit lab` (list, run, serve): devices over SSH or Ansible."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..core.errors import ConfigError, EdgekitError
from .app import app
from .options import FORKS, INVENTORY, METHOD, VIA, csv_values

lab_app = typer.Typer(
    no_args_is_help=True,
    help=(
        "Deploy to and bench on the devices of a lab inventory (TOML, or an Ansible INI/YAML inventory) over SSH or "
        "Ansible."
    ),
)
app.add_typer(lab_app, name="lab")


@app.command()
def deploy(
    dist: Path = typer.Argument(..., help="A build folder, or dist/<model> holding one folder per target."),
    device: Optional[list[str]] = typer.Option(None, "--device", help="Device name from the inventory; repeatable."),
    inventory: Optional[Path] = INVENTORY,
    host: Optional[str] = typer.Option(
        None, "--host", help="One device without an inventory: user@host[:port] (ssh's config supplies the rest)."
    ),
    target: Optional[str] = typer.Option(
        None, "--target", help="With --host: the device's target profile (default: the build folder's)."
    ),
    identity: Optional[Path] = typer.Option(None, "--identity", help="With --host: private key file (ssh -i)."),
    ssh_config: Optional[Path] = typer.Option(None, "--ssh-config", help="With --host: ssh config file (ssh -F)."),
    workdir: Optional[str] = typer.Option(None, "--workdir", help="With --host: remote work dir (default ~/edgekit)."),
    bootstrap: bool = typer.Option(
        False, "--bootstrap", help="Also make a venv there with edgekit[runtime] (no torch)."
    ),
    wheel: Optional[Path] = typer.Option(
        None, "--wheel", help="edgekit wheel for --bootstrap (default: built from this checkout)."
    ),
    method: str = METHOD,
    serve: bool = typer.Option(
        False,
        "--serve",
        help=(
            "Then run `edgekit serve` there (systemd user unit; nohup fallback; launchd on macOS) and wait for /health."
        ),
    ),
    serve_host: str = typer.Option(
        "127.0.0.1",
        "--serve-host",
        help=(
            "Address the device's server listens on (default: its loopback only; 0.0.0.0 needs --api-key-file or "
            "--insecure)."
        ),
    ),
    serve_key: Optional[Path] = typer.Option(
        None, "--api-key-file", help="With --serve: the key clients must send, copied to the device (mode 600)."
    ),
    insecure: bool = typer.Option(
        False, "--insecure", help="With --serve: allow a non-loopback bind without an API key."
    ),
    port: int = typer.Option(8080, "--port", help="The device server's port."),
    parallel: int = typer.Option(1, "--parallel", min=1, help="The device server's slots."),
    via: str = VIA,
) -> None:
    """Copy a build to devices: only files whose sha256 differs, verified on the device, manifest last."""
    # deferred: the command's library loads when it runs, so --help stays fast (docs/design-notes.md)
    from ..lab.run import deploy_devices
    from ..serve.guard import is_loopback, read_api_key

    key = read_api_key(None, serve_key) if serve else None
    if serve and not serve_host:
        raise EdgekitError(
            "--serve-host is empty: give an address (127.0.0.1: the device only; 0.0.0.0: every interface)"
        )
    if serve and not is_loopback(serve_host) and not key and not insecure:
        raise EdgekitError(
            f"--serve-host {serve_host} lets anyone on that network use the model: give "
            "--api-key-file FILE, or --insecure to serve it without a key"
        )
    devices = _deploy_devices(dist, device, inventory, host, target, identity, ssh_config, workdir)
    if _via(via) == "ansible":
        # deferred: the command's library loads when it runs, so --help stays fast (docs/design-notes.md)
        from ..lab.ansible_run import ansible_run
        from ..lab.inventory import Inventory, load_inventory

        lab = load_inventory(inventory) if host is None else Inventory(Path(host), {d.name: d for d in devices})
        outcomes = ansible_run(
            dist,
            lab,
            devices,
            [],
            bootstrap=bootstrap,
            wheel=wheel,
            serve=serve,
            serve_host=serve_host,
            port=port,
            serve_args=["--parallel", str(parallel)],
            bench=False,
            on_outcome=lambda o: typer.echo(o.message if o.ok else f"edgekit: error: {o.message}", err=not o.ok),
        )
        raise typer.Exit(0 if all(o.ok for o in outcomes) else 1)
    failed = False
    for line, ok in deploy_devices(dist, devices, bootstrap=bootstrap, wheel=wheel, method=method):
        typer.echo(line if ok else f"edgekit: error: {line}", err=not ok)
        failed |= not ok
    if serve and not failed:
        # deferred: the command's library loads when it runs, so --help stays fast (docs/design-notes.md)
        from ..lab.serve import deploy_served

        for d in devices:
            try:
                s = deploy_served(
                    dist,
                    d,
                    host=serve_host,
                    port=d.serve_port or port,
                    serve_args=["--parallel", str(parallel)],
                    method=method,
                    api_key=key,
                )
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
    # deferred: the command's library loads when it runs, so --help stays fast (docs/design-notes.md)
    from ..lab.inventory import device_from_address, load_inventory

    if host is None:
        if not device:
            raise ConfigError("name the devices: --device NAME (from the inventory) or --host user@host[:port]")
        if target or identity or ssh_config or workdir:
            raise ConfigError(
                "--target, --identity, --ssh-config and --workdir go with --host (an inventory device has its own)"
            )
        return load_inventory(inventory).select(device)
    if device or inventory:
        raise ConfigError("--host names one device without an inventory; drop --device/--inventory, or use them alone")
    if target is None:
        # deferred: the command's library loads when it runs, so --help stays fast (docs/design-notes.md)
        from ..builder.manifest import MANIFEST, read_manifest

        if not (Path(dist) / MANIFEST).is_file():
            raise ConfigError(f"{dist}: not a build folder; with --host pass --target (the device's profile)")
        target = read_manifest(Path(dist)).target
    return [
        device_from_address(
            host,
            target,
            identity=str(identity) if identity else None,
            ssh_config=str(ssh_config) if ssh_config else None,
            workdir=workdir,
        )
    ]


@lab_app.command("list")
def lab_list(
    inventory: Optional[Path] = INVENTORY,
    names: bool = typer.Option(False, "--names", help="Names only, for make: names make cannot quote are left out."),
    origin: bool = typer.Option(
        False, "--origin", help="Also show where each field came from (file, [defaults], group or host var)."
    ),
) -> None:
    """List the inventory's devices: name, target, ssh address, remote work dir."""
    # deferred: the command's library loads when it runs, so --help stays fast (docs/design-notes.md)
    from ..lab.inventory import load_inventory

    for d in load_inventory(inventory).devices.values():
        if not names:
            typer.echo(f"{d.name}\t{d.target}\t{d.address()}\t{d.workdir}")
            if origin:
                for key, value, where in d.fields():
                    typer.echo(f"  {key} = {value}\t({where})")
        elif d.make_safe:
            typer.echo(d.name)
        else:
            typer.echo(
                f"edgekit: note: `make lab` skips device {d.name!r} (make cannot quote its name); "
                f"run it with `edgekit lab run --devices`",
                err=True,
            )


@lab_app.command("run", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def lab_run(
    ctx: typer.Context,
    dist: Path = typer.Argument(Path("dist"), help="dist, dist/<model> (a build per target) or one build folder."),
    devices: Optional[str] = typer.Option(None, "--devices", help="Comma-separated device names (default: all)."),
    inventory: Optional[Path] = INVENTORY,
    db: Optional[Path] = typer.Option(
        None, "--db", help="Results store (default: $EDGEKIT_DB or ~/.local/share/edgekit/results.db)."
    ),
    no_deploy: bool = typer.Option(False, "--no-deploy", help="Bench what the devices already hold."),
    method: str = METHOD,
    served: bool = typer.Option(
        False,
        "--served",
        help=(
            "Bench each device's `edgekit serve` endpoint as an HTTP client sees it (deployed and started here; with "
            "--no-deploy the one already running), instead of `edgekit bench`: takes -p, -n, -r; records say "
            "via served."
        ),
    ),
    port: int = typer.Option(8080, "--port", help="With --served: the device servers' port."),
    via: str = VIA,
    forks: int = FORKS,
) -> None:
    """Deploy, then bench on every device in parallel; each device's records go to the local store.

    Other options (after DIST, or after `--`), e.g. `--reps 3`, are passed to `edgekit bench` on the devices.
    """
    # deferred: the command's library loads when it runs, so --help stays fast (docs/design-notes.md)
    from ..lab.inventory import load_inventory
    from ..lab.run import exit_code
    from ..lab.run import lab_run as run
    from ..results import Store

    lab = load_inventory(inventory)
    chosen = lab.select(csv_values(devices))
    kw = {}
    if served and _via(via) == "ansible":
        raise ConfigError("--served runs over edgekit's SSH path only; drop --via ansible")
    if served:
        # deferred: the command's library loads when it runs, so --help stays fast (docs/design-notes.md)
        from ..lab.serve import lab_run_served as run

        kw = {"port": port}
    elif _via(via) == "ansible":
        # deferred: the command's library loads when it runs, so --help stays fast (docs/design-notes.md)
        from ..lab.ansible_run import ansible_run

        def run(dist, chosen, args, parallel, **k):
            k.pop("method")
            return ansible_run(dist, lab, chosen, args, forks=parallel, **k)

    with Store(db) as store:

        def show(o):
            typer.echo(o.message if o.ok else f"edgekit: error: {o.message}", err=not o.ok)

        outcomes = run(
            dist,
            chosen,
            list(ctx.args),
            store=store,
            push=not no_deploy,
            method=method,
            on_outcome=show,
            parallel=forks,
            **kw,
        )
        stored = sum(len(o.records) for o in outcomes)
        typer.echo(f"{stored} record(s) from {sum(o.ok for o in outcomes)}/{len(outcomes)} device(s) in {store.path}")
    raise typer.Exit(exit_code(outcomes))


@lab_app.command("serve")
def lab_serve(
    dist: Path = typer.Argument(Path("dist"), help="dist, dist/<model> (a build per target) or one build folder."),
    devices: Optional[str] = typer.Option(None, "--devices", help="Comma-separated device names (default: all)."),
    inventory: Optional[Path] = INVENTORY,
    front: bool = typer.Option(
        False,
        "--front",
        help=(
            "Put HAProxy in front of the devices' servers (health checks on /health, retries on another device) and "
            "run it until Ctrl-C."
        ),
    ),
    front_host: str = typer.Option("127.0.0.1", "--front-host", help="Address the front listens on."),
    front_port: int = typer.Option(8000, "--front-port", help="The front's port."),
    front_key: Optional[str] = typer.Option(
        None, "--front-key", envvar="EDGEKIT_FRONT_KEY", help="API key clients must send to the front (Bearer)."
    ),
    config: Optional[Path] = typer.Option(
        None, "--config", help="Where to write haproxy.cfg (default: ~/.cache/edgekit/front/haproxy.cfg)."
    ),
    config_only: bool = typer.Option(
        False, "--config-only", help="Write and check the configuration, run nothing (for a system haproxy)."
    ),
    no_deploy: bool = typer.Option(
        False, "--no-deploy", help="The devices' servers are already running: only put the front before them."
    ),
    port: int = typer.Option(
        8080, "--port", help="The devices' server port (an inventory serve_port / edgekit_serve_port wins)."
    ),
    serve_host: str = typer.Option(
        "0.0.0.0", "--serve-host", help="Address the devices' servers listen on (the front reaches them there)."
    ),
    insecure: bool = typer.Option(
        False, "--insecure", help="Allow devices without an api_key on a non-loopback --serve-host."
    ),
    parallel: int = typer.Option(1, "--parallel", min=1, help="Each device server's slots."),
    via: str = VIA,
    method: str = METHOD,
    forks: int = FORKS,
) -> None:
    """Start `edgekit serve` on every device (deployed first, sha256-checked), optionally behind a load balancer."""
    # deferred: the command's library loads when it runs, so --help stays fast (docs/design-notes.md)
    from ..lab.front import run_front, start_devices
    from ..lab.inventory import load_inventory

    lab = load_inventory(inventory)
    chosen = lab.select(csv_values(devices))
    if (no_deploy or config_only or config or front_key) and not front:
        raise ConfigError("--no-deploy, --config, --config-only and --front-key only make sense with --front")
    failed = 0
    if not no_deploy and not config_only:
        # deferred: the command's library loads when it runs, so --help stays fast (docs/design-notes.md)
        from ..serve.guard import is_loopback

        open_ = [d.name for d in chosen if not d.api_key]
        if open_ and not is_loopback(serve_host) and not insecure:
            raise ConfigError(
                f"--serve-host {serve_host} would let anyone on that network use {', '.join(open_)}: "
                f"give each device an api_key (edgekit_api_key), or pass --insecure"
            )
        for _, ok, line in start_devices(
            dist,
            lab,
            chosen,
            via=_via(via),
            port=port,
            serve_host=serve_host,
            serve_args=["--parallel", str(parallel)],
            method=method,
            forks=forks,
        ):
            typer.echo(line if ok else f"edgekit: error: {line}", err=not ok)
            failed += not ok
    if not front:
        raise typer.Exit(1 if failed else 0)
    run_front(
        chosen,
        port=port,
        host=front_host,
        front_port=front_port,
        front_key=front_key,
        config=config,
        config_only=config_only,
        echo=typer.echo,
    )
