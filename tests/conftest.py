"""Shared fixtures: tiny Gemma 4 checkpoints made once per session (no downloads, seconds)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("EDGEKIT_NO_PROGRESS", "1")


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    from edgekit.synth import synth

    return synth(tmp_path_factory.mktemp("ckpt") / "tiny-gemma4", preset="tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_ckpt_nosoftcap(tmp_path_factory):
    from edgekit.synth import synth

    return synth(tmp_path_factory.mktemp("ckpt") / "tiny-nosoftcap", preset="tiny", seed=1, softcap=False)
