"""Typed errors. Every message says what went wrong and how to fix it, in one line.

Only the CLI turns these into an exit code; library code raises them and never exits.
"""

from __future__ import annotations


class EdgekitError(Exception):
    """Base class: a problem the user can act on. ``exit_code`` is what the CLI returns."""

    exit_code = 1

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class CheckpointError(EdgekitError):
    """The model directory or hub id is missing, unreadable or not a Gemma 4 checkpoint."""


class TokenizerError(CheckpointError):
    """The checkpoint's tokenizer files are missing or unreadable."""


class HubError(CheckpointError):
    """A hub id could not be resolved (offline, unknown repo, gated)."""


class ConfigError(EdgekitError):
    """A target profile or quant recipe is unknown or malformed."""


class ConversionError(EdgekitError):
    """A format converter could not write its artifact."""


class QuantizeError(ConversionError):
    """llama.cpp's quantizer failed."""


class OutputError(EdgekitError):
    """The output location cannot be written (permissions, full disk)."""


class EngineMissingError(EdgekitError):
    """An engine (llama-cpp-python, mlx) is not importable on this machine."""


class ArtifactError(EdgekitError):
    """An artifact or manifest is missing, corrupt, or does not match its sha256."""


class BenchError(EdgekitError):
    """A benchmark run failed."""


class BudgetExceeded(EdgekitError):
    """A measured peak is over the target's memory budget."""

    exit_code = 3


class LabError(EdgekitError):
    """A device in the lab inventory could not be reached or used."""
