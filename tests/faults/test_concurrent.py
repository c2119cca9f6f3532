"""Two `edgekit build` runs into one output folder at once, as separate processes.

Each round builds seed-1 and seed-2 checkpoints of the same name into the same folder. Whatever the
interleaving, the manifest left must vouch only for bytes one build wrote and hashed: its source hash
is one seed's, and every artifact's sha256 is that seed's reference build's, byte for byte; then
`edgekit bench` verifies every entry before it runs them.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import time

import pytest
from faultkit import edgekit_cmd, env, hidden_leftovers, run_cli

from edgekit.builder.manifest import read_manifest, verify
from edgekit.model.checkpoint import sha256_file

QUANTS = "f16,q8_0"  # one written by the converter, one by llama.cpp's quantizer from an intermediate
WAIT_LINE = "another edgekit build is writing here; waiting for it to finish"


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    """Two checkpoints named alike (tiny-gemma4) from seeds 1 and 2, and each one's reference build."""
    from edgekit.builder.pipeline import build
    from edgekit.dev.synth import synth

    root = tmp_path_factory.mktemp("seeds")
    out = {}
    for seed in (1, 2):
        ckpt = synth(root / f"s{seed}" / "tiny-gemma4", preset="tiny", seed=seed)
        ref = build(str(ckpt), target="pi5", quants=QUANTS.split(","), out=root / f"ref{seed}")
        m = read_manifest(ref)
        out[seed] = (ckpt, m.source["sha256"], {a.file: a.sha256 for a in m.artifacts})
    assert out[1][2].keys() == out[2][2].keys() and set(out[1][2].values()).isdisjoint(out[2][2].values())
    return out


def _start(ckpt, out, log):
    return subprocess.Popen(
        edgekit_cmd("build", "-m", ckpt, "-q", QUANTS, "--out", out),
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=open(log, "w"),
    )


def _check_folder(folder, seeds):
    m = read_manifest(folder)
    seed = next(s for s, (_, src, _) in seeds.items() if src == m.source["sha256"])
    assert {a.file: a.sha256 for a in m.artifacts} == seeds[seed][2]
    for a in m.artifacts:
        assert sha256_file(folder / a.file) == a.sha256
    assert verify(folder, m) == []
    assert hidden_leftovers(folder) == []
    return seed


def test_two_builds_into_one_folder_leave_a_manifest_for_one_of_them(seeds, tmp_path):
    out = tmp_path / "dist"
    folder = out / "tiny-gemma4" / "pi5"
    winners = []
    for round_ in range(4):
        logs = [tmp_path / f"r{round_}-s{s}.log" for s in (1, 2)]
        held = None
        if round_ == 0:
            # First round: hold the folder's lock so both builds are certainly running, and waiting,
            # at the same time; the later rounds race freely.
            folder.mkdir(parents=True)
            held = os.open(folder, os.O_RDONLY)
            fcntl.flock(held, fcntl.LOCK_EX)
        procs = [_start(seeds[s][0], out, log) for s, log in zip((1, 2), logs, strict=True)]
        if held is not None:
            deadline = time.monotonic() + 120
            while not all(WAIT_LINE in log.read_text() for log in logs):
                assert time.monotonic() < deadline, [log.read_text() for log in logs]
                assert all(p.poll() is None for p in procs)
                time.sleep(0.05)
            os.close(held)  # now both race for the lock
        rcs = [p.wait(timeout=300) for p in procs]
        assert rcs == [0, 0], [log.read_text() for log in logs]
        if held is not None:
            for log in logs:
                assert f"WARNING edgekit.builder.staging: {folder}: {WAIT_LINE}" in log.read_text().splitlines()
        winners.append(_check_folder(folder, seeds))
    # bench checks every manifest entry's bytes and sha256 before it runs anything, then runs them.
    res = run_cli("bench", folder, "-p", "4", "-n", "2", "-r", "1", "--no-store", "-o", "json", timeout=600)
    assert res.returncode == 0, res.stderr
    m = read_manifest(folder)
    assert sorted(r["sha256"] for r in json.loads(res.stdout)) == sorted(a.sha256 for a in m.artifacts)
