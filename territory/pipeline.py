"""The main job: boundaries and point tables → units → graph → three-level plan → metrics.

``territory plan`` and ``territory demo`` (and the service's plan jobs) all run this.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

import geopandas as gpd
import networkx as nx
import numpy as np
import pandas as pd
import pyproj

from territory.crs import frame_crs, normalize_crs, to_wgs84
from territory.crs_check import Sample, Warn, report, service_area
from territory.errors import InvalidInputError, PartialPlanError
from territory.graph import build_graph
from territory.hierarchy import HierarchySpec, apportion, build_plan, refuse_infeasible
from territory.key_accounts import key_account_groups, split_heavy_groups
from territory.metrics import plan_metrics
from territory.plan import Plan
from territory.progress import GRAPH, METRICS, UNITS, Progress, silent
from territory.stores import store_records
from territory.tables import DEFAULT_ENCODING, read_point_table
from territory.units import aggregate_points, build_units, locate_points, units_from_polygons
from territory.workload import (
    BEAT,
    PARTS,
    ROW_COLUMN,
    TOTAL,
    WorkloadModel,
    add_total,
    annotate,
    load_model,
)

log = logging.getLogger(__name__)

#: point-table columns summed into units when present: (table, column) -> unit column; the
#: workload model's hours (:mod:`territory.workload`) add up to the ``workload`` measure
SUMS = {
    ("customers", "subscribers"): "subscribers",
    ("customers", ROW_COLUMN): PARTS["customers"],
    ("communities", ROW_COLUMN): PARTS["communities"],
    ("key_accounts", ROW_COLUMN): PARTS["key_accounts"],
    ("customers", "arpu"): "revenue",
    ("communities", "households"): "households",
    ("communities", "value_score"): "community_value",
    ("key_accounts", "subscribers"): "key_account_subscribers",
}
COUNTS = {"customers": "customers", "communities": "communities", "stores": "stores",
          "key_accounts": "key_accounts"}


@dataclass
class Inputs:
    """What a plan is computed from; point tables carry WGS84 ``lng``/``lat``."""

    areas: gpd.GeoDataFrame
    branch_column: str
    customers: pd.DataFrame
    communities: pd.DataFrame | None = None
    stores: pd.DataFrame | None = None
    key_accounts: pd.DataFrame | None = None
    #: several rows of ``areas`` with one branch code form one branch (else they are refused)
    dissolve_branches: bool = False
    #: the workload model giving rows their monthly hours (None: the shipped defaults)
    workload: WorkloadModel | None = None

    def tables(self) -> dict[str, pd.DataFrame]:
        return {name: t for name, t in (
            ("customers", self.customers), ("communities", self.communities),
            ("stores", self.stores), ("key_accounts", self.key_accounts)) if t is not None}


@dataclass
class UnitOptions:
    """H3 units (resolution, adaptive target) or the planner's own polygons (``layer``).

    The defaults are :class:`territory.request.PlanRequest`'s (tests/test_request.py)."""

    resolution: int = 10
    target_per_unit: float | None = 30.0
    min_resolution: int = 7
    layer: gpd.GeoDataFrame | None = None  # planner-supplied units: communities, villages
    id_column: str | None = None


@dataclass
class Result:
    plan: Plan
    units: gpd.GeoDataFrame
    graph: nx.Graph
    metrics: dict
    report: dict = field(default_factory=dict)


def read_points(path: str | Path, *, crs: str | None = None, lng: str = "lng", lat: str = "lat",
                name: str = "points", areas: gpd.GeoDataFrame | None = None,
                on_warning: Warn | None = None,
                encoding: str = DEFAULT_ENCODING) -> pd.DataFrame:
    """Read a CSV (text in ``encoding``) or Parquet point table; convert ``lng``/``lat`` to
    WGS84 in place.

    ``crs`` is required (never assumed); see :func:`to_wgs84_columns` for ``areas``.
    """
    crs = _points_crs(crs, name)
    df = read_point_table(path, encoding=encoding, name=name)
    return to_wgs84_columns(df, crs=crs, lng=lng, lat=lat, name=name, areas=areas,
                            on_warning=on_warning)


def _points_crs(crs: str | None, name: str) -> str:
    """The table's system, canonical; a missing or unknown one names the table."""
    try:
        return normalize_crs(crs)
    except InvalidInputError as exc:
        raise InvalidInputError(f"{name}: {exc}") from None


