"""The ``territory`` command: typer for the options, rich for progress and tables.

Every error the library raises is printed as one clear message (no traceback) and the
command exits non-zero: 2 for invalid input, 3 when balance targets cannot be met.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import pandas as pd
import typer
from rich.markup import escape

from territory.cli_common import (
    App,
    _errors,
    _fail,
    _table,
    console,
    err_console,
    mark_start,
    parse_balance,
    require_crs,
    search_time,
    warn,
    write_csv,
)
from territory.cli_output import configure, progress, stage
from territory.errors import (
    InvalidInputError,
    PartialPlanError,
)
from territory.request import PlanRequest, default

app = App(
    add_completion=False, no_args_is_help=True,
    help="Draw and keep the grid map of a telecom operator's city.",
)


@app.callback()
def _options(
    ctx: typer.Context,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logs of territory "
                                                                "and the solvers' own logs")]
    = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress: only errors and "
                                                              "the final summary")] = False,
) -> None:
    """Draw and keep the grid map of a telecom operator's city."""
    if verbose and quiet:
        raise typer.BadParameter("give --verbose or --quiet, not both")
    mark_start(ctx)
    configure(verbose=verbose, quiet=quiet, command=ctx.invoked_subcommand or "territory")


def _partition_table(metrics: dict) -> pd.DataFrame:
    rows = [{"figure": k, "value": v} for k, v in metrics.items()]
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------
@app.command()
def partition(
    ctx: typer.Context,
    input: Annotated[Path, typer.Argument(help="Polygon layer (GPKG, GeoJSON, SHP) or a "
                                               "networkx JSON graph (node-link or adjacency, "
                                               "as GerryChain writes)")],
    grids: Annotated[int, typer.Option("--grids", "-k", help="Number of grids")],
    out: Annotated[Path, typer.Option(help="CSV to write: unit_id, grid_id")],
    balance: Annotated[list[str], typer.Option(help="COLUMN=TOL, e.g. subscribers=0.005")],
    objective: Annotated[str, typer.Option(help="distance or boundary")] = "distance",
    exact: Annotated[bool, typer.Option(help="Run the exact MIP on small instances")] = False,
    time_limit: Annotated[float, typer.Option(help="Seconds; the best plan is returned by "
                                                   "then")] = 60.0,
    id_column: Annotated[str | None, typer.Option(help="Unit id column of a polygon layer")]
    = None,
    xy: Annotated[str | None, typer.Option(help="Coordinate node attributes of a JSON graph, "
                                                "e.g. C_X,C_Y (default: x,y or a known pair)")]
    = None,
    crs: Annotated[str | None, typer.Option(help="CRS of a polygon layer without one")] = None,
    repair: Annotated[bool, typer.Option(help="Make invalid (self-intersecting) polygons "
                                              "valid instead of refusing them")] = False,
    seed: Annotated[int, typer.Option(help="Random seed")] = 0,
) -> None:
    """Partition units into k contiguous grids balanced on one or several measures."""
    from territory.optimize import Partitioner
    from territory.partition_io import load_units_graph, run_partition

    with _errors(ctx, n_grids="grids"):
        partitioner = Partitioner(grids, measures=parse_balance(balance, 0.05),
                                  objective=objective, exact=exact, time_limit=time_limit,
                                  random_state=seed)
        partitioner.check_parameters()  # before the seconds of reading and building a graph
        with stage(err_console, "units and graph read"):
            graph = load_units_graph(input, id_column=id_column, xy=xy, crs=crs,
                                     repair=repair)
        # the limit is a promise for the whole command: the search gets what is left of it
        partitioner.time_limit = search_time(ctx, time_limit)
        with stage(err_console, f"partitioning {graph.number_of_nodes()} units into {grids} grids"):
            labels, figures = run_partition(graph, partitioner)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_csv(pd.DataFrame({"unit_id": labels.index, "grid_id": labels.to_numpy()}), out)
        console.print(_table(_partition_table(figures), f"{grids} grids → {out}"))


