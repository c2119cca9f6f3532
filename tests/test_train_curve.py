"""synth --train's held-out curve: one loss per held-out text at step 0, every --eval-every steps and
at the end; a held-out text too short for one window is a one-line error before training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgekit.cli import app

pytest.importorskip("torch")
DATA = Path(__file__).resolve().parent.parent / "edgekit" / "eval" / "data"


@pytest.mark.slow
def test_curve_per_heldout_text(tmp_path):
    from edgekit.dev.train import TrainOptions, train

    opts = TrainOptions(steps=3, batch=1, seq=64, warmup=1, eval_every=2, eval_windows=1)
    held = [DATA / "manpages" / "heldout.de.txt", DATA / "manpages" / "heldout.es.txt"]
    out = train(tmp_path / "m", DATA / "train.txt", preset="tiny", opts=opts, heldout_path=held)
    log = json.loads((out / "train_log.json").read_text())
    assert [c["step"] for c in log["heldout_curve"]] == [0, 2, 3]
    for c in log["heldout_curve"]:
        assert set(c["per_text"]) == {"heldout.de.txt", "heldout.es.txt"}
        assert c["loss"] == pytest.approx(sum(c["per_text"].values()) / 2, abs=1e-3)
    assert log["heldout_loss_after"] == log["heldout_curve"][-1]["loss"]
    assert log["heldout"] == ["heldout.de.txt", "heldout.es.txt"]


def test_short_heldout_is_one_line(tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("zu kurz\n", encoding="utf-8")
    r = CliRunner().invoke(
        app,
        [
            "synth",
            "--preset",
            "tiny",
            "--train",
            str(DATA / "train.txt"),
            "--heldout",
            str(short),
            "--steps",
            "1",
            "--out",
            str(tmp_path / "m"),
        ],
    )
    assert r.exit_code != 0
    assert "too little held-out text" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "m").exists()
