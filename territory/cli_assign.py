"""``territory assign``: attach every customer of a file to its grids (batch 用户归属)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from territory.cli import _errors, _table, console, err_console
from territory.errors import InvalidInputError


def _geocoder(gazetteer: Path | None, service: str | None, options: list[str],
              service_crs: str):
    """The geocoder the options ask for: none, the offline gazetteer, or a geopy service."""
    from territory.geocode import Gazetteer, geopy_geocoder

    if gazetteer is not None and service is not None:
        raise InvalidInputError("give --gazetteer or --geocoder-service, not both")
    if gazetteer is not None:
        return Gazetteer.from_csv(gazetteer)
    if service is None:
        return None
    kwargs = {}
    for opt in options:
        key, sep, value = opt.partition("=")
        if not sep or not key:
            raise InvalidInputError(f"--geocoder-option {opt!r}: write KEY=VALUE, e.g. "
                                    "user_agent=my-company-territory")
        kwargs[key] = value
    return geopy_geocoder(service, crs=service_crs, **kwargs)


def assign(
    plan: Annotated[Path, typer.Argument(help="Plan folder (plan --out) or its plan.gpkg")],
    input: Annotated[Path, typer.Argument(help="Customers, CSV or Parquet")],
    out: Annotated[Path, typer.Option(help="Output file, CSV or Parquet by suffix")],
    crs: Annotated[str, typer.Option(help="wgs84, cgcs2000, gcj02, bd09 or EPSG:N")] = "wgs84",
    crs_column: Annotated[str | None, typer.Option(help="Column naming each row's CRS "
                                                        "(blank: --crs)")] = None,
    lng_column: Annotated[str, typer.Option(help="Longitude / easting column")] = "lng",
    lat_column: Annotated[str, typer.Option(help="Latitude / northing column")] = "lat",
    address_column: Annotated[str | None, typer.Option(help="Address column, geocoded for "
                                                            "rows without coordinates")] = None,
    gazetteer: Annotated[Path | None, typer.Option(help="CSV address,lng,lat[,crs]: offline "
                                                        "geocoder")] = None,
    geocoder_service: Annotated[str | None, typer.Option(help="geopy service name (sends "
                                                              "addresses out; off by "
                                                              "default)")] = None,
    geocoder_option: Annotated[list[str] | None, typer.Option(help="KEY=VALUE for the geopy "
                                                                   "service")] = None,
    geocoder_crs: Annotated[str, typer.Option(help="CRS the service answers in")] = "wgs84",
    chunk_size: Annotated[int, typer.Option(help="Rows per chunk")] = 200_000,
    rebuild_index: Annotated[bool, typer.Option(help="Rebuild <plan>.index.npz")] = False,
) -> None:
    """Assign every row to its sub-grid, main grid and branch; no row is dropped."""
    import pandas as pd

    from territory.assign import Columns, assign_file, open_index
    from territory.atomic import sweep

    with _errors():
        sweep(out.parent)  # what killed runs left beside the output
        geocoder = _geocoder(gazetteer, geocoder_service, geocoder_option or [], geocoder_crs)
        columns = Columns(lng=lng_column, lat=lat_column, crs=crs, crs_column=crs_column,
                          address_column=address_column)
        with console.status(f"opening the plan and its assignment index ({plan})"):
            index = open_index(plan, rebuild=rebuild_index)
        with Progress(SpinnerColumn(), TextColumn("assigning"), BarColumn(),
                      TextColumn("{task.completed:,} rows"), TimeElapsedColumn(),
                      console=err_console) as bar:
            task = bar.add_task("assign", total=None)

            def progress(done: int, total: int | None) -> None:
                bar.update(task, completed=done, total=total)

            counts = assign_file(index, input, out, columns=columns, geocoder=geocoder,
                                 chunk_size=chunk_size, progress=progress)
        summary = pd.DataFrame({"status": list(counts), "rows": list(counts.values())})
        console.print(_table(summary, f"{sum(counts.values()):,} rows → {out}"))
