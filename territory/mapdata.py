"""The data behind every map and export of a plan: grid KPIs, display geometry, placed points.

Interactive maps (:mod:`territory.maps`), printable maps (:mod:`territory.printmaps`) and
exports (:mod:`territory.exports`) show the same figures for a grid, so they are computed
once here:

* :func:`grid_kpis`: per grid, every additive unit attribute summed (subscribers,
  households, workload, revenue, counts of communities, stores, key accounts), the
  deviation from the parent's mean for each balanced measure, ``penetration`` (subscribers
  over households) and ``staff`` (workload over :data:`HOURS_PER_STAFF`).
* :func:`simplify_coverage`: display geometry. A city's sub-grids follow H3 cell edges, a
  zigzag of thousands of vertices that a browser must draw and a phone must download;
  simplifying the grids of one level *as a coverage* keeps every shared edge shared, so
  neighbouring grids still meet with no sliver or gap.
* :func:`place_points`: which unit and grids a point (customer, community, store) falls in.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from numpy.typing import NDArray

from territory.colouring import grid_colours, rook_pairs
from territory.errors import InvalidInputError
from territory.metrics import grid_table
from territory.plan import LEVELS, PARENT, Plan
from territory.units import locate_points

#: Field hours one staff member works in a month (8 h x 20 working days); staff per grid is
#: its monthly field workload divided by this.
HOURS_PER_STAFF = 160.0

#: Unit attributes that add up over a grid (whichever the plan's units carry).
ADDITIVE = ("customers", "subscribers", "households", "workload", "revenue", "communities",
            "stores", "key_accounts", "key_account_subscribers", "community_value")

#: Simplification tolerance of city-wide maps (metres, about the square root of the area of
#: the triangles removed) per level. A grid boundary runs along H3 cell edges; a corner of a
#: resolution-10 cell adds a triangle of about 45 m (square root of its area), so 50 m turns
#: the saw-tooth into a line a planner reads at city scale and cuts the vertices by 60 %
#: (Shenzhen's sub-grids: 80 000 -> 26 000). Field maps draw the exact boundary instead.
TOLERANCE_M = {"branch": 60.0, "main_grid": 50.0, "sub_grid": 50.0}

#: Decimal places kept in display coordinates: 1e-5 degrees is about 1 m.
DECIMALS = 5

#: The look shared by interactive and printed maps.
LEVEL_NAME = {"branch": "Branches", "main_grid": "Main grids", "sub_grid": "Sub-grids"}
ONE_NAME = {"branch": "Branch", "main_grid": "Main grid", "sub_grid": "Sub-grid"}
LINE_COLOUR = "#222222"
STORE_COLOUR = "#c0392b"
KEY_ACCOUNT_COLOUR = "#1f4e79"
COMMUNITY_COLOUR = "#6a3d9a"
NEIGHBOUR_GREY = "#bdbdbd"

_M_PER_DEG_LAT = 110_574.0
_M_PER_DEG_LNG_EQUATOR = 111_320.0

#: Point tables by name (``customers``, ``communities``, ``stores``, ``key_accounts``), each
#: with WGS84 ``lng``/``lat``.
Tables = dict[str, pd.DataFrame]

#: Columns :func:`place_points` adds.
PLACE_COLUMNS = ("unit_id", "sub_grid_id", "main_grid_id", "branch_id")


def grid_kpis(plan: Plan, level: str) -> gpd.GeoDataFrame:
    """One row per grid of ``level``: :func:`territory.metrics.grid_table`'s columns plus
    the additive unit sums, ``penetration``, ``staff`` and a fill ``colour`` that differs
    from every neighbour's."""
    table = grid_table(plan, level)
    extra = [c for c in ADDITIVE if c in plan.units.columns and c not in table.columns]
    if extra:
        sums = plan.units.groupby(plan.column(level))[extra].sum()
        table = table.join(sums, on="grid_id")
    if "subscribers" in table and "households" in table:
        hh = table["households"].to_numpy(dtype=float)
        table["penetration"] = np.divide(table["subscribers"].to_numpy(dtype=float), hh,
                                         out=np.full(len(table), np.nan), where=hh > 0)
    if "workload" in table:
        table["staff"] = table["workload"] / HOURS_PER_STAFF
    colours = grid_colours(table["grid_id"], table.geometry.values)
    table["colour"] = table["grid_id"].map(colours)
    return table


