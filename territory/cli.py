"""The ``territory`` command: typer for the options, rich for progress and tables.

Every error the library raises is printed as one clear message (no traceback) and the
command exits non-zero: 2 for invalid input, 3 when balance targets cannot be met.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import pandas as pd
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from territory.atomic import atomic_path, write_text
from territory.cli_output import configure, progress, stage
from territory.errors import InfeasibleError, InvalidInputError, TerritoryError

app = typer.Typer(
    add_completion=False, no_args_is_help=True,
    help="Draw and keep the grid map of a telecom operator's city.",
)
console = Console()
err_console = Console(stderr=True)


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
    configure(verbose=verbose, quiet=quiet, command=ctx.invoked_subcommand or "territory")


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


def parse_balance(specs: list[str], default: float) -> dict[str, float]:
    """``["subscribers=0.05", "workload"]`` -> ``{"subscribers": 0.05, "workload": default}``."""
    out: dict[str, float] = {}
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


def write_json(data: dict, path: Path) -> None:
    write_text(path, json.dumps(data, ensure_ascii=False, indent=2, default=str))


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
        with stage(err_console, f"partitioning {graph.number_of_nodes()} units into {grids} grids"):
            labels, figures = run_partition(graph, partitioner)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_csv(pd.DataFrame({"unit_id": labels.index, "grid_id": labels.to_numpy()}), out)
        console.print(_table(_partition_table(figures), f"{grids} grids → {out}"))


def _plan_job(inputs, unit_opts, spec, out: Path, stores_as_centres: bool):
    from territory.metrics import summary_frame
    from territory.pipeline import run

    out.mkdir(parents=True, exist_ok=True)
    with progress(err_console) as show:
        result = run(inputs, unit_opts, spec, stores_as_centres=stores_as_centres,
                     progress=show)
    with stage(err_console, "plan written"):
        path = result.plan.save(out / "plan.gpkg")
        write_json(result.metrics, out / "metrics.json")
        write_json(result.plan.meta(), out / "plan.json")
    console.print(_table(summary_frame(result.metrics, result.plan.measures),
                         f"plan {result.plan.plan_id} v{result.plan.version} → {path}"))
    rep = result.report.get("customers", {})
    console.print(
        f"{len(result.units)} units; customers {rep.get('inside', 0)} inside, "
        f"{rep.get('outside', 0)} outside, {rep.get('invalid', 0)} invalid; "
        f"islands joined: {len(result.graph.graph['islands'])}"
    )
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
    resolution: Annotated[int, typer.Option(help="Finest H3 resolution of units")] = 10,
    target_per_unit: Annotated[float | None, typer.Option(help="Customers per unit (adaptive "
                                                               "resolution)")] = 30.0,
    min_resolution: Annotated[int, typer.Option(help="Coarsest adaptive resolution")] = 7,
    units: Annotated[Path | None, typer.Option(help="Your own unit polygons (communities, "
                                                    "villages) instead of H3 cells")] = None,
    unit_id_column: Annotated[str | None, typer.Option(help="Unit id column of --units")]
    = None,
    main_grids: Annotated[int | None, typer.Option(help="Main grids in the city")] = None,
    main_size: Annotated[float | None, typer.Option(help="Target first-measure load per "
                                                         "main grid")] = None,
    branch_grids: Annotated[Path | None, typer.Option(help="CSV branch_id,main_grids: the "
                                                           "count per branch")] = None,
    sub_grids: Annotated[int, typer.Option(help="Sub-grids per main grid")] = 4,
    sub_size: Annotated[float | None, typer.Option(help="Target load per sub-grid")] = None,
    balance: Annotated[list[str] | None, typer.Option(help="COLUMN[=TOL]")] = None,
    tolerance: Annotated[float, typer.Option(help="Default tolerance")] = 0.05,
    objective: Annotated[str, typer.Option(help="distance or boundary")] = "distance",
    lock: Annotated[Path | None, typer.Option(help="CSV unit_id,main_grid_id")] = None,
    stores_as_centres: Annotated[bool, typer.Option(help="One main grid per store, centred "
                                                         "on it")] = False,
    own_grid_islands: Annotated[bool, typer.Option(help="Islands become main grids of their "
                                                        "own")] = False,
    time_limit_main: Annotated[float, typer.Option(help="Seconds per branch")] = 60.0,
    time_limit_sub: Annotated[float, typer.Option(help="Seconds per main grid")] = 20.0,
    workers: Annotated[int, typer.Option(help="Parallel worker processes")] = 2,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Build the three-level plan (branches, main grids, sub-grids) on your own data."""
    from territory.boundaries import read_boundaries
    from territory.hierarchy import HierarchySpec
    from territory.pipeline import Inputs, UnitOptions, read_points

    with _errors(ctx, crs="boundaries_crs", id_column="unit_id_column", lng="lng_column",
                 lat="lat_column", n_main="main_grids", n_sub="sub_grids"):
        points_crs = require_crs(points_crs, "--points-crs")
        locked = {}
        if lock is not None:
            table = pd.read_csv(lock, dtype=str)
            if not {"unit_id", "main_grid_id"} <= set(table.columns):
                raise InvalidInputError(f"--lock {lock}: needs columns unit_id, main_grid_id")
            locked = dict(zip(table["unit_id"], table["main_grid_id"], strict=True))
        n_main: int | dict | None = main_grids
        if branch_grids is not None:
            table = pd.read_csv(branch_grids, dtype={"branch_id": str})
            if not {"branch_id", "main_grids"} <= set(table.columns):
                raise InvalidInputError(
                    f"--branch-grids {branch_grids}: needs columns branch_id, main_grids"
                )
            n_main = dict(zip(table["branch_id"], table["main_grids"].astype(int), strict=True))
        spec = HierarchySpec(
            measures=parse_balance(balance or ["subscribers", "workload"], tolerance),
            n_main=n_main, main_size=main_size, n_sub=sub_grids, sub_size=sub_size,
            objective=objective, time_limit_main=time_limit_main,
            time_limit_sub=time_limit_sub, locked=locked, own_grid_islands=own_grid_islands,
            workers=workers, random_state=seed,
        )
        spec.validate(centred=stores_as_centres)  # cheap checks before reading any file
        areas = read_boundaries(boundaries, crs=boundaries_crs, repair=repair)

        def pts(path, name):
            if path is None:
                return None
            return read_points(path, crs=points_crs, lng=lng_column, lat=lat_column, name=name,
                               encoding=encoding, areas=areas, on_warning=warn)

        inputs = Inputs(areas, branch_column, pts(customers, "customers"),
                        pts(communities, "communities"), pts(stores, "stores"),
                        pts(key_accounts, "key_accounts"), dissolve_branches=dissolve_branches)
        layer = None if units is None else read_boundaries(
            units, crs=boundaries_crs, id_column=unit_id_column, repair=repair)
        opts = UnitOptions(resolution, target_per_unit, min_resolution, layer, unit_id_column)
        _plan_job(inputs, opts, spec, out, stores_as_centres)


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Output folder")] = Path("out"),
    city: Annotated[str, typer.Option(help="shenzhen or xiamen")] = "shenzhen",
    customers: Annotated[int, typer.Option(help="Synthetic customers")] = 300_000,
    main_grids: Annotated[int, typer.Option()] = 100,
    sub_grids: Annotated[int, typer.Option()] = 4,
    seed: Annotated[int, typer.Option()] = 0,
    workers: Annotated[int, typer.Option()] = 2,
) -> None:
    """The main job on the shipped data: synthetic customers on real districts → plan."""
    from territory.boundaries import load_city
    from territory.hierarchy import HierarchySpec
    from territory.pipeline import Inputs, UnitOptions
    from territory.synth import generate_city, write_city

    with _errors():
        areas = load_city(city)
        with stage(err_console, f"{customers} synthetic customers generated"):
            data = generate_city(areas, n_customers=customers, seed=seed)
        out.mkdir(parents=True, exist_ok=True)
        write_city(data, out / "synthetic")
        inputs = Inputs(areas, "adcode", data.customers, data.communities, data.stores,
                        data.key_accounts)
        spec = HierarchySpec(
            measures={"subscribers": 0.05, "workload": 0.05}, n_main=main_grids,
            n_sub=sub_grids, workers=workers, random_state=seed,
        )
        result = _plan_job(inputs, UnitOptions(10, 30.0, 7), spec, out, False)
        _demo_outputs(result.plan, out, data)


def _demo_outputs(plan, out: Path, data) -> None:
    """After the plan: assign every customer, write the per-grid reports and the maps."""
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

        maps = write_demo_maps(layers, out / "maps", data.tables())
    console.print(f"{len(maps)} maps → {out / 'maps'} (overview.html opens offline)")


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


def main() -> None:  # pragma: no cover - console entry point
    app()
