"""Fleets on Ansible: INI and YAML inventories parsed by ansible-core (fields and where they came from,
one-line errors), and the shipped playbook run by `edgekit lab run --via ansible` against three real
sshd "devices" on loopback ports, one of them behind a link that corrupts files in transit, plus a
device that is down and a key that is refused."""

from __future__ import annotations

import json
import socket
import sys
import urllib.request
from pathlib import Path

import psutil
import pytest
from serve_fixture import free_port
from sshd_fixture import assert_no_masters, closed_port, start_sshd, stop_sshd  # noqa: F401  (closed_port: a fixture)
from typer.testing import CliRunner

from edgekit.builder.manifest import MANIFEST, read_manifest
from edgekit.cli import app
from edgekit.core.errors import ConfigError
from edgekit.lab.inventory import load_inventory
from edgekit.results import Store

pytest.importorskip("ansible_runner")
pytestmark = pytest.mark.ansible
REPO = Path(__file__).resolve().parent.parent
EDGEKIT = str(Path(sys.executable).with_name("edgekit"))
CORRUPT = f"{sys.executable} {REPO / 'tests' / 'corrupt_sftp.py'} /usr/lib/openssh/sftp-server"

INI = """
[kitchen]
pi-a ansible_host=10.0.0.5 ansible_port=2222 edgekit_target=pi5-lean
pi-b

[attic]
pi-[01:02].lan ansible_user=ops

[pis:children]
kitchen
attic

[pis:vars]
edgekit_target=pi5
ansible_user=pi
ansible_ssh_common_args='-o ServerAliveInterval=15 -J bastion'
"""

YAML = """
all:
  vars:
    edgekit_workdir: ~/ek
  children:
    pis:
      vars: {edgekit_target: pi5, ansible_user: pi}
      hosts:
        pi-a: {ansible_host: 10.0.0.5, ansible_port: 2222, edgekit_serve_port: 9001}
        pi-b:
"""


def test_ini_and_yaml_inventories_with_group_and_host_vars(tmp_path):
    (tmp_path / "group_vars").mkdir()
    (tmp_path / "group_vars" / "kitchen.yml").write_text("ansible_ssh_private_key_file: ~/.ssh/id_lab\n")
    ini = tmp_path / "hosts.ini"
    ini.write_text(INI)
    lab = load_inventory(ini)
    assert lab.kind == "ansible" and sorted(lab.devices) == ["pi-01.lan", "pi-02.lan", "pi-a", "pi-b"]
    a, b, one = lab.get("pi-a"), lab.get("pi-b"), lab.get("pi-01.lan")
    assert (a.target, a.host, a.port, a.user) == ("pi5-lean", "10.0.0.5", 2222, "pi")  # a host var beats the group's
    assert (b.target, b.host, b.port) == ("pi5", "pi-b", None)  # no ansible_host: its name
    assert a.identity == str(Path("~/.ssh/id_lab").expanduser()) and one.identity is None
    assert one.user == "ops" and one.ssh_options == (("ServerAliveInterval", "15"), ("ProxyJump", "bastion"))
    origin = dict(a.origin)
    assert origin["target"] == f"edgekit_target from host 'pi-a' in {ini}"
    assert origin["user"] == f"ansible_user from group 'pis' in {ini}"
    assert (
        origin["identity"]
        == f"ansible_ssh_private_key_file from group 'kitchen' in {tmp_path / 'group_vars' / 'kitchen.yml'}"
    )
    r = CliRunner().invoke(app, ["lab", "list", "--inventory", str(ini), "--origin", "--devices", "x"])
    assert r.exit_code == 2  # lab list takes no --devices: a usage error, not ignored
    r = CliRunner().invoke(app, ["lab", "list", "--inventory", str(ini), "--origin"])
    assert r.exit_code == 0, r.output
    block = r.stdout.split("pi-b\t")[0].split("\n")
    assert block[0] == "pi-a\tpi5-lean\tpi@10.0.0.5:2222\t./edgekit"
    assert f"  user = pi\t(ansible_user from group 'pis' in {ini})" in block
    assert "  workdir = ./edgekit\t(edgekit's default)" in block
    assert "  ssh_config = \t(unset: ~/.ssh/config or ssh's default)" in block

    yml = tmp_path / "hosts.yml"
    yml.write_text(YAML)
    lab = load_inventory(yml)
    a, b = lab.get("pi-a"), lab.get("pi-b")
    assert (a.workdir, a.serve_port, b.user, b.target) == ("./ek", 9001, "pi", "pi5")
    assert dict(a.origin)["workdir"] == f"edgekit_workdir from group 'all' in {yml}"
    # make -j lab takes the names from the same inventory.
    r = CliRunner().invoke(app, ["lab", "list", "--names", "--inventory", str(yml)])
    assert (r.exit_code, r.stdout) == (0, "pi-a\npi-b\n")


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("bad.ini", "[pis\npi-a ansible_host=h\n", "unreadable Ansible inventory ("),
        ("bad.yml", "all:\n  hosts: [a, b\n", "unreadable Ansible inventory (YAML parsing failed"),
        ("none.ini", "[pis]\npi-a ansible_host=h\n", "host 'pi-a': no edgekit_target; set it as a host or group var"),
        ("port.ini", "pi-a edgekit_target=pi5 ansible_port=70000\n", "port 70000 is out of range 1-65535"),
        ("pw.ini", "pi-a edgekit_target=pi5 ansible_password=x\n", "ansible_password gives a password"),
        ("conn.ini", "pi-a edgekit_target=pi5 ansible_connection=local\n", "ansible_connection=local is not supported"),
        (
            "args.ini",
            "pi-a edgekit_target=pi5 ansible_ssh_common_args='-C'\n",
            "cannot apply '-C' from ansible_ssh_common_args",
        ),
        (
            "user.ini",
            "pi-a edgekit_target=pi5 ansible_user=-oProxyCommand=x\n",
            "user '-oProxyCommand=x' is not a login name",
        ),
        ("empty.yml", "all:\n  hosts: {}\n", "the Ansible inventory lists no hosts"),
    ],
)
def test_bad_ansible_inventories_are_one_line_errors(tmp_path, name, text, message):
    p = tmp_path / name
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_inventory(p)
    assert message in str(e.value) and "\n" not in str(e.value) and str(e.value).startswith(str(p))
    r = CliRunner().invoke(app, ["lab", "list", "--inventory", str(p)])
    assert r.exit_code == 1 and r.stderr.count("\n") == 1 and r.stderr.startswith("edgekit: error: ")


