"""Build units — the indivisible building blocks a plan is made of.

A unit is an H3 cell clipped to one administrative area, so that units tile the service area
exactly and never cross an administrative boundary (grids built from units then nest inside
districts by construction). Interior cells stay whole; a cell that straddles a boundary is cut
into one piece per area. Planner-supplied polygons (communities, villages) are accepted as
they are through :func:`units_from_polygons`.

Adaptive resolution keeps a whole city at a few tens of thousands of units: a coarse cell is
kept whole while it holds at most ``target_per_unit`` points, otherwise it is split into its
children, down to ``resolution``. Every coarse unit is represented as the union of its
finest-resolution descendants, so mixed resolutions still tile exactly (H3 children do not
exactly cover their parent's hexagon, their union does tile with its neighbours).

Geometries are kept in WGS84 (EPSG:4326); areas and lengths are computed in the local UTM
zone, never in degrees.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import geopandas as gpd
import h3
import numpy as np
import pandas as pd
import shapely

from territory.crs import local_projected_crs
from territory.errors import InvalidInputError

log = logging.getLogger(__name__)

#: Coordinates of unit geometries are snapped to this grid (degrees, about 1 mm) so that
#: neighbouring units share their vertices exactly and adjacency lengths are robust. The
#: areas are snapped to it first (:func:`snap`): units cut from areas whose vertices lie
#: off the grid would leave sub-millimetre slivers of them uncovered (tens of m² along a
#: city's boundary), and no boundary source means anything below a millimetre.
GRID_SIZE_DEG = 1e-8
#: H3 cells are looked up on a slightly enlarged area so no sliver at the edge is missed.
_COVER_BUFFER_DEG = 2e-5
#: A clipped piece of an area with no land contact with the rest of its area is a *sliver*
#: (a digitisation artefact: a spike of one district's boundary poking past its neighbour's)
#: when it is smaller than this share of a finest-resolution cell's average area ...
SLIVER_CELL_SHARE = 0.01
#: ... and than this many square metres, whatever the resolution (so a real islet or
#: exclave of a coarse grid is never handed to another area).
SLIVER_MAX_M2 = 500.0


@dataclass(frozen=True)
class AggregationReport:
    """What happened to every input row of an aggregation: nothing is lost silently."""

    n_rows: int
    n_inside: int
    n_outside: int
    n_invalid: int
    outside_rows: list = field(default_factory=list)
    invalid_rows: list = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.n_inside + self.n_outside + self.n_invalid != self.n_rows:
            raise AssertionError("aggregation lost rows")  # guards the invariant itself


def _check_areas(areas: gpd.GeoDataFrame, area_column: str) -> gpd.GeoDataFrame:
    if not isinstance(areas, gpd.GeoDataFrame) or len(areas) == 0:
        raise InvalidInputError("areas: expected a non-empty GeoDataFrame of polygons")
    if areas.crs is None or areas.crs.to_epsg() != 4326:
        raise InvalidInputError(
            f"areas: expected CRS EPSG:4326 (WGS84), got {areas.crs}; convert with "
            "territory.crs.to_crs_frame or GeoDataFrame.to_crs first"
        )
    if area_column not in areas.columns:
        raise InvalidInputError(
            f"area_column={area_column!r} is not a column of areas; "
            f"choose one of {list(areas.columns.drop('geometry'))}"
        )
    geoms = areas.geometry.values
    bad = np.flatnonzero(
        shapely.is_empty(geoms)
        | ~np.isin(shapely.get_type_id(geoms), [3, 6])
        | ~shapely.is_valid(geoms)
    )
    if len(bad):
        raise InvalidInputError(
            f"areas: rows {areas.index[bad].tolist()[:10]} are empty, not polygons or invalid "
            "(self-intersecting); repair them with shapely.make_valid"
        )
    areas = areas.set_geometry(gpd.GeoSeries(snap(geoms), index=areas.index, crs=areas.crs))
    if areas[area_column].duplicated().any():
        areas = areas.dissolve(by=area_column, as_index=False)
    return areas.reset_index(drop=True)


def snap(geoms: np.ndarray) -> np.ndarray:
    """Geometries (WGS84) with their vertices on the units' :data:`GRID_SIZE_DEG` grid:
    what the units tile exactly, so the service area a plan is checked against."""
    return shapely.set_precision(np.asarray(geoms), GRID_SIZE_DEG)


def _cells_covering(geom, res: int) -> list[str]:
    """Every cell that may overlap ``geom``: centre containment on the area grown by two
    cell edges (the exact 'overlap' mode of h3 is several times slower); the caller keeps
    only the cells that really intersect."""
    grow = 2 * h3.average_hexagon_edge_length(res, unit="km") / 100.0  # km -> deg, generous
    shape = h3.geo_to_h3shape(shapely.buffer(geom, grow).__geo_interface__)
    return list(h3.h3shape_to_cells(shape, res))


def _cell_polygons(cells: list[str]) -> np.ndarray:
    """Cell hexagons with vertices rounded to the snapping grid, so that the copies of a
    vertex shared by neighbouring cells (computed per cell by h3) are identical."""
    rings = [[(lng, lat) for lat, lng in h3.cell_to_boundary(c)] for c in cells]
    sizes = np.array([len(r) for r in rings])
    coords = np.round(np.concatenate([np.asarray(r) for r in rings]) / GRID_SIZE_DEG)
    coords *= GRID_SIZE_DEG
    ring_idx = np.repeat(np.arange(len(rings)), sizes)
    return shapely.polygons(shapely.linearrings(coords, indices=ring_idx))


def _fine_pieces(areas: gpd.GeoDataFrame, area_column: str, res: int) -> pd.DataFrame:
    """Return one row per (fine cell, area) piece with its clipped geometry."""
    area_ids = areas[area_column].to_numpy()
    area_geoms = areas.geometry.to_numpy()
    for g in area_geoms:
        shapely.prepare(g)
    cells = sorted({c for g in area_geoms for c in _cells_covering(g, res)})
    polys = _cell_polygons(cells)
    # areas as the query side: each is prepared once, the cells sit in the tree
    area_idx, cell_idx = shapely.STRtree(polys).query(area_geoms, predicate="intersects")
    order = np.lexsort((area_idx, cell_idx))
    area_idx, cell_idx = area_idx[order], cell_idx[order]
    inside = shapely.contains_properly(area_geoms[area_idx], polys[cell_idx])
    geoms = polys[cell_idx].copy()
    clip = np.flatnonzero(~inside)
    cut = shapely.set_precision(
        shapely.intersection(polys[cell_idx[clip]], area_geoms[area_idx[clip]]), GRID_SIZE_DEG
    )
    # keep only polygonal parts with real area (intersections can yield lines and points)
    geoms[clip] = [_polygonal(g) for g in cut]
    keep = ~shapely.is_empty(geoms)
    return pd.DataFrame(
        {
            "cell": np.asarray(cells, dtype=object)[cell_idx[keep]],
            "area_id": area_ids[area_idx[keep]],
            "whole": inside[keep],
            "geometry": geoms[keep],
        }
    )


def _polygonal(g):
    """The polygonal part of a geometry (empty when there is none)."""
    if g is None or g.is_empty:
        return shapely.Polygon()
    if g.geom_type in ("Polygon", "MultiPolygon"):
        return g
    parts = [p for p in shapely.get_parts(g) if p.geom_type in ("Polygon", "MultiPolygon")]
    return shapely.union_all(parts) if parts else shapely.Polygon()


def _unit_cells(
    fine_cells: np.ndarray, counts: np.ndarray, res: int, min_res: int, target: float
) -> np.ndarray:
    """Choose for every fine cell the coarsest ancestor holding at most ``target`` points."""
    chosen = np.full(len(fine_cells), None, dtype=object)
    for r in range(min_res, res):
        parents = np.array([h3.cell_to_parent(c, r) for c in fine_cells], dtype=object)
        totals = pd.Series(counts).groupby(parents).transform("sum").to_numpy()
        take = pd.isna(chosen) & (totals <= target)
        chosen[take] = parents[take]
    rest = pd.isna(chosen)
    chosen[rest] = fine_cells[rest]
    return chosen


def build_units(
    areas: gpd.GeoDataFrame,
    *,
    area_column: str,
    resolution: int = 9,
    points: pd.DataFrame | None = None,
    target_per_unit: float | None = None,
    min_resolution: int = 6,
) -> gpd.GeoDataFrame:
    """Tile ``areas`` with H3 cells clipped to each area.

    Parameters
    ----------
    areas : GeoDataFrame in EPSG:4326
        Administrative areas (districts, streets); ``area_column`` names each area. Rows
        sharing a name are dissolved into one area (the plan's pipeline refuses them unless
        asked to, see ``Inputs.dissolve_branches``).
    resolution : int
        The finest H3 resolution (9 ≈ 0.1 km² per cell).
    points, target_per_unit :
        With both, the resolution adapts: a coarse cell stays whole while it holds at most
        ``target_per_unit`` points (rows of ``points`` with WGS84 ``lng``/``lat`` columns).
    min_resolution : int
        The coarsest resolution adaptive units may take.

    Returns
    -------
    GeoDataFrame indexed by ``unit_id`` (``"{area_id}|{cell}"``, with ``"#part"`` when a
    clipped cell falls apart), with columns ``area_id``, ``cell``, ``resolution``, ``whole``
    (not clipped) and ``geometry``; sorted by ``unit_id``. Units tile the areas exactly,
    except for slivers (see :func:`_absorb_slivers`): each is handed to the neighbouring
    area's unit it shares the most land boundary with, and listed in ``attrs["slivers"]``.
    """
    if not 0 <= resolution <= 15:
        raise InvalidInputError(f"resolution={resolution}: must be an H3 resolution 0..15")
    if (points is None) != (target_per_unit is None):
        raise InvalidInputError("points and target_per_unit must be given together")
    areas = _check_areas(areas, area_column)
    pieces = _fine_pieces(areas, area_column, resolution)
    if target_per_unit is not None:
        if not target_per_unit > 0:
            raise InvalidInputError(f"target_per_unit={target_per_unit}: must be > 0")
        if not 0 <= min_resolution <= resolution:
            raise InvalidInputError(
                f"min_resolution={min_resolution}: must be between 0 and resolution"
            )
        lng, lat = _valid_lnglat(points)
        ok = np.isfinite(lng) & np.isfinite(lat)
        pcells = pd.Series(
            [h3.latlng_to_cell(y, x, resolution) for x, y in zip(lng[ok], lat[ok], strict=True)]
        ).value_counts()
        fine = pieces["cell"].drop_duplicates().to_numpy()
        counts = pcells.reindex(fine, fill_value=0).to_numpy()
        chosen = dict(
            zip(fine, _unit_cells(fine, counts, resolution, min_resolution, target_per_unit),
                strict=True)
        )
        pieces["unit_cell"] = pieces["cell"].map(chosen)
    else:
        pieces["unit_cell"] = pieces["cell"]
    units = gpd.GeoDataFrame(_dissolve_pieces(pieces), geometry="geometry", crs="EPSG:4326")
    max_m2 = min(SLIVER_CELL_SHARE * h3.average_hexagon_area(resolution, unit="m^2"),
                 SLIVER_MAX_M2)
    units, slivers = _absorb_slivers(units, max_m2)
    units["resolution"] = [h3.get_resolution(c) for c in units["cell"]]
    gdf = units.set_index("unit_id").sort_index()
    gdf.attrs["slivers"] = slivers
    return gdf


def _absorb_slivers(units: gpd.GeoDataFrame, max_m2: float) -> tuple[gpd.GeoDataFrame, list]:
    """Hand every sliver to the other area's unit it shares the most land boundary with.

    A sliver is a group of units of one area, linked by land (rook contact, as in the
    graph: a shared boundary of at least ``MIN_SHARED_M``) to each other but to no other
    unit of their area, of less than ``max_m2`` in all, that touches a larger unit of
    another area by land, and is not all of its area. Left alone, it is a stranded unit of
    its branch: the branch, and the main grid and sub-grid holding it, could never be one
    piece (Xiamen at H3 resolution 10: a 0.06 m² piece of Siming whose only land contact
    is 0.7 m of Huli).
    Joined to its neighbour the tiling stays exact (no gap, no overlap); what changes is
    that a few square metres of one area are planned with the other, which the returned
    report says (``units``, ``area_id``, ``into``, ``into_area``, ``area_m2``, ``shared_m``).
    Groups with no land contact at all are islets: the graph bridges them.
    """
    import networkx as nx  # here, not at the top: batch assignment imports this module

    from territory.graph import _GRID_M, MIN_SHARED_M, shared_boundaries  # graph imports us

    geoms = projected(units).geometry.values
    area_m2 = shapely.area(geoms)
    small = np.flatnonzero(area_m2 < max_m2)
    if len(small) == 0:
        return units, []
    # rook contacts of the small units with every unit
    s_idx, o_idx, shared = shared_boundaries(geoms, grid_size=_GRID_M, among=small)
    rook = shared >= MIN_SHARED_M
    s_idx, o_idx, shared = s_idx[rook], o_idx[rook], shared[rook]
    area_id = units["area_id"].to_numpy()
    same = area_id[s_idx] == area_id[o_idx]
    # groups of small units of one area linked by land; a group reaching a larger unit of
    # its area (or the whole area being small) is not stranded
    is_small = np.zeros(len(units), dtype=bool)
    is_small[small] = True
    links = nx.Graph()
    links.add_nodes_from(small.tolist())
    inner = same & is_small[o_idx]
    links.add_edges_from(zip(s_idx[inner].tolist(), o_idx[inner].tolist(), strict=True))
    anchored = set(s_idx[same & ~is_small[o_idx]].tolist())
    n_in_area = pd.Series(area_id).value_counts()
    report = []
    target_of = np.arange(len(units))
    for comp in sorted(map(sorted, nx.connected_components(links))):
        members = np.asarray(comp)
        total = float(area_m2[members].sum())
        if anchored & set(comp) or total >= max_m2 or len(comp) == n_in_area[area_id[comp[0]]]:
            continue
        # into a unit that is itself no sliver (a larger one), so no hand-over chains
        out = np.isin(s_idx, members) & ~same & ~is_small[o_idx]
        if not out.any():
            continue  # an islet (no land contact: the graph bridges it) or slivers' knot
        by_target = pd.Series(shared[out]).groupby(o_idx[out]).sum()
        into = int(by_target.idxmax())
        target_of[members] = into
        report.append({
            "units": [str(u) for u in units["unit_id"].to_numpy()[members]],
            "area_id": str(area_id[comp[0]]), "into": str(units["unit_id"].iat[into]),
            "into_area": str(area_id[into]), "area_m2": total,
            "shared_m": float(by_target.max()),
        })
    if not report:
        return units, []
    merged = units.geometry.to_numpy().copy()
    for into, group in pd.Series(np.arange(len(units))).groupby(target_of):
        if len(group) > 1:
            merged[into] = _polygonal(shapely.union_all(merged[group.to_numpy()],
                                                        grid_size=GRID_SIZE_DEG))
    for r in report:
        log.warning("sliver of %s (%.2f m², %d units) joined to %s of %s over %.1f m",
                    r["area_id"], r["area_m2"], len(r["units"]), r["into"], r["into_area"],
                    r["shared_m"])
    out = units.assign(geometry=merged)
    absorbed = target_of != np.arange(len(units))
    into_rows = np.unique(target_of[absorbed])
    out.loc[out.index[into_rows], "whole"] = False
    return out.loc[~absorbed].reset_index(drop=True), report


def _dissolve_pieces(pieces: pd.DataFrame) -> pd.DataFrame:
    """One unit per (area, chosen cell): the union of its fine pieces, split into parts."""
    pieces = pieces.sort_values(["area_id", "unit_cell"], kind="stable")
    key = pieces["area_id"].astype(str) + "|" + pieces["unit_cell"].astype(str)
    keys, start, count = np.unique(key.to_numpy(), return_index=True, return_counts=True)
    geoms = pieces["geometry"].to_numpy()
    whole = pieces["whole"].to_numpy()
    area = pieces["area_id"].to_numpy()
    cell = pieces["unit_cell"].to_numpy()
    merged = geoms[start].copy()
    for g in np.flatnonzero(count > 1):
        part = geoms[start[g] : start[g] + count[g]]
        try:
            geom = shapely.coverage_union_all(part)
        except shapely.errors.GEOSException:  # a clipped piece noded differently
            geom = None
        if geom is None or not geom.is_valid:
            geom = _polygonal(shapely.union_all(part, grid_size=GRID_SIZE_DEG))
        merged[g] = geom
    all_whole = np.logical_and.reduceat(whole, start)
    parts, owner = shapely.get_parts(merged, return_index=True)
    n_parts = np.bincount(owner, minlength=len(keys))
    rank = np.arange(len(owner)) - np.searchsorted(owner, owner)
    suffix = np.where(n_parts[owner] > 1, np.char.add("#", rank.astype(str)), "")
    return pd.DataFrame({
        "unit_id": np.char.add(keys[owner].astype(str), suffix),
        "area_id": area[start][owner],
        "cell": cell[start][owner],
        "whole": all_whole[owner],
        "geometry": parts,
    })


def units_from_polygons(
    gdf: gpd.GeoDataFrame, *, id_column: str, area_column: str | None = None
) -> gpd.GeoDataFrame:
    """Accept planner-supplied units (communities, villages) as they are.

    The polygons must not overlap; the layer is validated, indexed by ``unit_id`` and, when
    ``area_column`` is given, carries it as ``area_id``.
    """
    if id_column not in gdf.columns:
        raise InvalidInputError(
            f"id_column={id_column!r} is not a column; choose one of "
            f"{list(gdf.columns.drop('geometry'))}"
        )
    if gdf[id_column].isna().any() or gdf[id_column].duplicated().any():
        dup = gdf.loc[gdf[id_column].duplicated(keep=False), id_column].tolist()[:10]
        raise InvalidInputError(
            f"id_column={id_column!r}: unit ids must be unique and present; duplicates {dup}"
        )
    checked = _check_areas(gdf.assign(_uid=gdf[id_column]), "_uid")
    out = checked.rename(columns={id_column: "unit_id"}).drop(columns="_uid")
    out["unit_id"] = out["unit_id"].astype(str)
    out["area_id"] = out[area_column] if area_column else "all"
    return out.set_index("unit_id").sort_index()


def _valid_lnglat(points: pd.DataFrame, lng: str = "lng", lat: str = "lat"):
    for c in (lng, lat):
        if c not in points.columns:
            raise InvalidInputError(
                f"points: no column {c!r}; give WGS84 coordinates in columns {lng!r}, {lat!r}"
            )
    x = pd.to_numeric(points[lng], errors="coerce").to_numpy(dtype=float, copy=True)
    y = pd.to_numeric(points[lat], errors="coerce").to_numpy(dtype=float, copy=True)
    bad = ~(np.isfinite(x) & np.isfinite(y) & (np.abs(x) <= 180) & (np.abs(y) <= 90))
    x[bad] = np.nan
    y[bad] = np.nan
    return x, y


def locate_points(units: gpd.GeoDataFrame, lng: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """Position of the unit (row number in ``units``) covering each point, -1 when none.

    A point on a shared edge is covered by several units; it goes to the one that comes
    first in ``units`` (lowest ``unit_id``): one owner per point, always the same one.
    NaN coordinates give -1.
    """
    out = np.full(len(lng), -1, dtype=np.int64)
    ok = np.flatnonzero(np.isfinite(lng) & np.isfinite(lat))
    if len(ok) == 0:
        return out
    pts = shapely.points(lng[ok], lat[ok])
    tree = shapely.STRtree(units.geometry.values)
    p_idx, u_idx = tree.query(pts, predicate="intersects")
    if len(p_idx):
        first = pd.Series(u_idx).groupby(p_idx).min()
        out[ok[first.index.to_numpy()]] = first.to_numpy()
    return out


def aggregate_points(
    units: gpd.GeoDataFrame,
    points: pd.DataFrame,
    *,
    sums: list[str] | tuple[str, ...] = (),
    count_name: str | None = "count",
    lng: str = "lng",
    lat: str = "lat",
) -> tuple[pd.DataFrame, AggregationReport]:
    """Count points and sum numeric columns per unit, exactly, without losing a row.

    Returns a DataFrame indexed like ``units`` (zero where a unit holds no point) and a
    report of points outside every unit and rows with invalid coordinates (NaN or out of
    range). Numeric columns with NaN values are rejected: a sum must not silently skip rows.
    """
    for c in sums:
        if c not in points.columns:
            raise InvalidInputError(f"sums: no column {c!r} in points")
        vals = pd.to_numeric(points[c], errors="coerce")
        if vals.isna().any():
            rows = points.index[vals.isna()].tolist()[:10]
            raise InvalidInputError(
                f"column {c!r} has missing or non-numeric values in rows {rows}; "
                "fill them (e.g. with 0) before aggregating"
            )
    x, y = _valid_lnglat(points, lng, lat)
    invalid = ~np.isfinite(x)
    pos = locate_points(units, x, y)
    outside = (pos < 0) & ~invalid
    inside = pos >= 0
    frame = pd.DataFrame(index=units.index)
    grp_idx = units.index[pos[inside]]
    if count_name:
        frame[count_name] = (
            pd.Series(1, index=grp_idx).groupby(level=0).sum()
            .reindex(units.index, fill_value=0).astype(np.int64)
        )
    for c in sums:
        vals = pd.to_numeric(points[c]).to_numpy()[inside]
        frame[c] = pd.Series(vals, index=grp_idx).groupby(level=0).sum().reindex(
            units.index, fill_value=0
        )
    report = AggregationReport(
        n_rows=len(points),
        n_inside=int(inside.sum()),
        n_outside=int(outside.sum()),
        n_invalid=int(invalid.sum()),
        outside_rows=points.index[outside].tolist(),
        invalid_rows=points.index[invalid].tolist(),
    )
    if report.n_outside or report.n_invalid:
        log.warning(
            "%d points outside the units and %d with invalid coordinates were not aggregated",
            report.n_outside, report.n_invalid,
        )
    return frame, report


def projected(units: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """The units in their local UTM zone (metres)."""
    b = units.total_bounds
    return units.to_crs(local_projected_crs([(b[0] + b[2]) / 2], [(b[1] + b[3]) / 2]))
