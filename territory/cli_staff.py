"""``territory staff``: whole people per grid by role, and named staff to grids."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from territory.cli_common import _errors, _table, console, err_console, require_crs
from territory.cli_output import stage


def staff(
    plan: Annotated[Path, typer.Argument(help="Plan GeoPackage (territory plan/demo output)")],
    roster: Annotated[Path, typer.Option(help="Roster CSV: person_id, name, role, hours, "
                                              "home_store_id or home_lng/home_lat/home_crs, "
                                              "current_grid, branch_id")],
    out: Annotated[Path, typer.Option(help="Output folder: staff.csv, grids_staffing.csv, "
                                           "roles_staffing.csv, staffing.json")],
    counts: Annotated[Path | None, typer.Option(help="CSV branch_id, role, headcount "
                                                     "(default: the roster's)")] = None,
    workload: Annotated[Path | None, typer.Option(help="Workload model TOML (default: the "
                                                       "shipped one)")] = None,
    stores: Annotated[Path | None, typer.Option(help="Stores CSV (store_id, lng, lat) for "
                                                     "home bases given as store ids")] = None,
    stores_crs: Annotated[str | None, typer.Option(help="CRS of --stores (required with it): "
                                                        "wgs84, cgcs2000, gcj02, bd09 or "
                                                        "EPSG:N")] = None,
    within: Annotated[float, typer.Option(help="Band around the mean workload per person "
                                               "for the headcount advice, e.g. 0.1")] = 0.10,
    time_limit: Annotated[float, typer.Option(help="Seconds per solve")] = 60.0,
) -> None:
    """Allocate staff to a plan's grids: counts by role, then each person to a grid."""
    import pandas as pd

    from territory.plan import Plan
    from territory.staffing import (
        StaffAllocator,
        read_counts,
        read_roster,
        read_stores,
        write_staffing,
    )
    from territory.workload import load_model

    with _errors():
        model = load_model(workload)
        people = read_roster(roster, default_hours=model.staff.monthly_hours)
        heads = read_counts(counts) if counts is not None else None
        shops = (read_stores(stores, crs=require_crs(stores_crs, "--stores-crs"))
                 if stores is not None else None)
        with stage(err_console, f"plan {plan} read"):
            p = Plan.load(plan)
        with stage(err_console, f"{len(people)} people allocated"):
            result = StaffAllocator(model, within=within, time_limit=time_limit).solve(
                p, people, counts=heads, stores=shops)
        with stage(err_console, "staffing written"):
            paths = write_staffing(result, out)
        rows = [{"role": role, "staff": s["staff"], "h/person mean": s["mean_per_staff"],
                 "max": s["max_per_staff"], "worst grid": s["worst_grid"],
                 f"headcount for ±{within:.0%}":
                     f"{s['branch_headcount_within']} in {s['worst_branch']} "
                     f"(now {s['branch_headcount']})"
                     if s["branch_headcount_within"] is not None else "-"}
                for role, s in result.summary_.items()]
        console.print(_table(pd.DataFrame(rows), f"staffing → {paths['staff'].parent}"))
        moved = int(result.staff_["moved"].sum())
        vac = int(result.grids_.query("level == 'main_grid'")["vacancies"].sum())
        console.print(f"{len(result.staff_)} positions; {moved} "
                      f"{'person changes' if moved == 1 else 'people change'} grid; "
                      f"{vac} vacancies")
