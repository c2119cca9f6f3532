"""Push a build folder to a device: send what differs by sha256, verify on the device, manifest last.

rsync (over ssh, with --protect-args so paths travel inside rsync's protocol, never through the
device's shell) when both ends have rsync >= 3; else scp in its SFTP mode (OpenSSH >= 8.7). The
device hashes files with its own sha256sum (or macOS's shasum); a folder artifact's digest is put
together here from per-file hashes exactly as edgekit.builder.manifest.artifact_digest does it.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from ..builder.manifest import MANIFEST, Manifest, folder_digest, id_map_file, read_manifest, verify
from ..builder.projector import projector_file
from ..core.errors import ArtifactError, LabError
from . import ssh
from .inventory import Device, join_remote

log = logging.getLogger(__name__)

_SEGMENT = re.compile(r"^[A-Za-z0-9._+-]+$")
PARTIAL = ".manifest.json.partial"

# "$1" is the remote build folder, the rest are paths inside it. Prints "rsync\t<version line>\0", then
# "F\t<sha256>\t./<path>\0" for every file under the given paths (missing paths print nothing).
# On Linux each hashed file then leaves the page cache (flushed, then dd's nocache: fadvise DONTNEED):
# hashing fills it with large folios, and llama.cpp maps whole folios around the PLE rows it reads
# lazily (+123 MiB resident for E2B, measured on Linux). Skipped where it cannot be done (macOS, busybox).
PROBE = r"""
dir=$1; shift
mkdir -p -- "$dir" && cd -- "$dir" || { echo "cannot create or enter the build folder" >&2; exit 90; }
printf 'rsync\t%s\0' "$(rsync --version 2>/dev/null | head -n 1)"
EDGEKIT_UNCACHE=; [ "$(uname -s)" = Linux ] && EDGEKIT_UNCACHE=1; export EDGEKIT_UNCACHE
H='for f do
  if command -v sha256sum >/dev/null 2>&1; then s=$(sha256sum < "$f"); else s=$(shasum -a 256 < "$f"); fi || exit 91
  [ -z "$EDGEKIT_UNCACHE" ] || { sync -- "$f"; dd if="$f" iflag=nocache count=0 status=none; } 2>/dev/null
  printf "F\t%s\t%s\0" "${s%% *}" "$f"
done'
for a do
  if [ -e "./$a" ]; then find "./$a" -type f -exec sh -c "$H" sh {} + || exit 91; fi
done
"""

# Before a (re)send: no manifest may vouch for the folder, and scp needs parents and no stale folder.
PREPARE = r"""
cd -- "$1" || exit 90
shift
rm -f -- manifest.json
for a do rm -rf -- "./$a" && mkdir -p -- "$(dirname -- "./$a")" || exit 92; done
"""

# The manifest (a few KB) arrives on stdin; it is swapped in only once its bytes on the device are
# the ones we sent, so manifest.json is always whole and always last.
COMMIT = r"""
cd -- "$1" || exit 90
cat > "$2" || exit 93
if command -v sha256sum >/dev/null 2>&1; then s=$(sha256sum < "$2"); else s=$(shasum -a 256 < "$2"); fi
[ "${s%% *}" = "$3" ] || { rm -f -- "$2"; echo "manifest arrived corrupt" >&2; exit 93; }
mv -f -- "$2" manifest.json
"""


@dataclass
class DeployReport:
    device: str
    remote_dir: str
    method: str
    sent: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    resent: list[str] = field(default_factory=list)
    bytes_sent: int = 0
    manifest_written: bool = False

    def line(self) -> str:
        if not self.sent and not self.manifest_written:
            return f"{self.device}: up to date ({len(self.unchanged)} unchanged) in {self.remote_dir}"
        extra = f", {len(self.resent)} re-sent after a failed check" if self.resent else ""
        return (
            f"{self.device}: {len(self.sent)} sent ({self.bytes_sent / 1e6:.1f} MB), "
            f"{len(self.unchanged)} unchanged{extra}, verified, via {self.method} -> {self.remote_dir}"
        )


def build_folder(dist: Path, device: Device) -> Path:
    """DIST is a build folder (with a manifest), dist/<model> with one folder per target, or the dist
    root when it holds a single model built for the device's target."""
    dist = Path(dist)
    if (dist / MANIFEST).is_file():
        return dist
    if (dist / device.target / MANIFEST).is_file():
        return dist / device.target
    found = sorted(p.parent for p in dist.glob(f"*/{glob.escape(device.target)}/{MANIFEST}"))
    if len(found) == 1:
        return found[0]
    if found:
        raise ArtifactError(
            f"{dist}: several models are built for {device.target!r} "
            f"({', '.join(p.parent.name for p in found)}); pass {dist}/<model>"
        )
    raise ArtifactError(
        f"{dist}: no build for target {device.target!r} (device {device.name!r}); "
        f"run `edgekit build --target {device.target}` first"
    )


