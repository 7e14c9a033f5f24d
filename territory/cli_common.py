"""What every ``territory`` command shares: the consoles, error printing (library parameter
names said as the command's flags), warnings, the CRS an option must give, balance specs,
CSV writing and tables.

The command modules (``territory.cli`` and ``territory.cli_*``) import this module, never each
other, so any of them can be imported first.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from territory.atomic import atomic_path
from territory.clock import process_started, time_left
from territory.errors import InfeasibleError, InvalidInputError, TerritoryError

console = Console()
err_console = Console(stderr=True)

#: ``ctx.meta`` key of the monotonic time the running command started (see :class:`App`)
STARTED = "territory.started"


class App(typer.Typer):
    """The ``territory`` app. Called as the process's entry (the console script), it notes
    the process's start, so that a command's time limit counts the imports too; invoked
    within a running process (a test's ``CliRunner``) a command counts from its own start."""

    _entry: float | None = None

    def __call__(self, *args, **kwargs):
        App._entry = process_started()
        return super().__call__(*args, **kwargs)


def mark_start(ctx: typer.Context) -> None:
    """Note in ``ctx.meta`` when this command started (the app's callback calls it)."""
    ctx.meta[STARTED] = App._entry if App._entry is not None else time.monotonic()
    App._entry = None


def search_time(ctx: typer.Context, time_limit: float) -> float:
    """What is left of ``time_limit`` for the search, so that the whole command, from its
    start (:func:`mark_start`) to its exit, fits in it; refuses when nothing is left."""
    started = ctx.meta.get(STARTED, time.monotonic())
    left = time_left(time_limit, started)
    if left <= 0:
        raise InvalidInputError(
            f"`time_limit` {time_limit:g} s: {time.monotonic() - started:.1f} s went on "
            "starting and reading the input, which leaves no time to search; give more time"
        )
    return left


def as_flags(message: str, ctx: typer.Context | None,
             aliases: Mapping[str, str] | None = None) -> str:
    """``message`` with the library's parameter names said as the command's options.

    Library messages name a parameter in backticks (`encoding`, `repair`); where the command
    of ``ctx`` has that option (or the one ``aliases`` maps it to, e.g. ``crs`` to
    ``boundaries_crs``) it becomes the flag (``--encoding``); other names stay as they are.
    """
    if ctx is None:
        return message
    flags = {p.name: p.opts[0] for p in ctx.command.params if p.opts[0].startswith("--")}
    aliases = aliases or {}

    def flag(m: re.Match[str]) -> str:
        return flags.get(aliases.get(m[1], m[1]), m[0])

    return re.sub(r"`(\w+)`", flag, message)


def _fail(exc: TerritoryError, ctx: typer.Context | None = None,
          aliases: Mapping[str, str] | None = None) -> None:
    err_console.print(f"[bold red]error:[/] {escape(as_flags(str(exc), ctx, aliases))}")
    raise typer.Exit(3 if isinstance(exc, InfeasibleError) else 2)


def warn(message: str) -> None:
    """Print a library warning (e.g. a batch that fits better in another CRS) for the user."""
    err_console.print(Text.assemble(("warning: ", "bold yellow"), message))


def require_crs(value: str | None, option: str) -> str:
    """The CRS an option gives; coordinates are never assumed to be WGS84."""
    if value is None:
        raise InvalidInputError(f"{option} is required: name the system of the coordinates "
                                "(wgs84, cgcs2000, gcj02, bd09 or EPSG:N)")
    return value


@contextmanager
def _errors(ctx: typer.Context | None = None, **aliases: str) -> Iterator[None]:
    """Print a library error as one message and exit 2, or 3 for unmet balance targets;
    with ``ctx``, parameters are named as the command's options (see :func:`as_flags`)."""
    try:
        yield
    except TerritoryError as exc:
        _fail(exc, ctx, aliases)


def parse_balance(specs: list[str], default: float | None) -> dict[str, float | None]:
    """``["subscribers=0.05", "workload"]`` -> ``{"subscribers": 0.05, "workload": default}``."""
    out: dict[str, float | None] = {}
    for spec in specs:
        name, _, tol = spec.partition("=")
        if not name:
            raise InvalidInputError(f"--balance {spec!r}: give COLUMN or COLUMN=TOLERANCE")
        try:
            out[name] = float(tol) if tol else default
        except ValueError:
            raise InvalidInputError(
                f"--balance {spec!r}: the tolerance must be a fraction such as 0.05 (±5 %)"
            ) from None
    return out


def write_csv(df: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def _table(df: pd.DataFrame, title: str) -> Table:
    t = Table(title=title)
    for c in df.columns:
        t.add_column(str(c))
    for row in df.itertuples(index=False):
        t.add_row(*map(str, row))
    return t
