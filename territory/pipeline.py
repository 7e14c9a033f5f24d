"""The main job: boundaries and point tables → units → graph → three-level plan → metrics.

``territory plan`` and ``territory demo`` (and the service's plan jobs) all run this.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import geopandas as gpd
import networkx as nx
import numpy as np
import pandas as pd

from territory.crs import normalize_crs, to_wgs84
from territory.crs_check import Sample, Warn, report, service_area
from territory.errors import InvalidInputError
from territory.graph import build_graph
from territory.hierarchy import HierarchySpec, build_plan
from territory.metrics import plan_metrics
from territory.plan import Plan
from territory.progress import GRAPH, METRICS, UNITS, Progress, silent
from territory.units import aggregate_points, build_units, locate_points, units_from_polygons
from territory.workload import PARTS, ROW_COLUMN, WorkloadModel, add_total, annotate, load_model

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
    #: the workload model giving rows their monthly hours (None: the shipped defaults)
    workload: WorkloadModel | None = None

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


def read_points(path: str | Path, *, crs: str | None = None, lng: str = "lng", lat: str = "lat",
                name: str = "points", areas: gpd.GeoDataFrame | None = None,
                on_warning: Warn | None = None) -> pd.DataFrame:
    """Read a CSV or Parquet point table; convert ``lng``/``lat`` to WGS84 in place.

    ``crs`` is required (never assumed); see :func:`to_wgs84_columns` for ``areas``.
    """
    crs = _points_crs(crs, name)
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
                f"{name}: no column {c!r}; name the coordinate columns with "
                f"--lng-column/--lat-column (columns: {list(df.columns)[:20]})"
            )
    x = pd.to_numeric(df[lng], errors="coerce").to_numpy(dtype=float)
    y = pd.to_numeric(df[lat], errors="coerce").to_numpy(dtype=float)
    if areas is not None:
        check = Sample()
        check.add(x, y, crs)
        report(check.fits(service_area(areas), what=name), on_warning)
    x, y = to_wgs84(x, y, crs)
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
    model = inputs.workload or load_model()
    tables = annotate(inputs.tables(), model)
    for name, table in tables.items():
        sums = {col: out for (t, col), out in SUMS.items() if t == name and col in table}
        agg, rep = aggregate_points(units, table, sums=list(sums), count_name=COUNTS[name])
        frames.append(agg.rename(columns=sums))
        report[name] = {"rows": rep.n_rows, "inside": rep.n_inside, "outside": rep.n_outside,
                        "invalid": rep.n_invalid, "outside_rows": rep.outside_rows[:20],
                        "invalid_rows": rep.invalid_rows[:20]}
    units = add_total(units.join(pd.concat(frames, axis=1)), model)
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
    progress: Progress | None = None,
) -> Result:
    """The whole job; returns the plan, its units and graph, and the metrics.

    ``progress`` receives every stage (:mod:`territory.progress`) as it starts and steps.
    """
    progress = progress or silent
    progress(UNITS, 0, None)
    units, report = build_unit_table(inputs, opts)
    progress(UNITS, len(units), len(units))
    missing = [m for m in spec.measures if m not in units.columns]
    if missing:
        raise InvalidInputError(
            f"balance measures {missing} are not unit attributes; available: "
            f"{sorted(c for c in units.columns if pd.api.types.is_numeric_dtype(units[c]))}"
        )
    progress(GRAPH, 0, None)
    graph = build_graph(units)
    progress(GRAPH, graph.number_of_edges(), graph.number_of_edges())
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
    plan = build_plan(units, graph, spec, progress=progress, params=params)
    progress(METRICS, 0, 1)
    metrics = plan_metrics(plan, graph, inputs.areas)
    progress(METRICS, 1, 1)
    plan = Plan(**{**plan.__dict__, "metrics": metrics})
    return Result(plan=plan, units=units, graph=graph, metrics=metrics, report=report)
