"""Import an operator's hand-drawn grid map and snap it onto units.

Operators already have grids, drawn in MapInfo, Google Earth or a web map: with gaps,
overlaps and lines that ignore the streets. :func:`read_grids` reads such a layer (any
format GDAL reads, in WGS84, CGCS2000, GCJ-02 or BD-09) into one repaired polygon per grid;
:func:`snap_to_units` turns it into a valid :class:`~territory.plan.Plan` that follows the
drawn lines to within a unit.

The snapping rule (documented because planners will ask "why did this block move?"):

1. every unit goes to the grid of its own branch holding the largest share of its area
   (a drawn grid belongs to the branch named by its parent column, else to the branch
   holding most of its area); ties go to the grid id that sorts first;
2. units no grid of their branch touches (gaps, or grids drawn across a district line) are
   orphans; they join, wave by wave, the adjacent grid of their branch that is lightest
   against the branch mean (ties: the longest shared boundary), which is the neighbour that
   keeps balance best, and every grid is then made one piece the same way
   (:func:`territory.optimize.search.repair_contiguity`);
3. sub-grids are snapped the same way inside their main grid; a main grid without drawn
   sub-grids becomes one sub-grid ``{main}-S1``;
4. the units of one key account (``together``: its footprint's units,
   :func:`territory.pipeline.key_account_groups`) stay together: the whole group goes to
   the grid holding most of the group's area, before the orphans and pieces of rule 2 are
   handed on; a group that rule 2 still splits joins the grid holding most of it when that
   keeps every grid one piece (else it is left split and logged).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import networkx as nx
import numpy as np
import pandas as pd
import pyogrio
import shapely

from territory.boundaries import read_boundaries
from territory.errors import InvalidInputError
from territory.hierarchy import part_graph
from territory.optimize.problem import problem_from_graph
from territory.optimize.search import repair_contiguity
from territory.plan import Plan

log = logging.getLogger(__name__)

#: the columns of a grid layer after :func:`read_grids`
GRID_COLUMNS = ["grid_id", "parent_id", "geometry"]


@dataclass(frozen=True)
class GridLayer:
    """A drawn grid layer: one row per grid (rows of one id dissolved), and what was wrong."""

    grids: gpd.GeoDataFrame
    #: one row per repaired input row: grid_id, reason (as drawn), area_m2 after repair
    invalid: pd.DataFrame
    #: rows of the file per grid id (> 1: the grid was drawn as several features)
    rows: pd.Series


def read_grids(path: str | Path, *, grid_column: str, parent_column: str | None = None,
               crs: str | None = None, layer: str | int | None = None) -> GridLayer:
    """Read a drawn grid layer into WGS84, one (Multi)Polygon per grid id.

    Invalid polygons are repaired with :func:`shapely.make_valid` (``method="structure"``)
    and listed in :attr:`GridLayer.invalid`, with the reason in the file's own coordinates.
    Several features with one id are dissolved into one grid (they often are: a grid drawn as
    two shapes). ``crs`` names the system of the coordinates (it overrides the file's
    declaration, which is wrong for GCJ-02/BD-09 data labelled EPSG:4326).
    """
    path = Path(path)
    try:
        raw = pyogrio.read_dataframe(path, layer=layer, read_geometry=True)
    except (pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError) as exc:
        raise InvalidInputError(f"grid layer {path}: cannot read it ({exc})") from None
    for option, col in (("`grid_column`", grid_column), ("`parent_column`", parent_column)):
        if col is not None and col not in raw.columns:
            raise InvalidInputError(
                f"{option} {col!r} is not a column of {path}; choose one of "
                f"{[c for c in raw.columns if c != 'geometry']}")
    ids = raw[grid_column]
    if ids.isna().any():
        rows = np.flatnonzero(ids.isna().to_numpy())[:10].tolist()
        raise InvalidInputError(f"grid layer {path}: rows {rows} have no {grid_column!r}; "
                                "name every grid")
    geoms = np.asarray(raw.geometry.values, dtype=object)
    bad = np.flatnonzero(~shapely.is_valid(geoms) & ~shapely.is_missing(geoms))
    reasons = shapely.is_valid_reason(geoms[bad]) if len(bad) else []
    gdf = read_boundaries(path, crs=crs, layer=layer, repair=True)
    gdf["grid_id"] = gdf[grid_column].astype(str)
    gdf["parent_id"] = gdf[parent_column].astype(str) if parent_column else None
    parents = gdf.groupby("grid_id")["parent_id"].nunique()
    if (parents > 1).any():
        raise InvalidInputError(
            f"grid layer {path}: grids {parents.index[parents > 1].tolist()[:10]} have "
            f"several {parent_column!r} values; give each grid one parent")
    rows = gdf.groupby("grid_id").size()
    # features of one grid merge into one shape; make_valid(structure) keeps area only
    merged = gdf.dissolve(by="grid_id", aggfunc={"parent_id": "first"}).reset_index()
    merged["geometry"] = shapely.make_valid(merged.geometry.values, method="structure",
                                            keep_collapsed=False)
    grids = gpd.GeoDataFrame(merged[["grid_id", "parent_id"]], geometry=merged.geometry.values,
                             crs="EPSG:4326")
    invalid = pd.DataFrame({"grid_id": ids.iloc[bad].astype(str).to_numpy(),
                            "row": bad, "reason": list(reasons)})
    if len(invalid):
        area = utm_area(gdf.geometry.iloc[bad])
        invalid["area_m2"] = area.to_numpy()
        log.warning("%d invalid polygons in %s were repaired: %s", len(invalid), path,
                    invalid["grid_id"].tolist()[:10])
    else:
        invalid["area_m2"] = pd.Series(dtype=float)
    return GridLayer(grids.sort_values("grid_id").reset_index(drop=True), invalid, rows)


def utm_crs(gdf: gpd.GeoDataFrame | gpd.GeoSeries):
    """The local UTM zone of a WGS84 layer: areas in m² are computed there."""
    return gdf.estimate_utm_crs()


def utm_area(geoms: gpd.GeoSeries) -> pd.Series:
    """Areas in m² (in the local UTM zone)."""
    return geoms.to_crs(utm_crs(geoms)).area


def unit_shares(units: gpd.GeoDataFrame, grids: gpd.GeoDataFrame) -> pd.DataFrame:
    """Area (m²) of every unit inside every drawn grid it touches: unit_id, grid_id, area_m2.

    One vectorised overlay in the local UTM zone.
    """
    crs = utm_crs(units)
    left = gpd.GeoDataFrame({"unit_id": units.index.to_numpy()},
                            geometry=units.geometry.to_crs(crs).values, crs=crs)
    right = grids[["grid_id", "geometry"]].to_crs(crs)
    over = gpd.overlay(left, right, how="intersection", keep_geom_type=True)
    return pd.DataFrame({"unit_id": over["unit_id"].to_numpy(),
                         "grid_id": over["grid_id"].to_numpy(),
                         "area_m2": over.area.to_numpy()})


def grid_branches(grids: gpd.GeoDataFrame, units: gpd.GeoDataFrame,
                  shares: pd.DataFrame) -> pd.Series:
    """The branch of every drawn grid: its parent when given, else the branch holding most
    of its area (unit areas carry their branch)."""
    branch = shares.assign(branch_id=units["branch_id"].reindex(shares["unit_id"]).to_numpy())
    by_area = (branch.groupby(["grid_id", "branch_id"])["area_m2"].sum().reset_index()
               .sort_values(["grid_id", "area_m2", "branch_id"], ascending=[True, False, True])
               .drop_duplicates("grid_id").set_index("grid_id")["branch_id"])
    out = by_area.reindex(grids["grid_id"])
    if grids["parent_id"].notna().all():
        known = set(units["branch_id"])
        given = grids.set_index("grid_id")["parent_id"].astype(str)
        unknown = sorted(set(given) - known)
        if unknown:
            raise InvalidInputError(
                f"grid parents {unknown[:10]} are not branches of the boundary layer "
                f"({sorted(known)[:10]}); the main grids' parent column must name the branch")
        out = given.reindex(out.index)
    return out


def _pick(shares: pd.DataFrame) -> pd.Series:
    """Per unit, the grid holding most of its area (ties: the first grid id)."""
    s = shares.sort_values(["unit_id", "area_m2", "grid_id"], ascending=[True, False, True])
    return s.drop_duplicates("unit_id").set_index("unit_id")["grid_id"]


def _group_grids(shares: pd.DataFrame, together: list[list]) -> pd.Series:
    """Per unit of a key-account group, the grid holding most of the group's area."""
    rows = [(u, n) for n, grp in enumerate(together) for u in grp]
    if not rows:
        return pd.Series(dtype=object)
    member = pd.DataFrame(rows, columns=["unit_id", "group"]).drop_duplicates("unit_id")
    s = shares.merge(member, on="unit_id")
    area = s.groupby(["group", "grid_id"])["area_m2"].sum().reset_index()
    best = (area.sort_values(["group", "area_m2", "grid_id"], ascending=[True, False, True])
            .drop_duplicates("group").set_index("group")["grid_id"])
    return member.set_index("unit_id")["group"].map(best).dropna()


