"""An Ansible inventory (INI or YAML: all, children, hosts, host and group vars) as a lab inventory.

Parsed by Ansible's own code (InventoryManager + DataLoader, ansible-core from the `fleet` extra), so
groups, ranges like ``pi[01:20]``, ``group_vars/`` and ``host_vars/`` beside the file mean what they
mean to ``ansible-playbook``. Each host becomes a device's fields (edgekit.lab.inventory checks them):
``edgekit_target`` names its target profile,
Ansible's connection vars are honoured (ansible_host, ansible_user, ansible_port,
ansible_ssh_private_key_file, ``-o`` options in ansible_ssh_common_args), and every field remembers
which file, group or host gave it (``edgekit lab list --origin``).
"""

from __future__ import annotations

import shlex
import threading
from pathlib import Path
from typing import Any

from ..core.errors import ConfigError

# Ansible var -> the TOML field it fills (first listed wins when both are set).
FIELDS = {
    "edgekit_target": "target",
    "ansible_host": "host",
    "ansible_user": "user",
    "ansible_port": "port",
    "ansible_ssh_private_key_file": "identity",
    "edgekit_workdir": "workdir",
    "edgekit_command": "edgekit",
    "edgekit_python": "python",
    "ansible_python_interpreter": "python",
    "ansible_ssh_timeout": "connect_timeout",
    "edgekit_timeout": "timeout",
    "edgekit_ssh_options": "ssh_options",
    "edgekit_serve_port": "serve_port",
    "edgekit_api_key": "api_key",
}
SSH_ARGS = ("ansible_ssh_common_args", "ansible_ssh_extra_args")
# Connection settings edgekit's own SSH path cannot apply: refused rather than silently ignored.
REFUSED = {
    "ansible_password": "a password (edgekit's SSH runs in BatchMode: use a key)",
    "ansible_ssh_pass": "a password (edgekit's SSH runs in BatchMode: use a key)",
    "ansible_ssh_password": "a password (edgekit's SSH runs in BatchMode: use a key)",
}
_LOCK = threading.Lock()
_SUFFIX_PLUGIN = {".yml": "yaml", ".yaml": "yaml", ".json": "yaml"}


def _ansible():
    try:
        # deferred: ansible-core (the fleet extra) loads only for an Ansible inventory
        import ansible.constants as C
        from ansible.inventory import manager
        from ansible.inventory.helpers import sort_groups
        from ansible.parsing.dataloader import DataLoader
    except ImportError:
        raise ConfigError("reading an Ansible inventory needs ansible-core: pip install 'edgekit[fleet]'") from None
    return C, manager, sort_groups, DataLoader


class _Failures:
    """Stands in for ansible.inventory.manager's Display while we parse: keeps the plugin's reason
    (Ansible prints it as a multi-line warning) so the user gets it as one line."""

    def __init__(self, real):
        self.real, self.reasons = real, []

    def error_as_warning(self, msg=None, exception=None, **kw):
        self.reasons.append(str(exception or msg))

    def warning(self, msg, *a, **kw):
        self.reasons.append(str(msg))

    def __getattr__(self, name):
        return getattr(self.real, name)


def _one_line(text: str) -> str:
    return next((ln.strip() for ln in str(text).splitlines() if ln.strip()), "no message")


def _parse(path: Path):
    C, manager, _, DataLoader = _ansible()
    loader = DataLoader()
    plugin = "yaml" if path.is_file() and path.suffix.lower() in _SUFFIX_PLUGIN else "ini" if path.is_file() else None
    with _LOCK:  # Ansible's settings are module globals: set them for this parse only
        saved = (
            C.INVENTORY_ENABLED,
            C.INVENTORY_ANY_UNPARSED_IS_FAILED,
            C.INVENTORY_UNPARSED_IS_FAILED,
            manager.display,
        )
        # Never the script plugin (it would execute the file) nor Ansible's own toml one (ours is the TOML).
        C.INVENTORY_ENABLED = [plugin] if plugin else ["yaml", "ini"]
        C.INVENTORY_ANY_UNPARSED_IS_FAILED = C.INVENTORY_UNPARSED_IS_FAILED = True
        manager.display = rec = _Failures(manager.display)
        try:
            return loader, manager.InventoryManager(loader=loader, sources=[str(path)])
        except Exception as e:  # AnsibleError, or anything a plugin raised on malformed input
            why = next((r for r in rec.reasons if not r.startswith("Unable to parse")), None) or str(e)
            why = _one_line(why).removeprefix("Failed to parse inventory: ")
            raise ConfigError(
                f"{path}: unreadable Ansible inventory ({why}); fix the "
                f"{'YAML' if plugin == 'yaml' else 'INI' if plugin else 'inventory'}"
            ) from None
        finally:
            C.INVENTORY_ENABLED, C.INVENTORY_ANY_UNPARSED_IS_FAILED, C.INVENTORY_UNPARSED_IS_FAILED, manager.display = (
                saved
            )


def _var_files(loader, folder: Path, name: str) -> list[tuple[Path, dict]]:
    """group_vars/NAME or host_vars/NAME beside the inventory: a file (no suffix, .yml, .yaml, .json)
    or a folder of them, as Ansible's host_group_vars plugin reads them."""
    out = []
    cands = [folder / (name + s) for s in ("", ".yml", ".yaml", ".json")]
    for c in cands:
        files = sorted(p for p in c.iterdir() if p.is_file()) if c.is_dir() else [c] if c.is_file() else []
        for f in files:
            data = loader.load_from_file(str(f))
            if data is not None and not isinstance(data, dict):
                raise ConfigError(f"{f}: must be a mapping of variables")
            out.append((f, dict(data or {})))
    return out


