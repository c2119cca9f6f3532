"""edgekit deploy against a real sshd on 127.0.0.1: sha256 skip, verify, re-send, errors, no injection."""

from __future__ import annotations

import ctypes
import hashlib
import mmap
import os
import shlex
import sys
from pathlib import Path

import pytest
from sshd_fixture import closed_port, sshd  # noqa: F401  (the fixtures)
from typer.testing import CliRunner

from edgekit.builder.manifest import MANIFEST, Artifact, Manifest, artifact_digest, read_manifest, write_manifest
from edgekit.cli import app
from edgekit.core.errors import ArtifactError, LabError
from edgekit.lab import deploy as deploy_mod
from edgekit.lab.deploy import deploy
from edgekit.lab.inventory import load_inventory

HOSTILE = "x; touch {m} #$(touch {m})`touch {m}` 'q\" "


def make_build(root: Path, seed: int = 0, target: str = "pi5") -> Path:
    """A build folder with a file artifact and a folder artifact (as MLX writes), plus its manifest."""
    folder = root / "dist" / "tiny" / target
    rng = __import__("random").Random(seed)
    (folder / "mlx-4bit" / "sub").mkdir(parents=True)
    (folder / "tiny-Q8_0.gguf").write_bytes(rng.randbytes(300_000))
    (folder / "mlx-4bit" / "model.safetensors").write_bytes(rng.randbytes(50_000))
    (folder / "mlx-4bit" / "sub" / "config.json").write_text(f'{{"seed": {seed}}}\n')
    arts = []
    for name, fmt, quant in (("tiny-Q8_0.gguf", "gguf", "Q8_0"), ("mlx-4bit", "mlx", "4bit-g64")):
        size, digest = artifact_digest(folder / name)
        arts.append(Artifact(name, fmt, quant, quant.lower(), size, digest))
    write_manifest(folder, Manifest(model="tiny", target=target, source={}, artifacts=arts, recipes={}, versions={}))
    return folder


def same_tree(a: Path, b: Path) -> bool:
    def tree(p):
        return {
            q.relative_to(p).as_posix(): hashlib.sha256(q.read_bytes()).hexdigest() for q in p.rglob("*") if q.is_file()
        }

    return tree(a) == tree(b)


@pytest.fixture
def lab(sshd, tmp_path):  # noqa: F811
    """An inventory with one good device whose work dir is fresh for each test."""
    work = tmp_path / "device"
    inv = tmp_path / "lab.toml"
    inv.write_text(sshd.device_table("pi", workdir=str(work)))
    return inv, work


def test_deploy_copies_verifies_then_skips_unchanged(lab, tmp_path):
    inv, work = lab
    folder = make_build(tmp_path)
    runner = CliRunner()
    r = runner.invoke(app, ["deploy", str(folder), "--device", "pi", "--inventory", str(inv)])
    assert r.exit_code == 0, r.output
    remote = work / "dist" / "tiny" / "pi5"
    assert r.stdout == f"pi: 2 sent (0.4 MB), 0 unchanged, verified, via rsync -> {remote}\n"
    assert same_tree(folder, remote)
    r2 = runner.invoke(app, ["deploy", str(tmp_path / "dist"), "--device", "pi", "--inventory", str(inv)])
    assert r2.exit_code == 0, r2.output
    assert r2.stdout == f"pi: up to date (2 unchanged) in {remote}\n"
    # A new build changes one artifact: only that one (and the manifest) travel.
    (folder / "tiny-Q8_0.gguf").write_bytes(b"new bytes")
    make_manifest_again(folder)
    rep = deploy(folder, load_inventory(inv).get("pi"))
    assert (rep.sent, rep.unchanged, rep.manifest_written) == (["tiny-Q8_0.gguf"], ["mlx-4bit"], True)
    assert same_tree(folder, remote)


