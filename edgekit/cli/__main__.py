"""`python -m edgekit.cli`: the same app as the `edgekit` command."""

from . import app

app()
