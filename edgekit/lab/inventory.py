"""The lab inventory (targets/lab.toml): which devices exist and how to reach them over SSH.

Plain OpenSSH conventions: ``host`` may be an ``~/.ssh/config`` alias, and anything left unset here
(user, port, identity) falls through to that config. Remote paths starting with ``~/`` are stored
relative to the login directory ('./x'), which is where ssh, scp and rsync all resolve relative paths, so
no remote shell ever has to expand a tilde.
"""

from __future__ import annotations

import math
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import ConfigError
from ..core.fields import shown
from ..core.registry import data_dir
from .ansible_inventory import ansible_hosts

DEFAULT_INVENTORY = Path("targets/lab.toml")
DEFAULT_WORKDIR = "./edgekit"  # i.e. ~/edgekit on the device
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Names make can use as targets without quoting (the Makefile pastes `$*` into a recipe line).
MAKE_SAFE = re.compile(r"^[A-Za-z0-9._+@-]+$")
# A device's settings as the inventory spells them, in the order `edgekit lab list --origin` shows them.
FIELDS = (
    "target",
    "host",
    "user",
    "port",
    "identity",
    "workdir",
    "edgekit",
    "python",
    "connect_timeout",
    "timeout",
    "ssh_options",
    "ssh_config",
    "serve_port",
    "api_key",
)


@dataclass(frozen=True)
class Device:
    name: str
    target: str  # target profile name (targets/*.toml)
    host: str  # host name, address or ~/.ssh/config alias
    user: str | None = None
    port: int | None = None
    identity: str | None = None  # local private key file
    workdir: str = DEFAULT_WORKDIR  # remote; relative = under the login directory
    edgekit: tuple[str, ...] = ()  # remote edgekit command; default: the bootstrap venv's
    python: str = "python3"  # remote interpreter that creates the bootstrap venv
    connect_timeout: int = 10
    timeout: float = 1800.0  # seconds for one remote bench
    ssh_options: tuple[tuple[str, str], ...] = ()
    ssh_config: str | None = None  # local ssh_config file (-F); default: ~/.ssh/config
    serve_port: int | None = None  # the device's `edgekit serve` port (default: --port)
    api_key: str | None = field(default=None, repr=False)  # the key its server wants (lab serve --front)
    # (field, where its value came from) for `edgekit lab list --origin`; not part of the identity.
    origin: tuple[tuple[str, str], ...] = field(default=(), compare=False, hash=False)

    @property
    def venv(self) -> str:
        return join_remote(self.workdir, "venv")

    @property
    def edgekit_cmd(self) -> tuple[str, ...]:
        return self.edgekit or (join_remote(self.venv, "bin", "edgekit"),)

    @property
    def make_safe(self) -> bool:
        return bool(MAKE_SAFE.match(self.name))

    def fields(self) -> list[tuple[str, str, str]]:
        """(field, value as used, where it came from) for every setting, set or defaulted."""
        given = dict(self.origin)
        unset = "unset: ~/.ssh/config or ssh's default"
        out = []
        for key in FIELDS:
            value = shlex.join(self.edgekit_cmd) if key == "edgekit" else getattr(self, key)
            if key == "api_key" and value:
                value = "(set)"  # a secret: say where it comes from, never print it
            if key == "ssh_options":
                value = ", ".join(f"{k}={v}" for k, v in value)
            where = given.get(key) or (unset if value in (None, "") else "edgekit's default")
            out.append((key, "" if value is None else str(value), where))
        return out

    def address(self) -> str:
        where = f"{self.user}@{self.host}" if self.user else self.host
        return f"{where}:{self.port}" if self.port else where


@dataclass
class Inventory:
    path: Path
    devices: dict[str, Device] = field(default_factory=dict)
    kind: str = "toml"  # toml | ansible (an INI or YAML Ansible inventory)

    def get(self, name: str) -> Device:
        try:
            return self.devices[name]
        except KeyError:
            raise ConfigError(
                f"no device {name!r} in {self.path}; choose one of: {', '.join(self.devices) or '(none)'}"
            ) from None

    def select(self, names: list[str] | None) -> list[Device]:
        return [self.get(n) for n in names] if names else list(self.devices.values())


def join_remote(*parts: str) -> str:
    return "/".join(p.rstrip("/") for p in parts if p not in ("", ".")) or "."


