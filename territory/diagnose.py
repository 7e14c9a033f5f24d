"""The audit of a drawn grid map: "no blind spot, no double coverage" (无缝隙, 不重复).

:func:`diagnose` measures, in the local UTM zone (m²), what a hand-drawn map gets wrong:
overlaps per pair of grids, gaps, slivers, multi-part grids, grids drawn across a district
line, sub-grids outside their main grid, invalid polygons (repaired when read), the balance
per level, and what snapping to units changed. Every finding counts the customers it holds.

A *sliver* is a piece whose mean width (2 × area / perimeter) is under ``sliver_width_m``:
the seams two hand-drawn neighbours leave or double-cover along a shared line. Slivers are
listed on their own so that the real gaps and overlaps stand out. Pieces under
``NOISE_M2`` are rounding noise of the reprojection and are not reported at all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pyogrio
import shapely

from territory.atomic import atomic_path
from territory.importer import GridLayer, utm_crs
from territory.metrics import grid_table
from territory.plan import Plan

NOISE_M2 = 1.0
KEYS = ("overlaps", "gaps", "slivers", "multipart", "crossing_branches", "sub_outside",
        "invalid", "balance", "snapping")


@dataclass
class Diagnosis:
    """Tables (one per finding, see :data:`KEYS`) and their map layers (UTM polygons)."""

    tables: dict[str, pd.DataFrame]
    layers: dict[str, gpd.GeoDataFrame] = field(default_factory=dict)

    def to_json(self) -> dict:
        """JSON-ready: every table as a list of records (areas in m²)."""
        return {k: _records(self.tables[k]) for k in KEYS}

    def counts(self) -> dict[str, int]:
        return {k: len(self.tables[k]) for k in KEYS}

    def write_layers(self, path: str | Path) -> Path:
        """The findings as map layers of one GeoPackage (WGS84), written atomically."""
        with atomic_path(path) as tmp:
            for name, layer in self.layers.items():
                if len(layer):
                    frame = layer.drop(columns="sliver", errors="ignore").to_crs("EPSG:4326")
                    for c in frame.columns:
                        if c != "geometry" and frame[c].dtype == object:
                            frame[c] = frame[c].astype(str)
                    pyogrio.write_dataframe(frame, tmp, layer=name, driver="GPKG")
        return Path(path)


def _records(df: pd.DataFrame) -> list[dict]:
    out = df.drop(columns="geometry", errors="ignore")
    return [{k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}
            for row in out.to_dict(orient="records")]


class _Counter:
    """Customers inside polygons, by one STRtree query per call."""

    def __init__(self, customers: pd.DataFrame | None, crs) -> None:
        if customers is None or len(customers) == 0:
            self.pts = None
            return
        pts = gpd.GeoSeries(gpd.points_from_xy(customers["lng"], customers["lat"]),
                            crs="EPSG:4326").to_crs(crs)
        self.pts = pts.values

    def __call__(self, geoms) -> np.ndarray:
        geoms = np.asarray(geoms, dtype=object)
        if self.pts is None or len(geoms) == 0:
            return np.zeros(len(geoms), dtype=np.int64)
        tree = shapely.STRtree(geoms)
        _, poly = tree.query(self.pts, predicate="within")
        return np.bincount(poly, minlength=len(geoms)).astype(np.int64)


def _pieces(frame: gpd.GeoDataFrame, sliver_width_m: float) -> gpd.GeoDataFrame:
    """Polygonal parts of ``frame``'s geometries with area, mean width and a sliver flag."""
    parts = frame.explode(index_parts=False).reset_index(drop=True)
    geoms = shapely.make_valid(parts.geometry.values, method="structure", keep_collapsed=False)
    parts = parts.set_geometry(gpd.GeoSeries(geoms, crs=frame.crs))
    parts = parts[~parts.geometry.is_empty].explode(index_parts=False).reset_index(drop=True)
    parts = parts[(parts.geometry.geom_type == "Polygon") & (parts.area >= NOISE_M2)]
    parts = parts.reset_index(drop=True)
    area = parts.area.to_numpy()
    perim = parts.length.to_numpy()
    parts["area_m2"] = area
    parts["width_m"] = np.where(perim > 0, 2 * area / np.maximum(perim, 1e-9), 0.0)
    parts["sliver"] = parts["width_m"] < sliver_width_m
    return parts


