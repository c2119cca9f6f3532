"""Fixtures the fault tests share."""

from __future__ import annotations

import shutil

import pytest


@pytest.fixture()
def ckpt(tiny_ckpt, tmp_path):
    """A fresh, writable copy of the tiny checkpoint: fault tests break it in place."""
    dst = tmp_path / "tiny-gemma4"
    shutil.copytree(tiny_ckpt, dst)
    return dst