def to_wgs84_columns(df: pd.DataFrame, *, crs: str | None = None, lng: str = "lng",
                     lat: str = "lat", name: str = "points",
                     areas: gpd.GeoDataFrame | None = None, on_warning: Warn | None = None
                     ) -> pd.DataFrame:
    """A copy of ``df`` with WGS84 ``lng``/``lat`` columns converted from ``crs`` (required).

    With ``areas`` (the boundary layer, EPSG:4326), the table is checked for a mistaken
    ``crs`` against the service area before any plan exists (see :mod:`territory.crs_check`;
    a mismatch goes to ``on_warning``, else warns).
    """
    crs = _points_crs(crs, name)
    for c in (lng, lat):
        if c not in df.columns:
            raise InvalidInputError(
                f"{name}: no column {c!r}; name the coordinate columns with `lng` and `lat` "
                f"(columns: {list(df.columns)[:20]})"
            )
    x = pd.to_numeric(df[lng], errors="coerce").to_numpy(dtype=float)
    y = pd.to_numeric(df[lat], errors="coerce").to_numpy(dtype=float)
    if pyproj.CRS.from_user_input(frame_crs(crs)).is_geographic:
        _check_not_swapped(x, y, f"{name}: columns {lng!r} (longitude) and {lat!r} (latitude)")
    if areas is not None:
        check = Sample()
        check.add(x, y, crs)
        report(check.fits(service_area(areas), what=name), on_warning)
    x, y = to_wgs84(x, y, crs)
    out = df.copy()
    out["lng"], out["lat"] = x, y
    return out


def _check_not_swapped(lng: np.ndarray, lat: np.ndarray, what: str,
                       bounds: tuple[float, float, float, float] | None = None) -> None:
    """Refuse degrees whose columns look exchanged: most rows are impossible (a latitude
    beyond ±90°) or outside ``bounds`` (the service area) as given, yet fit when swapped."""
    ok = np.isfinite(lng) & np.isfinite(lat)
    if not ok.any():
        return
    x, y = lng[ok], lat[ok]
    if bounds is None:
        fits, fits_swapped = np.abs(y) <= 90, (np.abs(x) <= 90) & (np.abs(y) <= 180)
    else:
        x0, y0, x1, y1 = bounds
        fits = (x >= x0) & (x <= x1) & (y >= y0) & (y <= y1)
        fits_swapped = (y >= x0) & (y <= x1) & (x >= y0) & (x <= y1)
    if fits_swapped.mean() > 0.5 and fits_swapped.sum() > fits.sum():
        i = int(np.flatnonzero(fits_swapped & ~fits)[0])
        raise InvalidInputError(
            f"{what}: looks like lat and lng are swapped: {fits_swapped.sum()} of {ok.sum()} "
            f"rows fit {'' if bounds is None else 'the service area '}only with the two "
            f"exchanged (e.g. longitude {x[i]:.6g}, latitude {y[i]:.6g}); exchange the "
            "columns, i.e. give the longitude column as `lng` and the latitude one as `lat`"
        )


def validate(inputs: Inputs, opts: UnitOptions, spec: HierarchySpec, *,
             stores_as_centres: bool = False) -> None:
    """Every check that needs no units, run before the seconds of building them: the
    parameters (:meth:`HierarchySpec.validate`), the branch column and its codes, the point
    tables, and the balance measures the tables can produce."""
    spec.validate(centred=stores_as_centres)
    if stores_as_centres and inputs.stores is None:
        raise InvalidInputError("`stores_as_centres` needs a stores table")
    areas, column = inputs.areas, inputs.branch_column
    if column not in areas.columns:
        raise InvalidInputError(
            f"branch column {column!r} is not in the boundary layer; set `branch_column` to "
            f"one of {list(areas.columns.drop('geometry'))}"
        )
    codes = areas[column].astype(str)
    dup = codes[codes.duplicated(keep=False)]
    if len(dup) and not inputs.dissolve_branches:
        rows = "; ".join(f"{c!r} in rows {list(r)}" for c, r in
                         dup.groupby(dup, sort=True).groups.items())
        raise InvalidInputError(
            f"branch column {column!r} gives one code to several rows ({rows}); a branch is "
            "one row: give each its own code, or set `dissolve_branches` to merge the rows "
            "of one code into one branch"
        )
    tables = inputs.tables()
    if len(inputs.customers) == 0:
        raise InvalidInputError("customers: the table is empty; a plan needs customers")
    bounds = tuple(areas.total_bounds)
    for name, table in tables.items():
        _check_not_swapped(table["lng"].to_numpy(float), table["lat"].to_numpy(float), name,
                           bounds)
    x, y = inputs.customers["lng"].to_numpy(float), inputs.customers["lat"].to_numpy(float)
    if not ((x >= bounds[0]) & (x <= bounds[2]) & (y >= bounds[1]) & (y <= bounds[3])).any():
        raise InvalidInputError(
            f"customers: none of the {len(x)} rows lies within the service area (longitude "
            f"{bounds[0]:.4f}..{bounds[2]:.4f}, latitude {bounds[1]:.4f}..{bounds[3]:.4f}); "
            "check the coordinate columns and the coordinate system they are given in"
        )
    available = {COUNTS[name] for name in tables}
    available |= {out for (t, col), out in SUMS.items() if col in tables.get(t, ())}
    # the workload model gives every table it knows its hours (annotate, add_total)
    available |= {PARTS[t] for t in tables if t in PARTS} | {TOTAL, BEAT}
    if opts.layer is not None:
        available |= {c for c in opts.layer.columns
                      if pd.api.types.is_numeric_dtype(opts.layer[c])}
    missing = [m for m in spec.measures if m not in available]
    if missing:
        raise InvalidInputError(
            f"balance measures {missing} are not unit attributes; the tables given provide "
            f"{sorted(available)}"
        )
    branches = codes.unique()
    if isinstance(spec.n_main, dict):
        lacking = sorted(set(branches) - set(spec.n_main))
        if lacking:
            raise InvalidInputError(f"`n_main`: no count for branches {lacking[:20]}")
    elif spec.n_main is not None and not stores_as_centres:
        apportion(pd.Series(1.0, index=branches), spec.n_main)


