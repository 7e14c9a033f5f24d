"""Redrawing an existing grid map: ``territory import``, ``history``, ``diff``.

The operator's own grids are the starting point (issue 9): import and audit them, then
compare versions. Commands are registered in :mod:`territory.cli`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import pandas as pd
import typer

from territory.atomic import write_json
from territory.cli_common import (
    _errors,
    _table,
    console,
    parse_balance,
    require_crs,
    warn,
    write_csv,
)


def _points(path: Path | None, crs: str, lng: str, lat: str, name: str, areas):
    from territory.pipeline import read_points

    if path is None:
        return None
    return read_points(path, crs=crs, lng=lng, lat=lat, name=name, areas=areas, on_warning=warn)


def import_command(
    boundaries: Annotated[Path, typer.Argument(help="Boundary layer of the service area")],
    grids: Annotated[Path, typer.Argument(help="Your main grids: any layer GDAL reads (GPKG, "
                                               "SHP, GeoJSON, KML/KMZ, MapInfo TAB/MIF)")],
    grid_column: Annotated[str, typer.Option(help="Column naming each grid")],
    customers: Annotated[Path, typer.Option(help="Customer points, CSV or Parquet")],
    out: Annotated[Path, typer.Option(help="Output folder")],
    parent_column: Annotated[str | None, typer.Option(help="Column naming each grid's parent "
                                                           "(branch of a main grid, main "
                                                           "grid of a sub-grid)")] = None,
    sub_grids: Annotated[Path | None, typer.Option(help="Your sub-grids (same columns)")]
    = None,
    grids_crs: Annotated[str | None, typer.Option(help="CRS of the grid layers (overrides "
                                                       "the file's): wgs84, cgcs2000, "
                                                       "gcj02, bd09 or EPSG:N")] = None,
    branch_column: Annotated[str, typer.Option(help="Column naming each area's branch")]
    = "adcode",
    boundaries_crs: Annotated[str | None, typer.Option(help="CRS of the boundary layer")]
    = None,
    communities: Annotated[Path | None, typer.Option(help="Community points")] = None,
    stores: Annotated[Path | None, typer.Option(help="Store points")] = None,
    key_accounts: Annotated[Path | None, typer.Option(help="Key-account points")] = None,
    points_crs: Annotated[str | None, typer.Option(help="CRS of the point tables (required)")]
    = None,
    lng_column: Annotated[str, typer.Option()] = "lng",
    lat_column: Annotated[str, typer.Option()] = "lat",
    resolution: Annotated[int, typer.Option(help="Finest H3 resolution of units")] = 10,
    target_per_unit: Annotated[float | None, typer.Option(help="Customers per unit")] = 30.0,
    min_resolution: Annotated[int, typer.Option(help="Coarsest adaptive resolution")] = 7,
    balance: Annotated[list[str] | None, typer.Option(help="COLUMN[=TOL]")] = None,
    tolerance: Annotated[float, typer.Option(help="Default tolerance")] = 0.05,
    sliver_width: Annotated[float, typer.Option(help="Pieces thinner than this (m, mean "
                                                     "width) are slivers")] = 20.0,
    author: Annotated[str, typer.Option(help="Who imports (recorded in the version)")] = "",
    message: Annotated[str, typer.Option(help="Why (recorded in the version)")]
    = "imported from the drawn map",
) -> None:
    """Import your current grid map, audit it (gaps, overlaps, ...) and snap it to units."""
    from territory.boundaries import read_boundaries
    from territory.diagnose import diagnose
    from territory.graph import build_graph
    from territory.importer import read_grids, snap_to_units
    from territory.metrics import plan_metrics, summary_frame
    from territory.pipeline import Inputs, UnitOptions, build_unit_table, key_account_groups
    from territory.plan import Plan

    with _errors():
        points_crs = require_crs(points_crs, "--points-crs")
        areas = read_boundaries(boundaries, crs=boundaries_crs)
        args = (points_crs, lng_column, lat_column)
        inputs = Inputs(areas, branch_column, _points(customers, *args, "customers", areas),
                        _points(communities, *args, "communities", areas),
                        _points(stores, *args, "stores", areas),
                        _points(key_accounts, *args, "key_accounts", areas))
        measures = parse_balance(balance or ["subscribers", "workload"], tolerance)
        main = read_grids(grids, grid_column=grid_column, parent_column=parent_column,
                          crs=grids_crs)
        sub = None if sub_grids is None else read_grids(
            sub_grids, grid_column=grid_column, parent_column=parent_column, crs=grids_crs)
        with console.status("building units and snapping the drawn grids onto them"):
            units, report = build_unit_table(
                inputs, UnitOptions(resolution, target_per_unit, min_resolution))
            graph = build_graph(units)
            plan, _ = snap_to_units(units, graph, main, sub, measures, together=(
                key_account_groups(units, inputs.key_accounts)), params={
                "resolution": resolution, "target_per_unit": target_per_unit,
                "min_resolution": min_resolution, "branch_column": branch_column,
                "aggregation": report, "imported_from": str(grids)})
        with console.status("auditing the drawn map"):
            diag = diagnose(areas, branch_column, main, sub, plan, inputs.customers,
                            sliver_width_m=sliver_width)
        metrics = plan_metrics(plan, graph, areas)
        plan = Plan(**{**plan.__dict__, "metrics": metrics, "author": author,
                       "message": message})
        out.mkdir(parents=True, exist_ok=True)
        path = plan.save(out / "plan.gpkg")
        write_json(out / "diagnosis.json", diag.to_json())
        write_json(out / "metrics.json", metrics)
        diag.write_layers(out / "diagnosis.gpkg")
        counts = pd.DataFrame({"finding": list(diag.counts()),
                               "rows": list(diag.counts().values())})
        console.print(_table(counts, f"diagnosis → {out / 'diagnosis.json'}"))
        for key in ("overlaps", "gaps", "crossing_branches", "invalid"):
            if len(diag.tables[key]):
                console.print(_table(diag.tables[key].round(1).head(20), key))
        console.print(_table(diag.tables["snapping"].round(0), "what snapping changed"))
        console.print(_table(summary_frame(metrics, plan.measures),
                             f"plan {plan.plan_id} v{plan.version} → {path}"))


def history(
    plan: Annotated[Path, typer.Argument(help="Plan GeoPackage")],
) -> None:
    """List the versions a plan descends from, oldest first (author, time, message)."""
    from territory.plan import Plan

    with _errors():
        p = Plan.load(plan)
        rows = pd.DataFrame([*p.history, p.record()])
        cols = ["version", "plan_id", "parent", "created", "author", "message"]
        console.print(_table(rows[cols].fillna(""), f"history of {plan}"))


def diff(
    plan_a: Annotated[Path, typer.Argument(help="The plan before")],
    plan_b: Annotated[Path, typer.Argument(help="The plan after")],
    out: Annotated[Path, typer.Option(help="Output folder")],
    customers: Annotated[Path | None, typer.Option(help="Customer points: writes the "
                                                        "customer-level CSV for the CRM")]
    = None,
    communities: Annotated[Path | None, typer.Option(help="Community points: the communities "
                                                          "that change grid")] = None,
    key_accounts: Annotated[Path | None, typer.Option(help="Key-account points: the key "
                                                           "accounts that change grid")]
    = None,
    points_crs: Annotated[str | None, typer.Option(help="CRS of the point tables (required "
                                                        "with them)")] = None,
    customer_id_column: Annotated[str, typer.Option(help="Customer id column")]
    = "customer_id",
    lng_column: Annotated[str, typer.Option()] = "lng",
    lat_column: Annotated[str, typer.Option()] = "lat",
    effective_date: Annotated[str | None, typer.Option(help="Date the new grids take effect "
                                                            "(default: today)")] = None,
) -> None:
    """Units, customers, communities and key accounts that change grid; grids created,
    removed or reshaped; balance before and after; an offline map of the changes."""
    from territory.diff import change_map, changed_areas, diff_plans
    from territory.offline import save_map
    from territory.plan import Plan

    with _errors():
        d = diff_plans(Plan.load(plan_a), Plan.load(plan_b))
        out.mkdir(parents=True, exist_ok=True)
        write_csv(d.changes, out / "changes.csv")
        write_csv(d.grids, out / "grids.csv")
        write_csv(d.balance, out / "balance.csv")
        tables = (("customers", customers, customer_id_column),
                  ("communities", communities, "community_id"),
                  ("key_accounts", key_accounts, "key_account_id"))
        for name, path, id_column in tables:
            if path is None:
                continue
            crs = require_crs(points_crs, "--points-crs")
            table = _points(path, crs, lng_column, lat_column, name, None)
            moved = d.customers(table, id_column=id_column, effective=effective_date)
            write_csv(moved, out / f"{name}_moved.csv")
            console.print(f"{len(moved):,} {name.replace('_', ' ')} change grid → "
                          f"{out / f'{name}_moved.csv'}")
        layer = changed_areas(d)
        if len(layer):
            from territory.atomic import atomic_path

            with atomic_path(out / "changes.gpkg") as tmp:
                layer.to_file(tmp, layer="changed_areas", driver="GPKG")
        save_map(change_map(d), out / "changes.html")
        console.print(f"{len(d.changes):,} units change grid → {out / 'changes.csv'}")
        if len(d.grids):
            console.print(_table(d.grids.round(0), "grids created, removed, reshaped"))
        console.print(_table(d.balance.round(4), "balance before and after"))


# -- edits ----------------------------------------------------------------------------------
edit_app = typer.Typer(no_args_is_help=True, help="Edit a plan: each edit is a new version "
                       "(author, message, parent) or is refused with the reason.")

PlanArg = Annotated[Path, typer.Argument(help="Plan GeoPackage to edit")]
OutOpt = Annotated[Path, typer.Option(help="The new version's GeoPackage")]
AuthorOpt = Annotated[str, typer.Option(help="Who edits (recorded)")]
MessageOpt = Annotated[str, typer.Option(help="Why (recorded)")]


def _edit(plan: Path, out: Path, fn) -> None:
    """Load the plan and its unit graph, apply ``fn(plan, graph)``, save the new version."""
    from territory.graph import build_graph
    from territory.plan import Plan

    with _errors():
        p = Plan.load(plan)
        with console.status("building the unit graph"):
            graph = build_graph(p.units)
        new = fn(p, graph)
        new.save(out)
        console.print(f"v{new.version} {new.plan_id} ({new.message}) → {out}")


@edit_app.command("move")
def edit_move(
    plan: PlanArg, out: OutOpt,
    to: Annotated[str, typer.Option(help="Main grid or sub-grid id to move into")],
    unit: Annotated[list[str] | None, typer.Option(help="Unit id (repeat)")] = None,
    polygon: Annotated[Path | None, typer.Option(help="A drawn polygon layer (WGS84): every "
                                                      "unit inside it moves")] = None,
    points: Annotated[Path | None, typer.Option(help="Communities or key accounts (CSV) to "
                                                     "find --point-id in")] = None,
    point_id: Annotated[list[str] | None, typer.Option(help="Community / key-account id")]
    = None,
    id_column: Annotated[str, typer.Option(help="Id column of --points")] = "community_id",
    points_crs: Annotated[str | None, typer.Option(help="CRS of --points")] = None,
    author: AuthorOpt = "", message: MessageOpt = "",
) -> None:
    """Move units (by id, inside a drawn polygon, or holding given communities/key accounts)."""
    import shapely

    from territory.boundaries import read_boundaries
    from territory.edits import move_units, units_in_polygon, units_of_points

    def fn(p, graph):
        ids = list(unit or [])
        if polygon is not None:
            shape = shapely.union_all(read_boundaries(polygon).geometry.values)
            ids += units_in_polygon(p, shape)
        if points is not None:
            crs = require_crs(points_crs, "--points-crs")
            table = _points(points, crs, "lng", "lat", "points", None)
            ids += units_of_points(p, table, point_id or [], id_column=id_column)
        return move_units(p, graph, ids, to, author=author, message=message)

    _edit(plan, out, fn)


@edit_app.command("lock")
def edit_lock(plan: PlanArg, out: OutOpt,
              unit: Annotated[list[str] | None, typer.Option(help="Unit id")] = None,
              grid: Annotated[list[str] | None, typer.Option(help="Grid id: all its units")]
              = None,
              unlock: Annotated[bool, typer.Option(help="Unlock instead")] = False,
              author: AuthorOpt = "", message: MessageOpt = "") -> None:
    """Lock (or --unlock) units and whole grids: rebalance and edits never move them."""
    from territory.edits import set_lock

    _edit(plan, out, lambda p, g: set_lock(p, g, unit_ids=unit or [], grids=grid or [],
                                           lock=not unlock, author=author, message=message))


@edit_app.command("split")
def edit_split(plan: PlanArg, out: OutOpt, grid: Annotated[str, typer.Option()],
               parts: Annotated[int, typer.Option()] = 2,
               author: AuthorOpt = "", message: MessageOpt = "") -> None:
    """Split a grid into balanced contiguous parts."""
    from territory.edits import split_grid

    _edit(plan, out, lambda p, g: split_grid(p, g, grid, parts=parts, author=author,
                                             message=message))


@edit_app.command("add")
def edit_add(plan: PlanArg, out: OutOpt, branch: Annotated[str, typer.Option()],
             author: AuthorOpt = "", message: MessageOpt = "") -> None:
    """Add a main grid to a branch (its heaviest grid is split in two)."""
    from territory.edits import add_grid

    _edit(plan, out, lambda p, g: add_grid(p, g, branch, author=author, message=message))


@edit_app.command("merge")
def edit_merge(plan: PlanArg, out: OutOpt, keep: Annotated[str, typer.Option()],
               absorb: Annotated[str, typer.Option()],
               author: AuthorOpt = "", message: MessageOpt = "") -> None:
    """Merge grid --absorb into its neighbour --keep."""
    from territory.edits import merge_grids

    _edit(plan, out, lambda p, g: merge_grids(p, g, keep, absorb, author=author,
                                              message=message))


@edit_app.command("remove")
def edit_remove(plan: PlanArg, out: OutOpt, grid: Annotated[str, typer.Option()],
                author: AuthorOpt = "", message: MessageOpt = "") -> None:
    """Remove a grid: its units join their neighbours."""
    from territory.edits import remove_grid

    _edit(plan, out, lambda p, g: remove_grid(p, g, grid, author=author, message=message))


@edit_app.command("tolerance")
def edit_tolerance(plan: PlanArg, out: OutOpt, measure: Annotated[str, typer.Option()],
                   value: Annotated[float, typer.Option(help="e.g. 0.05 for ±5 %")],
                   author: AuthorOpt = "", message: MessageOpt = "") -> None:
    """Change a measure's balance tolerance."""
    from territory.edits import set_tolerance

    _edit(plan, out, lambda p, g: set_tolerance(p, g, measure, value, author=author,
                                                message=message))


