"""A cell → grid table for warehouses: assignment by an equi-join on H3 cells.

A Hive/Spark/ODPS job cannot run :class:`~territory.assign_index.AssignmentIndex`, but it can
compute a customer's H3 cell and join on it. :func:`cell_table` lists every H3 cell of one
resolution that overlaps the service area, marked ``interior`` when the whole cell (grown by
:data:`MARGIN_DEG`, so that H3's own cell edges, which are not straight in lng/lat, are
covered too) lies inside the service area and touches units of one sub-grid only: every
customer in such a cell belongs to that sub-grid, whatever the boundary rule. Other cells
cross a sub-grid boundary or the edge of the service area; they carry their
``candidate_sub_grids`` and the job sends only their customers to the exact lookup
(``territory assign``). A customer whose cell is not in the table is outside the service area.
"""

from __future__ import annotations

from pathlib import Path

import h3
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import shapely

from territory.atomic import atomic_path
from territory.errors import InvalidInputError
from territory.plan import Plan
from territory.units import GRID_SIZE_DEG

#: Growth of each cell polygon before the tests, in degrees (about 1 m): more than the gap
#: between H3's cell edges and the straight lines between its vertices at any resolution
#: used for customers, so an interior cell has no point outside its sub-grid.
MARGIN_DEG = 1e-5
#: Resolutions a table may use: coarser ones give few interior cells, finer ones many rows.
RESOLUTIONS = range(5, 13)


def cell_table(plan: Plan, resolution: int) -> pa.Table:
    """One row per H3 cell at ``resolution`` overlapping the plan's service area.

    Columns: ``h3_cell`` (int64, the H3 index as a number), ``h3_index`` (its hex string),
    ``interior`` (bool), ``sub_grid_id``/``main_grid_id``/``branch_id`` (set for interior
    cells, null otherwise), ``candidate_sub_grids`` (list of the sub-grids a boundary cell
    touches; empty for interior cells). Sorted by ``h3_cell``. The plan id and version are
    kept in the schema metadata.
    """
    if resolution not in RESOLUTIONS:
        raise InvalidInputError(f"`resolution` {resolution}: choose one from "
                                f"{RESOLUTIONS.start} to {RESOLUTIONS.stop - 1}")
    units = plan.units
    if units.crs is None or units.crs.to_epsg() != 4326:
        raise InvalidInputError(f"plan units are in {units.crs}, expected EPSG:4326")
    geoms = units.geometry.values
    area = shapely.union_all(geoms, grid_size=GRID_SIZE_DEG)  # the plan's own snapping
    shape = h3.geo_to_h3shape(area.__geo_interface__)
    cells = np.unique(np.array([h3.str_to_int(c) for c in h3.h3shape_to_cells_experimental(
        shape, resolution, contain="overlap")], dtype=np.int64))
    rings = [[(lng, lat) for lat, lng in h3.cell_to_boundary(h3.int_to_str(int(c)))]
             for c in cells]
    grown = shapely.buffer(shapely.polygons(rings), MARGIN_DEG)
    cell_pos, unit_pos = shapely.STRtree(geoms).query(grown, predicate="intersects")
    sub_ids, sub_code = np.unique(units["sub_grid_id"].astype(str).to_numpy(),
                                  return_inverse=True)
    pairs = np.unique(cell_pos * len(sub_ids) + sub_code[unit_pos])  # sorted, distinct
    pair_cell, pair_sub = np.divmod(pairs, len(sub_ids))
    n_subs = np.bincount(pair_cell, minlength=len(cells))
    offsets = np.concatenate([[0], np.cumsum(n_subs)]).astype(np.int32)
    shapely.prepare(area)
    interior = (n_subs == 1) & shapely.within(grown, area)
    first = np.where(n_subs > 0, pair_sub[np.minimum(offsets[:-1], len(pairs) - 1)], 0)
    owner = np.where(interior, sub_ids[first], None)
    ids = units[["sub_grid_id", "main_grid_id", "branch_id"]].astype(str).to_numpy()
    main_of, branch_of = dict(ids[:, [0, 1]].tolist()), dict(ids[:, [0, 2]].tolist())
    main = [None if o is None else main_of[o] for o in owner]
    branch = [None if o is None else branch_of[o] for o in owner]
    # boundary cells list their sub-grids; interior cells an empty list
    keep = ~interior[pair_cell]
    kept = np.where(interior, 0, n_subs)
    candidates = pa.ListArray.from_arrays(
        pa.array(np.concatenate([[0], np.cumsum(kept)]).astype(np.int32)),
        pa.array(sub_ids[pair_sub[keep]].tolist(), pa.string()))
    table = pa.table({
        "h3_cell": pa.array(cells, pa.int64()),
        "h3_index": pa.array([h3.int_to_str(int(c)) for c in cells], pa.string()),
        "interior": pa.array(interior, pa.bool_()),
        "sub_grid_id": pa.array(owner.tolist(), pa.string()),
        "main_grid_id": pa.array(main, pa.string()),
        "branch_id": pa.array(branch, pa.string()),
        "candidate_sub_grids": candidates,
    })
    meta = {"territory.plan_id": plan.plan_id, "territory.plan_version": str(plan.version),
            "territory.h3_resolution": str(resolution)}
    return table.replace_schema_metadata(meta)


def write_cell_table(plan: Plan, resolution: int, path: str | Path) -> pa.Table:
    """:func:`cell_table` written to Parquet at ``path`` atomically; returns the table."""
    path = Path(path)
    if path.suffix.lower() not in (".parquet", ".pq"):
        raise InvalidInputError(f"`out` {path}: the cell table is written as Parquet; name "
                                "the file .parquet")
    table = cell_table(plan, resolution)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return table
