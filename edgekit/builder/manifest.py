"""The manifest: what a build produced, written last so its presence means the build finished.

Converters and runners never import each other; they meet here. ``dist/<model>/<target>/manifest.json``
lists each artifact (a file, or a folder for MLX) with its format, quant, bytes and sha256.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from .. import __version__
from ..core.errors import ArtifactError
from ..core.fsutil import atomic_path
from ..core.names import check_member
from ..model.checkpoint import sha256_file

MANIFEST = "manifest.json"
SCHEMA = 1


@dataclass
class Artifact:
    file: str  # relative to the manifest's folder
    format: str  # "gguf" | "mlx"
    quant: str  # "Q4_0", "F16", "4bit-g64", ...
    recipe: str
    bytes: int
    sha256: str
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Manifest:
    model: str
    target: str
    source: dict[str, Any]
    artifacts: list[Artifact]
    recipes: dict[str, Any]
    versions: dict[str, str]
    # recipe name -> why it was not built (a lean recipe whose vocab cap the model is already within)
    skipped: dict[str, str] = field(default_factory=dict)
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    schema: int = SCHEMA

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        if not d["skipped"]:  # written only when a recipe was skipped: older readers take the rest unchanged
            del d["skipped"]
        return d

    def artifact(self, file: str) -> Artifact:
        for a in self.artifacts:
            if a.file == file:
                return a
        raise ArtifactError(f"{file}: not listed in the manifest")


def folder_digest(entries: Iterable[tuple[str, str]]) -> str:
    """A folder artifact's sha256: over sorted 'relative/path:sha256' lines of its files."""
    return hashlib.sha256("".join(f"{rel}:{sha}\n" for rel, sha in sorted(entries)).encode()).hexdigest()


def artifact_digest(path: Path) -> tuple[int, str]:
    """(bytes, sha256) of a file, or of a folder as sha256 over 'name:sha256' lines of its files."""
    if path.is_file():
        return path.stat().st_size, sha256_file(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        digest = folder_digest((p.relative_to(path).as_posix(), sha256_file(p)) for p in files)
        return sum(p.stat().st_size for p in files), digest
    raise ArtifactError(f"{path}: artifact missing; rebuild with `edgekit build`")


def versions() -> dict[str, str]:
    out = {"edgekit": __version__, "python": platform.python_version()}
    for dist, key in (("gguf", "gguf"), ("llama-cpp-python", "llama-cpp-python"), ("mlx", "mlx"), ("mlx-lm", "mlx-lm")):
        try:
            out[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    if "llama-cpp-python" in out:
        # llama-cpp-python vendors one llama.cpp commit and exposes no build number: its version pins it.
        out["llama.cpp"] = f"vendored by llama-cpp-python {out['llama-cpp-python']}"
    return out


def format_manifest(folder: Path, manifest: Manifest) -> str:
    """What `edgekit build` prints: one line per artifact (file, quant, size, sha256 prefix)."""
    lines = [f"{folder}/{MANIFEST}"]
    for a in manifest.artifacts:
        lines.append(f"  {a.file:<48} {a.format:<5} {a.quant:<12} {a.bytes / 1e6:>9.1f} MB  sha256:{a.sha256[:12]}")
        extra = a.extra if isinstance(a.extra, dict) else {}
        for key, label, where in (("projector", "mmproj", ""), ("towers", "towers", "(inside) ")):
            p = extra.get(key)
            if not isinstance(p, dict):
                continue
            types = ",".join(f"{m} {t}" for m, t in p.get("types", {}).items())
            lines.append(
                f"    + {where + p.get('file', ''):<46} {label} {types:<24} {p.get('bytes', 0) / 1e6:>5.1f} MB  "
                f"sha256:{str(p.get('sha256'))[:12]}"
            )
    return "\n".join(lines)


def write_manifest(folder: Path, manifest: Manifest) -> Path:
    path = Path(folder) / MANIFEST
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(manifest.to_json(), indent=2) + "\n")
    return path


def read_manifest(folder_or_file: Path) -> Manifest:
    p = Path(folder_or_file)
    path = p / MANIFEST if p.is_dir() else p
    if not path.is_file():
        raise ArtifactError(f"{p}: no {MANIFEST}; the build did not finish — run `edgekit build` again")
    try:
        raw = json.loads(path.read_text())
        arts = [Artifact(**a) for a in raw.pop("artifacts")]
        manifest = Manifest(artifacts=arts, **raw)
        for a in arts:
            if not (isinstance(a.bytes, int) and isinstance(a.sha256, str) and isinstance(a.format, str)):
                raise TypeError("artifact fields of the wrong type")
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
        raise ArtifactError(
            f"{path}: corrupt manifest ({e.__class__.__name__}); rebuild with `edgekit build`"
        ) from None
    for a in arts:  # an entry must name a file inside this folder: bench and deploy read what it names
        check_member(a.file, str(path))
        v = a.extra.get("vocab") if isinstance(a.extra, dict) else None
        if isinstance(v, dict) and v.get("id_map") is not None:  # so must a lean artifact's id map
            check_member(v["id_map"], str(path))
        im = a.extra.get("imatrix") if isinstance(a.extra, dict) else None
        if isinstance(im, dict) and im.get("file") is not None:  # and its importance matrix
            check_member(im["file"], str(path))
        p = a.extra.get("projector") if isinstance(a.extra, dict) else None
        if isinstance(p, dict) and p.get("file") is not None:  # and a multimodal projector
            check_member(p["file"], str(path))
    return manifest


def id_map_file(folder: Path, a: Artifact) -> Path | None:
    """A lean artifact's kept-id map (new id → original id; ``extra["vocab"]["id_map"]``, beside the
    manifest), its sha256 checked against the manifest; None for a full-vocabulary artifact. Eval reads
    it and deploy sends it, so both refuse the same missing or changed file with the same line."""
    v = a.extra.get("vocab") if isinstance(a.extra, dict) else None
    if not (isinstance(v, dict) and v.get("id_map")):
        return None
    path = Path(folder) / v["id_map"]
    if not path.is_file():
        raise ArtifactError(
            f"{path}: {a.file}'s lean-vocabulary id map is missing beside {MANIFEST}; copy it "
            "from the build folder or rebuild with `edgekit build`"
        )
    if sha256_file(path) != v.get("id_map_sha256"):
        raise ArtifactError(
            f"{path}: {a.file}'s lean-vocabulary id map does not match the sha256 {MANIFEST} "
            "records; rebuild with `edgekit build`"
        )
    return path


def verify(folder: Path, manifest: Manifest | None = None) -> list[str]:
    """Names of artifacts whose bytes or sha256 differ from the manifest (empty when all match)."""
    manifest = manifest or read_manifest(folder)
    bad = []
    for a in manifest.artifacts:
        p = Path(folder) / a.file
        if not p.exists() or artifact_digest(p) != (a.bytes, a.sha256):
            bad.append(a.file)
    return bad
