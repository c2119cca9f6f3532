"""Tests share one process: what a library patches in one test must not break the next (tests/conftest.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent


def test_torch_dynamo_imports():
    """The probe the next test runs right after an ansible test, in a fresh process."""
    pytest.importorskip("torch")
    import torch._dynamo  # noqa: F401  # deferred: torch (seconds) only for this probe


def test_a_test_after_ansible_can_import_torch_dynamo():
    """ansible-core replaces sys.intern with a callable object when imported; torch's dynamo refuses one
    ("substitute_in_graph expects a function"). conftest puts the builtin back after each test."""
    pytest.importorskip("ansible_runner")
    pytest.importorskip("torch")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            f"{TESTS / 'test_lab_ansible.py'}::test_ini_and_yaml_inventories_with_group_and_host_vars",
            f"{Path(__file__).resolve()}::test_torch_dynamo_imports",
        ],
        capture_output=True,
        text=True,
        cwd=TESTS.parent,
        timeout=300,
    )
    assert r.returncode == 0 and "2 passed" in r.stdout, r.stdout[-3000:]