def cached_pages(path: Path) -> int:
    """Pages of ``path`` in the page cache (mincore over a fresh mapping, which maps nothing itself)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    size, page = path.stat().st_size, mmap.PAGESIZE
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        assert addr not in (None, ctypes.c_void_p(-1).value), os.strerror(ctypes.get_errno())
        vec = (ctypes.c_ubyte * ((size + page - 1) // page))()
        try:
            assert libc.mincore(addr, size, vec) == 0, os.strerror(ctypes.get_errno())
        finally:
            libc.munmap(addr, size)
    finally:
        os.close(fd)
    return sum(b & 1 for b in vec)


@pytest.mark.skipif(sys.platform != "linux", reason="drops pages with fadvise, counts them with mincore")
@pytest.mark.parametrize("method", ["rsync", "scp"])
def test_verified_files_leave_the_devices_page_cache(lab, tmp_path, method):
    """Hashing on the device must not leave the artifact cached: llama.cpp maps cached large folios
    whole around lazily read rows (+123 MiB resident for E2B). The check itself must still hold."""
    inv, work = lab
    control = work.parent / "control.bin"
    control.write_bytes(os.urandom(1 << 20))
    with open(control, "rb") as f:
        os.fsync(f.fileno())
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    if cached_pages(control):
        pytest.skip("this filesystem keeps files in memory (tmpfs?): nothing to drop")
    folder = make_build(tmp_path)
    device = load_inventory(inv).get("pi")
    rep = deploy(folder, device, method=method)
    assert rep.sent == ["tiny-Q8_0.gguf", "mlx-4bit"] and rep.manifest_written
    remote = work / "dist" / "tiny" / "pi5"
    files = sorted(p for p in remote.rglob("*") if p.is_file() and p.name != MANIFEST)
    assert files and {p.name: cached_pages(p) for p in files} == {p.name: 0 for p in files}
    # The probe hashes what it uncaches: the same digests the build has, and again nothing cached.
    _, hashes = deploy_mod.probe(device, str(remote), ["tiny-Q8_0.gguf", "mlx-4bit"])
    local = {a.file: a.sha256 for a in read_manifest(folder).artifacts}
    assert {f: deploy_mod.remote_digest(f, hashes) for f in local} == local
    assert {p.name: cached_pages(p) for p in files} == {p.name: 0 for p in files}


def make_manifest_again(folder: Path) -> None:
    m = read_manifest(folder)
    for a in m.artifacts:
        a.bytes, a.sha256 = artifact_digest(folder / a.file)
    write_manifest(folder, m)


@pytest.mark.parametrize("method", ["rsync", "scp"])
def test_corrupted_remote_files_are_detected_and_resent(lab, tmp_path, method):
    inv, work = lab
    folder = make_build(tmp_path)
    device = load_inventory(inv).get("pi")
    assert deploy(folder, device, method=method).sent == ["tiny-Q8_0.gguf", "mlx-4bit"]
    remote = work / "dist" / "tiny" / "pi5"
    # Flip one byte, keeping size and mtime, so only a checksum can tell.
    gguf = remote / "tiny-Q8_0.gguf"
    st = gguf.stat()
    data = bytearray(gguf.read_bytes())
    data[1234] ^= 0xFF
    gguf.write_bytes(bytes(data))
    os.utime(gguf, ns=(st.st_atime_ns, st.st_mtime_ns))
    rep = deploy(folder, device, method=method)
    assert (rep.sent, rep.unchanged, rep.method) == (["tiny-Q8_0.gguf"], ["mlx-4bit"], method)
    assert same_tree(folder, remote)
    # Inside a folder artifact: a missing file and a stray one both count as a difference.
    (remote / "mlx-4bit" / "sub" / "config.json").unlink()
    (remote / "mlx-4bit" / "stray.bin").write_bytes(b"junk")
    rep = deploy(folder, device, method=method)
    assert (rep.sent, rep.unchanged) == (["mlx-4bit"], ["tiny-Q8_0.gguf"])
    assert same_tree(folder, remote)


def test_a_copy_that_arrives_corrupt_is_sent_again(lab, tmp_path, monkeypatch):
    inv, work = lab
    folder = make_build(tmp_path)
    remote = work / "dist" / "tiny" / "pi5"
    real_send, calls = deploy_mod.send, []

    def flaky_send(device, method, src, rdir, files):
        real_send(device, method, src, rdir, files)
        calls.append(list(files))
        if len(calls) == 1:  # the link corrupts the first transfer
            p = remote / "tiny-Q8_0.gguf"
            p.write_bytes(b"\0" + p.read_bytes()[1:])

    monkeypatch.setattr(deploy_mod, "send", flaky_send)
    rep = deploy(folder, load_inventory(inv).get("pi"))
    assert rep.resent == ["tiny-Q8_0.gguf"] and calls[1] == ["tiny-Q8_0.gguf"]
    assert same_tree(folder, remote)


def test_a_device_that_keeps_corrupting_fails_with_one_line(lab, tmp_path, monkeypatch):
    inv, work = lab
    folder = make_build(tmp_path)
    remote = work / "dist" / "tiny" / "pi5"
    real_send = deploy_mod.send

    def bad_disk(device, method, src, rdir, files):
        real_send(device, method, src, rdir, files)
        if "tiny-Q8_0.gguf" in files:
            (remote / "tiny-Q8_0.gguf").write_bytes(b"rot")

    monkeypatch.setattr(deploy_mod, "send", bad_disk)
    with pytest.raises(LabError, match=r"^device 'pi': tiny-Q8_0.gguf still differ\(s\) by sha256 after a re-send; "):
        deploy(folder, load_inventory(inv).get("pi"))
    assert not (remote / MANIFEST).exists()  # no manifest vouches for the bad copy


def test_unreachable_port_and_wrong_key_are_one_clear_line(sshd, closed_port, tmp_path):  # noqa: F811
    folder = make_build(tmp_path)
    closed = closed_port
    inv = tmp_path / "lab.toml"
    inv.write_text(
        sshd.device_table("down", port=closed) + sshd.device_table("badkey", identity=str(sshd.wrong_identity))
    )
    runner = CliRunner()
    r = runner.invoke(app, ["deploy", str(folder), "--device", "down", "--inventory", str(inv)])
    assert r.exit_code == 1
    assert r.stdout == ""
    assert r.stderr == (
        f"edgekit: error: device 'down' ({sshd.user}@127.0.0.1:{closed}): unreachable: connection "
        f"refused; check that the device is on and sshd listens on that port\n"
    )
    r = runner.invoke(app, ["deploy", str(folder), "--device", "badkey", "--inventory", str(inv)])
    assert r.exit_code == 1
    assert r.stderr == (
        f"edgekit: error: device 'badkey' ({sshd.user}@127.0.0.1:{sshd.port}): authentication "
        f"refused; check `user` and `identity` in the inventory and that the key is in the "
        f"device's authorized_keys\n"
    )


def test_unknown_host_key_is_refused_not_accepted(sshd, tmp_path):  # noqa: F811
    folder = make_build(tmp_path)
    empty = tmp_path / "known_hosts_empty"
    empty.write_text("")
    inv = tmp_path / "lab.toml"
    inv.write_text(sshd.device_table("pi").replace(str(sshd.known_hosts), str(empty)))
    r = CliRunner().invoke(app, ["deploy", str(folder), "--device", "pi", "--inventory", str(inv)])
    assert r.exit_code == 1
    assert r.stderr.startswith(f"edgekit: error: device 'pi' ({sshd.user}@127.0.0.1:{sshd.port}): host key not trusted")
    assert empty.read_text() == ""  # nothing was added behind the user's back


@pytest.mark.parametrize("method", ["rsync", "scp"])
def test_hostile_names_and_paths_run_nothing(sshd, tmp_path, method):  # noqa: F811
    marker = tmp_path / "PWNED"
    evil = HOSTILE.format(m=shlex.quote(str(marker)))
    folder = make_build(tmp_path)
    work = tmp_path / f"dev {evil}"
    inv = tmp_path / "lab.toml"
    inv.write_text(sshd.device_table(evil, workdir=str(work)))
    r = CliRunner().invoke(app, ["deploy", str(folder), "--device", evil, "--inventory", str(inv), "--method", method])
    assert not marker.exists()
    assert r.exit_code == 0, r.output
    assert same_tree(folder, work / "dist" / "tiny" / "pi5")  # the literal path, spaces and all


def test_hostile_host_cannot_become_an_ssh_option(tmp_path):
    marker = tmp_path / "PWNED"
    inv = tmp_path / "lab.toml"
    inv.write_text(f'[devices.a]\ntarget = "pi5"\nhost = "-oProxyCommand=touch {marker}"\n')
    r = CliRunner().invoke(app, ["lab", "list", "--inventory", str(inv)])
    assert r.exit_code == 1
    assert r.stderr == (
        f"edgekit: error: {inv} [devices.'a']: host '-oProxyCommand=touch {marker}' is not a host "
        f"name, address or ssh alias\n"
    )
    assert not marker.exists()


def test_corrupt_local_build_and_wrong_target_never_ship(lab, tmp_path):
    inv, work = lab
    folder = make_build(tmp_path)
    (folder / "tiny-Q8_0.gguf").write_bytes(b"truncated")
    device = load_inventory(inv).get("pi")
    with pytest.raises(ArtifactError, match=r"tiny-Q8_0\.gguf do not match the manifest locally"):
        deploy(folder, device)
    other = make_build(tmp_path / "o", target="m4")
    with pytest.raises(LabError, match=r"device 'pi' runs target 'pi5' but .* was built for 'm4'"):
        deploy(other, device)
    assert not work.exists()  # neither reached the device


def test_a_lean_builds_id_map_travels_with_it_and_is_checked(lab, tmp_path):
    """A lean artifact's kept-id map (new id -> original id) goes to the device beside it, checked by
    sha256 like the artifacts: eval and output mapping on the device need it. A local copy that no
    longer matches the manifest is never shipped."""
    inv, work = lab
    folder = make_build(tmp_path)
    id_map = folder / "tiny-v512.vocab-ids.npy"
    id_map.write_bytes(bytes(range(256)) * 8)
    m = read_manifest(folder)
    m.artifacts[0].extra["vocab"] = {
        "size": 512,
        "id_map": id_map.name,
        "id_map_sha256": hashlib.sha256(id_map.read_bytes()).hexdigest(),
    }
    write_manifest(folder, m)
    rep = deploy(folder, load_inventory(inv).get("pi"))
    remote = work / "dist" / "tiny" / "pi5"
    assert sorted(rep.sent) == sorted(["tiny-Q8_0.gguf", "mlx-4bit", id_map.name])
    assert (remote / id_map.name).read_bytes() == id_map.read_bytes() and same_tree(folder, remote)
    # the device's copy goes bad: found by its sha256 and sent again, alone
    (remote / id_map.name).write_bytes(b"corrupt")
    rep = deploy(folder, load_inventory(inv).get("pi"))
    assert rep.sent == [id_map.name] and same_tree(folder, remote)
    # the local copy goes bad: one line, nothing sent
    id_map.write_bytes(b"changed")
    r = CliRunner().invoke(app, ["deploy", str(folder), "--device", "pi", "--inventory", str(inv)])
    assert r.exit_code != 0
    assert r.stderr == (
        f"edgekit: error: {id_map}: {m.artifacts[0].file}'s lean-vocabulary id map does not "
        "match the sha256 manifest.json records; rebuild with `edgekit build`\n"
    )