def build_unit_table(inputs: Inputs, opts: UnitOptions) -> tuple[gpd.GeoDataFrame, dict]:
    """Units with every aggregated attribute and ``branch_id``; the aggregation report."""
    areas = inputs.areas
    if opts.layer is not None:
        units = _planner_units(opts.layer, opts.id_column, areas, inputs.branch_column)
    else:
        units = build_units(
            areas, area_column=inputs.branch_column, resolution=opts.resolution,
            points=inputs.customers if opts.target_per_unit else None,
            target_per_unit=opts.target_per_unit, min_resolution=opts.min_resolution,
        )
    report = {}
    frames = []
    model = inputs.workload or load_model()
    tables = annotate(inputs.tables(), model)
    for name, table in tables.items():
        sums = {col: out for (t, col), out in SUMS.items() if t == name and col in table}
        agg, rep = aggregate_points(units, table, sums=list(sums), count_name=COUNTS[name])
        frames.append(agg.rename(columns=sums))
        report[name] = {"rows": rep.n_rows, "inside": rep.n_inside, "outside": rep.n_outside,
                        "invalid": rep.n_invalid, "outside_rows": rep.outside_rows[:20],
                        "invalid_rows": rep.invalid_rows[:20]}
    slivers = units.attrs.get("slivers", [])
    units = add_total(units.join(pd.concat(frames, axis=1)), model)
    units.attrs["slivers"] = slivers  # a join drops attrs
    units["branch_id"] = units["area_id"].astype(str)
    return units, report


def _planner_units(layer: gpd.GeoDataFrame, id_column: str | None, areas: gpd.GeoDataFrame,
                   branch_column: str) -> gpd.GeoDataFrame:
    """The planner's polygons as units, each in the branch holding its representative point."""
    if not id_column:
        raise InvalidInputError("planner units need `id_column` naming the unit id")
    units = units_from_polygons(layer, id_column=id_column)
    pts = units.geometry.representative_point()
    pos = locate_points(areas, pts.x.to_numpy(), pts.y.to_numpy())
    if (pos < 0).any():
        bad = units.index[pos < 0].tolist()[:10]
        raise InvalidInputError(
            f"planner units {bad} lie outside the boundary layer; clip them to the service area"
        )
    units["area_id"] = areas[branch_column].to_numpy()[pos]
    return units


def store_centres(units: gpd.GeoDataFrame, stores: pd.DataFrame) -> dict:
    """Per branch, the units holding a store (one grid centred on each)."""
    pos = locate_points(units, stores["lng"].to_numpy(float), stores["lat"].to_numpy(float))
    ids = units.index[pos[pos >= 0]]
    out: dict = {}
    for uid in pd.unique(np.asarray(ids, dtype=object)):
        out.setdefault(units.at[uid, "branch_id"], []).append(uid)
    return out


def _mean_sub_grid(units: pd.DataFrame, spec: HierarchySpec) -> dict[str, float] | None:
    """Each balance measure's load of a mean sub-grid, when the grid counts are given."""
    n_main = sum(spec.n_main.values()) if isinstance(spec.n_main, dict) else spec.n_main
    if not n_main or not spec.n_sub:
        return None
    return {m: float(units[m].sum()) / (int(n_main) * int(spec.n_sub)) for m in spec.measures}


