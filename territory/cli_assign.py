"""``territory assign``: attach every customer of a file to its grids (batch 用户归属)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from territory.cli_common import _errors, _table, console, err_console, require_crs, warn
from territory.cli_output import progress, stage
from territory.errors import InvalidInputError
from territory.geocode import DEFAULT_MIN_SCORE
from territory.tables import CHUNK_ROWS


def _geocoder(gazetteer: Path | None, gazetteer_crs: str | None, min_score: float,
              service: str | None, options: list[str], service_crs: str | None):
    """The geocoder the options ask for: none, the offline gazetteer, or a geopy service."""
    from territory.geocode import Gazetteer, geopy_geocoder

    if gazetteer is not None and service is not None:
        raise InvalidInputError("give --gazetteer or --geocoder-service, not both")
    if gazetteer is not None:
        return Gazetteer.from_csv(gazetteer, crs=gazetteer_crs, min_score=min_score)
    if service is None:
        return None
    kwargs = {}
    for opt in options:
        key, sep, value = opt.partition("=")
        if not sep or not key:
            raise InvalidInputError(f"--geocoder-option {opt!r}: write KEY=VALUE, e.g. "
                                    "user_agent=my-company-territory")
        kwargs[key] = value
    # AMap answers in GCJ-02, Baidu in BD-09: the system is never assumed
    return geopy_geocoder(service, crs=require_crs(service_crs, "--geocoder-crs"), **kwargs)


def assign(
    ctx: typer.Context,
    plan: Annotated[Path, typer.Argument(help="Plan folder (plan --out) or its plan.gpkg")],
    input: Annotated[Path, typer.Argument(help="Customers, CSV or Parquet")],
    out: Annotated[Path, typer.Option(help="Output file, CSV or Parquet by suffix")],
    crs: Annotated[str | None, typer.Option(help="CRS of the coordinates (required unless "
                                                 "--crs-column names every row's): wgs84, "
                                                 "cgcs2000, gcj02, bd09 or EPSG:N")] = None,
    crs_column: Annotated[str | None, typer.Option(help="Column naming each row's CRS "
                                                        "(blank: --crs)")] = None,
    lng_column: Annotated[str, typer.Option(help="Longitude / easting column")] = "lng",
    lat_column: Annotated[str, typer.Option(help="Latitude / northing column")] = "lat",
    encoding: Annotated[str, typer.Option(help="Text encoding of a CSV input, e.g. gb18030 "
                                               "or gbk")] = "utf-8",
    address_column: Annotated[str | None, typer.Option(help="Address column, geocoded for "
                                                            "rows without coordinates")] = None,
    gazetteer: Annotated[Path | None, typer.Option(help="CSV address,lng,lat[,crs,kind,"
                                                        "district,street]: offline "
                                                        "geocoder")] = None,
    gazetteer_crs: Annotated[str | None, typer.Option(help="CRS of the gazetteer's "
                                                           "coordinates (required unless its "
                                                           "crs column names every row's)")
                             ] = None,
    min_score: Annotated[float, typer.Option(help="Gazetteer match score (0-100) needed to "
                                                  "place an address; below: needs_review")
                         ] = DEFAULT_MIN_SCORE,
    geocoder_service: Annotated[str | None, typer.Option(help="geopy service name (sends "
                                                              "addresses out; off by "
                                                              "default)")] = None,
    geocoder_option: Annotated[list[str] | None, typer.Option(help="KEY=VALUE for the geopy "
                                                                   "service")] = None,
    geocoder_crs: Annotated[str | None, typer.Option(help="CRS the geocoding service answers "
                                                          "in (required with "
                                                          "--geocoder-service)")] = None,
    chunk_size: Annotated[int, typer.Option(help="Rows per chunk")] = CHUNK_ROWS,
    rebuild_index: Annotated[bool, typer.Option(help="Rebuild <plan>.index")] = False,
    previous: Annotated[Path | None, typer.Option(help="The previous run's output: with "
                                                       "--changes, report whose grid "
                                                       "changed")] = None,
    changes: Annotated[Path | None, typer.Option(help="Change report CSV (needs "
                                                      "--previous)")] = None,
    id_column: Annotated[str, typer.Option(help="Customer id column (change "
                                                "report)")] = "customer_id",
    scheduler: Annotated[str | None, typer.Option(help="Dask scheduler address "
                                                       "(tcp://host:8786): INPUT and --out "
                                                       "are Parquet dataset folders")] = None,
    workers: Annotated[int | None, typer.Option(help="Run on a local Dask cluster of N "
                                                     "worker processes (dataset "
                                                     "folders)")] = None,
) -> None:
    """Assign every row to its sub-grid, main grid and branch; no row is dropped."""
    import pandas as pd

    from territory.assign import Columns, assign_file, open_index
    from territory.atomic import sweep

    with _errors(ctx, lng="lng_column", lat="lat_column"):
        if crs_column is None and address_column is None:
            require_crs(crs, "--crs (or --crs-column)")
        sweep(out.parent)  # what killed runs left beside the output
        if (previous is None) != (changes is None):
            raise InvalidInputError("--previous and --changes go together: the previous "
                                    "run's output, and where to write the change report")
        geocoder = _geocoder(gazetteer, gazetteer_crs, min_score, geocoder_service,
                             geocoder_option or [], geocoder_crs)
        columns = Columns(lng=lng_column, lat=lat_column, crs=crs, crs_column=crs_column,
                          address_column=address_column)
        if scheduler is not None or workers is not None:
            if geocoder is not None or previous is not None:
                raise InvalidInputError("a distributed run (--scheduler/--workers) takes "
                                        "coordinates only: no --gazetteer, geocoder or "
                                        "--previous; run those on one machine")
            counts = _assign_distributed(plan, input, out, columns, chunk_size, scheduler,
                                         workers)
            summary = pd.DataFrame({"status": list(counts), "rows": list(counts.values())})
            console.print(_table(summary, f"{sum(counts.values()):,} rows → {out}"))
            return
        with stage(err_console, f"assignment index of {plan} opened"):
            index = open_index(plan, rebuild=rebuild_index)
        with progress(err_console) as show:
            def rows(done: int, total: int | None) -> None:
                show("customers assigned", done, total)

            rows(0, None)
            counts = assign_file(index, input, out, columns=columns, geocoder=geocoder,
                                 chunk_size=chunk_size, progress=rows, on_warning=warn,
                                 encoding=encoding)
            rows(sum(counts.values()), sum(counts.values()))  # CSV totals are known at the end
        summary = pd.DataFrame({"status": list(counts), "rows": list(counts.values())})
        console.print(_table(summary, f"{sum(counts.values()):,} rows → {out}"))
        if previous is not None:
            _report_changes(previous, out, changes, id_column, lng_column, lat_column,
                            address_column, encoding)


def _assign_distributed(plan: Path, input: Path, out: Path, columns, chunk_size: int,
                        scheduler: str | None, workers: int | None) -> dict[str, int]:
    from territory.distributed import assign_dataset, cluster_client

    with cluster_client(scheduler, workers) as client, progress(err_console) as show:
        def rows(done: int, total: int | None) -> None:
            show("customers assigned", done, total)

        rows(0, None)
        return assign_dataset(plan, input, out, columns=columns, client=client,
                              chunk_size=chunk_size, progress=rows, on_warning=warn)


def _report_changes(previous: Path, current: Path, out: Path, id_column: str, lng: str,
                    lat: str, address: str | None, encoding: str) -> None:
    import pandas as pd

    from territory.changes import ChangeColumns, changes, write_changes

    with stage(err_console, "change report"):
        report = changes(previous, current, encoding=encoding,
                         columns=ChangeColumns(id=id_column, lng=lng, lat=lat,
                                               address=address))
        write_changes(report, out)
    counts = report["reason"].value_counts()
    summary = pd.DataFrame({"reason": counts.index, "customers": counts.to_numpy()})
    console.print(_table(summary, f"{len(report):,} changed customers → {out}"))


def changes_command(
    ctx: typer.Context,
    previous: Annotated[Path, typer.Argument(help="The previous run's assigned file")],
    current: Annotated[Path, typer.Argument(help="Tonight's assigned file")],
    out: Annotated[Path, typer.Option(help="Change report, CSV")],
    id_column: Annotated[str, typer.Option(help="Customer id column")] = "customer_id",
    lng_column: Annotated[str, typer.Option(help="Longitude / easting column")] = "lng",
    lat_column: Annotated[str, typer.Option(help="Latitude / northing column")] = "lat",
    address_column: Annotated[str | None, typer.Option(help="Address column (a changed "
                                                            "address is a move)")] = None,
    encoding: Annotated[str, typer.Option(help="Text encoding of CSV inputs")] = "utf-8",
) -> None:
    """Customers whose grid changed, appeared or disappeared between two runs, and why."""
    with _errors(ctx, lng="lng_column", lat="lat_column"):
        _report_changes(previous, current, out, id_column, lng_column, lat_column,
                        address_column, encoding)
