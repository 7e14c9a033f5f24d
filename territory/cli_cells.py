"""``territory cells``: the H3 cell → grid table a warehouse joins customers on."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from territory.cli_common import _errors, console, err_console
from territory.cli_output import stage


def cells(
    ctx: typer.Context,
    plan: Annotated[Path, typer.Argument(help="Plan GeoPackage (territory plan/demo output)")],
    resolution: Annotated[int, typer.Option(help="H3 resolution of the cells (5-12; 9 is "
                                                 "about 0.1 km² a cell)")],
    out: Annotated[Path, typer.Option(help="Output Parquet file")],
) -> None:
    """Write every H3 cell of the service area with its sub-grid (interior cells) or its
    candidate sub-grids (cells crossing a boundary): assign by an equi-join on the cell and
    send only boundary cells' customers to `territory assign`."""
    from territory.cells import write_cell_table
    from territory.plan import Plan

    with _errors(ctx):
        with stage(err_console, f"cells of {plan} at resolution {resolution}"):
            table = write_cell_table(Plan.load(plan), resolution, out)
        interior = table["interior"].to_numpy().sum()
        console.print(f"{table.num_rows:,} cells → {out}: {interior:,} inside one sub-grid, "
                      f"{table.num_rows - interior:,} crossing a boundary")