# -- rebalance ------------------------------------------------------------------------------
def rebalance_command(
    plan: Annotated[Path, typer.Argument(help="The plan in force (GeoPackage)")],
    budget: Annotated[str, typer.Option(help="MEASURE=VALUE[%]: customers, households, "
                                             "subscribers or units, e.g. customers=3%")],
    out: Annotated[Path, typer.Option(help="Output folder")],
    customers: Annotated[Path | None, typer.Option(help="Today's customers, loaded onto the "
                                                        "plan's units first")] = None,
    communities: Annotated[Path | None, typer.Option(help="Today's communities")] = None,
    points_crs: Annotated[str | None, typer.Option(help="CRS of the point tables")] = None,
    lng_column: Annotated[str, typer.Option()] = "lng",
    lat_column: Annotated[str, typer.Option()] = "lat",
    tolerance: Annotated[float | None, typer.Option(help="Tolerance of every measure "
                                                         "(default: the plan's)")] = None,
    lock: Annotated[Path | None, typer.Option(help="CSV with a unit_id column: units held")]
    = None,
    sweep: Annotated[bool, typer.Option(help="Print the budget → worst deviation curve")]
    = False,
    depth: Annotated[int | None, typer.Option(help="Only units within this many hops of a "
                                                   "grid line may move (default: any)")] = None,
    time_limit: Annotated[float, typer.Option(help="Seconds per search")] = 30.0,
    key_accounts: Annotated[Path | None, typer.Option(
        help="Key-account points (with footprint_m): the units of one key account stay "
             "together")] = None,
    headcount: Annotated[list[str] | None, typer.Option(
        help="BRANCH=+N or BRANCH=-N (repeat): N more or fewer team members, so N more or "
             "fewer sub-grids; split or merge the fewest and rebalance them")] = None,
    author: AuthorOpt = "", message: MessageOpt = "",
) -> None:
    """Meet the balance tolerances moving at most the budget (fewest moves first)."""
    from territory.edits import load_points, locked, set_lock
    from territory.errors import InfeasibleError, InvalidInputError
    from territory.graph import build_graph
    from territory.plan import Plan
    from territory.rebalance import Budget, rebalance

    with _errors():
        p = Plan.load(plan)
        for name, path in (("customers", customers), ("communities", communities)):
            if path is not None:
                crs = require_crs(points_crs, "--points-crs")
                table = _points(path, crs, lng_column, lat_column, name, None)
                p, rep = load_points(p, name, table, author=author)
                console.print(f"{name}: {rep}")
        with console.status("building the unit graph"):
            graph = build_graph(p.units)
        if lock is not None:
            table = pd.read_csv(lock, dtype=str)
            if "unit_id" not in table:
                raise InvalidInputError(f"--lock {lock}: needs a unit_id column")
            held = [u for u in table["unit_id"] if not locked(p).get(u, False)]
            if held:
                p = set_lock(p, graph, unit_ids=held, author=author, message="locks for "
                             "rebalance")
        together = None
        if key_accounts is not None:
            from territory.pipeline import key_account_groups

            crs = require_crs(points_crs, "--points-crs")
            together = key_account_groups(p.units, _points(key_accounts, crs, lng_column,
                                                           lat_column, "key_accounts", None))
        b = Budget.parse(budget, p)
        out.mkdir(parents=True, exist_ok=True)
        with console.status(f"rebalancing within {b.measure}={b.value:g}"):
            if headcount:
                from territory.headcount import change_headcount, parse_headcount

                hc = change_headcount(p, graph, parse_headcount(headcount), b,
                                      tolerance=tolerance, time_limit=time_limit,
                                      together=together, author=author, message=message)
                res = hc.result
                write_csv(hc.moves, out / "headcount_moves.csv")
                console.print(f"sub-grids created {hc.created}, removed {hc.removed}; "
                              f"{len(hc.moves)} units change sub-grid → "
                              f"{out / 'headcount_moves.csv'}")
            else:
                res = rebalance(p, graph, b, tolerance=tolerance, depth=depth,
                                time_limit=time_limit, together=together, author=author,
                                message=message)
        res.plan.save(out / "plan.gpkg")
        figures = {"feasible": res.feasible, "budget": {b.measure: b.value},
                   "moved": {b.measure: res.moved_budget, "units": res.moved_units},
                   "worst_excess": res.worst_excess, "max_deviation": res.max_deviation,
                   "smallest_budget": res.smallest_budget, "message": res.message,
                   "lower_bound": res.lower_bound, "sub_deviation": res.sub_deviation,
                   "plan_id": res.plan.plan_id, "parent": res.plan.parent}
        write_json(out / "rebalance.json", figures)
        console.print(f"moved {res.moved_units} units holding {res.moved_budget:g} "
                      f"{b.measure}; max deviation "
                      + ", ".join(f"{m} {v:.2%}" for m, v in res.max_deviation.items())
                      + f" → {out / 'plan.gpkg'} (v{res.plan.version}, parent {plan})")
        if res.sub_deviation:
            console.print("sub-grids of the grids it changed: max deviation "
                          + ", ".join(f"{m} {v:.2%}" for m, v in res.sub_deviation.items()))
        if sweep:
            from territory.rebalance import sweep as run_sweep

            top = max(res.smallest_budget or res.moved_budget, b.value, 1.0)
            budgets = sorted({round(top * f, 3) for f in (0, .25, .5, .75, 1, 1.5)})
            with console.status("sweeping budgets"):
                curve = run_sweep(p, graph, b.measure, budgets, tolerance=tolerance,
                                  depth=depth, time_limit=time_limit, together=together)
            write_csv(curve, out / "sweep.csv")
            console.print(_table(curve.round(4), "budget → worst deviation"))
        if not res.feasible:
            raise InfeasibleError(res.message)
