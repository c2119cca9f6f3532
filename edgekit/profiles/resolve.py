"""resolve(path, target, overrides): the artifacts PATH names, verified once, with the settings they run on.

PATH is one artifact (a .gguf file or an MLX folder) or a dist folder with manifest.json. Each artifact
is checked against its manifest's bytes and sha256 (a file no manifest lists is hashed for its record),
and its bytes read per token are parsed (which rejects an unreadable file up front); that is done once
here, and bench, sweep, eval, `edgekit run` and `serve` all start from the result. ``RunSettings`` is
what the engine is asked to use, one precedence for every command: the engine's defaults < the target
profile (its threads, context and [runtime]) < the user's overrides (--threads, --ctx, --set), each value
checked against its bounds and the engine's knob schema, one ConfigError line naming the fix.
``ResolvedArtifact.with_overrides`` derives other settings (a sweep's points) without hashing again.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from ..backends.engines import ENGINES, Engine
from ..backends.format import Format, TokenBytes
from ..backends.formats import detect, format_of
from ..backends.runner import RunOptions
from ..builder.manifest import MANIFEST, Artifact, Manifest, artifact_digest, read_manifest
from ..core.errors import ArtifactError, ConfigError
from ..core.host import physical_cores
from .targets import TARGETS, Target

TargetArg = Union[Target, str, None]  # a Target, a profile name, or None: the manifest's (if any)

# Without --ctx or a target, run and serve use the model's trained context, capped here. llama-cli and
# llama-server default to n_ctx_train but shrink it to fit memory, down to 4096; Ollama's num_ctx is 4096.
# E2B is trained for 131072, whose F16 KV cache alone would be several GB against a 1.5 GB budget.
DEFAULT_CTX = 4096

# Knobs that put stand-in keys/values in the cache: a benchmark aid, never applied where a context is scored.
FAKES_CONTEXT = ("kv_fill",)


def default_ctx(trained: Optional[int]) -> int:
    """The context without --ctx or a target: min(n_ctx_train, 4096)."""
    return min(trained, DEFAULT_CTX) if trained else DEFAULT_CTX


@dataclass(frozen=True)
class Use:
    """What an artifact is opened for: the few settings rules that differ between commands."""

    name: str
    # bench, run and serve model the device (the target's threads, capped at this host's cores); eval's
    # figures do not depend on threads, so it uses all of this host's cores
    target_threads: bool = True
    scores_context: bool = False  # eval: knobs in FAKES_CONTEXT are dropped
    # eval scores a dist folder of GGUF and MLX builds in one run: a --set knob goes to the engines that know it
    knobs_by_engine: bool = False


RUN = Use("run")  # bench, sweep, `edgekit run`, serve, eval's task suites
SCORE = Use("eval", target_threads=False, scores_context=True, knobs_by_engine=True)  # eval's KL pass


@dataclass(frozen=True)
class Overrides:
    """What the user asked for on the command line; None: the target's (or the engine's) value."""

    threads: Optional[int] = None
    ctx: Optional[int] = None
    knobs: Mapping[str, Any] = field(default_factory=dict)  # --set KEY=VALUE: raw strings or typed values
    # the context when neither --ctx nor a target gives one; None: default_ctx(n_ctx_train). bench passes
    # its longest test (llama-bench's p + n + d)
    fallback_ctx: Optional[int] = None


@dataclass(frozen=True)
class RunSettings:
    """Everything one artifact's run is asked to use, validated (the engine reports what it applied)."""

    threads: int
    ctx: int
    knobs: dict[str, Any]  # typed, in precedence order; treat as read-only

    def run_options(self, verbose: bool = False) -> RunOptions:
        return RunOptions(threads=self.threads, ctx=self.ctx, knobs=dict(self.knobs), verbose=verbose)


@dataclass(frozen=True)
class ResolvedArtifact:
    path: Path
    artifact: Artifact  # its manifest entry (bytes, sha256, quant, recipe), or one made for a loose file
    model: str
    manifest: Optional[Manifest]  # the manifest that lists it; None for a file no manifest lists
    target: Optional[Target]
    engine: Engine
    tokens: TokenBytes  # bytes read per decoded token (parsed from the file)
    settings: RunSettings
    use: Use = RUN

    @property
    def format(self) -> Format:
        return format_of(self.artifact.format)

    @property
    def sha256(self) -> str:
        return self.artifact.sha256

    def with_overrides(self, overrides: Overrides, use: Optional[Use] = None) -> ResolvedArtifact:
        """The same artifact (not read or hashed again) with the settings these overrides give."""
        use = use or self.use
        settings = run_settings(self.path, self.artifact, self.target, self.engine, overrides, use)
        return dataclasses.replace(self, settings=settings, use=use)


# ---------------------------------------------------------------- PATH → artifacts


@dataclass(frozen=True)
class _Found:
    path: Path
    artifact: Artifact
    model: str
    manifest: Optional[Manifest]
    target: TargetArg


def _checked(folder: Path, a: Artifact) -> Path:
    p = folder / a.file
    if not p.exists():
        raise ArtifactError(f"{p}: listed in {MANIFEST} but missing; rebuild with `edgekit build`")
    if artifact_digest(p) != (a.bytes, a.sha256):
        raise ArtifactError(
            f"{p}: bytes/sha256 differ from {MANIFEST} (changed or truncated); rebuild with `edgekit build`"
        )
    return p


