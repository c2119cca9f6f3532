"""The edgekit command line: each command is a short adapter over a library function, one module per
command group (build, lab, measure, chat, evaluate); app.py holds the group, the global options, and
the one place where library errors become a line on stderr and an exit code. Results go to stdout,
progress and logging to stderr."""

from . import build, lab, measure, chat, evaluate  # noqa: F401, I001  (each registers its commands on app, in help order)
from .app import app

__all__ = ["app", "main"]


def main() -> None:  # pragma: no cover - console entry point alias
    app()
