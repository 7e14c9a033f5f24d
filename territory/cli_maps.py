"""``territory map`` and ``territory export``: maps and files of a saved plan.

Registered on the main app in :mod:`territory.cli`. The helpers of that module are imported
inside the commands because it imports this one while it is being loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import pandas as pd
import typer

if TYPE_CHECKING:
    import geopandas as gpd

    from territory.crs_check import Warn

#: Point tables ``--data`` looks for, as ``<name>.csv`` or ``<name>.parquet``.
TABLE_NAMES = ("communities", "stores", "key_accounts", "customers")


def read_tables(data: Path | None, points_crs: str | None, *,
                areas: gpd.GeoDataFrame | None = None, encoding: str = "utf-8",
                on_warning: Warn | None = None) -> dict[str, pd.DataFrame]:
    """The point tables found in folder ``data`` (the demo's ``synthetic/``), coordinates
    converted to WGS84 from ``points_crs`` (required: never assumed) and, with ``areas``,
    each checked for a mistaken CRS (see :func:`territory.pipeline.read_points`)."""
    from territory.errors import InvalidInputError
    from territory.pipeline import read_points

    if data is None:
        return {}
    if not data.is_dir():
        raise InvalidInputError(f"--data {data}: not a folder (give the folder holding "
                                f"{', '.join(f'{n}.csv' for n in TABLE_NAMES)})")
    tables = {}
    for name in TABLE_NAMES:
        for ext in (".csv", ".parquet"):
            path = data / f"{name}{ext}"
            if path.exists():
                tables[name] = read_points(path, crs=points_crs, name=name, areas=areas,
                                           encoding=encoding, on_warning=on_warning)
                break
    return tables


def _written(paths: list[Path], title: str) -> None:
    from territory.cli_common import _table, console

    rows = pd.DataFrame({"file": [str(p) for p in paths],
                         "size": [f"{p.stat().st_size / 1e6:.2f} MB" for p in paths]})
    console.print(_table(rows, title))


def map_command(
    ctx: typer.Context,
    plan: Annotated[Path, typer.Argument(help="Plan folder (plan --out) or its plan.gpkg")],
    out: Annotated[Path, typer.Option(help="Output folder")],
    grid: Annotated[str | None, typer.Option(help="A grid id: write its field map and "
                                                  "printable map instead of the city's")]
    = None,
    measure: Annotated[str | None, typer.Option(help="Choropleth measure, e.g. "
                                                     "dev_subscribers, penetration, staff "
                                                     "(default: deviation of the first "
                                                     "balanced measure)")] = None,
    level: Annotated[str, typer.Option(help="Level of the choropleth")] = "main_grid",
    scheme: Annotated[str, typer.Option(help="Quantiles, NaturalBreaks or EqualInterval")]
    = "Quantiles",
    data: Annotated[Path | None, typer.Option(help="Folder of communities/stores/"
                                                   "key_accounts/customers CSV files")] = None,
    points_crs: Annotated[str | None, typer.Option(help="CRS of the --data points "
                                                        "(required with --data): "
                                                        "wgs84, cgcs2000, gcj02, "
                                                        "bd09 or EPSG:N")] = None,
    encoding: Annotated[str, typer.Option(help="Text encoding of the --data CSV "
                                               "files, e.g. gb18030 or gbk")] = "utf-8",
    paper: Annotated[str | None, typer.Option(help="A4 or A3 (default A3 for the city, A4 "
                                                   "for a grid)")] = None,
    online_tiles: Annotated[bool, typer.Option(help="Offer an online base map layer (off "
                                                    "until ticked)")] = True,
    staff: Annotated[Path | None, typer.Option(help="staff.csv of territory staff: the "
                                                    "grid's staff in its field map")] = None,
) -> None:
    """Offline HTML maps and printable PNG/PDF maps of a plan: the city (overview and
    choropleth) or, with --grid, one grid's field map."""
    from territory.cli_common import _errors, console, require_crs, warn
    from territory.errors import InvalidInputError
    from territory.filenames import safe_filename
    from territory.mapdata import PlanLayers
    from territory.maps import choropleth_map, field_map, overview_map
    from territory.offline import save_map
    from territory.plan import Plan
    from territory.printmaps import print_city, print_grid
    from territory.stores import with_plan_stores

    with _errors(ctx):
        if grid is not None and measure is not None:
            raise InvalidInputError("--measure colours the city maps; drop it with --grid")
        if data is not None:
            points_crs = require_crs(points_crs, "--points-crs")  # before the plan is read
        with console.status("loading the plan and measuring its grids"):
            saved = Plan.load(plan)
            tables = with_plan_stores(saved, read_tables(
                data, points_crs, areas=saved.units, encoding=encoding, on_warning=warn))
            if staff is not None:
                from territory.staffing import read_staff_table

                tables["staff"] = read_staff_table(staff)
            layers = PlanLayers(saved)
        if grid is None:
            with console.status("drawing the city maps"):
                written = [
                    save_map(overview_map(layers, tables, online_tiles=online_tiles),
                             out / "overview.html"),
                    save_map(choropleth_map(layers, measure, level=level, scheme=scheme,
                                            tables=tables, online_tiles=online_tiles),
                             out / "choropleth.html"),
                    *print_city(layers, out / "city", tables, paper=paper or "A3"),
                ]
        else:
            name = safe_filename(grid)  # an id may hold "/" or ".."
            with console.status(f"drawing grid {grid}"):
                written = [
                    save_map(field_map(layers, grid, tables, online_tiles=online_tiles),
                             out / f"{name}.html"),
                    *print_grid(layers, grid, out / name, tables, paper=paper or "A4"),
                ]
        _written(written, f"maps of plan {layers.plan.plan_id} → {out}")


def export(
    ctx: typer.Context,
    plan: Annotated[Path, typer.Argument(help="Plan folder (plan --out) or its plan.gpkg")],
    format: Annotated[str, typer.Option("--format", help="geojson, gpkg, kml or csv")],
    out: Annotated[Path, typer.Option(help="Output folder")],
    level: Annotated[list[str] | None, typer.Option(help="branch, main_grid or sub_grid "
                                                         "(repeat; default all)")] = None,
    crs: Annotated[str, typer.Option(help="wgs84, or gcj02 for Chinese web maps (GeoJSON "
                                          "only)")] = "wgs84",
    customers: Annotated[Path | None, typer.Option(help="Customer table (CSV/Parquet) to "
                                                        "assign to grids (csv format)")]
    = None,
    points_crs: Annotated[str | None, typer.Option(help="CRS of the customer coordinates "
                                                        "(required with --customers): wgs84, "
                                                        "cgcs2000, gcj02, bd09 or EPSG:N")]
    = None,
    encoding: Annotated[str, typer.Option(help="Text encoding of a CSV customer table, e.g. "
                                               "gb18030 or gbk")] = "utf-8",
    excel_safe: Annotated[bool, typer.Option(help="Prefix ' to CSV text cells a spreadsheet "
                                                  "would run as a formula (=, +, -, @); off "
                                                  "by default: ids stay exact for BOSS/CRM "
                                                  "imports")] = False,
    staff: Annotated[Path | None, typer.Option(help="staff.csv of territory staff, exported "
                                                    "beside the grids (csv format)")] = None,
) -> None:
    """Write a plan's grids as GeoJSON, GeoPackage, KML or CSV (unit → grid, customer →
    grid), level by level."""
    from territory.cli_common import _errors, console, require_crs, warn
    from territory.exports import export_plan
    from territory.pipeline import read_points
    from territory.plan import Plan

    with _errors(ctx):
        if customers is not None:
            points_crs = require_crs(points_crs, "--points-crs")  # before the plan is read
        saved = Plan.load(plan)
        table = (read_points(customers, crs=points_crs, name="customers", areas=saved.units,
                             encoding=encoding, on_warning=warn)
                 if customers is not None else None)
        people = None
        if staff is not None:
            from territory.staffing import read_staff_table

            people = read_staff_table(staff)
        with console.status(f"exporting {format}"):
            written = export_plan(saved, format, out, levels=level, crs=crs,
                                  customers=table, staff=people, excel_safe=excel_safe)
        _written(written, f"{format} → {out}")
