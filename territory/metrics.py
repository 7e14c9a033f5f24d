"""Metrics for any plan: balance, compactness, contiguity and coverage, per grid and overall.

Balance is judged where it is promised: main grids against the mean of their branch,
sub-grids against the mean of their main grid, branches against the city mean. Areas and
lengths are computed in the local UTM zone (metres), never in degrees.
"""

from __future__ import annotations

import math

import geopandas as gpd
import networkx as nx
import numpy as np
import pandas as pd
import shapely

from territory.graph import contiguous_grids
from territory.optimize.balance import deviation
from territory.plan import LEVELS, PARENT, Plan
from territory.units import projected, snap

#: A plan covers its service area when no more than this is uncovered (``gap_m2``, m²
#: measured in the local UTM zone). The units tile the service area exactly at their
#: 1e-8 degree (about 1 mm) precision, so what a plan may leave is floating-point dust of
#: the unions (far below 0.01 m² on the shipped cities), never a piece of land.
GAP_TOLERANCE_M2 = 1.0


def grid_table(plan: Plan, level: str, graph: nx.Graph | None = None, *,
               grids: gpd.GeoDataFrame | None = None) -> gpd.GeoDataFrame:
    """One row per grid: loads, deviation from the parent's mean, shape and contiguity.
    ``grids``: the level's polygons when the caller has them (``plan.grids(level)``)."""
    grids = plan.grids(level) if grids is None else grids.copy()
    proj = projected(grids)
    area = proj.area.to_numpy()
    perim = proj.length.to_numpy()
    grids["area_km2"] = area / 1e6
    grids["perimeter_km"] = perim / 1e3
    grids["polsby_popper"] = np.where(perim > 0, 4 * math.pi * area / perim**2, 0.0)
    _deviations(grids, plan)
    grids["contiguous"] = _contiguity(plan, level, graph, grids)
    return grids


def _deviations(grids: pd.DataFrame, plan: Plan) -> None:
    """Add ``balance_exempt`` and ``dev_*`` (against the parent's mean) to a grid table."""
    key = grids["parent_id"].fillna("city")
    # own grids (islands, zones) are exempt from balance: out of the mean and the deviation,
    # exactly as the optimizer judged them (territory.optimize.balance)
    exempt = grids["grid_id"].isin(plan.params.get("balance_exempt_grids", [])).to_numpy()
    grids["balance_exempt"] = exempt
    for m in plan.measures:
        mean = grids[m].where(~exempt).groupby(key).transform("mean")
        grids[f"dev_{m}"] = np.where(exempt, 0.0, deviation(grids[m], mean.fillna(0.0)))


def load_table(plan: Plan, level: str, graph: nx.Graph | None = None) -> pd.DataFrame:
    """The balance columns of :func:`grid_table` (loads, ``dev_*``, ``contiguous`` with a
    graph, else True) without dissolving geometry: fast enough to judge every edit.
    Compactness figures are NaN (they need the polygons)."""
    col, parent = plan.column(level), PARENT[level]
    keys = [col] + ([f"{parent}_id"] if parent else [])
    t = plan.units.groupby(keys)[plan.measures].sum().reset_index()
    t = t.rename(columns={col: "grid_id"})
    t["parent_id"] = t[f"{parent}_id"] if parent else None
    _deviations(t, plan)
    t["polsby_popper"] = np.nan
    if graph is None:
        t["contiguous"] = True
    else:
        ok = contiguous_grids(graph, plan.labels(level))
        t["contiguous"] = t["grid_id"].map(ok).fillna(False).astype(bool)
    return t


def _contiguity(plan: Plan, level: str, graph, grids) -> np.ndarray:
    """With the unit graph when given (see :func:`contiguous_grids`), else one polygon part
    per grid."""
    if graph is None:
        return shapely.get_num_geometries(grids.geometry.values) == 1
    ok = contiguous_grids(graph, plan.labels(level))
    return grids["grid_id"].map(ok).fillna(False).to_numpy(dtype=bool)


def level_summary(table: gpd.GeoDataFrame, measures: list[str]) -> dict:
    """Overall figures of one level: balance (max |deviation|, CV), compactness, contiguity."""
    out: dict = {"n_grids": int(len(table))}
    judged = ~table["balance_exempt"] if "balance_exempt" in table else slice(None)
    for m in measures:
        dev = table.loc[judged, f"dev_{m}"]
        out[m] = {
            "max_abs_deviation": float(dev.abs().max()),
            "cv": float(dev.std(ddof=0)),
            "total": float(table[m].sum()),
        }
    out["polsby_popper_mean"] = float(table["polsby_popper"].mean())
    out["polsby_popper_min"] = float(table["polsby_popper"].min())
    out["all_contiguous"] = bool(table["contiguous"].all())
    return out


