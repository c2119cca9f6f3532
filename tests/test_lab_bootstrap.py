"""edgekit deploy --bootstrap: a wheel built from this checkout, a venv on the device, edgekit[runtime].

The fake device has no package index, so the real run installs with --no-deps --no-index: everything
but the download of llama-cpp-python and psutil is exercised. What pip is asked for is checked too.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from sshd_fixture import sshd  # noqa: F401  (the fixture)

import edgekit
from edgekit.core.errors import LabError
from edgekit.lab import bootstrap as boot
from edgekit.lab import ssh
from edgekit.lab.inventory import load_inventory


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    return boot.build_wheel(tmp_path_factory.mktemp("wheel"))


def test_wheel_from_the_checkout_carries_code_and_profiles(wheel):
    assert wheel.name == f"edgekit-{edgekit.__version__}-py3-none-any.whl"
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "edgekit/_data/ansible/edgekit.yml" in names  # the playbook `lab run --via ansible` runs
    assert {"edgekit/lab/deploy.py", "edgekit/cli/__init__.py", "edgekit/_data/targets/pi5.toml"} <= names
    meta = zipfile.ZipFile(wheel).read(f"edgekit-{edgekit.__version__}.dist-info/METADATA").decode()
    runtime = sorted(ln for ln in meta.splitlines() if ln.startswith("Requires-Dist:") and "extra == 'runtime'" in ln)
    assert [ln.split()[1].split(";")[0] for ln in runtime] == [
        "jinja2>=3.1.6",
        "llama-cpp-python==0.3.36",
        "pillow>=10",
        "psutil>=5.9",
        "pydantic>=2.6",
        "soundfile>=0.12",
        "soxr>=0.3",
        "starlette>=0.40",
        "uvicorn>=0.30",
    ]  # run/serve, media
    assert "torch" not in " ".join(runtime)


def test_wheel_leaves_out_the_users_lab_inventory(tmp_path):
    """targets/lab.toml names the user's devices (gitignored): the wheel installed on them must not carry it."""
    root = boot.checkout_root()
    src = tmp_path / "src"
    for name in ("edgekit", "targets", "quant"):
        shutil.copytree(root / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", ".gitignore"):
        shutil.copy(root / name, src / name)
    (src / "targets" / "lab.toml").write_text('[devices.secret]\ntarget = "pi5"\nhost = "10.0.0.99"\n')
    p = subprocess.run(boot.build_wheel_argv(src, tmp_path / "whl"), capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    (whl,) = (tmp_path / "whl").glob("edgekit-*.whl")
    shipped = {
        n.removeprefix("edgekit/_data/targets/")
        for n in zipfile.ZipFile(whl).namelist()
        if n.startswith("edgekit/_data/targets/")
    }
    profiles = {p.name for p in (root / "targets").glob("*.toml")} - {"lab.toml"}
    assert shipped == profiles and "lab.example.toml" in shipped


def test_bootstrap_installs_the_runtime_extra_into_a_device_venv(sshd, wheel, tmp_path, monkeypatch):  # noqa: F811
    work = tmp_path / "dev ice"
    inv = tmp_path / "lab.toml"
    # The device's python: this venv's interpreter stands in for the device's python3 (>= 3.11).
    inv.write_text(sshd.device_table("pi", workdir=str(work), python=sys.executable))
    device = load_inventory(inv).get("pi")
    calls = []
    real_run = ssh.run

    def spy(dev, argv, **kw):
        calls.append(argv)
        return real_run(dev, argv, **kw)

    monkeypatch.setattr(ssh, "run", spy)
    version = boot.bootstrap(device, wheel, pip_args=["--no-deps", "--no-index"])
    assert version == edgekit.__version__
    remote_wheel = f"{work}/wheels/{wheel.name}"
    # What the device's shell received, word for word: the venv, "wheel[runtime]", the wheel, pip options.
    words = shlex.split(calls[-1][-1])
    assert words[:2] == ["sh", "-c"] and words[2] == boot.INSTALL
    assert words[3:] == [
        "edgekit-lab",
        f"{work}/venv",
        f"{remote_wheel}[runtime]",
        remote_wheel,
        "--no-deps",
        "--no-index",
    ]
    # The device now runs edgekit from its own venv, with the target profiles inside.
    py = work / "venv" / "bin" / "python"
    out = subprocess.run(
        [str(py), "-c", "import edgekit.profiles.targets as t; print(t.TARGETS.get('pi5').name)"],
        capture_output=True,
        text=True,
    )
    assert (out.returncode, out.stdout) == (0, "pi5\n"), out.stderr
    assert (work / "venv" / "bin" / "edgekit").is_file()
    assert Path(device.edgekit_cmd[0]) == work / "venv" / "bin" / "edgekit"


def test_bootstrap_refuses_an_old_python_in_one_line(sshd, wheel, tmp_path):  # noqa: F811
    fake = tmp_path / "python3.9"
    fake.write_text("#!/bin/sh\nexit 1\n")
    fake.chmod(0o755)
    inv = tmp_path / "lab.toml"
    inv.write_text(sshd.device_table("pi", workdir=str(tmp_path / "w"), python=str(fake)))
    with pytest.raises(LabError) as e:
        boot.bootstrap(load_inventory(inv).get("pi"), wheel)
    assert str(e.value) == (
        f"device 'pi': bootstrap failed: {fake} is missing or older than Python 3.11; "
        f"install Python >= 3.11 or set python in the inventory"
    )
    assert not (tmp_path / "w" / "venv").exists()
