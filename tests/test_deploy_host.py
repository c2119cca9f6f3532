"""`edgekit deploy DIST --host user@host:port` without an inventory, over the test sshd on 127.0.0.1."""

from __future__ import annotations

import pytest
from sshd_fixture import sshd  # noqa: F401  (the fixture)
from test_lab_deploy import make_build, same_tree
from typer.testing import CliRunner

from edgekit.cli import app
from edgekit.core.errors import ConfigError
from edgekit.lab.inventory import device_from_address


def test_address_forms():
    d = device_from_address("pi@10.0.0.7:2222", "pi5")
    assert (d.user, d.host, d.port, d.target) == ("pi", "10.0.0.7", 2222, "pi5")
    d = device_from_address("mac.local", "m2")
    assert (d.user, d.host, d.port) == (None, "mac.local", None)
    d = device_from_address("me@[2001:db8::1]:22", "pi5")
    assert (d.host, d.port) == ("2001:db8::1", 22)
    for bad, msg in (
        ("pi@h:99999", "not a TCP port"),
        ("pi@h:x", "not a TCP port"),
        ("-oProxy@h", "not a login name"),
        ("pi@-h", "not a host name"),
    ):
        with pytest.raises(ConfigError, match=msg):
            device_from_address(bad, "pi5")


def test_deploy_to_one_host(sshd, tmp_path):  # noqa: F811
    folder = make_build(tmp_path)
    cfg = tmp_path / "ssh_config"
    cfg.write_text(
        f"UserKnownHostsFile {sshd.known_hosts}\nGlobalKnownHostsFile /dev/null\nStrictHostKeyChecking yes\n"
    )
    work = tmp_path / "device"
    r = CliRunner().invoke(
        app,
        [
            "deploy",
            str(folder),
            "--host",
            f"{sshd.user}@127.0.0.1:{sshd.port}",
            "--identity",
            str(sshd.identity),
            "--ssh-config",
            str(cfg),
            "--workdir",
            str(work),
        ],
    )
    assert r.exit_code == 0, r.output
    assert same_tree(folder, work / "dist" / "tiny" / "pi5")
    r = CliRunner().invoke(app, ["deploy", str(folder), "--host", "x@127.0.0.1", "--device", "pi"])
    assert r.exit_code == 1 and "--host names one device without an inventory" in r.stderr
    r = CliRunner().invoke(app, ["deploy", str(folder)])
    assert r.exit_code == 1 and "--host user@host[:port]" in r.stderr


def test_missing_inventory_names_what_the_user_expects(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(app, ["lab", "list"])
    assert r.exit_code == 1
    assert r.stderr.startswith("edgekit: error: targets/lab.toml: no lab inventory; copy ")
    assert "site-packages" not in r.stderr.split(";")[0] and "--inventory FILE" in r.stderr
