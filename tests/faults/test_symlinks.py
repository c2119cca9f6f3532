"""Symlinks planted where edgekit writes: at every name a build, synth or report could predict
(the final names, the old fixed ``.NAME.partial`` temp names, the intermediate's name). Each link's
target must be left byte for byte as it was, and what ends up at the name is a regular file (or a
real folder), never the link, never written through it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from faultkit import hidden_leftovers, run_cli

from edgekit.builder.manifest import read_manifest, verify
from edgekit.core.fsutil import atomic_dir, atomic_path
from edgekit.model.checkpoint import sha256_file

VICTIM = b"precious bytes that must survive\n"


def plant(link: Path, victim: Path) -> None:
    victim.write_bytes(VICTIM)
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(victim)


def plant_dir(link: Path, victim_dir: Path) -> None:
    """A symlink at ``link`` to a folder holding keep.txt (see intact_dir)."""
    victim_dir.mkdir()
    (victim_dir / "keep.txt").write_bytes(VICTIM)
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(victim_dir, target_is_directory=True)


def intact_dir(victim_dir: Path) -> bool:
    return (
        sorted(p.name for p in victim_dir.iterdir()) == ["keep.txt"]
        and (victim_dir / "keep.txt").read_bytes() == VICTIM
    )


def test_build_writes_through_no_planted_link(tiny_ckpt, tmp_path):
    out = tmp_path / "dist"
    folder = out / "tiny-gemma4" / "pi5"
    names = [
        "tiny-gemma4-F16.gguf",
        "tiny-gemma4-Q8_0.gguf",
        "manifest.json",
        ".tiny-gemma4-F16.gguf.partial",
        ".tiny-gemma4-Q8_0.gguf.partial",
        ".manifest.json.partial",
        ".tiny-gemma4-BF16.intermediate.gguf",
        "..tiny-gemma4-BF16.intermediate.gguf.partial",
    ]
    victims = {}
    for i, n in enumerate(names):
        victims[n] = tmp_path / f"victim{i}"
        plant(folder / n, victims[n])
    res = run_cli("build", "-m", tiny_ckpt, "-q", "f16,q8_0", "--out", out)
    assert res.returncode == 0, res.stderr
    for n, v in victims.items():
        assert v.read_bytes() == VICTIM, n
    for a in read_manifest(folder).artifacts:
        p = folder / a.file
        assert not p.is_symlink() and p.is_file() and sha256_file(p) == a.sha256
    assert not (folder / "manifest.json").is_symlink()
    assert verify(folder) == []
    # The planted hidden links are the user's problem to remove, but they were never followed.
    assert sorted(p.name for p in folder.iterdir() if p.is_symlink()) == sorted(n for n in names if n.startswith("."))


def test_mlx_folder_artifact_replaces_a_planted_link_to_a_folder(tiny_ckpt, tmp_path):
    out = tmp_path / "dist"
    folder = out / "tiny-gemma4" / "m2"
    victim_dir = tmp_path / "victim_dir"
    plant_dir(folder / "tiny-gemma4-mlx-4bit-g64", victim_dir)
    plant(folder / ".tiny-gemma4-mlx-4bit-g64.partial", tmp_path / "victim_file")
    res = run_cli("build", "-m", tiny_ckpt, "--target", "m2", "-q", "mlx-4bit", "--out", out, timeout=600)
    assert res.returncode == 0, res.stderr
    assert intact_dir(victim_dir) and (tmp_path / "victim_file").read_bytes() == VICTIM
    art = folder / "tiny-gemma4-mlx-4bit-g64"
    assert art.is_dir() and not art.is_symlink() and (art / "config.json").is_file()
    assert verify(folder) == []


def test_synth_out_replaces_a_link_and_never_writes_through_the_old_temp_name(tmp_path):
    victim_dir = tmp_path / "victim_dir"
    plant_dir(tmp_path / "ck", victim_dir)
    plant(tmp_path / ".ck.partial", tmp_path / "victim_file")
    res = run_cli("synth", "--out", tmp_path / "ck", "--preset", "tiny")
    assert res.returncode == 0, res.stderr
    assert intact_dir(victim_dir) and (tmp_path / "victim_file").read_bytes() == VICTIM
    assert (
        (tmp_path / "ck").is_dir()
        and not (tmp_path / "ck").is_symlink()
        and (tmp_path / "ck" / "config.json").is_file()
    )


def test_atomic_path_temp_names_are_fresh_and_made_exclusively(tmp_path):
    """Two writers of one name get two temp files, each new (O_EXCL), and neither is a link."""
    target = tmp_path / "out.bin"
    plant(target, tmp_path / "victim")
    with atomic_path(target) as a, atomic_path(target) as b:
        assert a != b and a.parent == b.parent == tmp_path
        for t in (a, b):
            st = os.lstat(t)
            assert t.name.startswith(".out.bin.") and t.name.endswith(".partial") and st.st_size == 0
            assert not t.is_symlink()
        a.write_bytes(b"a")
        b.write_bytes(b"b")
    assert target.read_bytes() == b"a" and not target.is_symlink()  # the last rename wins, whole
    assert (tmp_path / "victim").read_bytes() == VICTIM
    assert hidden_leftovers(tmp_path) == []


def test_a_temp_file_swapped_for_a_link_is_never_renamed_into_place(tmp_path):
    target = tmp_path / "out.bin"
    victim = tmp_path / "victim"
    victim.write_bytes(VICTIM)
    from edgekit.core.errors import OutputError

    with (
        pytest.raises(OutputError, match=r"replaced by something else while being written; nothing was renamed"),
        atomic_path(target) as tmp,
    ):
        tmp.unlink()
        tmp.symlink_to(victim)
    assert not target.exists() and not target.is_symlink() and victim.read_bytes() == VICTIM
    assert hidden_leftovers(tmp_path) == []


def test_atomic_dir_replaces_a_link_without_following_it(tmp_path):
    victim_dir = tmp_path / "victim_dir"
    plant_dir(tmp_path / "art", victim_dir)
    with atomic_dir(tmp_path / "art") as tmp:
        (tmp / "x").write_text("new")
    assert (tmp_path / "art").is_dir() and not (tmp_path / "art").is_symlink()
    assert sorted(p.name for p in (tmp_path / "art").iterdir()) == ["x"]
    assert intact_dir(victim_dir)
