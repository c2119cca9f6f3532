"""Eval's records reach the results store as bench's do: the store is opened and a write is tried
before anything is measured (a bad --db fails in a second, not after the reference pass), and the
records are printed before they are appended, so a store that fails late loses none of them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional

import click

from ..core.errors import OutputError
from ..results import Store


@contextmanager
def stored_after_printing(
    db: Optional[Path], table: str, store: bool = True
) -> Iterator[Callable[[list[Any], Callable[[list[Any]], str]], None]]:
    """``with stored_after_printing(db, "quality") as keep: ... keep(records, printer)``."""
    st = Store(db) if store else None
    if st is not None:
        st.check_writable(table)
    try:

        def keep(records: list[Any], printer: Callable[[list[Any]], str]) -> None:
            click.echo(printer(records), nl=False)
            if st is None:
                return
            try:
                st.append(records)
            except OutputError as e:
                raise OutputError(
                    f"{e.message.removesuffix('; pass --db elsewhere')}: the {len(records)} record(s) "
                    "above were printed but not stored; rerun with --db elsewhere"
                ) from None

        yield keep
    finally:
        if st is not None:
            st.close()
