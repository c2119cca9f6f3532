"""Command-line conventions shared by every command: one meaning per short flag (docs/run.md has the
table), llama-bench's spellings for the engine knobs users type most, `-v`/`-vv` anywhere on the line,
`-h`, `--version`, and the small table printer `targets`, `recipes` and `list` use."""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from importlib import metadata
from typing import Any, Optional

import typer

from .. import __version__
from ..core.errors import ConfigError

# -v: edgekit's progress notes and a one-line summary of llama.cpp's load; -vv: llama.cpp's whole log.
VERBOSITY = 0


def verbosity() -> int:
    return VERBOSITY


def set_verbosity(level: int, reset: bool = False) -> None:
    """``reset``: the group's -v (parsed first on every invocation, so CliRunner calls do not inherit)."""
    global VERBOSITY
    VERBOSITY = level if reset else max(VERBOSITY, level)
    level = logging.INFO if VERBOSITY else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(level)  # a -v after the command name comes after the group's call
    # Keep edgekit's own notes (one-liners such as dropped towers) visible without -v.
    logging.getLogger("edgekit").setLevel(logging.INFO if VERBOSITY else logging.WARNING)


def _on_verbose(ctx: Any, param: Any, value: int) -> int:
    if value:
        set_verbosity(value)
    return value


def add_verbose(group: Any, option: Any = None) -> None:
    """`-v` after the command name too (`edgekit run -v ART`), on every command and sub-command: a copy
    of the group's own -v option (typer's click), counted the same way, passed to no function."""

    if option is None:
        option = next((p for p in group.params if "-v" in getattr(p, "opts", ())), None)
        if option is None:
            return
    for cmd in group.commands.values():
        if hasattr(cmd, "commands"):
            add_verbose(cmd, option)
        elif not any("-v" in getattr(p, "opts", ()) for p in cmd.params):
            mine = copy.copy(option)
            mine.expose_value, mine.callback, mine.is_eager = False, _on_verbose, True
            cmd.params.append(mine)


HELP = {"help_option_names": ["-h", "--help"]}

# ---------------------------------------------------------------- llama-bench's knob spellings

MODEL = typer.Option(None, "-m", "--model", help="The artifact, as llama-cli's -m (instead of the first argument).")
UBATCH = typer.Option(
    None, "-ub", "--ubatch-size", help="llama.cpp n_ubatch (= --set n_ubatch=N); comma-separated values sweep in bench."
)
BATCH = typer.Option(None, "-b", "--batch-size", help="llama.cpp n_batch (= --set n_batch=N).")
FLASH = typer.Option(None, "-fa", "--flash-attn", help="on, off or auto (= --set flash_attn=...); 1/0 as llama-bench.")
# Options several commands share, declared once.
INVENTORY = typer.Option(
    None,
    "--inventory",
    "-i",
    help=(
        "Lab inventory: edgekit's TOML, or an Ansible inventory (INI or YAML; hosts need edgekit_target) (default: "
        "targets/lab.toml)."
    ),
)
METHOD = typer.Option("auto", "--method", help="Copy with rsync (auto: when both ends have rsync >= 3) or scp.")
VIA = typer.Option(
    "ssh",
    "--via",
    help=(
        "ssh: edgekit's own fan-out (small labs); ansible: the shipped playbook (deploy/ansible) run by "
        "ansible-runner (fleets)."
    ),
)
FORKS = typer.Option(16, "--forks", min=1, help="Devices worked on at once (Ansible forks; SSH threads).")
ART = typer.Argument(
    None, help="A .gguf file, an MLX folder, or a dist folder (its first, recommended artifact); or -m."
)
TARGET = typer.Option(None, "--target", help="Target profile whose \\[runtime] knobs to use. Default: the manifest's.")
KNOB = typer.Option(None, "--set", help="Engine knob over the target's \\[runtime], e.g. --set n_ubatch=128.")
CTX = typer.Option(
    None,
    "--ctx",
    "-c",
    "--ctx-size",
    min=1,
    help="Context size. Default: the target's, else min(the model's n_ctx_train, 4096).",
)
THREADS = typer.Option(None, "--threads", "-t", min=1, help="Default: the target's, capped at this host's cores.")


def knob_items(
    knob: Optional[list[str]], ubatch: Optional[str] = None, batch: Optional[str] = None, flash: Optional[str] = None
) -> list[str]:
    """--set items with llama-bench's spellings appended (the engine's schema then checks the values)."""
    items = list(knob or [])
    fa = {"1": "on", "0": "off"}
    for key, value in (
        ("n_ubatch", ubatch),
        ("n_batch", batch),
        ("flash_attn", ",".join(fa.get(v.strip(), v.strip()) for v in flash.split(",")) if flash else None),
    ):
        if value is not None:
            if any(i.split("=", 1)[0].strip() == key for i in items):
                raise ConfigError(f"{key} is given twice (--set {key}=... and its short spelling); give it once")
            items.append(f"{key}={value}")
    return items


def artifact_arg(artifact: Any, model: Any, prompt_arg: Optional[str] = None) -> tuple[Any, Optional[str]]:
    """The artifact from the first argument or -m; with -m, a lone positional is the prompt."""

    if model is not None:
        if artifact is not None and prompt_arg is not None:
            raise ConfigError("with -m MODEL, give at most one more argument (the prompt)")
        return model, (str(artifact) if artifact is not None else prompt_arg)
    if artifact is None:
        raise ConfigError("name the artifact: a .gguf file, an MLX folder or a build folder (or -m PATH)")
    return artifact, prompt_arg


# ---------------------------------------------------------------- tables


def table(header: Sequence[str], rows: Sequence[Sequence[Any]], right: Sequence[int] = ()) -> str:
    """A plain, aligned text table with a header, as `ollama list` prints."""
    cells = [[str(h) for h in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = []
    for r in cells:
        parts = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))]
        lines.append("   ".join(parts).rstrip())
    return "\n".join(lines) + "\n"


def version_line() -> str:
    """edgekit's version and its engines', as `llama-cli --version` names its build."""

    parts = []
    for dist in ("llama-cpp-python", "mlx", "mlx-lm", "transformers"):
        try:
            parts.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            parts.append(f"{dist} not installed")
    return f"edgekit {__version__} ({', '.join(parts)})"


def csv_values(value: Optional[str]) -> Optional[list[str]]:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None
