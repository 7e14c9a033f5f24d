"""Redrawing an existing grid map: ``territory import``, ``history``, ``diff``.

The operator's own grids are the starting point (issue 9): import and audit them, then
compare versions. Commands are registered in :mod:`territory.cli`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import pandas as pd
import typer
from rich.markup import escape

from territory.atomic import write_json
from territory.cli_common import (
    _errors,
    _table,
    console,
    err_console,
    parse_balance,
    require_crs,
    warn,
    write_csv,
)
from territory.cli_output import progress
from territory.request import ImportRequest, default


def _points(path: Path | None, crs: str, lng: str, lat: str, name: str, areas):
    from territory.pipeline import read_points

    if path is None:
        return None
    return read_points(path, crs=crs, lng=lng, lat=lat, name=name, areas=areas, on_warning=warn)


def import_command(
    ctx: typer.Context,
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
    resolution: Annotated[int, typer.Option(help="Finest H3 resolution of units")]
    = default("resolution", ImportRequest),
    target_per_unit: Annotated[float | None, typer.Option(help="Customers per unit")]
    = default("target_per_unit", ImportRequest),
    min_resolution: Annotated[int, typer.Option(help="Coarsest adaptive resolution")]
    = default("min_resolution", ImportRequest),
    balance: Annotated[list[str] | None, typer.Option(help="COLUMN[=TOL] (default: "
                                                           "subscribers and workload)")]
    = None,
    tolerance: Annotated[float, typer.Option(help="Default tolerance")]
    = default("tolerance", ImportRequest),
    sliver_width: Annotated[float, typer.Option(help="Pieces thinner than this (m, mean "
                                                     "width) are slivers")]
    = default("sliver_width", ImportRequest),
    author: Annotated[str, typer.Option(help="Who imports (recorded in the version)")] = "",
    message: Annotated[str, typer.Option(help="Why (recorded in the version)")]
    = "imported from the drawn map",
) -> None:
    """Import your current grid map, audit it (gaps, overlaps, ...) and snap it to units."""
    from territory.boundaries import read_boundaries
    from territory.import_run import import_map
    from territory.importer import read_grids
    from territory.metrics import summary_frame
    from territory.pipeline import Inputs

    with _errors(ctx):
        request = ImportRequest.build(
            grid_column=grid_column, parent_column=parent_column, grids_crs=grids_crs,
            resolution=resolution, target_per_unit=target_per_unit,
            min_resolution=min_resolution, tolerance=tolerance, sliver_width=sliver_width,
            **({} if balance is None else {"balance": parse_balance(balance, None)}))
        points_crs = require_crs(points_crs, "--points-crs")
        areas = read_boundaries(boundaries, crs=boundaries_crs)
        args = (points_crs, lng_column, lat_column)
        inputs = Inputs(areas, branch_column, _points(customers, *args, "customers", areas),
                        _points(communities, *args, "communities", areas),
                        _points(stores, *args, "stores", areas),
                        _points(key_accounts, *args, "key_accounts", areas))
        main = read_grids(grids, grid_column=grid_column, parent_column=parent_column,
                          crs=grids_crs)
        sub = None if sub_grids is None else read_grids(
            sub_grids, grid_column=grid_column, parent_column=parent_column, crs=grids_crs)
        with progress(err_console) as show:
            done = import_map(inputs, main, sub, request, source=str(grids), author=author,
                              message=message, progress=show)
        plan, diag, metrics = done.plan, done.diagnosis, done.plan.metrics
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
        if len(d.stores):
            write_csv(d.stores, out / "stores.csv")
            console.print(_table(d.stores.fillna(""), "stores opened, moved, closed"))
        console.print(_table(d.balance.round(4), "balance before and after"))


# -- edits ----------------------------------------------------------------------------------
edit_app = typer.Typer(no_args_is_help=True, help="Edit a plan: each edit is a new version "
                       "(author, message, parent) or is refused with the reason.")

PlanArg = Annotated[Path, typer.Argument(help="Plan GeoPackage to edit")]
OutOpt = Annotated[Path, typer.Option(help="The new version's GeoPackage")]
AuthorOpt = Annotated[str, typer.Option(help="Who edits (recorded)")]
MessageOpt = Annotated[str, typer.Option(help="Why (recorded)")]


def _edit(plan: Path, out: Path, fn, *, graph: bool = True) -> None:
    """Load the plan (and its unit graph unless ``graph`` is False: the edit moves no
    unit), apply ``fn(plan, graph)``, save the new version."""
    from territory.graph import build_graph
    from territory.plan import Plan

    with _errors():
        p = Plan.load(plan)
        g = None
        if graph:
            with console.status("building the unit graph"):
                g = build_graph(p.units)
        new = fn(p, g)
        new.save(out)
        console.print(f"v{new.version} {new.plan_id} ({escape(new.message)}) → {out}",
                      highlight=False)


store_app = typer.Typer(no_args_is_help=True, help="Open, move or close a store: each a new "
                        "version; the grids keep their units.")
edit_app.add_typer(store_app, name="store")
StoreId = Annotated[str, typer.Option("--id", help="Store id")]
Lng = Annotated[float, typer.Option(help="Longitude (or easting in a projected --crs)")]
Lat = Annotated[float, typer.Option(help="Latitude (or northing in a projected --crs)")]
Crs = Annotated[str, typer.Option(help="System of --lng/--lat: wgs84, cgcs2000, gcj02, bd09 "
                                       "or EPSG:N (required: never assumed)")]


@store_app.command("add")
def store_add(plan: PlanArg, out: OutOpt, store_id: StoreId, lng: Lng, lat: Lat, crs: Crs,
              name: Annotated[str, typer.Option(help="Store name")] = "",
              author: AuthorOpt = "", message: MessageOpt = "") -> None:
    """Open a store (reports and maps count it in its grid)."""
    from territory.stores import add_store

    _edit(plan, out, lambda p, g: add_store(p, store_id, lng, lat, crs=crs, name=name,
                                            author=author, message=message), graph=False)


@store_app.command("move")
def store_move(plan: PlanArg, out: OutOpt, store_id: StoreId, lng: Lng, lat: Lat, crs: Crs,
               author: AuthorOpt = "", message: MessageOpt = "") -> None:
    """Move a store; a main grid centred on it that it leaves is flagged without a store."""
    from territory.stores import move_store

    _edit(plan, out, lambda p, g: move_store(p, store_id, lng, lat, crs=crs, author=author,
                                             message=message), graph=False)


@store_app.command("close")
def store_close(plan: PlanArg, out: OutOpt, store_id: StoreId,
                author: AuthorOpt = "", message: MessageOpt = "") -> None:
    """Close a store; a main grid centred on it keeps its units, flagged without a store."""
    from territory.stores import close_store

    _edit(plan, out, lambda p, g: close_store(p, store_id, author=author, message=message),
          graph=False)


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
    from territory.edits import load_points
    from territory.errors import InfeasibleError, InvalidInputError
    from territory.headcount import parse_headcount
    from territory.plan import Plan
    from territory.progress import POINTS
    from territory.rebalance_run import rebalance_plan

    with _errors():
        p = Plan.load(plan)
        held: list[str] = []
        if lock is not None:
            table = pd.read_csv(lock, dtype=str)
            if "unit_id" not in table:
                raise InvalidInputError(f"--lock {lock}: needs a unit_id column")
            held = table["unit_id"].tolist()
        tables = [(n, f) for n, f in (("customers", customers), ("communities", communities))
                  if f is not None]
        together = None
        if key_accounts is not None:
            from territory.key_accounts import key_account_groups

            crs = require_crs(points_crs, "--points-crs")
            together = key_account_groups(p.units, _points(key_accounts, crs, lng_column,
                                                           lat_column, "key_accounts", None))
        with progress(err_console) as show:
            for done, (name, path) in enumerate(tables):
                show(POINTS, done, len(tables))
                crs = require_crs(points_crs, "--points-crs")
                table = _points(path, crs, lng_column, lat_column, name, None)
                p, rep = load_points(p, name, table, author=author)
                console.print(f"{name}: {rep}")
                show(POINTS, done + 1, len(tables))
            run = rebalance_plan(p, budget, tolerance=tolerance, depth=depth,
                                 time_limit=time_limit, lock=held, together=together,
                                 headcount=parse_headcount(headcount) if headcount else None,
                                 author=author, message=message, progress=show)
        res, b, graph, p = run.result, run.budget, run.graph, run.base
        out.mkdir(parents=True, exist_ok=True)
        if run.moves is not None:
            write_csv(run.moves, out / "headcount_moves.csv")
            console.print(f"sub-grids created {list(run.created)}, removed "
                          f"{list(run.removed)}; {len(run.moves)} units change sub-grid → "
                          f"{out / 'headcount_moves.csv'}")
        res.plan.save(out / "plan.gpkg")
        write_json(out / "rebalance.json", run.figures())
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
