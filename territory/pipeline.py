"""The main job: boundaries and point tables → units → graph → three-level plan → metrics.

``territory plan`` and ``territory demo`` (and the service's plan jobs) all run this.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import geopandas as gpd
import networkx as nx
import numpy as np
import pandas as pd

from territory.crs import normalize_crs, to_wgs84
from territory.errors import InvalidInputError, PartialPlanError
from territory.graph import build_graph
from territory.hierarchy import HierarchySpec, build_plan
from territory.metrics import plan_metrics
from territory.plan import Plan
from territory.units import aggregate_points, build_units, locate_points, units_from_polygons

log = logging.getLogger(__name__)

#: point-table columns summed into units when present: (table, column) -> unit column
SUMS = {
    ("customers", "subscribers"): "subscribers",
    ("customers", "workload"): "workload",
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

    def tables(self) -> dict[str, pd.DataFrame]:
        return {name: t for name, t in (
            ("customers", self.customers), ("communities", self.communities),
            ("stores", self.stores), ("key_accounts", self.key_accounts)) if t is not None}


@dataclass
class UnitOptions:
    """H3 units (resolution, adaptive target) or the planner's own polygons (``layer``)."""

    resolution: int = 9
    target_per_unit: float | None = None
    min_resolution: int = 6
    layer: gpd.GeoDataFrame | None = None  # planner-supplied units: communities, villages
    id_column: str | None = None


@dataclass
class Result:
    plan: Plan
    units: gpd.GeoDataFrame
    graph: nx.Graph
    metrics: dict
    report: dict = field(default_factory=dict)


def read_points(path: str | Path, *, crs: str = "wgs84", lng: str = "lng", lat: str = "lat",
                name: str = "points") -> pd.DataFrame:
    """Read a CSV or Parquet point table; convert ``lng``/``lat`` to WGS84 in place."""
    path = Path(path)
    if not path.exists():
        raise InvalidInputError(f"{name}: {path} does not exist")
    try:
        if path.suffix.lower() == ".parquet":
            df = pd.read_parquet(path)
        elif path.suffix.lower() in (".csv", ".txt"):
            df = pd.read_csv(path)
        else:
            raise InvalidInputError(f"{name}: {path} must be .csv or .parquet")
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        if isinstance(exc, InvalidInputError):
            raise
        raise InvalidInputError(f"{name}: cannot read {path} ({exc})") from None
    return to_wgs84_columns(df, crs=crs, lng=lng, lat=lat, name=name)


def to_wgs84_columns(df: pd.DataFrame, *, crs: str, lng: str = "lng", lat: str = "lat",
                     name: str = "points") -> pd.DataFrame:
    """A copy of ``df`` with WGS84 ``lng``/``lat`` columns converted from ``crs``."""
    for c in (lng, lat):
        if c not in df.columns:
            raise InvalidInputError(
                f"{name}: no column {c!r}; name the coordinate columns with "
                f"--lng-column/--lat-column (columns: {list(df.columns)[:20]})"
            )
    x = pd.to_numeric(df[lng], errors="coerce").to_numpy(dtype=float)
    y = pd.to_numeric(df[lat], errors="coerce").to_numpy(dtype=float)
    x, y = to_wgs84(x, y, normalize_crs(crs))
    out = df.copy()
    out["lng"], out["lat"] = x, y
    return out


def build_unit_table(inputs: Inputs, opts: UnitOptions) -> tuple[gpd.GeoDataFrame, dict]:
    """Units with every aggregated attribute and ``branch_id``; the aggregation report."""
    areas = inputs.areas
    if inputs.branch_column not in areas.columns:
        raise InvalidInputError(
            f"branch column {inputs.branch_column!r} is not in the boundary layer; choose one "
            f"of {list(areas.columns.drop('geometry'))}"
        )
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
    for name, table in inputs.tables().items():
        sums = {col: out for (t, col), out in SUMS.items() if t == name and col in table}
        agg, rep = aggregate_points(units, table, sums=list(sums), count_name=COUNTS[name])
        frames.append(agg.rename(columns=sums))
        report[name] = {"rows": rep.n_rows, "inside": rep.n_inside, "outside": rep.n_outside,
                        "invalid": rep.n_invalid, "outside_rows": rep.outside_rows[:20],
                        "invalid_rows": rep.invalid_rows[:20]}
    units = units.join(pd.concat(frames, axis=1))
    units["branch_id"] = units["area_id"].astype(str)
    return units, report