def _plan_job(inputs, unit_opts, spec, out: Path, stores_as_centres: bool):
    from territory.metrics import summary_frame
    from territory.pipeline import run
    from territory.plan_folder import publish, sweep_folder

    out.mkdir(parents=True, exist_ok=True)
    sweep_folder(out)
    with progress(err_console) as show:
        try:
            result = run(inputs, unit_opts, spec, stores_as_centres=stores_as_centres,
                         progress=show)
            failed = None
        except PartialPlanError as exc:  # the work is kept: saved, then reported
            result, failed = exc.result, exc
    with stage(err_console, "plan written"):
        path = publish(result.plan, out)
    console.print(_table(summary_frame(result.metrics, result.plan.measures),
                         f"plan {result.plan.plan_id} v{result.plan.version} → {path}"))
    rep = result.report.get("customers", {})
    console.print(
        f"{len(result.units)} units; customers {rep.get('inside', 0)} inside, "
        f"{rep.get('outside', 0)} outside, {rep.get('invalid', 0)} invalid; "
        f"islands joined: {len(result.graph.graph['islands'])}"
    )
    for b, r in result.plan.params.get("main_grids_reduced", {}).items():
        console.print(f"[yellow]branch {escape(b)}: {r['used']} main grids instead of "
                      f"{r['requested']}[/] ({escape(r['reason'])})", highlight=False)
    for b, r in result.plan.params.get("main_grids_for_staff", {}).items():
        console.print(f"branch {escape(b)}: {r['used']} main grids instead of "
                      f"{r['requested']} ({escape(r['reason'])})", highlight=False)
    staff = result.plan.params.get("staff_balance")
    if staff:
        console.print(f"{staff['sub_grids']} sub-grids (one person each) in "
                      f"{staff['main_grids']} main grids: workload per staff "
                      f"{staff['city_workload_per_staff']:,.1f} h in the city, every main grid "
                      f"within {staff['max_abs_deviation']:.1%} of it (tolerance "
                      f"±{staff['tolerance']:.0%})", highlight=False)
    released = result.plan.params.get("key_account_groups_released", [])
    if released:
        console.print(f"[yellow]{len(released)} key accounts not kept in one grid[/] (each "
                      "holds more than a mean sub-grid: key_account_groups_released in "
                      "plan.json)", highlight=False)
    for mg, r in result.plan.params.get("sub_grids_reduced", {}).items():
        console.print(f"[yellow]main grid {escape(mg)}: {r['used']} sub-grids instead of "
                      f"{r['requested']}[/] (its load cannot be balanced over "
                      f"{r['requested']}: {escape(r['reason'])})", highlight=False)
    if failed is not None:
        err_console.print(f"the plan is saved in {out} with the failing grids flagged "
                          "(column 'flag')")
        _fail(failed)
    return result