def as_text(values: Iterable[object], fmt: str = "") -> list[str]:
    """Values formatted for people, "–" where missing: one spelling on every map."""
    return ["–" if pd.isna(v) else format(v, fmt) for v in values]


def key_figures(table: gpd.GeoDataFrame, level: str, measures: list[str]) -> pd.DataFrame:
    """Each grid's key figures as text (columns are the labels), one row per row of
    ``table`` (a :func:`grid_kpis` table): the same wording on tooltips, printed maps and
    KML descriptions."""
    parent = PARENT[level]
    within = parent.replace("_", " ") if parent else "city"
    out = pd.DataFrame({"Grid": table["grid_id"]}, index=table.index)
    if parent:
        out[within.capitalize()] = table["parent_id"]
    for label, column, fmt in (
        ("Subscribers", "subscribers", ",.0f"), ("Households", "households", ",.0f"),
        ("Penetration", "penetration", ".1%"), ("Workload (h/month)", "workload", ",.0f"),
        (f"Staff (at {HOURS_PER_STAFF:.0f} h/month)", "staff", ".1f"),
    ):
        if column in table:
            out[label] = as_text(table[column], fmt)
    for m in measures:
        out[f"{m.replace('_', ' ').capitalize()} vs {within} mean"] = as_text(
            table[f"dev_{m}"], "+.1%")
    out["Area (km²)"] = as_text(table["area_km2"], ",.1f")
    return out


def tolerance_deg(tolerance_m: float, lat: float) -> float:
    """A length in metres as degrees at latitude ``lat``, for area-like tolerances (the
    geometric mean of the metres per degree of latitude and of longitude)."""
    m_lng = _M_PER_DEG_LNG_EQUATOR * math.cos(math.radians(lat))
    return tolerance_m / math.sqrt(_M_PER_DEG_LAT * m_lng)


def round_coordinates(geoms: NDArray[np.object_], decimals: int = DECIMALS) -> NDArray[np.object_]:
    """Geometries snapped to ``10**-decimals`` degrees, still valid, with coordinates that
    print short (``118.12345``, not ``118.12345000000001``) in GeoJSON."""
    snapped = shapely.set_precision(np.asarray(geoms, dtype=object), 10.0**-decimals)
    return shapely.transform(snapped, lambda xy: np.round(xy, decimals))


def simplify_coverage(geoms: NDArray[np.object_] | gpd.GeoSeries, tolerance_m: float,
                      decimals: int = DECIMALS) -> NDArray[np.object_]:
    """Simplify polygons of one level (WGS84, a coverage: no overlaps, edges matched)
    together so that shared edges stay shared, then round coordinates."""
    arr = np.asarray(geoms, dtype=object)
    if len(arr) == 0:
        return arr
    b = shapely.total_bounds(arr)
    tol = tolerance_deg(tolerance_m, (b[1] + b[3]) / 2)
    simple = shapely.coverage_simplify(arr, tol) if tol > 0 else arr
    return round_coordinates(simple, decimals)