def _pairs(grids: gpd.GeoDataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i < j) of grids whose polygons intersect."""
    a, b = shapely.STRtree(grids.geometry.values).query(grids.geometry.values,
                                                        predicate="intersects")
    keep = a < b
    return a[keep], b[keep]


def overlaps(grids: gpd.GeoDataFrame, count: _Counter, sliver_width_m: float
             ) -> gpd.GeoDataFrame:
    """Every overlap piece between two grids (``grid_a`` < ``grid_b``), with customers."""
    a, b = _pairs(grids)
    inter = shapely.intersection(grids.geometry.values[a], grids.geometry.values[b])
    frame = gpd.GeoDataFrame({"grid_a": grids["grid_id"].to_numpy()[a],
                              "grid_b": grids["grid_id"].to_numpy()[b]},
                             geometry=inter, crs=grids.crs)
    parts = _pieces(frame, sliver_width_m)
    parts["customers"] = count(parts.geometry.values)
    return parts


def diagnose(areas: gpd.GeoDataFrame, branch_column: str, main: GridLayer,
             sub: GridLayer | None, plan: Plan, customers: pd.DataFrame | None = None, *,
             sliver_width_m: float = 20.0) -> Diagnosis:
    """Audit the drawn map ``main`` (and ``sub``) over the service area ``areas``.

    ``plan`` is the snapped plan (:func:`territory.importer.snap_to_units`); ``customers``
    are WGS84 ``lng``/``lat`` points, counted in every finding.
    """
    crs = utm_crs(areas)
    A = areas[[branch_column, "geometry"]].to_crs(crs)
    G = main.grids.to_crs(crs)
    count = _Counter(customers, crs)
    t: dict[str, pd.DataFrame] = {}
    layers: dict[str, gpd.GeoDataFrame] = {}

    over = overlaps(G, count, sliver_width_m)
    real = over[~over["sliver"]]
    t["overlaps"] = (real.groupby(["grid_a", "grid_b"])
                     .agg(area_m2=("area_m2", "sum"), customers=("customers", "sum"),
                          pieces=("area_m2", "size")).reset_index())
    layers["overlaps"] = real

    service = shapely.union_all(A.geometry.values)
    gap = shapely.difference(service, shapely.union_all(G.geometry.values))
    gaps = _pieces(gpd.GeoDataFrame(geometry=[gap], crs=crs), sliver_width_m)
    gaps["customers"] = count(gaps.geometry.values)
    pos = shapely.STRtree(A.geometry.values).query(
        gaps.geometry.representative_point().values, predicate="within")
    gaps["branch_id"] = None
    gaps.loc[pos[0], "branch_id"] = A[branch_column].astype(str).to_numpy()[pos[1]]
    t["gaps"] = gaps.loc[~gaps["sliver"], ["branch_id", "area_m2", "width_m", "customers"]
                         ].reset_index(drop=True)
    layers["gaps"] = gaps[~gaps["sliver"]]

    slivers = pd.concat([over[over["sliver"]].assign(kind="overlap"),
                         gaps[gaps["sliver"]].assign(kind="gap")], ignore_index=True)
    slivers = gpd.GeoDataFrame(slivers, geometry="geometry", crs=crs)
    t["slivers"] = slivers[[c for c in ("kind", "grid_a", "grid_b", "area_m2", "width_m",
                                        "customers") if c in slivers]].reset_index(drop=True)
    layers["slivers"] = slivers

    n_parts = shapely.get_num_geometries(G.geometry.values)
    multi = G[n_parts > 1].copy()
    multi["n_parts"] = n_parts[n_parts > 1]
    multi["part_areas_m2"] = [sorted(shapely.area(shapely.get_parts(g)).round(1).tolist(),
                                     reverse=True) for g in multi.geometry.values]
    t["multipart"] = multi[["grid_id", "n_parts", "part_areas_m2"]].reset_index(drop=True)
    layers["multipart"] = multi

    cross = gpd.overlay(G[["grid_id", "geometry"]],
                        A.rename(columns={branch_column: "branch_id"}),
                        how="intersection", keep_geom_type=True)
    cross = _pieces(cross, sliver_width_m)
    cross = cross[~cross["sliver"]]
    cross["customers"] = count(cross.geometry.values)
    by = cross.dissolve(by=["grid_id", "branch_id"],
                        aggfunc={"area_m2": "sum", "customers": "sum"}).reset_index()
    n_b = by.groupby("grid_id")["branch_id"].transform("nunique")
    by = by[n_b > 1]
    t["crossing_branches"] = by[["grid_id", "branch_id", "area_m2", "customers"]
                                ].astype({"branch_id": str}).reset_index(drop=True)
    layers["crossing_branches"] = by

    t["sub_outside"] = pd.DataFrame(columns=["grid_id", "parent_id", "area_m2", "customers"])
    if sub is not None and sub.grids["parent_id"].notna().all():
        S = sub.grids.to_crs(crs)
        parent = G.set_index("grid_id").geometry.reindex(S["parent_id"]).values
        outside = gpd.GeoDataFrame(S[["grid_id", "parent_id"]],
                                   geometry=shapely.difference(S.geometry.values, parent),
                                   crs=crs)
        outside = outside[~outside.geometry.is_empty]
        pieces = _pieces(outside, sliver_width_m)
        pieces = pieces[~pieces["sliver"]]
        pieces["customers"] = count(pieces.geometry.values)
        t["sub_outside"] = (pieces.groupby(["grid_id", "parent_id"])
                            .agg(area_m2=("area_m2", "sum"), customers=("customers", "sum"))
                            .reset_index())
        layers["sub_outside"] = pieces

    invalid = [main.invalid.assign(level="main_grid")]
    if sub is not None:
        invalid.append(sub.invalid.assign(level="sub_grid"))
    t["invalid"] = pd.concat(invalid, ignore_index=True)

    t["balance"] = _balance(plan, G, count)
    t["snapping"], layers["snapping"] = _snapping(plan, G, count)
    return Diagnosis(t, layers)


def _balance(plan: Plan, drawn: gpd.GeoDataFrame, count: _Counter) -> pd.DataFrame:
    """Per level and grid: the snapped loads and deviations from the parent's mean; for
    main grids also the customers inside the drawn polygon (double-counted in overlaps)."""
    rows = []
    for level in ("main_grid", "sub_grid"):
        table = grid_table(plan, level)
        cols = ["grid_id", "parent_id", "n_units", *plan.measures,
                *[f"dev_{m}" for m in plan.measures]]
        frame = pd.DataFrame(table[cols]).assign(level=level)
        if level == "main_grid":
            drawn_n = pd.Series(count(drawn.geometry.values), index=drawn["grid_id"])
            frame["customers_drawn"] = frame["grid_id"].map(drawn_n).fillna(0).astype(int)
        rows.append(frame)
    return pd.concat(rows, ignore_index=True)


def _snapping(plan: Plan, drawn: gpd.GeoDataFrame, count: _Counter
              ) -> tuple[pd.DataFrame, gpd.GeoDataFrame]:
    """Per main grid: drawn and snapped area, the area and customers gained and lost."""
    snapped = plan.grids("main_grid").to_crs(drawn.crs).set_index("grid_id").geometry
    ids = sorted(set(drawn["grid_id"]) | set(snapped.index))
    empty = shapely.Polygon()
    d = drawn.set_index("grid_id").geometry.reindex(ids).fillna(empty).values
    s = snapped.reindex(ids).fillna(empty).values
    gained, lost = shapely.difference(s, d), shapely.difference(d, s)
    table = pd.DataFrame({
        "grid_id": ids, "drawn_area_m2": shapely.area(d), "snapped_area_m2": shapely.area(s),
        "area_gained_m2": shapely.area(gained), "area_lost_m2": shapely.area(lost),
        "customers_drawn": count(d), "customers_snapped": count(s),
        "customers_gained": count(gained), "customers_lost": count(lost),
    })
    layer = gpd.GeoDataFrame(
        {"grid_id": ids * 2, "change": ["gained"] * len(ids) + ["lost"] * len(ids)},
        geometry=np.concatenate([gained, lost]), crs=drawn.crs)
    return table, layer[~layer.geometry.is_empty].reset_index(drop=True)