@app.command()
def plan(
    ctx: typer.Context,
    boundaries: Annotated[Path, typer.Argument(help="Boundary layer of the service area")],
    customers: Annotated[Path, typer.Option(help="Customer points, CSV or Parquet")],
    out: Annotated[Path, typer.Option(help="Output folder")] = Path("out"),
    branch_column: Annotated[str, typer.Option(help="Column naming each area's branch")]
    = "adcode",
    boundaries_crs: Annotated[str | None, typer.Option(help="CRS of the boundary layer if "
                                                            "it has none or is GCJ-02")] = None,
    communities: Annotated[Path | None, typer.Option(help="Community points")] = None,
    stores: Annotated[Path | None, typer.Option(help="Store points")] = None,
    key_accounts: Annotated[Path | None, typer.Option(help="Key-account points")] = None,
    workload: Annotated[Path | None, typer.Option(help="Workload model TOML (default: the "
                                                       "shipped territory/assets/"
                                                       "workload.toml)")] = None,
    points_crs: Annotated[str | None, typer.Option(help="CRS of the point tables (required): "
                                                        "wgs84, cgcs2000, gcj02, bd09 or "
                                                        "EPSG:N")] = None,
    lng_column: Annotated[str, typer.Option()] = "lng",
    lat_column: Annotated[str, typer.Option()] = "lat",
    encoding: Annotated[str, typer.Option(help="Text encoding of CSV point tables, e.g. "
                                               "gb18030 or gbk")] = "utf-8",
    repair: Annotated[bool, typer.Option(help="Make invalid (self-intersecting) boundary "
                                              "polygons valid instead of refusing them")]
    = False,
    dissolve_branches: Annotated[bool, typer.Option(help="Merge boundary rows that share a "
                                                         "branch code into one branch")]
    = False,
    resolution: Annotated[int, typer.Option(help="Finest H3 resolution of units")]
    = default("resolution"),
    target_per_unit: Annotated[float | None, typer.Option(help="Customers per unit (adaptive "
                                                               "resolution)")]
    = default("target_per_unit"),
    min_resolution: Annotated[int, typer.Option(help="Coarsest adaptive resolution")]
    = default("min_resolution"),
    units: Annotated[Path | None, typer.Option(help="Your own unit polygons (communities, "
                                                    "villages) instead of H3 cells")] = None,
    unit_id_column: Annotated[str | None, typer.Option(help="Unit id column of --units")]
    = None,
    main_grids: Annotated[int | None, typer.Option(help="Main grids in the city")] = None,
    main_size: Annotated[float | None, typer.Option(help="Target first-measure load per "
                                                         "main grid")] = None,
    branch_grids: Annotated[Path | None, typer.Option(help="CSV branch_id,main_grids: the "
                                                           "count per branch")] = None,
    sub_grids: Annotated[int, typer.Option(help="Sub-grids per main grid")]
    = default("sub_grids"),
    sub_size: Annotated[float | None, typer.Option(help="Target load per sub-grid")] = None,
    staff_hours: Annotated[float | None, typer.Option(help="A team member's monthly hours: "
                                                           "each sub-grid is sized to one "
                                                           "person's workload (the number of "
                                                           "sub-grids follows the staff) and "
                                                           "workload is balanced")] = None,
    staff_tolerance: Annotated[float, typer.Option(help="With --staff-hours: every main "
                                                        "grid's workload per staff member "
                                                        "(per sub-grid) within this share of "
                                                        "the city's")]
    = default("staff_tolerance"),
    balance: Annotated[list[str] | None, typer.Option(help="COLUMN[=TOL] (default: "
                                                           "subscribers and workload)")]
    = None,
    tolerance: Annotated[float, typer.Option(help="Default tolerance")]
    = default("tolerance"),
    objective: Annotated[str, typer.Option(help="distance or boundary")]
    = default("objective"),
    lock: Annotated[Path | None, typer.Option(help="CSV unit_id,main_grid_id")] = None,
    stores_as_centres: Annotated[bool, typer.Option(help="One main grid per store, centred "
                                                         "on it")] = False,
    own_grid_islands: Annotated[bool, typer.Option(help="Islands become main grids of their "
                                                        "own")] = False,
    time_limit_main: Annotated[float, typer.Option(help="Seconds per branch")]
    = default("time_limit_main"),
    time_limit_sub: Annotated[float, typer.Option(help="Seconds per main grid")]
    = default("time_limit_sub"),
    workers: Annotated[int, typer.Option(help="Parallel worker processes")] = 2,
    seed: Annotated[int, typer.Option()] = default("seed"),
    strict: Annotated[bool, typer.Option(help="Keep --sub-grids in every main grid: one that "
                                              "cannot be balanced is saved flagged and the "
                                              "run exits 3 (default: it gets fewer)")] = False,
) -> None:
    """Build the three-level plan (branches, main grids, sub-grids) on your own data."""
    from territory.boundaries import read_boundaries
    from territory.pipeline import Inputs, read_points
    from territory.workload import load_model

    with _errors(ctx, crs="boundaries_crs", id_column="unit_id_column", lng="lng_column",
                 lat="lat_column", n_main="main_grids", n_sub="sub_grids", locks="lock"):
        points_crs = require_crs(points_crs, "--points-crs")
        model = load_model(workload)
        request = plan_request(
            main_grids=main_grids, branch_grids=_csv_dict(branch_grids, "branch_grids",
                                                          "branch_id", "main_grids", int),
            main_size=main_size, sub_grids=sub_grids, sub_size=sub_size,
            staff_hours=staff_hours, staff_tolerance=staff_tolerance, balance=balance,
            tolerance=tolerance,
            objective=objective, resolution=resolution, target_per_unit=target_per_unit,
            min_resolution=min_resolution, time_limit_main=time_limit_main,
            time_limit_sub=time_limit_sub,
            locks=_csv_dict(lock, "lock", "unit_id", "main_grid_id", str) or {},
            stores_as_centres=stores_as_centres, own_grid_islands=own_grid_islands,
            strict=strict, seed=seed)
        spec = request.spec(workers=workers, workload=model)
        spec.validate(centred=stores_as_centres)  # cheap checks before reading any file
        areas = read_boundaries(boundaries, crs=boundaries_crs, repair=repair)

        def pts(path, name):
            if path is None:
                return None
            return read_points(path, crs=points_crs, lng=lng_column, lat=lat_column, name=name,
                               encoding=encoding, areas=areas, on_warning=warn)

        inputs = Inputs(areas, branch_column, pts(customers, "customers"),
                        pts(communities, "communities"), pts(stores, "stores"),
                        pts(key_accounts, "key_accounts"), dissolve_branches=dissolve_branches,
                        workload=model)
        layer = None if units is None else read_boundaries(
            units, crs=boundaries_crs, id_column=unit_id_column, repair=repair)
        _plan_job(inputs, request.unit_options(layer, unit_id_column), spec, out,
                  stores_as_centres)


