"""The edgekit app: the command group, its global options, and where errors become exit codes.

Library code raises EdgekitError; only here does that become one line on stderr and an exit code.
Results go to stdout, progress and logging to stderr.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any, Optional

import click
import typer
from typer.core import TyperGroup

from ..core.errors import EdgekitError
from .options import HELP, add_verbose, set_verbosity, version_line


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the main thread is, so it unwinds through the same cleanup as Ctrl-C."""


# A dropped SIGTERM is sent again this much later, from another thread: after the hook below has
# returned, and short beside the second or two a user waits for `kill` to end the process.
RESEND_S = 0.01


def _resend() -> None:
    t = threading.Timer(RESEND_S, os.kill, (os.getpid(), signal.SIGTERM))
    t.daemon = True
    t.start()


def _in_hook(frame: Optional[FrameType]) -> bool:
    while frame is not None:
        if frame.f_code is _on_unraisable.__code__:
            return True
        frame = frame.f_back
    return False


def _on_sigterm(signum: int, frame: Optional[FrameType]) -> None:
    if _in_hook(frame):  # raised inside the hook it would be dropped as well
        _resend()
        return
    # Once: a second SIGTERM must not cut the cleanup the first one started (SIGKILL still ends it).
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise _Terminated()


def _on_unraisable(u: Any) -> None:
    """``sys.unraisablehook`` while a command runs: it re-arms a SIGTERM Python dropped. The handler raises
    at the main thread's next bytecode, and where that is a ctypes callback (llama.cpp's log: 960 calls
    while the tiny model loads, more and slower for E2B on a loaded host) or a ``__del__``, Python prints
    the exception and goes on, SIGTERM then ignored: `eval --suite` decoded its whole suite, and only
    SIGKILL ended it."""
    if isinstance(u.exc_value, _Terminated):
        signal.signal(signal.SIGTERM, _on_sigterm)
        _resend()
    else:
        _hooks[-1](u)


_hooks: list[Callable[[Any], Any]] = []  # the hook each running command replaced (the one to chain to)


class _Group(TyperGroup):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        add_verbose(self)

    def invoke(self, ctx: click.Context):
        # `kill`, systemd, a CI timeout and `docker stop` send SIGTERM: treat it like Ctrl-C (every
        # `finally` and `except BaseException` removes its partial files), then exit 128 + 15.
        main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, _on_sigterm) if main else None
        if main:
            _hooks.append(sys.unraisablehook)
            sys.unraisablehook = _on_unraisable
        try:
            return super().invoke(ctx)
        except EdgekitError as e:
            click.echo(f"edgekit: error: {e}", err=True)
            ctx.exit(e.exit_code)
        except _Terminated:
            click.echo("edgekit: terminated (SIGTERM); partial files were removed", err=True)
            ctx.exit(143)
        except KeyboardInterrupt:
            click.echo("edgekit: interrupted; partial files were removed", err=True)
            ctx.exit(130)
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
            if main:
                sys.unraisablehook = _hooks.pop()


app = typer.Typer(
    cls=_Group,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    context_settings=HELP,
    help="Convert, quantize, deploy and measure Gemma 4 E2B on Raspberry Pi 5 and Apple Silicon.",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(version_line())
        raise typer.Exit()


@app.callback()
def _main(
    verbose: int = typer.Option(
        0, "--verbose", "-v", count=True, help="Log progress details to stderr; -vv adds llama.cpp's full log."
    ),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print edgekit's version and its engines' and exit."
    ),
) -> None:
    set_verbosity(verbose, reset=True)