class PlanLayers:
    """A plan's grid tables per level, computed once and shared by every map and export of
    a run: dissolving, measuring and colouring a level of a city takes seconds, and a run
    draws a hundred field maps from the same tables."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self._kpis: dict[str, gpd.GeoDataFrame] = {}
        self._display: dict[tuple[str, float], gpd.GeoDataFrame] = {}
        self._neighbours: dict[str, dict[str, list[str]]] = {}
        self._placed: dict[str, tuple[pd.DataFrame, pd.DataFrame]] = {}

    @classmethod
    def of(cls, plan: Plan | PlanLayers) -> PlanLayers:
        return plan if isinstance(plan, PlanLayers) else cls(plan)

    def kpis(self, level: str) -> gpd.GeoDataFrame:
        """:func:`grid_kpis` of ``level`` with exact geometry (a copy is yours to change)."""
        if level not in self._kpis:
            self._kpis[level] = grid_kpis(self.plan, level)
        return self._kpis[level].copy()

    def display(self, level: str, tolerance_m: float | None = None) -> gpd.GeoDataFrame:
        """:meth:`kpis` with geometry simplified as a coverage for drawing (default tolerance
        :data:`TOLERANCE_M` of the level)."""
        tol = TOLERANCE_M[level] if tolerance_m is None else tolerance_m
        if (level, tol) not in self._display:
            table = self.kpis(level)
            geoms = simplify_coverage(table.geometry.values, tol)
            self._display[level, tol] = table.set_geometry(geoms, crs=table.crs)
        return self._display[level, tol].copy()

    def neighbours(self, level: str) -> dict[str, list[str]]:
        """Rook neighbours of every grid of ``level`` (shared boundary of positive length)."""
        if level not in self._neighbours:
            table = self.kpis(level)
            ids = table["grid_id"].tolist()
            out: dict[str, list[str]] = {i: [] for i in ids}
            for i, j in rook_pairs(table.geometry.values):
                out[ids[i]].append(ids[j])
                out[ids[j]].append(ids[i])
            self._neighbours[level] = out
        return self._neighbours[level]

    def placed(self, tables: Tables | None, name: str) -> pd.DataFrame | None:
        """Table ``name`` of ``tables`` placed in the plan's grids (:func:`place_points`),
        communities with their ``penetration``; None when absent or empty. Cached while
        the same table object is passed, as every field map of a run needs it."""
        table = (tables or {}).get(name)
        if table is None or len(table) == 0:
            return None
        cached = self._placed.get(name)
        if cached is None or cached[0] is not table:
            placed = place_points(self.plan, table)
            if name == "communities" and "households" in placed:
                placed["penetration"] = community_penetration(self.plan, placed)
            self._placed[name] = (table, placed)  # the table is kept so its id stays unique
        return self._placed[name][1]

    def level_of(self, grid_id: str) -> str:
        """The level whose grids include ``grid_id``."""
        for level in LEVELS:
            if (self.plan.units[self.plan.column(level)] == grid_id).any():
                return level
        raise InvalidInputError(
            f"grid {grid_id!r} is not in plan {self.plan.plan_id}; main grids are e.g. "
            f"{sorted(self.plan.units['main_grid_id'].unique())[:3]}"
        )


def place_points(plan: Plan, points: pd.DataFrame) -> pd.DataFrame:
    """``points`` (WGS84 ``lng``/``lat``) with the unit and grids each falls in; NaN where a
    point lies outside every unit. A point on a shared edge goes to one unit, always the
    same (see :func:`territory.units.locate_points`)."""
    for c in ("lng", "lat"):
        if c not in points.columns:
            raise InvalidInputError(f"points need WGS84 columns 'lng' and 'lat'; missing {c!r}")
    lng = pd.to_numeric(points["lng"], errors="coerce").to_numpy(dtype=float)
    lat = pd.to_numeric(points["lat"], errors="coerce").to_numpy(dtype=float)
    pos = locate_points(plan.units, lng, lat)
    inside = pos >= 0
    out = pd.DataFrame(points).drop(columns=[c for c in PLACE_COLUMNS if c in points.columns])
    if isinstance(points, gpd.GeoDataFrame):
        out = out.drop(columns=points.geometry.name)
    units = plan.units.reset_index()[list(PLACE_COLUMNS)]
    for c in PLACE_COLUMNS:
        values = np.full(len(out), None, dtype=object)
        values[inside] = units[c].to_numpy(dtype=object)[pos[inside]]
        out[c] = values
    return out


def community_penetration(plan: Plan, communities: pd.DataFrame) -> pd.Series:
    """Penetration of each community: its own subscribers over households where the table
    has ``subscribers``; otherwise its unit's (subscribers over households of the H3 cell
    it lies in), the finest figure a plan knows. Needs the :func:`place_points` columns."""
    hh = pd.to_numeric(communities["households"], errors="coerce")
    if "subscribers" in communities:
        subs = pd.to_numeric(communities["subscribers"], errors="coerce")
        return (subs / hh.where(hh > 0)).rename("penetration")
    units = plan.units
    if not {"subscribers", "households"} <= set(units.columns):
        return pd.Series(np.nan, index=communities.index, name="penetration")
    unit_pen = units["subscribers"] / units["households"].where(units["households"] > 0)
    return communities["unit_id"].map(unit_pen).astype(float).rename("penetration")


def ranked_communities(layers: PlanLayers, tables: Tables | None, level: str,
                       grid_id: str) -> pd.DataFrame | None:
    """The communities of one grid, most valuable first, with ``rank`` (1 = highest
    ``value_score``, or households when there is no score): the order a team works them."""
    placed = layers.placed(tables, "communities")
    if placed is None or "households" not in placed:
        return None
    inside = placed[placed[layers.plan.column(level)] == grid_id]
    score = "value_score" if "value_score" in inside else "households"
    inside = inside.sort_values(score, ascending=False, kind="stable")
    return inside.assign(rank=np.arange(1, len(inside) + 1))