def _unit_constraints(units: gpd.GeoDataFrame, inputs: Inputs, spec: HierarchySpec, *,
                      stores_as_centres: bool) -> list[dict]:
    """Set on ``spec`` what the units decide: key-account groups and store centres. With
    ``spec.fit_main`` (the demo, whose sizes follow the customers alone) a key account
    heavier than a mean sub-grid is not held in one grid; those are returned (else [])."""
    released: list[dict] = []
    if not spec.together:
        spec.together = key_account_groups(units, inputs.key_accounts)
        caps = _mean_sub_grid(units, spec) if spec.fit_main else None
        if caps:
            spec.together, released = split_heavy_groups(units, spec.together, caps)
            for r in released:  # one line per account only with --verbose: 100+ at 2 M
                log.debug("key account over %d units not kept in one grid: it holds %.6g "
                          "%s, more than a mean sub-grid (%.6g)", len(r["units"]),
                          r["load"], r["measure"], r["cap"])
            if released:
                log.warning("%d key accounts not kept in one grid: each holds more than a "
                            "mean sub-grid (key_account_groups_released in plan.json)",
                            len(released))
    if stores_as_centres:
        spec.centres = store_centres(units, inputs.stores)
    return released


def precheck_units(inputs: Inputs, opts: UnitOptions, spec: HierarchySpec, *,
                   stores_as_centres: bool = False) -> tuple[gpd.GeoDataFrame, dict]:
    """:func:`validate`, build the units and refuse at once (:class:`InfeasibleError`)
    targets their loads cannot meet: what :func:`run` checks before any search, for a
    caller that must answer before queueing the search (the service). Returns the units and
    the aggregation report, to hand to :func:`run` as ``built`` so they are built once;
    ``spec`` is left as it was."""
    validate(inputs, opts, spec, stores_as_centres=stores_as_centres)
    units, report = build_unit_table(inputs, opts)
    checked = replace(spec)
    _unit_constraints(units, inputs, checked, stores_as_centres=stores_as_centres)
    refuse_infeasible(units, checked)
    return units, report


def run(
    inputs: Inputs,
    opts: UnitOptions,
    spec: HierarchySpec,
    *,
    stores_as_centres: bool = False,
    progress: Progress | None = None,
    built: tuple[gpd.GeoDataFrame, dict] | None = None,
) -> Result:
    """The whole job; returns the plan, its units and graph, and the metrics.

    ``progress`` receives every stage (:mod:`territory.progress`) as it starts and steps.
    ``built``: the units and aggregation report :func:`precheck_units` returned for these
    inputs and options, used instead of building them again.
    When some grids fail (:class:`PartialPlanError`), the error carries the result of the
    rest as ``result``, for the caller to save.
    """
    progress = progress or silent
    validate(inputs, opts, spec, stores_as_centres=stores_as_centres)
    progress(UNITS, 0, None)
    units, report = build_unit_table(inputs, opts) if built is None else built
    progress(UNITS, len(units), len(units))
    progress(GRAPH, 0, None)
    graph = build_graph(units)
    progress(GRAPH, graph.number_of_edges(), graph.number_of_edges())
    released = _unit_constraints(units, inputs, spec, stores_as_centres=stores_as_centres)
    params = {"resolution": opts.resolution, "target_per_unit": opts.target_per_unit,
              "min_resolution": opts.min_resolution, "branch_column": inputs.branch_column,
              "islands": graph.graph["islands"], "enclaves": graph.graph["enclaves"],
              "slivers": units.attrs.get("slivers", []),
              "key_account_groups": len(spec.together),
              "key_account_groups_released": released, "aggregation": report}
    def result(plan: Plan) -> Result:
        progress(METRICS, 0, 1)
        metrics = plan_metrics(plan, graph, inputs.areas)
        progress(METRICS, 1, 1)
        if inputs.stores is not None:  # the stores the plan is made with (store edits)
            params = {**plan.params, "stores": store_records(
                plan.units, inputs.stores, centred=stores_as_centres)}
        else:
            params = plan.params
        plan = Plan(**{**plan.__dict__, "metrics": metrics, "params": params})
        return Result(plan=plan, units=units, graph=graph, metrics=metrics, report=report)

    try:
        return result(build_plan(units, graph, spec, progress=progress, params=params))
    except PartialPlanError as exc:
        # the plan with its failing grids flagged is the work done: hand it on, whole
        exc.result = result(exc.plan)
        exc.plan = exc.result.plan
        raise
