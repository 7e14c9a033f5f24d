"""The assignment index: WGS84 point → unit of a plan, exactly, at millions of points a second.

Why a raster and not H3 or a spatial join: a call into h3 or GEOS per point costs about a
microsecond, while the operator's nightly batch is tens of millions of customers. The index
answers most points with integer arithmetic and two array reads, and spends GEOS calls only
on the few points that fall near a unit boundary.

Layout
------
* A **coarse raster** in lon/lat over the plan's bounds (plus a two-cell margin), cells of
  ``2**-10`` degrees (about 110 m x 100 m at 22°N). Powers of two keep ``x - x0`` and the
  scaling exact in floating point, so the pixel of a point is computed without rounding.
* A coarse cell that no unit boundary touches lies wholly inside one unit (its code is the
  unit's position) or wholly outside the service area (code ``-1``). A cell a boundary touches
  is a **block** of ``B x B`` fine pixels, ``B`` in 4..16 growing with the length of boundary
  inside the cell, so that a fraction of each block's pixels are ambiguous whether one edge
  or a tangle of small units crosses it, and memory goes where boundaries are dense.
* A fine pixel no boundary touches is again one unit or outside; a pixel a boundary touches
  is **ambiguous** and lists its candidate units (those whose rings touch it), ascending.
* Which pixels a boundary touches is computed exactly by rasterising every ring segment of
  every unit onto pixels grown by ``1e-6`` pixel (a conservative supercover), so a pixel
  reported free really holds no boundary, whatever the rounding. Free pixels are labelled by
  connected components, one point-in-polygon test per component.

Ownership rule
--------------
A point goes to the unit covering it (boundary included); a point on a shared edge or vertex,
covered by several units, goes to the one that comes first in ``plan.units`` (lowest
``unit_id``: units are sorted by id). This is :func:`territory.units.locate_points`'s rule,
so assignment and the aggregation that built the plan always agree. Ambiguous points are
resolved by ``shapely.intersects_xy`` against the candidates in that order.

Outside points
--------------
A point no unit covers is outside. Its nearest sub-grid is the one owning the nearest segment
of the service area's boundary, distances in metres in the plan's local UTM zone: boundary
segments are projected vertex by vertex (pyproj); a point is projected by bilinear
interpolation of the UTM coordinates of the coarse raster's nodes (error below a millimetre
at 110 m spacing). Every coarse cell that may hold outside points lists the boundary segments
that can be nearest to some point of it (a segment whose distance to the cell is at most the
smallest worst-corner distance of any segment); the nearest one per point is then a numpy
reduction. Far from the coast many candidates are nearly equidistant, so each candidate also
stores the tangent plane of its distance at the cell's centre: distance to a segment is
convex, so the plane is a lower bound everywhere, and a candidate whose bound exceeds the
distance to the cell's first candidate is skipped (about 2 of 20 remain). Ties go to the
lowest unit. Points beyond the raster (another city, a swapped lng/lat) take the exact but
slow GEOS nearest-neighbour path.

Size and speed (Shenzhen, 31 000 units, one core): built in about half a minute, 135 MB of
arrays (45 MB raster, the rest the outside candidates), loaded in 0.1 s; about 10 M points a
second to locate points, 4-5 M a second end to end (ids and statuses) for customers inside
the service area, about 1 µs per outside point (see ``bench/assign.py``).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pyproj
import shapely
from scipy import ndimage

from territory.crs import local_projected_crs
from territory.errors import InvalidInputError
from territory.plan import Plan
from territory.units import GRID_SIZE_DEG, locate_points

#: Coarse cells are 2**-COARSE_SHIFT degrees; fine pixels down to 2**-(COARSE_SHIFT+FINE_BITS).
COARSE_SHIFT = 10
FINE_BITS = 4
_FINE = 1 << FINE_BITS  # finest pixels per coarse cell side
_SCALE = float(1 << (COARSE_SHIFT + FINE_BITS))  # finest pixels per degree
#: Boundaries are rasterised onto pixels grown by this much (in pixel units): far above the
#: floating-point error of the arithmetic, far below any real distance (7 µm at most).
_EPS = 1e-6
#: Fine pixels per block side per cell side of boundary inside the block (see _build):
#: smaller saves memory, larger makes fewer points need an exact point-in-polygon test.
_AMBIGUITY = 1.0
_MARGIN = 2  # coarse cells of margin around the plan's bounds
_NEAREST_SLICE = 2048  # outside points per slice of the nearest-segment search
#: Slack on the tangent-plane lower bounds (metres): covers their float32 arithmetic (a few
#: mm at 50 km) many times over; a larger slack only costs a few more exact distances.
_BOUND_SLACK_M = 0.05
_OUTSIDE = -1
FORMAT_VERSION = 2


def index_path(plan_path: str | Path) -> Path:
    """Where the index of a plan file lives: ``<plan>.index.npz`` beside the GeoPackage."""
    plan_path = Path(plan_path)
    return plan_path.with_name(plan_path.name + ".index.npz")


@dataclass(frozen=True)
class _Arrays:
    """Everything the index stores; one field per array of the ``.npz`` file."""

    meta_f: np.ndarray  # float64: x0, y0
    meta_i: np.ndarray  # int64: format, ncx, ncy, n_units, epsg
    fingerprint: np.ndarray  # str scalar: the plan's fingerprint
    coarse: np.ndarray  # int32 (ncy*ncx): unit >= 0, -1 outside, <= -2 block
    block_start: np.ndarray  # int64 (n_blocks): offset into fine
    block_bits: np.ndarray  # int8 (n_blocks): log2 of the block side
    fine: np.ndarray  # int32: unit >= 0, -1 outside, <= -2 ambiguous entry
    amb_ptr: np.ndarray  # int64 (n_amb+1): CSR into amb_units
    amb_units: np.ndarray  # int32: candidate units per ambiguous pixel, ascending
    out_entry: np.ndarray  # int32 (ncy*ncx): CSR row of the cell's segment candidates or -1
    out_ptr: np.ndarray  # int64
    out_segs: np.ndarray  # int32: boundary segments, nearest to the cell's centre first
    out_tangent: np.ndarray  # float32 (n, 3): distance from the cell's centre to the
    #                          segment (m) and its gradient there (x, y)
    seg_xy: np.ndarray  # float64 (n_seg, 4): boundary segments in UTM metres
    seg_unit: np.ndarray  # int32 (n_seg): unit owning each boundary segment
    node_x: np.ndarray  # float64 (ncy+1, ncx+1): UTM easting of coarse nodes
    node_y: np.ndarray  # float64 (ncy+1, ncx+1): UTM northing of coarse nodes


class AssignmentIndex:
    """Point → unit lookup for one plan (see the module docstring for the design).

    Build it with :meth:`build` (seconds for a city), persist it with :meth:`save` and reopen
    it with :meth:`load`, which refuses an index built for another plan. Queries take WGS84
    lon/lat arrays; :mod:`territory.assign` adds CRS conversion, statuses and file streaming.

    Examples
    --------
    >>> index = AssignmentIndex.build(plan)                    # doctest: +SKIP
    >>> index.locate(np.array([114.05]), np.array([22.54]))     # doctest: +SKIP
    array([1234])
    """

    def __init__(self, plan: Plan, arrays: _Arrays) -> None:
        self.plan = plan
        self._a = arrays
        x0, y0 = arrays.meta_f
        _, ncx, ncy, _, epsg = (int(v) for v in arrays.meta_i)
        self._x0, self._y0, self._ncx, self._ncy = float(x0), float(y0), ncx, ncy
        self.crs = pyproj.CRS.from_epsg(epsg)
        self._geoms = np.asarray(plan.units.geometry.values, dtype=object)
        shapely.prepare(self._geoms)
        self._seg_tree: shapely.STRtree | None = None
        self._segs = _Segments(arrays.seg_xy)
        ids = plan.units
        self.sub_grid_ids = ids["sub_grid_id"].to_numpy(dtype=object)
        self.main_grid_ids = ids["main_grid_id"].to_numpy(dtype=object)
        self.branch_ids = ids["branch_id"].astype(str).to_numpy(dtype=object)

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def build(cls, plan: Plan) -> AssignmentIndex:
        """Build the index of ``plan`` (units in EPSG:4326)."""
        return cls(plan, _build(plan))

    def save(self, path: str | Path) -> Path:
        """Write the index atomically (temp file, then rename): readers never see half."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **{fl.name: getattr(self._a, fl.name) for fl in fields(_Arrays)})
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return path

    @classmethod
    def load(cls, path: str | Path, plan: Plan) -> AssignmentIndex:
        """Open a saved index for ``plan``; refuses one built for another plan or format."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = _Arrays(**{fl.name: z[fl.name] for fl in fields(_Arrays)})
        except FileNotFoundError:
            raise InvalidInputError(f"{path}: no such index file; build it with "
                                    "AssignmentIndex.build(plan).save(path)") from None
        except (OSError, ValueError, KeyError) as exc:
            raise InvalidInputError(
                f"{path}: not a territory assignment index ({exc}); delete it and rebuild"
            ) from None
        if int(arrays.meta_i[0]) != FORMAT_VERSION:
            raise InvalidInputError(
                f"{path}: index format {int(arrays.meta_i[0])}, this version reads "
                f"{FORMAT_VERSION}; delete the file and rebuild the index"
            )
        if str(arrays.fingerprint) != plan.fingerprint:
            raise InvalidInputError(
                f"{path}: the index was built for another plan (fingerprint "
                f"{str(arrays.fingerprint)[:12]}…, plan {plan.fingerprint[:12]}…); delete the "
                "index file and rebuild it for this plan"
            )
        return cls(plan, arrays)

    @property
    def nbytes(self) -> int:
        """Memory held by the index arrays (the plan's geometries not counted)."""
        return sum(getattr(self._a, fl.name).nbytes for fl in fields(_Arrays))

    # -- queries --------------------------------------------------------------------------
    def locate(self, lng: np.ndarray, lat: np.ndarray) -> np.ndarray:
        """Position in ``plan.units`` of the unit owning each WGS84 point; -1 for none.

        Non-finite coordinates give -1. Same answer as :func:`territory.units.locate_points`.
        """
        x = np.asarray(lng, dtype=np.float64)
        y = np.asarray(lat, dtype=np.float64)
        unit, _ = self._lookup(x, y)
        return unit

    def nearest(self, lng: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The unit owning the nearest boundary segment of the service area, and the distance
        to it in metres (UTM), for WGS84 points outside the service area (for a point inside,
        the distance to the boundary, which is not what "nearest grid" means there)."""
        x = np.asarray(lng, dtype=np.float64)
        y = np.asarray(lat, dtype=np.float64)
        inr, gx, gy = self._pixels(x, y)
        return self._nearest(x, y, inr, gx, gy)

    def _pixels(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Finest-level pixel of each point and whether it lies on the raster at all."""
        fx = (x - self._x0) * _SCALE
        fy = (y - self._y0) * _SCALE
        inr = (fx >= 0) & (fx < self._ncx * _FINE) & (fy >= 0) & (fy < self._ncy * _FINE)
        if not inr.all():
            fx = np.where(inr, fx, 0.0)
            fy = np.where(inr, fy, 0.0)
        return inr, fx.astype(np.int64), fy.astype(np.int64)

    def _lookup(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Unit per point (-1 none) and the mask of points that are on the raster."""
        a = self._a
        inr, gx, gy = self._pixels(x, y)
        code = a.coarse[(gy >> FINE_BITS) * self._ncx + (gx >> FINE_BITS)].astype(np.int64)
        blk = np.flatnonzero(code <= -2)
        if len(blk):
            b = -code[blk] - 2
            bits = a.block_bits[b].astype(np.int64)
            shift = FINE_BITS - bits
            lx = (gx[blk] & (_FINE - 1)) >> shift
            ly = (gy[blk] & (_FINE - 1)) >> shift
            code[blk] = a.fine[a.block_start[b] + (ly << bits) + lx]
        code[~inr] = _OUTSIDE
        amb = np.flatnonzero(code <= -2)
        if len(amb):
            code[amb] = self._resolve(x[amb], y[amb], -code[amb] - 2)
        return code, inr

    def _resolve(self, x: np.ndarray, y: np.ndarray, entry: np.ndarray) -> np.ndarray:
        """Exact point-in-polygon among each ambiguous pixel's candidates, lowest unit first."""
        a = self._a
        pair_pt, pos, _ = _csr_pairs(a.amb_ptr, entry)
        cand = a.amb_units[pos]
        # GEOS is twice as fast when consecutive tests hit the same (prepared) polygon
        order = np.argsort(cand, kind="stable")
        hit = np.empty(len(cand), dtype=bool)
        hit[order] = shapely.intersects_xy(
            self._geoms[cand[order]], x[pair_pt[order]], y[pair_pt[order]]
        )
        return _first_per_group(pair_pt, cand, hit, len(x))

    def _nearest(
        self, x: np.ndarray, y: np.ndarray, inr: np.ndarray, gx: np.ndarray, gy: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        a = self._a
        unit = np.full(len(x), -1, dtype=np.int64)
        dist = np.full(len(x), np.nan)
        cell = (gy >> FINE_BITS) * self._ncx + (gx >> FINE_BITS)
        entry = np.where(inr, a.out_entry[cell], -1)
        fast = np.flatnonzero(entry >= 0)
        # in slices whose temporaries stay in the CPU cache: three times faster than one go
        for lo in range(0, len(fast), _NEAREST_SLICE):
            sl = fast[lo:lo + _NEAREST_SLICE]
            px, py, ox, oy = self._project(x[sl], y[sl], gx[sl], gy[sl])
            pair_pt, pos, starts = _csr_pairs(a.out_ptr, entry[sl])
            # distance to a segment is convex: its tangent plane at the cell's centre is a
            # lower bound everywhere. A candidate whose bound exceeds the distance to the
            # cell's first candidate (nearest to the centre) cannot be nearest, nor tie
            first = np.sqrt(self._segs.d2(px, py, a.out_segs[pos[starts]])) + _BOUND_SLACK_M
            count = np.diff(np.r_[starts, len(pos)])
            tangent = a.out_tangent[pos]  # float32 is ample for a bound with slack
            lower = tangent[:, 1] * np.repeat(ox.astype(np.float32), count)
            lower += tangent[:, 2] * np.repeat(oy.astype(np.float32), count)
            lower += tangent[:, 0]
            keep = np.flatnonzero(lower <= np.repeat(first.astype(np.float32), count))
            pair_pt, seg = pair_pt[keep], a.out_segs[pos[keep]]
            d2 = self._segs.d2(px[pair_pt], py[pair_pt], seg)
            starts = np.r_[0, np.cumsum(np.bincount(pair_pt, minlength=len(sl)))[:-1]]
            best = np.minimum.reduceat(d2, starts)
            owner = np.where(d2 == best[pair_pt], a.seg_unit[seg], np.iinfo(np.int32).max)
            unit[sl] = np.minimum.reduceat(owner, starts)  # ties: the lowest unit
            dist[sl] = np.sqrt(best)
        slow = np.flatnonzero((entry < 0) & np.isfinite(x) & np.isfinite(y))
        if len(slow):
            unit[slow], dist[slow] = self._nearest_geos(x[slow], y[slow])
        return unit, dist

    def _project(self, x: np.ndarray, y: np.ndarray, gx: np.ndarray, gy: np.ndarray
                 ) -> list[np.ndarray]:
        """UTM of points by bilinear interpolation between the coarse raster's nodes, and
        their offsets from their cell's centre: [px, py, ox, oy]."""
        cx, cy = gx >> FINE_BITS, gy >> FINE_BITS
        tx = (x - self._x0) * (1 << COARSE_SHIFT) - cx
        ty = (y - self._y0) * (1 << COARSE_SHIFT) - cy
        i00 = cy * (self._ncx + 1) + cx  # flat indices: much faster than 2-d fancy indexing
        i01 = i00 + (self._ncx + 1)
        out: list[np.ndarray] = []
        for node in (self._a.node_x.ravel(), self._a.node_y.ravel()):
            v00, v10, v01, v11 = node[i00], node[i00 + 1], node[i01], node[i01 + 1]
            out.append((v00 * (1 - tx) + v10 * tx) * (1 - ty) + (v01 * (1 - tx) + v11 * tx) * ty)
            out.append(out[-1] - (v00 + v10 + v11 + v01) * 0.25)
        return [out[0], out[2], out[1], out[3]]

    def _nearest_geos(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact nearest boundary segment through GEOS: for points off the raster only."""
        a = self._a
        if self._seg_tree is None:
            s = a.seg_xy
            self._seg_tree = shapely.STRtree(
                shapely.linestrings(np.stack([s[:, :2], s[:, 2:]], axis=1))
            )
        px, py = _transformer(self.crs).transform(x, y)
        pts = shapely.points(np.asarray(px), np.asarray(py))
        (pt, seg), d = self._seg_tree.query_nearest(pts, return_distance=True, all_matches=True)
        order = np.lexsort((a.seg_unit[seg], pt))
        pt, seg, d = pt[order], seg[order], d[order]
        first = np.r_[True, pt[1:] != pt[:-1]]
        unit = np.full(len(x), -1, dtype=np.int64)
        dist = np.full(len(x), np.nan)
        unit[pt[first]] = a.seg_unit[seg[first]]
        dist[pt[first]] = d[first]
        return unit, dist


# -------------------------------------------------------------------------------------------
# Query helpers
# -------------------------------------------------------------------------------------------


def _csr_pairs(ptr: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each query i with CSR row ``rows[i]``: pairs (i, position in the row's values),
    grouped by i in order, and where each i's pairs start."""
    start = ptr[rows]
    count = ptr[rows + 1] - start
    pair = np.repeat(np.arange(len(rows)), count)
    first = np.cumsum(count) - count
    pos = np.arange(len(pair)) + np.repeat(start - first, count)
    return pair, pos, first


def _first_per_group(group: np.ndarray, value: np.ndarray, hit: np.ndarray, n: int
                     ) -> np.ndarray:
    """Per group (pairs grouped in order), the value of its first hit; -1 when none."""
    out = np.full(n, -1, dtype=np.int64)
    h = np.flatnonzero(hit)
    g = group[h]
    first = np.r_[True, g[1:] != g[:-1]] if len(g) else np.zeros(0, dtype=bool)
    out[g[first]] = value[h[first]]
    return out


class _Segments:
    """Segments (rows ax, ay, bx, by) as separate contiguous arrays for fast gathers."""

    def __init__(self, xy: np.ndarray) -> None:
        self.ax, self.ay, self.bx, self.by = (np.ascontiguousarray(xy[:, i]) for i in range(4))
        self.dx, self.dy = self.bx - self.ax, self.by - self.ay
        len2 = self.dx * self.dx + self.dy * self.dy
        self.inv = np.divide(1.0, len2, out=np.zeros_like(len2), where=len2 > 0)

    def nearest_point(self, px: np.ndarray, py: np.ndarray, seg: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray]:
        """The point of segment ``seg[i]`` nearest to each point. The end vertices are
        taken as stored (t = 0 gives a, t = 1 gives b), so segments sharing a vertex give
        bit-identical distances to it and ties between them are real ties."""
        ax, ay, dx, dy = self.ax[seg], self.ay[seg], self.dx[seg], self.dy[seg]
        t = (px - ax) * dx
        t += (py - ay) * dy
        t *= self.inv[seg]
        np.clip(t, 0.0, 1.0, out=t)
        end = t >= 1.0
        return np.where(end, self.bx[seg], ax + t * dx), np.where(end, self.by[seg], ay + t * dy)

    def d2(self, px: np.ndarray, py: np.ndarray, seg: np.ndarray) -> np.ndarray:
        """Squared distance from each point to segment ``seg[i]``."""
        qx, qy = self.nearest_point(px, py, seg)
        qx -= px
        qy -= py
        qx *= qx
        qy *= qy
        qx += qy
        return qx


def _transformer(crs: pyproj.CRS) -> pyproj.Transformer:
    return pyproj.Transformer.from_crs("EPSG:4326", crs, always_xy=True)


# -------------------------------------------------------------------------------------------
# Construction
# -------------------------------------------------------------------------------------------


def _segments(geoms: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every ring segment of every unit: (a, b) coordinates (n, 2) each, the unit, and
    whether it lies on the service area's boundary (no other unit has the same edge)."""
    parts, part_of = shapely.get_parts(geoms, return_index=True)
    rings, ring_of = shapely.get_rings(parts, return_index=True)
    xy, ring = shapely.get_coordinates(rings, return_index=True)
    same = ring[1:] == ring[:-1]
    a, b = xy[:-1][same], xy[1:][same]
    unit = part_of[ring_of[ring[:-1][same]]]
    keep = (a != b).any(axis=1)
    a, b, unit = a[keep], b[keep], unit[keep]
    # an edge shared by two units appears twice, once each way; compare snapped integers
    q = np.round(np.hstack([a, b]) / GRID_SIZE_DEG).astype(np.int64)
    a_first = (q[:, 0] < q[:, 2]) | ((q[:, 0] == q[:, 2]) & (q[:, 1] <= q[:, 3]))
    edge = np.where(a_first[:, None], q, q[:, [2, 3, 0, 1]])
    _, inv, count = np.unique(edge, axis=0, return_inverse=True, return_counts=True)
    boundary = count[inv.ravel()] == 1
    return np.hstack([a, b]), unit.astype(np.int64), boundary


def _expand(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows i repeated for each integer in [lo[i], hi[i]], with that integer."""
    n = np.maximum(hi - lo + 1, 0)
    row = np.repeat(np.arange(len(lo)), n)
    return row, lo[row] + np.arange(len(row)) - np.repeat(np.cumsum(n) - n, n)


def _touched(seg: np.ndarray, nx: np.ndarray | int, ny: np.ndarray | int
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Supercover: every cell [i, i+1] x [j, j+1] (0 <= i < nx, 0 <= j < ny, coordinates in
    cell units) that segment k meets once the cell is grown by ``_EPS``; returns (k, i, j).

    Exact up to the growth: for each column the segment crosses, the rows between the
    segment's lowest and highest point within the column."""
    nx = np.broadcast_to(nx, len(seg))
    ny = np.broadcast_to(ny, len(seg))
    flip = seg[:, 2] < seg[:, 0]
    s = np.where(flip[:, None], seg[:, [2, 3, 0, 1]], seg)
    x0, y0, x1, y1 = s[:, 0], s[:, 1], s[:, 2], s[:, 3]
    i_lo = np.maximum(np.floor(x0 - _EPS), 0).astype(np.int64)
    i_hi = np.minimum(np.floor(x1 + _EPS), nx - 1).astype(np.int64)
    k, i = _expand(i_lo, i_hi)
    dx = x1 - x0
    slope = np.divide(y1 - y0, dx, out=np.zeros_like(dx), where=dx > 0)
    xa = np.maximum(x0[k], i - _EPS)
    xb = np.minimum(x1[k], i + 1 + _EPS)
    vertical = dx[k] == 0
    ya = np.where(vertical, y0[k], y0[k] + (xa - x0[k]) * slope[k])
    yb = np.where(vertical, y1[k], y0[k] + (xb - x0[k]) * slope[k])
    j_lo = np.maximum(np.floor(np.minimum(ya, yb) - _EPS), 0).astype(np.int64)
    j_hi = np.minimum(np.floor(np.maximum(ya, yb) + _EPS), ny[k] - 1).astype(np.int64)
    r, j = _expand(j_lo, j_hi)
    return k[r], i[r], j


def _label_free(free: np.ndarray, centre, units) -> np.ndarray:
    """Codes for free pixels of a stack of blocks (n, h, w): 4-connected components within a
    block lie in one face of the units' arrangement; one point-in-polygon test each."""
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = ndimage.generate_binary_structure(2, 1)
    labels, n = ndimage.label(free, structure=structure)
    flat = labels.ravel()
    rep = np.empty(n + 1, dtype=np.int64)
    rep[flat] = np.arange(flat.size)  # any pixel of a component represents it
    b, j, i = np.unravel_index(rep[1:], free.shape)
    x, y = centre(b, i, j)
    owner = np.r_[_OUTSIDE, locate_points(units, x, y)]
    return owner[flat].reshape(free.shape)


def _build(plan: Plan) -> _Arrays:
    units = plan.units
    if units.crs is None or units.crs.to_epsg() != 4326:
        raise InvalidInputError(f"plan units must be in EPSG:4326, got {units.crs}")
    geoms = np.asarray(units.geometry.values, dtype=object)
    seg, seg_unit, boundary = _segments(geoms)
    minx, miny, maxx, maxy = units.total_bounds
    c = 1 << COARSE_SHIFT
    ix0, iy0 = int(np.floor(minx * c)) - _MARGIN, int(np.floor(miny * c)) - _MARGIN
    ncx = int(np.ceil(maxx * c)) - ix0 + _MARGIN
    ncy = int(np.ceil(maxy * c)) - iy0 + _MARGIN
    x0, y0 = ix0 / c, iy0 / c

    # segments in finest-pixel units, then in coarse units
    g = (seg - np.array([x0, y0, x0, y0])) * _SCALE
    k, ci, cj = _touched(g / _FINE, ncx, ncy)
    cell = cj * ncx + ci
    marked = np.zeros(ncx * ncy, dtype=bool)
    marked[cell] = True

    def coarse_centre(_b, i, j):
        return x0 + (i + 0.5) / c, y0 + (j + 0.5) / c

    coarse = _label_free(~marked.reshape(1, ncy, ncx), coarse_centre, units).ravel()

    # blocks: B about _AMBIGUITY x the boundary length inside the cell (in cell sides), a
    # power of two in 4..16: a line of length l makes ~1.3 l / B of a block's pixels
    # ambiguous, so the share stays bounded where units are small, and a cell one edge cuts
    # costs 4 x 4 pixels, not 16 x 16 (Shenzhen: 21 % of block pixels ambiguous, 23 MB)
    blocks = np.flatnonzero(marked)
    block_of = np.full(ncx * ncy, -1, dtype=np.int64)
    block_of[blocks] = np.arange(len(blocks))
    seg_len = np.hypot(g[:, 2] - g[:, 0], g[:, 3] - g[:, 1]) / _FINE  # in cell sides
    length = np.bincount(block_of[cell], weights=np.minimum(seg_len[k], 1.5),
                         minlength=len(blocks))
    bits = np.clip(np.ceil(np.log2(np.maximum(_AMBIGUITY * length, 1.0))), 2, FINE_BITS
                   ).astype(np.int8)
    side = 1 << bits.astype(np.int64)
    block_start = np.r_[0, np.cumsum(side * side)[:-1]].astype(np.int64)

    # fine pixels each segment touches within each block it crosses
    bk = block_of[cell]
    local = (g[k] - np.column_stack([ci, cj, ci, cj]) * _FINE) * (side[bk] / _FINE)[:, None]
    r, fi, fj = _touched(local, side[bk], side[bk])
    pix = block_start[bk[r]] + fj * side[bk[r]] + fi
    fine = np.empty(int((side * side).sum()), dtype=np.int64)
    free = np.ones(len(fine), dtype=bool)
    free[pix] = False
    for nbits in np.unique(bits):
        sel = np.flatnonzero(bits == nbits)
        n = 1 << int(nbits)
        idx = (block_start[sel][:, None] + np.arange(n * n)).ravel()
        cells = blocks[sel]

        def fine_centre(b, i, j, cells=cells, n=n):
            cx, cy = cells[b] % ncx, cells[b] // ncx
            return x0 + (cx + (i + 0.5) / n) / c, y0 + (cy + (j + 0.5) / n) / c

        fine[idx] = _label_free(free[idx].reshape(-1, n, n), fine_centre, units).ravel()

    # ambiguous pixels: their candidate units, ascending
    n_units = len(units)
    key = np.sort(pix * n_units + seg_unit[k[r]])
    key = key[np.r_[True, key[1:] != key[:-1]]]
    amb_pix, amb_units = key // n_units, (key % n_units).astype(np.int32)
    new = np.r_[True, amb_pix[1:] != amb_pix[:-1]]
    amb_ptr = np.r_[np.flatnonzero(new), len(key)].astype(np.int64)
    fine[amb_pix[new]] = -2 - np.arange(int(new.sum()))
    coarse[blocks] = -2 - np.arange(len(blocks))

    out = _outside_candidates(units, seg[boundary], seg_unit[boundary], x0, y0, ncx, ncy,
                              coarse, cell[boundary[k]])
    return _Arrays(
        meta_f=np.array([x0, y0]),
        meta_i=np.array([FORMAT_VERSION, ncx, ncy, n_units, out["epsg"]], dtype=np.int64),
        fingerprint=np.array(plan.fingerprint),
        coarse=coarse.astype(np.int32), block_start=block_start, block_bits=bits,
        fine=fine.astype(np.int32), amb_ptr=amb_ptr, amb_units=amb_units,
        out_entry=out["entry"], out_ptr=out["ptr"], out_segs=out["segs"],
        out_tangent=out["tangent"],
        seg_xy=out["seg_xy"], seg_unit=out["seg_unit"].astype(np.int32),
        node_x=out["node_x"], node_y=out["node_y"],
    )


def _outside_candidates(units, seg, seg_unit, x0, y0, ncx, ncy, coarse, boundary_cells
                        ) -> dict:
    """Per coarse cell that may hold outside points, the boundary segments that can be
    nearest to one of its points: those within the smallest worst-corner distance."""
    b = units.total_bounds
    crs = local_projected_crs([b[0], b[2]], [b[1], b[3]])
    tr = _transformer(crs)
    c = 1 << COARSE_SHIFT
    nx_, ny_ = np.meshgrid(x0 + np.arange(ncx + 1) / c, y0 + np.arange(ncy + 1) / c)
    node_x, node_y = (np.asarray(v).reshape(nx_.shape) for v in tr.transform(nx_, ny_))
    ax, ay = tr.transform(seg[:, 0], seg[:, 1])
    bx, by = tr.transform(seg[:, 2], seg[:, 3])
    seg_xy = np.column_stack([ax, ay, bx, by])
    # sorted by unit so that, per cell, the first segment at the minimum is the lowest unit
    order = np.argsort(seg_unit, kind="stable")
    seg_xy, seg_unit = seg_xy[order], seg_unit[order]

    cells = np.union1d(np.flatnonzero(coarse == _OUTSIDE), boundary_cells)
    ci, cj = cells % ncx, cells // ncx
    corners = np.stack([
        np.column_stack([node_x[cj + dj, ci + di], node_y[cj + dj, ci + di]])
        for di, dj in ((0, 0), (1, 0), (1, 1), (0, 1))
    ], axis=1)  # (n, 4, 2): the bilinear image of the cell is exactly this quadrilateral
    quads = shapely.polygons(np.concatenate([corners, corners[:, :1]], axis=1))
    lines = shapely.linestrings(np.stack([seg_xy[:, :2], seg_xy[:, 2:]], axis=1))
    tree = shapely.STRtree(lines)
    centre_xy = (corners[:, 0] + corners[:, 1] + corners[:, 2] + corners[:, 3]) * 0.25
    centre = shapely.points(centre_xy)
    near_in, near_seg = tree.query_nearest(centre, all_matches=False)
    first = np.empty(len(cells), dtype=np.int64)
    first[near_in] = near_seg
    segs = _Segments(seg_xy)
    reach = _worst_corner(corners, segs, first)
    qi, si = tree.query(quads, predicate="dwithin", distance=reach * (1 + 1e-9) + 1e-6)
    worst = _worst_corner(corners[qi], segs, si)
    bound = np.full(len(cells), np.inf)
    np.minimum.at(bound, qi, worst)
    near = shapely.distance(quads[qi], lines[si])
    keep = near <= bound[qi] * (1 + 1e-9) + 1e-6  # generous: an extra candidate costs little
    qi, si = qi[keep], si[keep]
    # tangent planes of the distance at the cell centres (see AssignmentIndex._nearest)
    cx, cy = centre_xy[qi, 0], centre_xy[qi, 1]
    qx, qy = segs.nearest_point(cx, cy, si)
    dc = np.hypot(cx - qx, cy - qy)
    gx = np.divide(cx - qx, dc, out=np.zeros_like(dc), where=dc > 0)
    gy = np.divide(cy - qy, dc, out=np.zeros_like(dc), where=dc > 0)
    o = np.lexsort((si, dc, qi))  # nearest to the centre first
    qi, si, dc, gx, gy = qi[o], si[o], dc[o], gx[o], gy[o]
    entry = np.full(ncx * ncy, -1, dtype=np.int32)
    entry[cells] = np.arange(len(cells), dtype=np.int32)
    ptr = np.r_[0, np.cumsum(np.bincount(qi, minlength=len(cells)))].astype(np.int64)
    return {"epsg": crs.to_epsg(), "node_x": node_x, "node_y": node_y, "seg_xy": seg_xy,
            "entry": entry, "ptr": ptr, "segs": si.astype(np.int32), "seg_unit": seg_unit,
            "tangent": np.column_stack([dc, gx, gy]).astype(np.float32)}


def _worst_corner(corners: np.ndarray, segs: _Segments, seg: np.ndarray) -> np.ndarray:
    """Largest distance from a quadrilateral's corners to a segment (distance to a segment
    is convex, so this is the largest over the whole quadrilateral)."""
    d2 = np.stack([segs.d2(corners[:, m, 0], corners[:, m, 1], seg) for m in range(4)])
    return np.sqrt(d2.max(axis=0))