def _layers(loader, inv_dir: Path, host, sort_groups, source: str) -> list[tuple[str, dict]]:
    """(where, vars) from lowest to highest precedence, as Ansible orders them: inventory group vars
    (all first, then by depth), group_vars/all, other group_vars/, inventory host vars, host_vars/."""
    groups = sort_groups(host.get_groups())
    layers = [(f"group {g.name!r} in {source}", g.get_vars()) for g in groups]
    for g in groups:
        layers += [(f"group {g.name!r} in {f}", d) for f, d in _var_files(loader, inv_dir / "group_vars", g.name)]
    layers.append((f"host {host.name!r} in {source}", host.get_vars()))
    layers += [(f"host {host.name!r} in {f}", d) for f, d in _var_files(loader, inv_dir / "host_vars", host.name)]
    return layers


def _ssh_args(value: Any, where: str) -> tuple[dict, str | None]:
    """ssh options and -F file out of ansible_ssh_common_args / ansible_ssh_extra_args."""
    words = shlex.split(value) if isinstance(value, str) else list(value or [])
    opts, config, i = {}, None, 0
    while i < len(words):
        w = words[i]
        flag, rest = w[:2], w[2:]
        if flag in ("-o", "-F", "-J") and not rest:
            if i + 1 >= len(words):
                raise ConfigError(f"{where}: {w} without a value in ansible_ssh_common_args")
            i += 1
            rest = words[i]
        if flag == "-o":
            key, sep, val = rest.partition("=")
            if not sep:
                key, _, val = rest.partition(" ")
            opts[key.strip()] = val.strip()
        elif flag == "-F":
            config = rest
        elif flag == "-J":
            opts["ProxyJump"] = rest
        else:
            raise ConfigError(
                f"{where}: edgekit's SSH path cannot apply {w!r} from ansible_ssh_common_args; "
                f"use -o Key=Value, or put it in ~/.ssh/config"
            )
        i += 1
    return opts, config


def _template(loader, value: Any, variables: dict) -> Any:
    if isinstance(value, str) and "{{" in value:
        # deferred: ansible-core, as _ansible() above
        from ansible.template import Templar

        try:
            return Templar(loader=loader, variables=variables).template(value)
        except Exception as e:
            raise ConfigError(f"cannot expand {value!r}: {_one_line(e)}") from None
    return value


NUMBERS = ("port", "serve_port", "connect_timeout", "timeout")


def _number(text: str) -> Any:
    """A numeric var written as text (``ansible_port="2222"``) as a number; anything else unchanged,
    for the inventory's own one-line type error."""
    if text.isdigit():
        return int(text)
    try:
        return float(text)
    except ValueError:
        return text


def ansible_hosts(path: Path) -> list[tuple[str, dict[str, Any], str, tuple[tuple[str, str], ...]]]:
    """(host name, fields as the TOML inventory names them, where, (field, origin) pairs) per host."""
    _, _, sort_groups, _ = _ansible()
    path = Path(path)
    loader, im = _parse(path)
    hosts = []
    inv_dir = path if path.is_dir() else path.parent
    for host in im.get_hosts():
        where = f"{path} host {host.name!r}"
        merged: dict[str, Any] = {}
        origin: dict[str, str] = {}
        for label, layer in _layers(loader, inv_dir, host, sort_groups, str(path)):
            for k, v in layer.items():
                merged[k], origin[k] = v, label
        variables = {**merged, "inventory_hostname": host.name, "inventory_hostname_short": host.name.split(".")[0]}
        for var, why in REFUSED.items():
            if var in merged:
                raise ConfigError(f"{where}: {var} gives {why}; use ansible_ssh_private_key_file")
        conn = merged.get("ansible_connection", "ssh")
        if conn not in ("ssh", "smart"):
            raise ConfigError(f"{where}: ansible_connection={conn} is not supported; edgekit reaches devices over ssh")
        if "edgekit_target" not in merged:
            raise ConfigError(
                f"{where}: no edgekit_target; set it as a host or group var (e.g. edgekit_target=pi5 "
                f"under [GROUP:vars]) to name the device's target profile"
            )
        raw: dict[str, Any] = {}
        fields_origin: dict[str, str] = {}
        for var, field_name in FIELDS.items():
            if var in merged and field_name not in raw:
                raw[field_name] = _template(loader, merged[var], variables)
                fields_origin[field_name] = f"{var} from {origin[var]}"
        for name in NUMBERS:  # Ansible's own int and float subclasses, or text (INI group vars, templates)
            v = raw.get(name)
            if isinstance(v, str):
                raw[name] = _number(v.strip())
            elif isinstance(v, (int, float)) and not isinstance(v, bool):
                raw[name] = int(v) if isinstance(v, int) else float(v)
        if "host" not in raw:
            raw["host"], fields_origin["host"] = host.name, "the inventory host name"
        options = dict(raw.get("ssh_options") or {})
        for var in SSH_ARGS:
            if merged.get(var):
                opts, config = _ssh_args(_template(loader, merged[var], variables), where)
                options.update(opts)
                if opts:
                    fields_origin["ssh_options"] = f"{var} from {origin[var]}"
                if config:
                    raw["ssh_config"], fields_origin["ssh_config"] = config, f"{var} from {origin[var]}"
        if options:
            raw["ssh_options"] = options
        hosts.append((host.name, raw, where, tuple(fields_origin.items())))
    if not hosts:
        raise ConfigError(f"{path}: the Ansible inventory lists no hosts")
    return hosts