@pytest.fixture(scope="module")
def tiny_dist(tiny_ckpt, tmp_path_factory):
    from edgekit.builder.pipeline import build

    out = tmp_path_factory.mktemp("fleet-dist") / "dist"
    return build(str(tiny_ckpt), target="pi5", quants=["q8_0"], out=out)


@pytest.fixture(scope="module")
def devices(tmp_path_factory):
    """Three sshd "devices": pi-a and pi-b, and pi-c whose link corrupts every file sent to it."""
    root = tmp_path_factory.mktemp("fleet")
    servers = {"pi-a": start_sshd(root / "a"), "pi-b": start_sshd(root / "b"), "pi-c": start_sshd(root / "c", CORRUPT)}
    try:
        yield root, servers
    finally:
        for s in servers.values():
            stop_sshd(s)
    assert_no_masters()


def _host(name, srv, work: Path, **over) -> str:
    v = {
        "ansible_host": "127.0.0.1",
        "ansible_port": srv.port,
        "ansible_user": srv.user,
        "ansible_ssh_private_key_file": srv.identity,
        "edgekit_workdir": work / name,
        "ansible_ssh_common_args": f"'-F {srv.ssh_config} -o UserKnownHostsFile={srv.known_hosts} "
        f"-o StrictHostKeyChecking=yes'",
    }
    v.update(over)
    return name + " " + " ".join(f"{k}={x}" for k, x in v.items())


