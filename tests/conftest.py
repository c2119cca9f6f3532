"""Shared fixtures: tiny Gemma 4 checkpoints made once per session (no downloads, seconds)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("EDGEKIT_NO_PROGRESS", "1")

_BUILTIN_INTERN = sys.intern
_ANSIBLE_INTERN_PATCH = "ansible.module_utils._internal._patches._sys_intern_patch"


@pytest.fixture(autouse=True)
def _builtin_sys_intern(request):
    """ansible-core, once imported, replaces sys.intern with a callable object (its SysInternPatch) for the rest of
    the process, and torch's dynamo, imported later in it, refuses anything but a function there ("substitute_in_graph
    expects a function"). So every test ends with the builtin back; a test marked ``ansible`` gets ansible's patch
    again if an earlier test imported ansible."""
    patch = sys.modules.get(_ANSIBLE_INTERN_PATCH)
    if patch is not None and request.node.get_closest_marker("ansible"):
        patch.SysInternPatch.patch()
    yield
    sys.intern = _BUILTIN_INTERN


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    from edgekit.dev.synth import synth

    return synth(tmp_path_factory.mktemp("ckpt") / "tiny-gemma4", preset="tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_ckpt_nosoftcap(tmp_path_factory):
    from edgekit.dev.synth import synth

    return synth(tmp_path_factory.mktemp("ckpt") / "tiny-nosoftcap", preset="tiny", seed=1, softcap=False)


TRAINED = Path(__file__).resolve().parent / "data" / "tiny-trained"
TRAINED_16K = Path(__file__).resolve().parent / "data" / "tiny-trained-16k"
MANPAGES = Path(__file__).resolve().parent.parent / "edgekit" / "eval" / "data" / "manpages"


@pytest.fixture(scope="session")
def trained_ckpt():
    """The tiny Gemma 4 trained on Python's docs and code (committed; tests/data/tiny-trained/README.md)."""
    return TRAINED


@pytest.fixture(scope="session")
def trained_16k():
    """The tiny-16k Gemma 4 (16,384-token BPE) trained on Debian man pages in en/de/fr/es (committed;
    tests/data/tiny-trained-16k/README.md). Its held-out texts: trained_16k_heldout."""
    return TRAINED_16K


@pytest.fixture(scope="session")
def trained_16k_heldout():
    """language -> the fixture's held-out text (never trained on, disjoint from calibration.txt)."""
    return {lang: MANPAGES / f"heldout.{lang}.txt" for lang in ("en", "de", "fr", "es")}


@pytest.fixture(scope="session")
def trained_dist(tmp_path_factory):
    """The trained model's GGUF (F32, F16, Q8_0, Q4_0) and MLX bf16 artifacts, built once."""
    from edgekit.builder.pipeline import build

    return build(
        str(TRAINED),
        target="pi5",
        quants=["f32", "f16", "q8_0", "q4_0", "mlx-bf16"],
        out=tmp_path_factory.mktemp("trained-dist"),
    )


@pytest.fixture
def fake_backend(monkeypatch):
    """The pure-Python backend of tests/fake_backend.py, registered for one test: here, and in every
    child edgekit starts ($EDGEKIT_PLUGINS names the module; PYTHONPATH reaches tests/)."""
    import fake_backend as fb

    from edgekit.backends.registry import BACKENDS, PLUGINS_ENV

    here = str(Path(__file__).resolve().parent)
    monkeypatch.setenv(PLUGINS_ENV, "fake_backend")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")])))
    BACKENDS.register(fb.NAME, fb.BACKEND)
    yield fb
    BACKENDS.unregister(fb.NAME)