def remote_path(value: str, where: str) -> str:
    """Normalise a remote path: '~' and '~/x' become login-relative ('.' and './x').

    The './' keeps '~/edgekit' a path when it is a command (a bare 'edgekit' would be looked up on PATH).
    """
    if not isinstance(value, str) or not value or _CONTROL.search(value):
        raise ConfigError(f"{where}: remote path must be a non-empty string without control characters")
    if value == "~":
        return "."
    if value.startswith("~/"):
        return "./" + value[2:].lstrip("/") if value[2:].strip("/") else "."
    if value.startswith("~"):
        raise ConfigError(f"{where}: '~user' paths are not supported; write the absolute path")
    return value


def _check_text(value: object, what: str, where: str) -> str:
    if not isinstance(value, str) or not value or _CONTROL.search(value):
        raise ConfigError(f"{where}: {what} must be a non-empty string without control characters")
    return value


def _device(name: str, raw: dict, defaults: dict, where: str, origin: tuple = ()) -> Device:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: [devices.{name}] must be a table; see targets/lab.example.toml")
    _check_text(name, "a device name", where)
    if "," in name:
        raise ConfigError(f"{where}: device name {name!r} contains ','; `--devices` splits on commas, rename it")
    merged = {**defaults, **raw}
    unknown = set(merged) - set(FIELDS)
    if unknown:
        raise ConfigError(f"{where}: unknown key {sorted(unknown)[0]!r}; known: {', '.join(sorted(FIELDS))}")
    for key in ("target", "host"):
        if key not in merged:
            raise ConfigError(f"{where}: lacks {key!r}; see targets/lab.example.toml")
    host = _check_text(merged["host"], "host", where)
    user = merged.get("user")
    # A leading '-' would turn the value into an ssh/scp/rsync option; ':' and '@' would re-split it.
    if host.startswith("-") or any(c.isspace() for c in host) or "@" in host or "/" in host:
        raise ConfigError(f"{where}: host {host!r} is not a host name, address or ssh alias")
    if user is not None:
        _check_text(user, "user", where)
        if user.startswith("-") or any(c in user for c in "@:/") or any(c.isspace() for c in user):
            raise ConfigError(f"{where}: user {user!r} is not a login name")
    # TOML's true is not port 1, nor nan or inf a timeout: integers and finite numbers only.
    port, serve_port = merged.get("port"), merged.get("serve_port")
    for key, p in (("port", port), ("serve_port", serve_port)):
        if p is not None and type(p) is not int:
            raise ConfigError(f"{where}: {key} must be an integer 1-65535, not {shown(p)}")
        if p is not None and not 0 < p < 65536:
            raise ConfigError(f"{where}: {key} {p} is out of range 1-65535")
    connect_timeout = merged.get("connect_timeout", 10)
    if type(connect_timeout) is not int or connect_timeout < 1:
        raise ConfigError(
            f"{where}: connect_timeout must be a positive integer of seconds, not {shown(connect_timeout)}"
        )
    timeout = merged.get("timeout", 1800)
    if type(timeout) not in (int, float) or not math.isfinite(timeout) or timeout <= 0:
        raise ConfigError(f"{where}: timeout must be a positive number of seconds, not {shown(timeout)}")
    timeout = float(timeout)
    api_key = merged.get("api_key")
    if api_key is not None and (
        _check_text(api_key, "api_key", where) != api_key.strip() or '"' in api_key or any(c.isspace() for c in api_key)
    ):
        raise ConfigError(f"{where}: api_key must be one word without quotes or blanks")
    edgekit = merged.get("edgekit")
    if edgekit is not None:
        # A list is taken as argv; a string is split the way a shell would split it, locally.
        cmd = list(edgekit) if isinstance(edgekit, list) else shlex.split(_check_text(edgekit, "edgekit", where))
        if not cmd or not all(isinstance(c, str) and c for c in cmd):
            raise ConfigError(f'{where}: edgekit must be a command such as "~/edgekit/venv/bin/edgekit"')
        edgekit = (remote_path(cmd[0], where), *cmd[1:])
    options = merged.get("ssh_options", {})
    if not isinstance(options, dict):
        raise ConfigError(f"{where}: ssh_options must be a table such as {{ ServerAliveInterval = 15 }}")
    identity = merged.get("identity")
    ssh_config = merged.get("ssh_config")
    return Device(
        name=name,
        target=_check_text(merged["target"], "target", where),
        host=host,
        user=user,
        port=port,
        identity=str(Path(_check_text(identity, "identity", where)).expanduser()) if identity else None,
        workdir=remote_path(merged.get("workdir", DEFAULT_WORKDIR), where),
        edgekit=tuple(edgekit or ()),
        python=remote_path(merged.get("python", "python3"), where),
        connect_timeout=connect_timeout,
        timeout=timeout,
        ssh_options=tuple(
            (str(k), ("yes" if v else "no") if isinstance(v, bool) else str(v)) for k, v in options.items()
        ),
        ssh_config=str(Path(_check_text(ssh_config, "ssh_config", where)).expanduser()) if ssh_config else None,
        serve_port=serve_port,
        api_key=api_key,
        origin=origin,
    )