def _find(path: Path, target: TargetArg) -> list[_Found]:
    """The artifacts PATH names, each read and hashed once."""
    p = Path(path)
    if not p.exists():
        raise ArtifactError(f"{p}: no such artifact; pass a .gguf file, an MLX folder or a dist folder with {MANIFEST}")
    if p.is_dir() and (p / MANIFEST).exists():
        m = read_manifest(p)
        if not m.artifacts:  # run and serve take the first; bench and eval would measure nothing
            raise ArtifactError(f"{p / MANIFEST}: lists no artifacts; rebuild with `edgekit build`")
        return [_Found(_checked(p, a), a, m.model, m, target or m.target) for a in m.artifacts]
    fmt = detect(p)
    if fmt is None:
        raise ArtifactError(f"{p}: not an artifact; pass a .gguf file, an MLX folder or a dist folder with {MANIFEST}")
    beside = read_manifest(p.parent) if (p.parent / MANIFEST).exists() else None
    listed = next((x for x in beside.artifacts if x.file == p.name), None) if beside else None
    if listed and beside:
        return [_Found(_checked(p.parent, listed), listed, beside.model, beside, target or beside.target)]
    size, sha = artifact_digest(p)
    a = Artifact(file=p.name, format=fmt.name, quant=fmt.quant_label(p), recipe="", bytes=size, sha256=sha)
    return [_Found(p, a, fmt.model_name(p), None, target)]


def resolve(
    path: Path,
    *,
    target: TargetArg = None,
    overrides: Optional[Overrides] = None,
    use: Use = RUN,
    first: bool = False,
) -> list[ResolvedArtifact]:
    """Every artifact PATH names (``first``: only a dist folder's first, recommended one, as run and serve
    take it; all are still verified), each with its settings; ArtifactError or ConfigError (one line)
    before anything is loaded."""
    found = _find(path, target)
    tokens = [format_of(f.artifact.format).token_bytes(f.path) for f in found]  # rejects unreadable files
    out = []
    for f, tb in zip(found[:1] if first else found, tokens, strict=False):
        tgt = target_of(f.target)
        engine = ENGINES.get(format_of(f.artifact.format).engine)
        st = run_settings(f.path, f.artifact, tgt, engine, overrides or Overrides(), use)
        out.append(ResolvedArtifact(f.path, f.artifact, f.model, f.manifest, tgt, engine, tb, st, use))
    return out


# ---------------------------------------------------------------- settings


def target_of(t: TargetArg) -> Optional[Target]:
    """A Target from a Target, a profile name (unknown: ConfigError listing the known ones) or None."""
    return t if isinstance(t, Target) else TARGETS.get(t) if t else None


def profile_knobs(tgt: Target, engine: Engine) -> dict[str, Any]:
    """The target's [runtime] knobs ``engine`` reads, typed; a key no engine knows is an error (a
    profile may hold knobs for its alternative engine: those are left to it)."""
    where = f"target {tgt.name} [runtime]"
    for name in tgt.runtime:
        if not any(name in ENGINES.get(e).knobs for e in ENGINES):
            known = sorted({k for e in ENGINES for k in ENGINES.get(e).knobs.knobs})
            raise ConfigError(f"{where}: unknown runtime knob {name!r}; known: {', '.join(known)}")
    return engine.knobs.validate(tgt.runtime, where, strict=False)


def resolve_threads(asked: Optional[int], tgt: Optional[Target], use: Use = RUN) -> int:
    """--threads, else the target's capped at this host's physical cores (``use.target_threads``), else
    this host's physical cores."""
    if asked is not None and asked < 1:
        default = "the target's, capped at this host's cores" if use.target_threads else "this host's cores"
        raise ConfigError(f"--threads {asked}: use at least 1 thread (default: {default})")
    if asked:
        return asked
    return min(tgt.threads, physical_cores()) if tgt and use.target_threads else physical_cores()


def _user_knobs(engine: Engine, knobs: Mapping[str, Any], use: Use) -> dict[str, Any]:
    if use.knobs_by_engine:
        for name in knobs:  # a knob no engine knows is still an error, naming this engine's knobs
            if not any(name in ENGINES.get(e).knobs for e in ENGINES):
                engine.knobs.validate({name: knobs[name]}, "--set")
        knobs = {k: v for k, v in knobs.items() if k in engine.knobs}
    return engine.knobs.validate(knobs, "--set")


def run_settings(
    path: Path, artifact: Artifact, tgt: Optional[Target], engine: Engine, o: Overrides, use: Use = RUN
) -> RunSettings:
    """The validated settings for one artifact, or the ConfigError saying which one to fix."""
    threads = resolve_threads(o.threads, tgt, use)
    if o.ctx is not None and o.ctx < 1:  # 0 would silently mean the default below
        raise ConfigError(f"--ctx {o.ctx}: use at least 1 token (leave it out for the target's context)")
    trained = format_of(artifact.format).max_context(path)
    ctx = o.ctx or (tgt.context if tgt else o.fallback_ctx or default_ctx(trained))
    if engine.max_ctx and ctx > engine.max_ctx:
        raise ConfigError(
            f"--ctx {ctx} is too long: {engine.name} counts the context in 32 bits (at most "
            f"{engine.max_ctx}); pass a smaller --ctx"
        )
    if trained and ctx > trained:
        raise ConfigError(
            f"--ctx {ctx} is longer than {artifact.file} was trained for (n_ctx_train "
            f"{trained}); pass --ctx {trained} or less"
        )
    knobs = {
        **engine.knobs.defaults(),
        **(profile_knobs(tgt, engine) if tgt else {}),
        **_user_knobs(engine, o.knobs, use),
    }
    if use.scores_context:
        knobs = {k: v for k, v in knobs.items() if k not in FAKES_CONTEXT}
    return RunSettings(threads, ctx, knobs)