@pytest.mark.slow
def test_lab_run_via_ansible_stores_records_and_survives_failing_devices(devices, closed_port, tiny_dist, tmp_path):  # noqa: F811
    _root, srv = devices
    a = srv["pi-a"]
    # The refused key goes by another name for the same sshd ("localhost"): Ansible shares one ssh
    # connection per host, port and user, and pi-a's would otherwise carry it in.
    a.known_hosts.write_text(
        a.known_hosts.read_text() + a.known_hosts.read_text().replace("[127.0.0.1]", "[localhost]")
    )
    inv = tmp_path / "fleet.ini"
    inv.write_text(
        "\n".join(
            [
                "[pis]",
                *(_host(n, s, tmp_path) for n, s in srv.items()),
                _host("pi-down", a, tmp_path, ansible_port=closed_port),
                _host(
                    "pi-badkey", a, tmp_path, ansible_host="localhost", ansible_ssh_private_key_file=a.wrong_identity
                ),
                "[pis:vars]",
                "edgekit_target=pi5",
                f"edgekit_command={EDGEKIT}",
                # this machine's pyenv shims confuse Ansible's interpreter discovery
                "ansible_python_interpreter=/usr/bin/python3",
                "",
            ]
        )
    )
    db = tmp_path / "results.db"
    bench = ["--", "-p", "8", "-n", "4", "-r", "1"]
    r = CliRunner().invoke(
        app,
        [
            "lab",
            "run",
            str(tiny_dist.parent.parent),
            "--via",
            "ansible",
            "--inventory",
            str(inv),
            "--db",
            str(db),
            *bench,
        ],
    )
    assert r.exit_code == 1, r.output
    assert r.stdout.splitlines() == [
        "pi-a: 1 record(s) (ansible: changed=3, 1 file(s) sent)",
        "pi-b: 1 record(s) (ansible: changed=3, 1 file(s) sent)",
        f"2 record(s) from 2/5 device(s) in {db}",
    ]
    u = a.user
    assert r.stderr.splitlines() == [
        "edgekit: error: device 'pi-c': edgekit copy failed: tiny-gemma4-Q8_0.gguf: Copied file does not match the "
        "expected checksum. Transfer failed.",
        # the same lines as the SSH path (edgekit/lab/ssh.py explain)
        f"edgekit: error: device 'pi-down' ({u}@127.0.0.1:{closed_port}): unreachable: connection refused; "
        f"check that the device is on and sshd listens on that port",
        f"edgekit: error: device 'pi-badkey' ({u}@localhost:{a.port}): authentication refused; check `user` and "
        f"`identity` in the inventory and that the key is in the device's authorized_keys",
    ]
    manifest = read_manifest(tiny_dist)
    art = manifest.artifacts[0]
    recs = Store(db).records()
    assert sorted(rec.device for rec in recs) == ["pi-a", "pi-b"]
    for rec in recs:
        # exactly what the SSH path stores (tests/test_lab_run.py)
        assert (rec.artifact, rec.sha256, rec.file_bytes, rec.quant) == (art.file, art.sha256, art.bytes, "Q8_0")
        assert (rec.n_prompt, rec.n_gen, rec.reps) == (8, 4, 1) and rec.tg_tps > 0
        assert rec.extra["lab"] == {
            "device": rec.device,
            "ssh_host": "127.0.0.1",
            "remote_device": socket.gethostname(),
        }
        remote = tmp_path / rec.device / "dist" / manifest.model / "pi5"
        assert (remote / art.file).read_bytes() == (tiny_dist / art.file).read_bytes()
        assert (remote / MANIFEST).read_bytes() == (tiny_dist / MANIFEST).read_bytes()
    # Nothing on pi-c vouches for a corrupt file: no manifest, no artifact.
    rc = tmp_path / "pi-c" / "dist" / manifest.model / "pi5"
    assert not (rc / MANIFEST).exists() and not (rc / art.file).exists()

    # Idempotent: a second run sends nothing and changes nothing on the devices. It goes through the same
    # devices described in edgekit's TOML, which --via ansible turns into an Ansible inventory.
    toml = tmp_path / "lab.toml"
    toml.write_text(
        "".join(srv[n].device_table(n, workdir=str(tmp_path / n), edgekit=[EDGEKIT]) for n in ("pi-a", "pi-b"))
    )
    r = CliRunner().invoke(
        app, ["lab", "run", str(tiny_dist), "--via", "ansible", "--inventory", str(toml), "--db", str(db), *bench]
    )
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines() == [
        "pi-a: 1 record(s) (ansible: changed=0)",
        "pi-b: 1 record(s) (ansible: changed=0)",
        f"2 record(s) from 2/2 device(s) in {db}",
    ]
    assert len(Store(db).records()) == 4


@pytest.mark.slow
def test_deploy_via_ansible_bootstraps_serves_and_is_idempotent(devices, tiny_dist, tmp_path):
    from edgekit.lab.ansible_run import ansible_run

    _, srv = devices
    b = srv["pi-b"]
    port = free_port()
    work = tmp_path / "pi-b"
    inv = tmp_path / "fleet.yml"
    cmd = ["env", f"PYTHONPATH={REPO}", sys.executable, "-m", "edgekit.cli"]
    host = {
        "ansible_host": "127.0.0.1",
        "ansible_port": b.port,
        "ansible_user": b.user,
        "ansible_python_interpreter": "/usr/bin/python3",
        "ansible_ssh_private_key_file": str(b.identity),
        "edgekit_workdir": str(work),
        "edgekit_serve_port": port,
        "ansible_ssh_common_args": f"-o UserKnownHostsFile={b.known_hosts} -o StrictHostKeyChecking=yes",
        "edgekit_command": " ".join(cmd),
    }
    inv.write_text(
        json.dumps({"all": {"children": {"pis": {"vars": {"edgekit_target": "pi5"}, "hosts": {"pi-b": host}}}}})
    )
    lab = load_inventory(inv)
    kw = dict(bootstrap=True, pip_args=["--no-deps", "--no-index"], serve=True, serve_host="127.0.0.1", bench=False)
    pid_file = work / "serve" / "serve.pid"
    try:
        [first] = ansible_run(tiny_dist, lab, list(lab.devices.values()), [], **kw)
        assert first.ok, first.message
        # wheels folder, wheel, venv install, build folder, build file, manifest, server started
        assert first.message == "pi-b: deployed (ansible: changed=7, 1 file(s) sent)"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as h:
            assert json.loads(h.read())["status"] == "ok"
        pid = int(pid_file.read_text())
        venv_py = work / "venv" / "bin" / "python"
        assert venv_py.exists() and (work / "venv" / ".edgekit-wheel").is_file()
        [second] = ansible_run(tiny_dist, lab, list(lab.devices.values()), [], **kw)
        assert second.message == "pi-b: up to date (ansible: changed=0)"
        assert int(pid_file.read_text()) == pid and psutil.pid_exists(pid)  # the same server, not restarted
    finally:
        if pid_file.exists():
            p = psutil.Process(int(pid_file.read_text()))
            p.terminate()
            p.wait(timeout=30)
    assert not any(
        "edgekit.cli serve" in " ".join(q.info["cmdline"] or []) and str(work) in " ".join(q.info["cmdline"] or [])
        for q in psutil.process_iter(["cmdline"])
    )