def plan_request(*, balance: list[str] | None, tolerance: float, **values) -> PlanRequest:
    """The :class:`PlanRequest` of ``territory plan``'s options (``--balance COLUMN[=TOL]``
    entries given without a tolerance take ``--tolerance``)."""
    if balance is not None:
        values["balance"] = parse_balance(balance, None)
    return PlanRequest.build(tolerance=tolerance, **values)


def _csv_dict(path: Path | None, option: str, key: str, value: str, kind) -> dict | None:
    """A two-column CSV (``--lock``, ``--branch-grids``) as ``{key: value}``."""
    if path is None:
        return None
    table = pd.read_csv(path, dtype=str)
    if not {key, value} <= set(table.columns):
        raise InvalidInputError(f"`{option}` {path}: needs columns {key}, {value}")
    try:
        return dict(zip(table[key], table[value].map(kind), strict=True))
    except ValueError:
        raise InvalidInputError(f"`{option}` {path}: column {value} must hold "
                                f"{kind.__name__} values") from None


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Output folder")] = Path("out"),
    city: Annotated[str, typer.Option(help="shenzhen or xiamen")] = "shenzhen",
    customers: Annotated[int, typer.Option(help="Synthetic customers")] = 300_000,
    main_grids: Annotated[int | None, typer.Option(help="Main grids in the city (default: "
                                                        "one per ~2 000 customers)")] = None,
    sub_grids: Annotated[int | None, typer.Option(help="Sub-grids per main grid (default: "
                                                       "~500 customers each, 2-6)")] = None,
    target_per_unit: Annotated[float | None, typer.Option(help="Customers per unit (default: "
                                                               "~25 units a sub-grid)")] = None,
    resolution: Annotated[int | None, typer.Option(help="Finest H3 resolution of units "
                                                        "(default 9, 10 or 11 by the "
                                                        "customers' density)")] = None,
    stores_as_centres: Annotated[bool, typer.Option(help="One main grid per store, centred "
                                                         "on it")] = False,
    seed: Annotated[int, typer.Option()] = 0,
    workers: Annotated[int, typer.Option()] = 2,
) -> None:
    """The main job on the shipped data: synthetic customers on real districts → plan.

    Grid counts, unit size and time limits follow the number of customers
    (territory.sizing.demo_sizing); every option given overrides its rule.
    """
    from territory.demo import demo_job, store_units_by_main_grid
    from territory.reports import read_staff
    from territory.synth import write_city
    from territory.synth_roster import demo_staffing

    with _errors():
        with stage(err_console, f"{customers} synthetic customers generated"):
            job = demo_job(city, customers, seed=seed, workers=workers, main_grids=main_grids,
                           sub_grids=sub_grids, target_per_unit=target_per_unit,
                           resolution=resolution)
        console.print(f"{city}, {customers} customers: {job.size.describe()}")
        out.mkdir(parents=True, exist_ok=True)
        write_city(job.data, out / "synthetic")
        result = _plan_job(job.inputs, job.units, job.spec, out, stores_as_centres)
        held = store_units_by_main_grid(result.plan.units, job.data.stores)
        console.print(f"main grids containing a store: {int((held > 0).sum())} of {len(held)} "
                      f"({len(job.data.stores)} stores; a grid without one is served by the "
                      "nearest)")
        # staff first: every field map and grid analysis then shows its grid's people
        with stage(err_console, "synthetic roster allocated to the grids (out/staff)"):
            staffed = demo_staffing(result.plan, job.data.stores, out, seed=seed)
        _demo_outputs(result.plan, out, job.data, read_staff(staffed["staff"]))
        from territory.cli_addresses import demo_addresses

        demo_addresses(job.inputs.areas, job.data, out, seed=seed)