def remote_dir(device: Device, manifest: Manifest) -> str:
    for what, value in (("model", manifest.model), ("target", manifest.target)):
        if not _SEGMENT.match(value) or value in (".", ".."):
            raise ArtifactError(f"manifest {what} {value!r} is not a plain folder name; rebuild with `edgekit build`")
    return join_remote(device.workdir, "dist", manifest.model, manifest.target)


def _check_files(manifest: Manifest) -> None:
    for a in manifest.artifacts:
        p = PurePosixPath(a.file)
        if p.is_absolute() or ".." in p.parts or not a.file or a.file.startswith("-") or a.file == MANIFEST:
            raise ArtifactError(f"manifest lists {a.file!r}, which is not a path inside the build folder; rebuild")


def check_target(folder: Path, device: Device) -> Manifest:
    manifest = read_manifest(folder)
    _check_files(manifest)
    if manifest.target != device.target:
        raise LabError(
            f"device {device.name!r} runs target {device.target!r} but {folder} was built for "
            f"{manifest.target!r}; build with `--target {device.target}` or fix the inventory"
        )
    return manifest


def load_build(folder: Path, device: Device) -> Manifest:
    """The build's manifest, after checking the local files still match it (never ship a corrupt build)."""
    manifest = check_target(folder, device)
    bad = verify(folder, manifest)
    if bad:
        raise ArtifactError(f"{folder}: {', '.join(bad)} do not match the manifest locally; rebuild before deploying")
    return manifest


def probe(device: Device, rdir: str, paths: list[str]) -> tuple[str, dict[str, str]]:
    """(remote rsync version line, {relative file path: sha256}) for files under ``paths``."""
    r = ssh.run(device, ssh.script_argv(device, PROBE, [rdir, *paths]), timeout=device.timeout)
    if r.returncode:
        raise LabError(f"device {device.name!r}: cannot read {rdir}: {ssh.last_error(r.stderr)}")
    fields = r.stdout.decode(errors="surrogateescape").split("\0")
    version = fields[0].partition("\t")[2] if fields and fields[0].startswith("rsync\t") else ""
    hashes = {}
    for rec in fields[1:]:
        kind, _, rest = rec.partition("\t")
        if kind == "F":
            digest, _, path = rest.partition("\t")
            hashes[path.removeprefix("./")] = digest
    return version, hashes


def remote_digest(file: str, hashes: dict[str, str]) -> str | None:
    """The artifact's digest on the device, as artifact_digest computes it locally (None if absent)."""
    if file in hashes:
        return hashes[file]
    prefix = file.rstrip("/") + "/"
    inner = [(p[len(prefix) :], h) for p, h in hashes.items() if p.startswith(prefix)]
    return folder_digest(inner) if inner else None


def _rsync_ok(version_line: str) -> bool:
    m = re.search(r"version\s+(\d+)\.(\d+)", version_line)
    # openrsync and Apple's rsync 2.6.9 lack --protect-args; they take the scp path.
    return bool(m) and (int(m[1]), int(m[2])) >= (3, 0) and "openrsync" not in version_line


def _scp_flags() -> list[str]:
    out = subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr
    m = re.search(r"OpenSSH_(\d+)\.(\d+)", out)
    if not m or (int(m[1]), int(m[2])) < (8, 7):
        raise LabError(
            "this machine's scp passes paths through the device's shell (OpenSSH < 8.7); "
            "install rsync >= 3 on both ends or upgrade OpenSSH"
        )
    return ["-s"]  # SFTP protocol: the remote path is a protocol field, not shell text


def choose_method(requested: str, remote_rsync: str) -> str:
    if requested not in ("auto", "rsync", "scp"):
        raise LabError(f"unknown copy method {requested!r}; use auto, rsync or scp")
    have = shutil.which("rsync") is not None and _rsync_ok(remote_rsync)
    if requested == "rsync" and not have:
        raise LabError("rsync >= 3 is needed on both this machine and the device; install it or use --method scp")
    return "rsync" if requested == "rsync" or (requested == "auto" and have) else "scp"


def send(device: Device, method: str, folder: Path, rdir: str, files: list[str]) -> None:
    """Copy ``files`` (paths relative to ``folder``) to the same paths under ``rdir``."""
    if method == "rsync":
        # -R with "folder/./rel" recreates rel's parents; -I re-sends even when size and mtime match
        # (a corrupted file can keep both); --delete drops stray files inside a folder artifact.
        _run_copy(
            device,
            [
                "rsync",
                "-rtR",
                "-I",
                "--delete",
                "--protect-args",
                "-e",
                ssh.rsync_shell(device),
                "--",
                *(f"{folder}/./{f}" for f in files),
                ssh.remote_spec(device, rdir + "/"),
            ],
        )
        return
    flags = _scp_flags()
    for f in files:
        _run_copy(
            device,
            [
                "scp",
                *flags,
                "-r",
                "-p",
                "-q",
                *ssh.options(device),
                "--",
                str(folder / f),
                ssh.remote_spec(device, join_remote(rdir, f)),
            ],
        )


