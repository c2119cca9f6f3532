"""Lab inventory parsing, the ssh argument lists built from it, `edgekit lab list`, and the Makefile fan-out."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgekit.cli import app
from edgekit.core.errors import ConfigError
from edgekit.lab import ssh
from edgekit.lab.inventory import load_inventory

REPO = Path(__file__).resolve().parent.parent

INVENTORY = """
[defaults]
user = "pi"
workdir = "~/edgekit"
timeout = 900

[devices.kitchen]
target = "pi5"
host = "kitchen.local"

[devices."mac b"]
target = "m1"
host = "macbook"             # an ~/.ssh/config alias: nothing else set
user = "jane"
workdir = "/Users/Jane Doe/ek"
edgekit = "~/venvs/ek/bin/python -m edgekit"
identity = "~/.ssh/id lab"
ssh_options = { ServerAliveInterval = 15, ForwardAgent = false, ProxyJump = "bastion -p 2" }

[devices.home]
target = "pi5"
host = "10.0.0.7"
port = 2222
workdir = "~"
"""


@pytest.fixture
def inv(tmp_path):
    p = tmp_path / "lab.toml"
    p.write_text(INVENTORY)
    return p


def test_inventory_fields_defaults_and_remote_paths(inv):
    lab = load_inventory(inv)
    assert list(lab.devices) == ["kitchen", "mac b", "home"]
    k, m, h = (lab.get(n) for n in ("kitchen", "mac b", "home"))
    assert (k.user, k.port, k.timeout, k.workdir, k.identity) == ("pi", None, 900.0, "./edgekit", None)
    assert k.edgekit_cmd == ("./edgekit/venv/bin/edgekit",)  # the --bootstrap venv, login-relative
    assert (m.user, m.workdir, m.venv) == ("jane", "/Users/Jane Doe/ek", "/Users/Jane Doe/ek/venv")
    assert m.edgekit_cmd == ("./venvs/ek/bin/python", "-m", "edgekit")
    assert m.identity == str(Path("~/.ssh/id lab").expanduser())
    assert m.ssh_options == (("ServerAliveInterval", "15"), ("ForwardAgent", "no"), ("ProxyJump", "bastion -p 2"))
    assert (h.port, h.workdir, h.venv) == (2222, ".", "venv")
    assert [d.name for d in lab.select(["home", "kitchen"])] == ["home", "kitchen"]


def test_ssh_argv_checks_host_keys_and_quotes_once(inv):
    m = load_inventory(inv).get("mac b")
    argv = ssh.ssh_argv(m, ["ls", "-l", "a b;$(touch x)"])
    assert argv[:1] == ["ssh"] and argv[-3:] == ["--", "macbook", "ls -l 'a b;$(touch x)'"]
    opts = argv[1:-3]
    pairs = [opts[i + 1] for i, o in enumerate(opts) if o == "-o"]
    assert "BatchMode=yes" in pairs and "ConnectTimeout=10" in pairs and "IdentitiesOnly=yes" in pairs
    assert "User=jane" in pairs and 'ProxyJump="bastion -p 2"' in pairs
    assert not any(p.lower().startswith("stricthostkeychecking") for p in pairs)  # the user's setting stands
    assert opts[opts.index("-i") + 1] == m.identity
    # The remote shell sees exactly the words we meant.
    assert shlex.split(argv[-1]) == ["ls", "-l", "a b;$(touch x)"]
    # rsync -e: split by rsync's own rules (quotes, no backslashes), which shlex.join's output follows.
    assert shlex.split(ssh.rsync_shell(m)) == ["ssh", *opts]
    assert ssh.remote_spec(load_inventory(inv).get("home"), "d/") == "10.0.0.7:d/"


@pytest.mark.parametrize(
    "table, message",
    [
        ('[devices.a]\ntarget = "pi5"\n', "lacks 'host'; see targets/lab.example.toml"),
        ('[devices.a]\ntarget = "pi5"\nhost = "h"\ncolour = "red"\n', "unknown key 'colour'; known: "),
        ('[devices.a]\ntarget = "pi5"\nhost = "h"\nport = 70000\n', "port 70000 is out of range 1-65535"),
        (
            '[devices.a]\ntarget = "pi5"\nhost = "h"\nport = "ssh"\n',
            "port must be an integer 1-65535, not the string 'ssh'",
        ),
        (
            '[devices."a,b"]\ntarget = "pi5"\nhost = "h"\n',
            "device name 'a,b' contains ','; `--devices` splits on commas",
        ),
        (
            '[devices.a]\ntarget = "pi5"\nhost = "h"\nuser = "-oProxyCommand=x"\n',
            "user '-oProxyCommand=x' is not a login name",
        ),
        ('[devices.a]\ntarget = "pi5"\nhost = "me@h"\n', "host 'me@h' is not a host name, address or ssh alias"),
        ('[devices.a]\ntarget = "pi5"\nhost = "h"\nworkdir = "~bob/x"\n', "'~user' paths are not supported"),
        ('[devices.a]\ntarget = "pi5"\nhost = "h"\nssh_options = "x"\n', "ssh_options must be a table"),
        ("[devices.a\n", "unreadable inventory"),
    ],
)
def test_bad_inventories_are_one_line_config_errors(tmp_path, table, message):
    p = tmp_path / "lab.toml"
    p.write_text(table)
    with pytest.raises(ConfigError) as e:
        load_inventory(p)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_lab_list_and_unknown_devices(inv, tmp_path):
    runner = CliRunner()
    r = runner.invoke(app, ["lab", "list", "--inventory", str(inv)])
    assert r.exit_code == 0
    assert r.stdout == (
        "kitchen\tpi5\tpi@kitchen.local\t./edgekit\n"
        "mac b\tm1\tjane@macbook\t/Users/Jane Doe/ek\n"
        "home\tpi5\tpi@10.0.0.7:2222\t.\n"
    )
    r = runner.invoke(app, ["lab", "list", "--names", "--inventory", str(inv)])
    assert (r.exit_code, r.stdout) == (0, "kitchen\nhome\n")
    assert r.stderr == (
        "edgekit: note: `make lab` skips device 'mac b' (make cannot quote its name); "
        "run it with `edgekit lab run --devices`\n"
    )
    r = runner.invoke(app, ["lab", "run", "--devices", "attic", "--inventory", str(inv)])
    assert r.exit_code == 1
    assert r.stderr == f"edgekit: error: no device 'attic' in {inv}; choose one of: kitchen, mac b, home\n"
    r = runner.invoke(app, ["lab", "list", "--inventory", str(tmp_path / "none.toml")])
    assert r.stderr == (
        f"edgekit: error: {tmp_path / 'none.toml'}: no lab inventory; copy targets/lab.example.toml "
        f"there and list your devices\n"
    )


def test_example_inventory_parses():
    lab = load_inventory(REPO / "targets" / "lab.example.toml")
    assert lab.devices and all(d.target == "pi5" for d in lab.devices.values())


@pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")
def test_make_lab_runs_one_job_per_device(inv):
    bin_dir = str(Path(sys.executable).parent)
    p = subprocess.run(
        ["make", "-n", "-s", "--no-print-directory", "lab-all", f"LAB={inv}", f"BIN={bin_dir}", "LAB_DIST=dist/tiny"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.split("\n")[:-1] == [
        f"{bin_dir}/edgekit lab run dist/tiny --inventory {inv} --devices {name} " for name in ("kitchen", "home")
    ]