def _rejoin_groups(labels: pd.Series, graph: nx.Graph, together: list[list]) -> pd.Series:
    """A group the contiguity repair split joins the grid holding most of its units, when
    every grid involved stays one piece."""
    labels = labels.copy()
    for grp in together:
        members = [u for u in grp if u in labels.index]
        grids = labels.loc[members]
        if grids.nunique() <= 1:
            continue
        trial = labels.copy()
        trial.loc[members] = grids.value_counts().index[0]
        involved = set(grids)
        if all(nx.is_connected(graph.subgraph(trial.index[trial == g]))
               for g in involved if (trial == g).any()):
            labels = trial
        else:
            log.warning("key account of units %s stays split across %s: joining it whole "
                        "would cut a grid in two", members[:5], sorted(involved))
    return labels


def _snap_level(units: gpd.GeoDataFrame, graph: nx.Graph, shares: pd.DataFrame,
                home: pd.Series, container: str, measures: list[str],
                together: list[list] | None = None) -> pd.Series:
    """Snap units to drawn grids whose ``home`` (their container at the level above)
    equals the unit's ``container`` column; orphans, cut-off pieces and key-account groups
    by the module rule."""
    ok = shares["grid_id"].map(home).to_numpy() == \
        units[container].reindex(shares["unit_id"]).to_numpy()
    best = _pick(shares[ok])
    labels = pd.Series(best.reindex(units.index).to_numpy(), index=units.index, dtype=object)
    together = [[u for u in g if u in units.index] for g in together or []]
    whole = _group_grids(shares[ok], together)
    labels.loc[whole.index] = whole
    out = []
    for key, nodes in units.groupby(container).groups.items():
        lab = labels.loc[nodes]
        names = sorted(lab.dropna().unique())
        if not names:
            raise InvalidInputError(
                f"{container} {key!r}: no drawn grid lies in it; draw at least one "
                "grid there (or give the grids' --parent-column)")
        sub = part_graph(graph, nodes)
        P = problem_from_graph(sub, measures, allow_zero=True)
        code = {g: j for j, g in enumerate(names)}
        arr = lab.reindex(P.ids).map(code).fillna(-1).to_numpy(dtype=np.int64)
        if len(names) > 1 or (arr < 0).any():
            arr = repair_contiguity(P, arr, len(names))
        out.append(pd.Series(np.asarray(names, dtype=object)[arr], index=P.ids))
    return _rejoin_groups(pd.concat(out).reindex(units.index), graph, together)