def default_inventory() -> Path:
    """targets/lab.toml in the working directory, else beside the packaged target profiles."""
    return DEFAULT_INVENTORY if DEFAULT_INVENTORY.is_file() else data_dir("targets") / "lab.toml"


def is_ansible(path: Path) -> bool:
    """An Ansible inventory (INI or YAML file, or a folder of them) rather than edgekit's TOML."""
    return path.suffix.lower() != ".toml"


def load_inventory(path: Path | None = None) -> Inventory:
    given = path
    path = Path(path) if path else default_inventory()
    if not path.exists() or (not is_ansible(path) and not path.is_file()):
        # Name the file the user gave or the one looked for first (./targets/lab.toml), never the copy
        # inside the installed package; the example to copy is wherever it really is.
        where = Path(given) if given else DEFAULT_INVENTORY
        example = next(
            (p for p in (Path("targets/lab.example.toml"), data_dir("targets") / "lab.example.toml") if p.is_file()),
            Path("targets/lab.example.toml"),
        )
        raise ConfigError(
            f"{where}: no lab inventory; copy {example} there and list your devices"
            + ("" if given else ", or pass --inventory FILE")
        )
    if is_ansible(path):
        inv = Inventory(path=path, kind="ansible")
        for name, raw, where, origin in ansible_hosts(path):
            inv.devices[name] = _device(name, raw, {}, where, origin)
        return inv
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"{path}: unreadable inventory ({e}); fix the TOML") from None
    defaults = raw.get("defaults", {})
    devices = raw.get("devices", {})
    if not isinstance(defaults, dict) or not isinstance(devices, dict):
        raise ConfigError(f"{path}: [defaults] and [devices.NAME] must be tables; see targets/lab.example.toml")
    inv = Inventory(path=path)
    for name, table in devices.items():
        where = f"{path} [devices.{name!r}]"
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: [devices.{name}] must be a table; see targets/lab.example.toml")
        origin = tuple(
            (k, f"{path} [devices.{name}]" if k in table else f"{path} [defaults]") for k in {**defaults, **table}
        )
        inv.devices[name] = _device(name, table, defaults, where, origin)
    return inv


def device_from_address(
    address: str, target: str, identity: str | None = None, ssh_config: str | None = None, workdir: str | None = None
) -> Device:
    """One device from `deploy --host user@host[:port]` (IPv6 as [addr]:port), checked as an inventory
    entry is; the rest falls through to ssh's own config, as with `ssh user@host`."""
    where = f"--host {address!r}"
    user, _, rest = address.rpartition("@")
    host, port = rest, None
    if rest.startswith("["):  # [2001:db8::1]:22
        host, _, tail = rest[1:].partition("]")
        if tail:
            if not tail.startswith(":"):
                raise ConfigError(f"{where}: use user@host, user@host:port or user@[v6 address]:port")
            port = tail[1:]
    elif rest.count(":") == 1:
        host, port = rest.split(":")
    table: dict = {"target": target, "host": host}
    if user:
        table["user"] = user
    if port is not None:
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"{where}: port {port!r} is not a TCP port (1-65535)")
        table["port"] = int(port)
    for key, value in (("identity", identity), ("ssh_config", ssh_config), ("workdir", workdir)):
        if value is not None:
            table[key] = str(value)
    return _device(address, table, {}, where)