def _demo_outputs(plan, out: Path, data, staff: pd.DataFrame) -> None:
    """After the plan and its staffing: assign every customer, write the per-grid reports,
    the maps (each field map lists its grid's ``staff``) and the grid analyses."""
    from territory.assign import Columns, assign_frame, open_index
    from territory.exports import export_plan
    from territory.mapdata import PlanLayers

    with stage(err_console, "customers assigned"):
        index = open_index(out / "plan.gpkg")
        assigned = assign_frame(index, data.customers.drop(columns="geometry"),
                                columns=Columns(crs="wgs84"), on_warning=warn)
        write_csv(assigned, out / "customers_assigned.csv")
    counts = assigned["status"].value_counts().to_dict()
    console.print(f"customers assigned → {out / 'customers_assigned.csv'}: {counts}")
    layers = PlanLayers(plan)
    with stage(err_console, "reports and exports written"):
        reports = export_plan(layers, "csv", out / "reports")
        exports = export_plan(layers, "geojson", out / "exports")
        exports += export_plan(layers, "kml", out / "exports")
    console.print(f"{len(reports)} reports → {out / 'reports'}, {len(exports)} exports → "
                  f"{out / 'exports'}")
    with stage(err_console, "maps written"):
        from territory.maps import write_demo_maps  # seconds to import: part of the stage

        maps = write_demo_maps(layers, out / "maps", {**data.tables(), "staff": staff})
    console.print(f"{len(maps)} maps → {out / 'maps'} (overview.html opens offline)")
    with stage(err_console, "grid analyses written"):
        from territory.reports import write_reports

        analyses = write_reports(layers, out / "reports" / "grids", data.tables(), staff)
    console.print(f"{len(analyses) - 1} grid analyses → {out / 'reports' / 'grids'}")


# Commands defined in their own modules register here, one line each.
# -- registered commands --
from territory.cli_assign import assign as _assign, changes_command as _changes  # noqa: E402, I001
app.command(name="assign")(_assign)
app.command(name="changes")(_changes)
from territory.cli_serve import serve as _serve  # noqa: E402, I001
app.command(name="serve")(_serve)
from territory.cli_maps import export as _export, map_command as _map  # noqa: E402, I001
app.command(name="map")(_map)
app.command(name="export")(_export)
from territory.cli_report import report as _report  # noqa: E402, I001
app.command(name="report")(_report)
from territory.cli_staff import staff as _staff  # noqa: E402, I001
app.command(name="staff")(_staff)
from territory.cli_redraw import import_command as _import  # noqa: E402, I001
app.command(name="import")(_import)
from territory.cli_redraw import diff as _diff, history as _history  # noqa: E402, I001
app.command(name="history")(_history)
app.command(name="diff")(_diff)
from territory.cli_redraw import edit_app as _edit_app, rebalance_command as _rb  # noqa: E402, I001
app.add_typer(_edit_app, name="edit")
app.command(name="rebalance")(_rb)
from territory.cli_cells import cells as _cells  # noqa: E402, I001
app.command(name="cells")(_cells)


def main() -> None:  # pragma: no cover - console entry point
    app()