def _planner_units(layer: gpd.GeoDataFrame, id_column: str | None, areas: gpd.GeoDataFrame,
                   branch_column: str) -> gpd.GeoDataFrame:
    """The planner's polygons as units, each in the branch holding its representative point."""
    if not id_column:
        raise InvalidInputError("planner units need --unit-id-column naming the unit id")
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


def key_account_groups(units: gpd.GeoDataFrame, key_accounts: pd.DataFrame | None) -> list[list]:
    """Units a key account's footprint spans: they must stay in one grid."""
    if key_accounts is None or "footprint_m" not in key_accounts:
        return []
    from territory.synth import key_account_footprints

    ka = gpd.GeoDataFrame(
        key_accounts, geometry=gpd.points_from_xy(key_accounts["lng"], key_accounts["lat"]),
        crs="EPSG:4326",
    )
    foot = key_account_footprints(ka)
    hits = gpd.sjoin(units[["geometry"]], foot[["geometry"]], predicate="intersects")
    groups = hits.groupby("index_right").apply(lambda d: sorted(d.index.unique()))
    return [g for g in groups if len(g) > 1]


def store_centres(units: gpd.GeoDataFrame, stores: pd.DataFrame) -> dict:
    """Per branch, the units holding a store (one grid centred on each)."""
    pos = locate_points(units, stores["lng"].to_numpy(float), stores["lat"].to_numpy(float))
    ids = units.index[pos[pos >= 0]]
    out: dict = {}
    for uid in pd.unique(np.asarray(ids, dtype=object)):
        out.setdefault(units.at[uid, "branch_id"], []).append(uid)
    return out


def run(
    inputs: Inputs,
    opts: UnitOptions,
    spec: HierarchySpec,
    *,
    stores_as_centres: bool = False,
    progress: Callable[[str, str], None] | None = None,
) -> Result:
    """The whole job; returns the plan, its units and graph, and the metrics.

    When some grids fail (:class:`PartialPlanError`), the error carries the result of the
    rest as ``result``, for the caller to save."""
    units, report = build_unit_table(inputs, opts)
    if progress:
        progress("units", str(len(units)))
    missing = [m for m in spec.measures if m not in units.columns]
    if missing:
        raise InvalidInputError(
            f"balance measures {missing} are not unit attributes; available: "
            f"{sorted(c for c in units.columns if pd.api.types.is_numeric_dtype(units[c]))}"
        )
    graph = build_graph(units)
    if progress:
        progress("graph", str(graph.number_of_edges()))
    if not spec.together:
        spec.together = key_account_groups(units, inputs.key_accounts)
    if stores_as_centres:
        if inputs.stores is None:
            raise InvalidInputError("stores_as_centres needs a stores table")
        spec.centres = store_centres(units, inputs.stores)
    params = {"resolution": opts.resolution, "target_per_unit": opts.target_per_unit,
              "min_resolution": opts.min_resolution, "branch_column": inputs.branch_column,
              "islands": graph.graph["islands"], "enclaves": graph.graph["enclaves"],
              "key_account_groups": len(spec.together), "aggregation": report}
    def result(plan: Plan) -> Result:
        metrics = plan_metrics(plan, graph, inputs.areas)
        plan = Plan(**{**plan.__dict__, "metrics": metrics})
        return Result(plan=plan, units=units, graph=graph, metrics=metrics, report=report)

    try:
        return result(build_plan(units, graph, spec, progress=progress, params=params))
    except PartialPlanError as exc:
        # the plan with its failing grids flagged is the work done: hand it on, whole
        exc.result = result(exc.plan)
        exc.plan = exc.result.plan
        raise