def _run_copy(device: Device, argv: list[str]) -> None:
    r = ssh.run(device, argv, timeout=device.timeout)
    if r.returncode:
        raise LabError(f"device {device.name!r}: {argv[0]} failed: {ssh.last_error(r.stderr)}")


def _script(device: Device, script: str, args: list[str], what: str, input: bytes | None = None) -> None:
    r = ssh.run(device, ssh.script_argv(device, script, args), input=input, timeout=device.timeout)
    if r.returncode:
        raise LabError(f"device {device.name!r}: {what} failed: {ssh.last_error(r.stderr)}")


def deploy(dist: Path, device: Device, *, method: str = "auto") -> DeployReport:
    """Make ``device`` hold the build for its target from ``dist``, checked by sha256 on the device."""
    folder = build_folder(dist, device)
    manifest = load_build(folder, device)
    with ssh.multiplexed(device):
        return _deploy(folder, manifest, device, method)


@dataclass(frozen=True)
class _Sidecar:
    """A file an artifact needs beside it (a lean vocabulary's id map, for `edgekit eval` and mapping
    outputs back), sent and checked by sha256 like the artifacts themselves."""

    file: str
    sha256: str
    bytes: int


def sidecars(folder: Path, manifest: Manifest) -> list[_Sidecar]:
    out: dict[str, _Sidecar] = {}
    for a in manifest.artifacts:
        path = id_map_file(folder, a)  # a lean artifact's id map, checked locally before anything is sent
        if path is not None:
            out[path.name] = _Sidecar(path.name, a.extra["vocab"]["id_map_sha256"], path.stat().st_size)
        proj = projector_file(folder, a)  # a multimodal projector, its sha256 and text link checked first
        if proj is not None:
            out[proj.name] = _Sidecar(proj.name, a.extra["projector"]["sha256"], proj.stat().st_size)
    return list(out.values())


def _deploy(folder: Path, manifest: Manifest, device: Device, method: str) -> DeployReport:
    rdir = remote_dir(device, manifest)
    items = [*manifest.artifacts, *sidecars(folder, manifest)]
    files = [a.file for a in items]
    remote_rsync, hashes = probe(device, rdir, [*files, MANIFEST])
    method = choose_method(method, remote_rsync)
    report = DeployReport(device.name, rdir, method)
    stale = [a for a in items if remote_digest(a.file, hashes) != a.sha256]
    report.unchanged = [a.file for a in items if a not in stale]
    manifest_bytes = (folder / MANIFEST).read_bytes()
    local_manifest = hashlib.sha256(manifest_bytes).hexdigest()
    if not stale and hashes.get(MANIFEST) == local_manifest:
        return report
    if stale:
        log.info("%s: sending %s via %s", device.name, ", ".join(a.file for a in stale), method)
        _prepare(device, method, rdir, stale)
        send(device, method, folder, rdir, [a.file for a in stale])
        report.sent = [a.file for a in stale]
        report.bytes_sent = sum(a.bytes for a in stale)
        bad = _check_sent(device, rdir, stale)
        if bad:
            # One re-send covers a flaky link or disk; a second mismatch means the device cannot hold it.
            log.warning(
                "%s: %s did not verify on the device; sending again", device.name, ", ".join(a.file for a in bad)
            )
            _prepare(device, method, rdir, bad)
            send(device, method, folder, rdir, [a.file for a in bad])
            report.resent = [a.file for a in bad]
            report.bytes_sent += sum(a.bytes for a in bad)
            still = _check_sent(device, rdir, bad)
            if still:
                raise LabError(
                    f"device {device.name!r}: {', '.join(a.file for a in still)} still differ(s) by "
                    f"sha256 after a re-send; check the device's disk and free space"
                )
    _script(device, COMMIT, [rdir, PARTIAL, local_manifest], "writing the manifest", input=manifest_bytes)
    report.manifest_written = True
    return report


def _prepare(device: Device, method: str, rdir: str, artifacts: list) -> None:
    # rsync rebuilds a changed file from its old bytes (delta) before renaming it into place, so keep
    # them; scp -r would copy a folder into a stale folder of the same name, so clear those first.
    files = [a.file for a in artifacts] if method == "scp" else []
    _script(device, PREPARE, [rdir, *files], "preparing the build folder")


def _check_sent(device: Device, rdir: str, artifacts: list) -> list:
    _, hashes = probe(device, rdir, [a.file for a in artifacts])
    return [a for a in artifacts if remote_digest(a.file, hashes) != a.sha256]
