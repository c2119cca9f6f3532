"""Integrity checks at the edges of a build: names that must stay inside a folder, a tokenizer that
must parse before it is copied, source weights that must be finite, a missing folder named as such.

The source scan reads each checkpoint file once, in order: every byte goes through sha256 (the
manifest's per-file hash, the same as ``checkpoint.sha256_file``) and every tensor's bytes are also
checked for NaN/Inf by their exponent bits (all ones in F32, F16 and BF16), so finding bad weights
costs no second read of a 9 GB checkpoint. The converter never sees most bytes: same-type tensors
are copied file to file in the kernel, which is why the check sits on the hashing pass instead.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import threading
from pathlib import Path
from typing import Any

from .errors import ArtifactError, CheckpointError, TokenizerError

# numpy is imported where it is used: targets.py and recipes.py import this module for the name checks,
# and a device venv made with --no-deps reads target profiles without numpy.

# Bit patterns: an element is NaN or ±Inf exactly when all its exponent bits are set.
_EXPONENT = {"F32": ("uint32", 0x7F800000), "F16": ("uint16", 0x7C00), "BF16": ("uint16", 0x7F80)}
_BLOCK = 8 << 20
# A recipe name or quant label, which ends up in file names: one plain, portable name.
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


# ---------------------------------------------------------------- names inside a folder

def check_member(name: Any, where: str) -> str:
    """``name`` if it is one plain file or folder name: not empty, . or .., no path separator or NUL,
    no leading dash (it reaches ssh and shell commands in deploy); else ArtifactError. Every manifest
    entry passes here when read, and every artifact before it is swapped into a build folder."""
    ok = (isinstance(name, str) and name not in ("", ".", "..") and not name.startswith("-")
          and not any(c in name for c in "/\\\0"))
    if not ok:
        raise ArtifactError(f"{where}: artifact name {name!r} is not a plain name inside the build folder "
                            "(absolute, .., or a path separator); rebuild with `edgekit build`")
    return name


def check_plain_name(value: Any, key: str, where: str, fix: str) -> str:
    """A recipe's name or quant, a target's name: they become file and folder names, so each must be
    one portable name (SAFE_NAME), never a path; else ConfigError."""
    if not (isinstance(value, str) and SAFE_NAME.match(value)):
        from .errors import ConfigError
        from .fields import shown

        raise ConfigError(f"{where}: {key} must be a plain name (letters, digits, . _ + -; no path separator "
                          f"or leading dot), not {shown(value)}; {fix}")
    return value


# ---------------------------------------------------------------- tokenizer

def check_tokenizer(checkpoint_dir: Path) -> None:
    """Parse tokenizer.json as the GGUF vocabulary writer does (one reader, one set of messages),
    before anything is written: an MLX build copies the file, a GGUF build reads it late."""
    from .formats.gguf.vocab import _read_tokenizer_json

    _read_tokenizer_json(Path(checkpoint_dir))
    check_chat_template(Path(checkpoint_dir))


def check_chat_template(checkpoint_dir: Path) -> None:
    """A checkpoint must carry its chat template where the converters read it, or `run` and `serve`
    refuse the artifact it builds: gguf-py (as llama.cpp's converter) reads tokenizer_config.json's
    chat_template, or chat_template.jinja only beside a tokenizer_config.json; MLX copies both."""
    cfg_path = checkpoint_dir / "tokenizer_config.json"
    fix = "copy tokenizer_config.json (and chat_template.jinja, if it has one) from the original checkpoint"
    if not cfg_path.is_file():
        raise TokenizerError(f"{checkpoint_dir}: no tokenizer_config.json, so no chat template or special tokens reach "
                             f"the artifacts (run and serve need them); {fix}")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise TokenizerError(f"{cfg_path}: unreadable ({e.__class__.__name__}); {fix}") from None
    template = cfg.get("chat_template") if isinstance(cfg, dict) else None
    if not template and not (checkpoint_dir / "chat_template.jinja").is_file():
        raise TokenizerError(f"{checkpoint_dir}: no chat template (tokenizer_config.json's chat_template or "
                             f"chat_template.jinja), which run and serve need; {fix}")


# ---------------------------------------------------------------- source hash + non-finite scan

class NonFinite(CheckpointError):
    """Source weights hold NaN or Inf."""


def _read_exact(f: Any, n: int, path: Path) -> bytes:
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = f.readinto(view[got:])
        if not k:
            raise CheckpointError(f"{path.name}: file ended while being read (truncated or being replaced); fetch it again")
        got += k
    return bytes(buf)


def _hash_and_scan(path: Path, refs: list[Any], found: dict[str, int], refuse: bool,
                   stop: threading.Event | None) -> str:
    h = hashlib.sha256()
    size = path.stat().st_size
    # (start, end, ref or None) regions in file order; a tensor overlapping an earlier one (a corrupt
    # header the reader let through) is scanned on its own below, its bytes already hashed.
    regions, pos, overlapping = [], 0, []
    for ref in sorted(refs, key=lambda r: r.offset):
        if ref.offset < pos:
            overlapping.append(ref)
            continue
        if ref.offset > pos:
            regions.append((pos, ref.offset, None))
        regions.append((ref.offset, ref.offset + ref.nbytes, ref))
        pos = ref.offset + ref.nbytes
    if size > pos:
        regions.append((pos, size, None))
    with open(path, "rb", buffering=0) as f:
        for start, end, ref in regions:
            bad = 0
            for at in range(start, end, _BLOCK):
                if stop is not None and stop.is_set():
                    return ""
                block = _read_exact(f, min(_BLOCK, end - at), path)
                h.update(block)
                if ref is not None:
                    bad += _count_nonfinite(block, ref.dtype)
            if bad:
                found[ref.name] = bad
                if refuse:
                    raise nonfinite_error(path.parent, found)
        if hasattr(os, "posix_fadvise"):   # one pass: leave the page cache as it was (see sha256_file)
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    for ref in overlapping:
        bad = sum(_count_nonfinite(c.tobytes(), ref.dtype) for c in ref.raw_chunks(_BLOCK))
        if bad:
            found[ref.name] = bad
            if refuse:
                raise nonfinite_error(path.parent, found)
    return h.hexdigest()


def _count_nonfinite(block: bytes, dtype: str) -> int:
    import numpy as np

    storage, mask = _EXPONENT[dtype]
    bits = np.frombuffer(block, dtype=storage)
    return int(np.count_nonzero((bits & mask) == mask))


def nonfinite_error(where: Path, found: dict[str, int]) -> NonFinite:
    name, n = next(iter(found.items()))
    more = f" ({len(found)} tensors in all)" if len(found) > 1 else ""
    return NonFinite(f"{where}: tensor {name} holds {n} NaN/Inf value(s){more}; the checkpoint is corrupt: fetch it "
                     "again, or pass --allow-nonfinite to build it anyway")


def source_fingerprint(ckpt: Any, stop: threading.Event | None = None,
                       refuse_nonfinite: bool = True) -> tuple[dict[str, Any], dict[str, int]]:
    """(fingerprint, non-finite counts): ``Checkpoint.fingerprint``'s per-file sha256s and total, and
    the number of NaN/Inf elements per text tensor that has any. With ``refuse_nonfinite`` the first
    such tensor raises NonFinite (once that tensor has been read)."""
    from .manifest import folder_digest

    by_file: dict[Path, list[Any]] = {}
    for ref in ckpt.tensors.values():
        by_file.setdefault(Path(ref.path), []).append(ref)
    found: dict[str, int] = {}
    per_file = {p.name: _hash_and_scan(p, by_file.get(p, []), found, refuse_nonfinite, stop) for p in ckpt.files()}
    return {"sha256": folder_digest(per_file.items()), "files": per_file}, found


def to_f16(chunk: Any, tensor: str) -> Any:
    """``chunk`` (finite float32) as float16, refusing values float16 cannot hold: they would turn
    into Inf in the artifact silently (bf16 and f32 sources reach ±3.4e38, float16 ±65504)."""
    import numpy as np

    with np.errstate(over="ignore"):   # counted and reported below instead of a RuntimeWarning
        out = chunk.astype(np.float16)
    bad = int(np.count_nonzero(~np.isfinite(out)))
    if bad and np.isfinite(chunk).all():
        from .errors import ConversionError

        raise ConversionError(f"tensor {tensor}: {bad} value(s) beyond float16's range (±65504) would become Inf "
                              "in an F16 file; build the f32 recipe or a quantized one instead")
    return out


# ---------------------------------------------------------------- a local path that does not exist

def looks_like_path(text: str) -> bool:
    """A model argument a user meant as a folder: a separator beyond owner/name, a leading . / ~,
    or a parent folder that exists here."""
    if text.startswith((".", "/", "~")) or "\\" in text or text.count("/") > 1:
        return True
    parent = Path(text).expanduser().parent
    return parent != Path(".") and parent.is_dir()


def missing_folder(model: str, hub_said: str | None) -> CheckpointError:
    """'no such folder' for ``model``, with the nearest names in its parent, and what the hub said
    when it was also tried as a hub id (None: it is not of the owner/name form)."""
    p = Path(model).expanduser()
    parent = p.parent
    hint = ""
    if parent.is_dir():
        try:
            names = [c.name for c in parent.iterdir() if c.is_dir()]
        except OSError:
            names = []
        close = difflib.get_close_matches(p.name, names, n=1)
        hint = f" ({parent} has no {p.name}" + (f"; did you mean {parent / close[0]}?)" if close else ")")
    if hub_said is None:
        return CheckpointError(f"{model}: no such folder{hint}, and not a hub id of the form owner/name")
    return CheckpointError(f"{model}: no such folder{hint}; also tried as a hub id: {hub_said}")