def coverage(plan: Plan, level: str, service_area: gpd.GeoDataFrame | None = None, *,
             grids: gpd.GeoDataFrame | None = None) -> dict:
    """No gaps, no overlaps: grid areas against their union and against the service area.

    ``overlap_m2`` is the sum of grid areas minus the area of their union; ``gap_m2`` is the
    area of the service area not covered by any grid, ``outside_m2`` grid area outside it.
    The service area is taken at the units' precision (:func:`territory.units.snap`, about
    1 mm), which the units tile exactly. Gap and outside are cut in WGS84, where both
    sides have the same straight edges, and only the pieces are measured in metres
    (densified first): differencing after projecting would compare a curved edge with its
    chords and report metres of slivers that are not there. ``grids``: the level's grids
    when the caller has dissolved them already (a city of 600 000 units takes minutes).
    """
    grids = plan.grids(level) if grids is None else grids
    union = shapely.union_all(grids.geometry.values)
    proj = projected(grids)
    union_m = gpd.GeoSeries([union], crs=grids.crs).to_crs(proj.crs).iloc[0]
    res = {
        "area_km2": float(union_m.area / 1e6),
        "overlap_m2": float(max(proj.area.sum() - union_m.area, 0.0)),
    }
    if service_area is not None:
        sa = shapely.union_all(snap(service_area.to_crs(grids.crs).geometry.values))
        res["gap_m2"] = _area_m2(shapely.difference(sa, union), grids.crs, proj.crs)
        res["outside_m2"] = _area_m2(shapely.difference(union, sa), grids.crs, proj.crs)
    return res


def _area_m2(geom, crs, metric_crs) -> float:
    """Area of a (WGS84) geometry in square metres: densified to about 1 m before it is
    projected, so a long thin piece keeps its shape."""
    parts = shapely.segmentize(shapely.get_parts(geom), 1e-5)
    return float(gpd.GeoSeries(parts, crs=crs).to_crs(metric_crs).area.sum())


def internal_boundary_km(table: gpd.GeoDataFrame) -> float:
    """Total boundary length between grids of one level, km (each shared edge once)."""
    proj = projected(table)
    outer = shapely.union_all(proj.geometry.values).length
    return float((proj.length.sum() - outer) / 2 / 1e3)


def plan_metrics(
    plan: Plan, graph: nx.Graph | None = None, service_area: gpd.GeoDataFrame | None = None
) -> dict:
    """Every level's summary, coverage and boundary length; JSON-ready."""
    out: dict = {}
    for level, grids in plan.all_grids().items():
        table = grid_table(plan, level, graph, grids=grids)
        summary = level_summary(table, plan.measures)
        summary["boundary_km"] = internal_boundary_km(table)
        summary["coverage"] = coverage(plan, level, service_area, grids=table)
        summary["within"] = PARENT[level] or "city"
        out[level] = summary
    return out


def nesting_ok(plan: Plan) -> bool:
    """Every sub-grid lies in one main grid and every main grid in one branch."""
    u = plan.units
    return bool(
        (u.groupby("sub_grid_id")["main_grid_id"].nunique() == 1).all()
        and (u.groupby("main_grid_id")["branch_id"].nunique() == 1).all()
    )


def summary_frame(metrics: dict, measures: list[str]) -> pd.DataFrame:
    """A printable table: one row per figure, one column per level (fits a terminal)."""
    cols = {}
    for level in LEVELS:
        s = metrics[level]
        col = {"grids": s["n_grids"], "balanced within": s["within"]}
        for m in measures:
            col[f"max |dev| {m}"] = f"{s[m]['max_abs_deviation']:.2%}"
            col[f"CV {m}"] = f"{s[m]['cv']:.3f}"
        col["Polsby-Popper (mean)"] = f"{s['polsby_popper_mean']:.3f}"
        col["boundary km"] = f"{s['boundary_km']:.0f}" if "boundary_km" in s else ""
        col["contiguous"] = "yes" if s["all_contiguous"] else "no"
        col["overlap m²"] = f"{s['coverage']['overlap_m2']:.1f}"
        if "gap_m2" in s["coverage"]:
            col["gap m²"] = f"{s['coverage']['gap_m2']:.1f}"
        cols[level] = col
    return pd.DataFrame(cols).rename_axis("figure").reset_index()
