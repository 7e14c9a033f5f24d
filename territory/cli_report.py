"""``territory report``: each main grid's own analysis, as HTML pages and printable PDFs.

Registered on the main app in :mod:`territory.cli`; its helpers are imported inside the
command because that module imports this one while it is being loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def report(
    ctx: typer.Context,
    plan: Annotated[Path, typer.Argument(help="A plan folder (territory plan/demo --out) "
                                               "or its plan.gpkg")],
    out: Annotated[Path, typer.Option(help="Output folder: <main grid>.html/.pdf and "
                                           "index.html")],
    points_crs: Annotated[str | None, typer.Option(help="CRS of the point tables' coordinates "
                                                        "(required): wgs84, cgcs2000, gcj02, "
                                                        "bd09 or EPSG:N")] = None,
    customers: Annotated[Path | None, typer.Option(help="Customers (CSV/Parquet): value "
                                                        "tiers from 'segment'")] = None,
    communities: Annotated[Path | None, typer.Option(help="Communities: the ranked target "
                                                          "list")] = None,
    stores: Annotated[Path | None, typer.Option(help="Stores (owned channels)")] = None,
    key_accounts: Annotated[Path | None, typer.Option(help="Key accounts: counts by 'kind'")]
    = None,
    staff: Annotated[Path | None, typer.Option(help="staff.csv of territory staff, or its "
                                                    "folder: staff table and workload per "
                                                    "staff member")] = None,
    target_penetration: Annotated[float, typer.Option(help="Penetration the headroom is "
                                                           "measured to (share, e.g. 0.6)")]
    = 0.6,
    online_tiles: Annotated[bool, typer.Option(help="Offer an online base map layer on the "
                                                    "maps (off until ticked)")] = True,
    pdf: Annotated[bool, typer.Option(help="Write each grid's printable PDF too (embedding "
                                           "the Chinese font takes about a second each)")]
    = True,
) -> None:
    """Every main grid's own analysis: a self-contained HTML page (map, KPIs, comparison
    with its branch and the city, communities to work, staff) and a printable PDF, and a
    city page (index.html) linking them."""
    from territory.cli_common import _errors, console, err_console, require_crs
    from territory.cli_output import progress, stage
    from territory.mapdata import PlanLayers
    from territory.pipeline import read_points
    from territory.plan import Plan
    from territory.reports import read_staff, write_reports
    from territory.stores import with_plan_stores

    with _errors(ctx):
        files = {"customers": customers, "communities": communities, "stores": stores,
                 "key_accounts": key_accounts}
        if any(files.values()):
            require_crs(points_crs, "--points-crs")
        roster = read_staff(staff) if staff is not None else None
        with stage(err_console, "plan and point tables read"):
            saved = Plan.load(plan)
            layers = PlanLayers(saved)
            tables = with_plan_stores(saved, {
                name: read_points(path, crs=points_crs, name=name)
                for name, path in files.items() if path is not None})
        with progress(err_console) as show:
            written = write_reports(layers, out, tables, roster,
                                    target_penetration=target_penetration,
                                    online_tiles=online_tiles, pdf=pdf,
                                    progress=lambda done, total: show("grid reports", done,
                                                                      total))
        console.print(f"{len(written) - 1} grid reports → {out} (open {out / 'index.html'})")