def snap_to_units(units: gpd.GeoDataFrame, graph: nx.Graph, main: GridLayer,
                  sub: GridLayer | None, measures: dict[str, float], *,
                  params: dict | None = None, together: list[list] | None = None
                  ) -> tuple[Plan, dict[str, pd.DataFrame]]:
    """The Plan that follows the drawn main grids (and sub-grids) to within a unit.

    ``units`` carry ``branch_id`` and the measures; ``graph`` is their adjacency graph
    (:func:`territory.graph.build_graph`). Returns the plan and the unit-grid area shares
    per level (``"main_grid"``, ``"sub_grid"``), which the diagnosis reports from.
    ``together``: key-account groups (lists of unit ids) kept in one grid at both levels.
    """
    units = units.copy()
    shares = unit_shares(units, main.grids)
    home = grid_branches(main.grids, units, shares)
    units["main_grid_id"] = _snap_level(units, graph, shares, home, "branch_id",
                                        list(measures), together)
    out = {"main_grid": shares}
    if sub is not None:
        sub_shares = unit_shares(units, sub.grids)
        parent = sub.grids.set_index("grid_id")["parent_id"]
        if parent.isna().any():  # no parent column: the main grid holding most of its area
            on_main = sub_shares.assign(
                main=units["main_grid_id"].reindex(sub_shares["unit_id"]).to_numpy())
            parent = (on_main.groupby(["grid_id", "main"])["area_m2"].sum().reset_index()
                      .sort_values(["grid_id", "area_m2"], ascending=[True, False])
                      .drop_duplicates("grid_id").set_index("grid_id")["main"])
        units["sub_grid_id"] = _snap_level(units, graph, sub_shares, parent.astype(str),
                                           "main_grid_id", list(measures), together)
        out["sub_grid"] = sub_shares
    else:
        units["sub_grid_id"] = units["main_grid_id"] + "-S1"
    units.index.name = "unit_id"
    p = {"imported": True, "measures": dict(measures), **(params or {})}
    return Plan(units=units, measures=list(measures), params=p), out
