"""The assignment index: WGS84 point → unit of a plan, exactly, at millions of points a second.

Why a raster and not H3 or a spatial join: a call into h3 or GEOS per point costs about a
microsecond, while the operator's nightly batch is tens of millions of customers. The index
answers most points with integer arithmetic and three array reads, and spends GEOS calls only
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
  is **ambiguous**: when one edge shared by two units crosses it (four in five), its code
  names that edge; otherwise a set of candidate units (those whose rings touch it),
  ascending, pixels with the same candidates sharing one set.
* Every cell stores its codes as a palette (its distinct codes) and a byte per pixel (a
  block has at most 256), and one integer (where its palette and pixels start, its block
  size): a point's code is three array reads, the same arithmetic for every point.
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
resolved without GEOS when one shared edge crosses the pixel: the unit on the point's side
of it, by Shewchuk's orientation test, exact beyond its static error bound (a point within
it, on the edge or a few ulps off, is tested with GEOS). Otherwise by
``shapely.intersects_xy`` against the candidates in that order, one candidate per round;
when no edge of the service area's boundary touches the pixel, the candidates cover it
(every edge there is shared by two units, one on each side), so a point that none of the
others covers belongs to the last one without a test. "Shared" means to the bit, units on
opposite sides: snapping leaves a few shared vertices an ulp apart, and such an edge is
treated as boundary here.

Outside points
--------------
A point no unit covers is outside. Its nearest sub-grid is the one owning the nearest segment
of the service area's boundary, distances in metres in the plan's local UTM zone: boundary
segments are projected vertex by vertex (pyproj); a point is projected by bilinear
interpolation of the UTM coordinates of the coarse raster's nodes (error below a millimetre
at 110 m spacing). The bilinear image of a cell, or of any axis-parallel part of it, lies in
the convex hull of the images of its four corners, which is what makes the pruning below
exact.

Every coarse cell that may hold outside points lists the boundary segments that can be
nearest to one of its points, found top-down over a quadtree of the raster (regions of
``2**k`` cells, candidates inherited by the four children and pruned again). A segment ``s``
is dropped from a region when another one, ``t`` (the nearest to the region's centre),
is nearer everywhere in it: distance to a segment is convex, so ``s``'s tangent plane at the
centre is a lower bound of its distance, and ``t``'s distance at the hull's corners bounds
it from above over the hull; the plane exceeding those corner distances (by 0.1 mm) proves
it. Segments whose nearest point is the same vertex over the whole region give bit-identical
distances there: only the lowest unit's is kept. About 2.7 candidates per cell remain; a cell
with more than four is split into up to 4 x 4 sub-cells, pruned the same way. A query is then
a gather and a point-to-segment distance per candidate (two on average), in numpy, grouped by
the number of candidates. Ties go to the lowest unit. Points beyond the raster (another
city, a swapped lng/lat), or in a cell entirely inside a unit (nearest asked for an inside
point), take the exact but slow GEOS nearest-neighbour path.

Single points
-------------
A service answers one point per request, where numpy's per-call overhead (about a
microsecond a call, twenty calls and more per query) outweighs the work.
:meth:`AssignmentIndex.locate_one` and :meth:`AssignmentIndex.nearest_one` walk the same
arrays for one point in plain Python arithmetic: the same IEEE operations in the same order,
so the same answers to the bit (held by the tests against the array path). A point near a
boundary costs one orientation test or a few prepared point-in-polygon tests, an outside
point its raster cell's few candidate segments, a point off the raster one STRtree query:
on a Xiamen plan, 1 µs a point inside, 3 µs near a boundary, 5 µs outside on the raster
and 11 µs off it (nearest grid included), against 20-80 µs through the array path
(``bench/assign_one.py``).

Size and speed (Shenzhen, 31 000 units, 7 900 boundary segments, one core): built in about
6 s, 31 MB of arrays (raster 17 MB, outside lookup 6 MB, node grid 7 MB), loaded in well
under 0.1 s; about 20 M points a second to locate points, about 6 M a second end to end
(ids, statuses, nearest grid and distance) for points of which a quarter fall outside, about
0.2 µs per outside point (see ``bench/assign.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pyproj
import shapely

from territory.atomic import atomic_dir
from territory.crs import local_projected_crs
from territory.errors import InvalidInputError
from territory.plan import Plan
from territory.units import GRID_SIZE_DEG, locate_points

#: Coarse cells are 2**-COARSE_SHIFT degrees; fine pixels down to 2**-(COARSE_SHIFT+FINE_BITS).
COARSE_SHIFT = 10
FINE_BITS = 4
_FINE = 1 << FINE_BITS  # finest pixels per coarse cell side
_PIXEL_MASK = (1 << 29) - 1  # offsets into pixels have 29 bits of a cell's entry
_SCALE = float(1 << (COARSE_SHIFT + FINE_BITS))  # finest pixels per degree
#: Boundaries are rasterised onto pixels grown by this much (in pixel units): far above the
#: floating-point error of the arithmetic, far below any real distance (7 µm at most).
_EPS = 1e-6
#: Fine pixels per block side per cell side of boundary inside the block (see _build):
#: smaller saves memory, larger makes fewer points need an exact point-in-polygon test.
_AMBIGUITY = 1.0
_MARGIN = 2  # coarse cells of margin around the plan's bounds
_OUTSIDE = -1
#: The outside lookup's quadtree starts from about this many regions along the longer side.
_TOP_REGIONS = 16
#: A coarse cell with more nearest-segment candidates than this is split into sub-cells...
_MAX_CANDIDATES = 4
#: ...down to 2**_SUB_BITS sub-cells per side (at most FINE_BITS). Shenzhen: 8 x 8 would save
#: 4 ms per million outside points for 3 MB and 3 s of build.
_SUB_BITS = 2
#: Margin of the pruning bounds (metres): far above their float64 rounding (nanometres), far
#: below any distance that matters; a larger one only keeps a few more candidates.
_PRUNE_SLACK_M = 1e-4
#: Shewchuk's error bound of the orientation determinant, (3 + 16 eps) eps, rounded up.
_ORIENT_BOUND = 3.3306690738754716e-16 * 1.01
_NEAREST_SLICE = 1 << 15
#: Beyond this distance (metres) from the service area the plan's UTM zone is too distorted
#: for distances: they are measured on the ellipsoid instead.
_FAR_M = 1e6  # outside points per slice of the nearest-segment search
FORMAT_VERSION = 4  # 4: a folder of memory-mappable .npy files (3: one .npz)


class IndexFormatError(InvalidInputError):
    """A saved index of another format version: a cache to rebuild, nothing more."""


def index_path(plan_path: str | Path) -> Path:
    """Where the index of a plan file lives: the folder ``<plan>.index`` beside the
    GeoPackage, one ``.npy`` file per array (see :meth:`AssignmentIndex.save`)."""
    plan_path = Path(plan_path)
    return plan_path.with_name(plan_path.name + ".index")


@dataclass(frozen=True)
class _Arrays:
    """Everything the index stores; one field per ``.npy`` file of its folder."""

    meta_f: np.ndarray  # float64: x0, y0
    meta_i: np.ndarray  # int64: format, ncx, ncy, n_units, epsg
    fingerprint: np.ndarray  # str scalar: the plan's fingerprint
    cell_entry: np.ndarray  # int64 (ncy*ncx): offset into palette << 32 | offset into
    #                         pixels << 3 | log2 of the cell's block side (0: one pixel)
    pixels: np.ndarray  # uint8: block pixels, row by row, as positions in the cell's palette
    palette: np.ndarray  # int32: per cell, its codes: unit >= 0, -1 outside, <= -2 ambiguous
    amb_ptr: np.ndarray  # int32 (n_sets+1): CSR into amb_units
    amb_units: np.ndarray  # int32: candidate units per ambiguous set, ascending
    amb_free: np.ndarray  # bool (n_sets): the candidates cover the pixel, the last one
    #                       needs no test
    edge_vertex: np.ndarray  # int32 (n_edges): a pixel that only this edge crosses (codes
    #                          from -2 - n_sets down): position of its first vertex among
    #                          the coordinates of the units' geometries
    edge_units: np.ndarray  # int32 (n_edges, 2): the units on its left and right
    out_code: np.ndarray  # int32 (ncy*ncx): row of the cell's candidates, -1 none,
    #                       <= -2 sub-block
    out_block_row: np.ndarray  # int32 (n_sub_blocks): row of the block's first sub-cell
    out_block_bits: np.ndarray  # int8 (n_sub_blocks): log2 of the sub-block side
    out_ptr: np.ndarray  # int32 (n_rows+1): CSR into out_segs
    out_segs: np.ndarray  # uint16 (int32 beyond 65535 segments): candidate segments per row
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
        self._far: tuple | None = None  # boundary vertices on the unit sphere, lon, lat
        self._utm: pyproj.Transformer | None = None  # made on first use: it costs ~0.3 ms
        self._segs = _Segments(arrays.seg_xy)
        self._seg_unit = arrays.seg_unit.astype(np.int64)
        self._node_x = np.ascontiguousarray(arrays.node_x).ravel()
        self._node_y = np.ascontiguousarray(arrays.node_y).ravel()
        xy = shapely.get_coordinates(self._geoms)  # the plan's, fingerprinted to the bit
        if len(arrays.edge_vertex) and int(arrays.edge_vertex.max()) + 1 >= len(xy):
            raise InvalidInputError("the index does not match the plan's geometries; "
                                    "delete the index folder and rebuild it")
        self._vx, self._vy = np.ascontiguousarray(xy[:, 0]), np.ascontiguousarray(xy[:, 1])
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
        """Write the index as a folder of ``.npy`` files, one per array, atomically (a
        temporary folder renamed into place: readers never see half). An index saved
        there before is replaced; processes that opened it keep reading its files, which
        stay mapped until they close it.

        Plain ``.npy`` files rather than one ``.npz``: :meth:`load` memory-maps them, so
        the service's worker processes share one copy of the arrays in the page cache."""
        path = Path(path)
        with atomic_dir(path, replace=True) as tmp:
            for fl in fields(_Arrays):
                np.save(tmp / f"{fl.name}.npy", getattr(self._a, fl.name), allow_pickle=False)
        return path

    @classmethod
    def load(cls, path: str | Path, plan: Plan) -> AssignmentIndex:
        """Open a saved index for ``plan``; refuses one built for another plan or format.

        The arrays are memory-mapped read-only, not read: opening costs no copy, and every
        process that opens the same index shares its pages."""
        path = Path(path)
        try:
            version = int(np.load(path / "meta_i.npy", allow_pickle=False)[0])
            # plain read-only views of the maps: np.memmap's Python hooks would cost
            # every numpy operation on them a microsecond, a tenth of a single lookup
            arrays = (_Arrays(**{fl.name: np.asarray(np.load(path / f"{fl.name}.npy",
                                                             mmap_mode="r", allow_pickle=False))
                                 for fl in fields(_Arrays)})
                      if version == FORMAT_VERSION else None)
        except FileNotFoundError:
            raise InvalidInputError(f"{path}: no such index folder; build it with "
                                    "AssignmentIndex.build(plan).save(path)") from None
        except (OSError, ValueError, KeyError, IndexError) as exc:
            raise InvalidInputError(
                f"{path}: not a territory assignment index ({exc}); delete it and rebuild"
            ) from None
        if arrays is None:
            raise IndexFormatError(
                f"{path}: index format {version}, this version reads {FORMAT_VERSION}; "
                "delete the file and rebuild the index"
            )
        if str(arrays.fingerprint) != plan.fingerprint:
            raise InvalidInputError(
                f"{path}: the index was built for another plan (fingerprint "
                f"{str(arrays.fingerprint)[:12]}…, plan {plan.fingerprint[:12]}…); delete the "
                "index folder and rebuild it for this plan"
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

    def locate_one(self, lng: float, lat: float) -> int:
        """:meth:`locate` of one WGS84 point, the same answer to the bit, in plain Python
        arithmetic: a service's single lookups. A numpy call on a one-element array costs
        about a microsecond and :meth:`locate` makes twenty; here a point in a pixel no
        boundary crosses is three array reads, one near a boundary one orientation test or
        a few prepared point-in-polygon tests (GEOS, as the array path)."""
        fx = (lng - self._x0) * _SCALE  # the arithmetic of _pixels and _lookup, per point
        fy = (lat - self._y0) * _SCALE
        if not (0 <= fx < self._ncx * _FINE and 0 <= fy < self._ncy * _FINE):
            return _OUTSIDE  # off the raster, or NaN (which fails the test too)
        gx, gy = int(fx), int(fy)
        a = self._a
        entry = a.cell_entry.item((gy >> FINE_BITS) * self._ncx + (gx >> FINE_BITS))
        bits = entry & 7
        shift = FINE_BITS - bits
        pixel = ((((gy & (_FINE - 1)) >> shift) << bits) + ((gx & (_FINE - 1)) >> shift)
                 + ((entry >> 3) & _PIXEL_MASK))
        code = a.palette.item((entry >> 32) + a.pixels.item(pixel))
        return code if code >= _OUTSIDE else self._resolve_one(lng, lat, -code - 2)

    def _resolve_one(self, x: float, y: float, entry: int) -> int:
        """:meth:`_resolve` of one point: the same tests, in the same order."""
        a = self._a
        n_sets = len(a.amb_free)
        if entry >= n_sets:  # one shared edge crosses the pixel: :meth:`_side`
            edge = entry - n_sets
            v = a.edge_vertex.item(edge)
            ax, ay = self._vx.item(v) - x, self._vy.item(v) - y
            bx, by = self._vx.item(v + 1) - x, self._vy.item(v + 1) - y
            ax *= by
            ay *= bx
            det = ax - ay
            left, right = a.edge_units.item(edge, 0), a.edge_units.item(edge, 1)
            if abs(det) > (abs(ax) + abs(ay)) * _ORIENT_BOUND:
                return left if det > 0 else right
            low, high = min(left, right), max(left, right)
            return low if shapely.intersects_xy(self._geoms[low], x, y) else high
        # the candidates, lowest unit first: :meth:`_candidates`
        start, end = a.amb_ptr.item(entry), a.amb_ptr.item(entry + 1)
        for i in range(start, end):
            unit = a.amb_units.item(i)
            if i == end - 1 and a.amb_free.item(entry):
                return unit
            if shapely.intersects_xy(self._geoms[unit], x, y):
                return unit
        return _OUTSIDE

    def nearest_one(self, lng: float, lat: float) -> tuple[int, float]:
        """:meth:`nearest` of one WGS84 point, the same answer to the bit, in plain Python
        arithmetic on the raster's candidates (a few segments); off the raster one GEOS
        nearest-neighbour query, as the array path (beyond :data:`_FAR_M`, the array path
        itself)."""
        fx = (lng - self._x0) * _SCALE
        fy = (lat - self._y0) * _SCALE
        if 0 <= fx < self._ncx * _FINE and 0 <= fy < self._ncy * _FINE:
            gx, gy = int(fx), int(fy)
            cx, cy = gx >> FINE_BITS, gy >> FINE_BITS
            a = self._a
            row = a.out_code.item(cy * self._ncx + cx)
            if row <= -2:  # a split cell: its sub-cell's row (_sub_pixel)
                b = -row - 2
                bits = a.out_block_bits.item(b)
                shift = FINE_BITS - bits
                row = (a.out_block_row.item(b) + (((gy & (_FINE - 1)) >> shift) << bits)
                       + ((gx & (_FINE - 1)) >> shift))
            if row >= 0:
                return self._nearest_row_one(lng, lat, cx, cy, row)
        if not (math.isfinite(lng) and math.isfinite(lat)):
            return -1, math.nan
        return self._nearest_geos_one(lng, lat)

    def _nearest_row_one(self, x: float, y: float, cx: int, cy: int, row: int
                         ) -> tuple[int, float]:
        """:meth:`_nearest_rows` of one point: the nearest of its row's candidates, ties
        to the lowest unit."""
        a = self._a
        tx = (x - self._x0) * (1 << COARSE_SHIFT) - cx  # :meth:`_project`
        ty = (y - self._y0) * (1 << COARSE_SHIFT) - cy
        i00 = cy * (self._ncx + 1) + cx
        i01 = i00 + (self._ncx + 1)
        px, py = (_bilinear(node.item(i00), node.item(i00 + 1), node.item(i01),
                            node.item(i01 + 1), tx, ty)
                  for node in (self._node_x, self._node_y))
        best, unit = math.inf, -1
        for i in range(a.out_ptr.item(row), a.out_ptr.item(row + 1)):
            seg = a.out_segs.item(i)
            d2 = self._segs.d2_one(px, py, seg)
            owner = self._seg_unit.item(seg)
            if d2 < best or (d2 == best and owner < unit):
                best, unit = d2, owner
        return unit, math.sqrt(best)

    def _nearest_geos_one(self, x: float, y: float) -> tuple[int, float]:
        """:meth:`_nearest_geos` of one finite point off the raster."""
        if self._seg_tree is None:
            self._seg_tree = shapely.STRtree(_lines(self._a.seg_xy))
        px, py = self._to_utm().transform(x, y)
        seg, d = self._seg_tree.query_nearest(shapely.Point(px, py), return_distance=True,
                                              all_matches=True)
        if len(seg) and d[0] <= _FAR_M:  # all matches are at the one nearest distance
            return int(self._seg_unit[seg].min()), float(d[0])
        unit, dist = self._nearest_far(np.array([x]), np.array([y]))
        return int(unit[0]), float(dist[0])

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
        return inr, fx.astype(np.int32), fy.astype(np.int32)

    def _lookup(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Unit per point (-1 none) and the mask of points that are on the raster."""
        a = self._a
        inr, gx, gy = self._pixels(x, y)
        entry = a.cell_entry[(gy >> FINE_BITS) * self._ncx + (gx >> FINE_BITS)]
        bits = entry & 7
        shift = FINE_BITS - bits
        lx = (gx & (_FINE - 1)) >> shift
        ly = (gy & (_FINE - 1)) >> shift
        ly <<= bits
        ly += lx
        ly += (entry >> 3) & _PIXEL_MASK
        entry >>= 32
        entry += a.pixels[ly]
        code = a.palette[entry]
        if not inr.all():
            code[~inr] = _OUTSIDE
        code = code.astype(np.int64)
        amb = np.flatnonzero(code <= -2)
        if len(amb):
            code[amb] = self._resolve(x[amb], y[amb], -code[amb] - 2)
        return code, inr

    def _resolve(self, x: np.ndarray, y: np.ndarray, entry: np.ndarray) -> np.ndarray:
        """Owners of points in ambiguous pixels: by the side of the edge for a pixel one
        shared edge crosses, else by point-in-polygon tests among the candidates."""
        n_sets = len(self._a.amb_free)
        split = entry >= n_sets
        if not split.any():
            return self._candidates(x, y, entry)
        out = np.empty(len(x), dtype=np.int64)
        i = np.flatnonzero(split)
        out[i] = self._side(x[i], y[i], entry[i] - n_sets)
        i = np.flatnonzero(~split)
        if len(i):
            out[i] = self._candidates(x[i], y[i], entry[i])
        return out

    def _side(self, x: np.ndarray, y: np.ndarray, edge: np.ndarray) -> np.ndarray:
        """The unit on the side of the edge a point is on, by Shewchuk's orientation test
        with its static error bound (the sign is exact beyond it); a point within the
        bound (on the edge, or nearly) is tested with GEOS."""
        a = self._a
        v = a.edge_vertex[edge]
        ax, ay = self._vx[v], self._vy[v]
        v += 1
        bx, by = self._vx[v], self._vy[v]
        ax -= x
        ay -= y
        bx -= x
        by -= y
        ax *= by  # (a - p) x (b - p): positive when p is on the left of a -> b
        ay *= bx
        det = ax - ay
        bound = np.abs(ax)
        bound += np.abs(ay)
        bound *= _ORIENT_BOUND
        units = a.edge_units[edge]
        out = np.where(det > 0, units[:, 0], units[:, 1]).astype(np.int64)
        unsure = np.flatnonzero(np.abs(det) <= bound)
        if len(unsure):  # the units cover the pixel: the lower owns the point if it covers it
            low, high = units[unsure].min(axis=1), units[unsure].max(axis=1)
            hit = shapely.intersects_xy(self._geoms[low], x[unsure], y[unsure])
            out[unsure] = np.where(hit, low, high)
        return out

    def _candidates(self, x: np.ndarray, y: np.ndarray, entry: np.ndarray) -> np.ndarray:
        """Exact point-in-polygon among each ambiguous pixel's candidates, lowest unit first:
        one round per candidate rank, each round testing only the points still unowned."""
        a = self._a
        start = a.amb_ptr[entry].astype(np.int64)
        left = a.amb_ptr[entry + 1] - start  # candidates left, the current one included
        free = a.amb_free[entry]
        out = np.full(len(x), -1, dtype=np.int64)
        todo = np.arange(len(x))
        while len(todo):
            cand = a.amb_units[start[todo]].astype(np.int64)
            implied = (left[todo] == 1) & free[todo]
            if implied.any():
                out[todo[implied]] = cand[implied]
                todo, cand = todo[~implied], cand[~implied]
            # GEOS is twice as fast when consecutive tests hit the same (prepared) polygon
            order = np.argsort(cand)
            todo, cand = todo[order], cand[order]
            hit = shapely.intersects_xy(self._geoms[cand], x[todo], y[todo])
            out[todo[hit]] = cand[hit]
            todo = todo[~hit & (left[todo] > 1)]
            start[todo] += 1
            left[todo] -= 1
        return out

    def _nearest(
        self, x: np.ndarray, y: np.ndarray, inr: np.ndarray, gx: np.ndarray, gy: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        a = self._a
        unit = np.full(len(x), -1, dtype=np.int64)
        dist = np.full(len(x), np.nan)
        cx, cy = gx >> FINE_BITS, gy >> FINE_BITS
        row = a.out_code[cy * self._ncx + cx].astype(np.int64)
        if not inr.all():
            row[~inr] = -1
        blk = np.flatnonzero(row <= -2)
        if len(blk):
            b = -row[blk] - 2
            row[blk] = _sub_pixel(a.out_block_row, a.out_block_bits, b, gx[blk], gy[blk])
        slow = np.flatnonzero(row < 0)
        # in slices whose temporaries stay in the CPU cache; plain slices when all can
        if len(slow):
            fast = np.flatnonzero(row >= 0)
            slices = (fast[lo:lo + _NEAREST_SLICE] for lo in range(0, len(fast), _NEAREST_SLICE))
        else:
            slices = (slice(lo, lo + _NEAREST_SLICE) for lo in range(0, len(x), _NEAREST_SLICE))
        for sl in slices:
            unit[sl], dist[sl] = self._nearest_rows(x[sl], y[sl], cx[sl], cy[sl], row[sl])
        slow = slow[np.isfinite(x[slow]) & np.isfinite(y[slow])]
        if len(slow):
            unit[slow], dist[slow] = self._nearest_geos(x[slow], y[slow])
        return unit, dist

    def _nearest_rows(self, x: np.ndarray, y: np.ndarray, cx: np.ndarray, cy: np.ndarray,
                      row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Nearest boundary segment among each point's candidates (row of out_ptr): points
        grouped by their number of candidates, each group one dense (points x candidates)
        computation."""
        a = self._a
        px, py = self._project(x, y, cx, cy)
        start = a.out_ptr[row]
        count = (a.out_ptr[row + 1] - start).astype(np.uint16)  # radix-sorted
        unit = np.empty(len(x), dtype=np.int64)
        best = np.empty(len(x))
        order = np.argsort(count, kind="stable")
        edges = np.cumsum(np.bincount(count))
        for c in range(1, len(edges)):
            sel = order[edges[c - 1]:edges[c]]
            if not len(sel):
                continue
            if c == 1:
                seg = a.out_segs[start[sel]].astype(np.intp)
                best[sel] = self._segs.d2(px[sel], py[sel], seg)
                unit[sel] = self._seg_unit[seg]
                continue
            seg = a.out_segs[start[sel][:, None] + np.arange(c)].astype(np.intp)
            d2 = self._segs.d2(px[sel][:, None], py[sel][:, None], seg)
            low = d2.min(axis=1)
            best[sel] = low
            owner = np.where(d2 == low[:, None], self._seg_unit[seg], np.iinfo(np.int64).max)
            unit[sel] = owner.min(axis=1)  # ties: the lowest unit
        return unit, np.sqrt(best)

    def _project(self, x: np.ndarray, y: np.ndarray, cx: np.ndarray, cy: np.ndarray
                 ) -> list[np.ndarray]:
        """UTM of points by bilinear interpolation between their coarse cell's nodes."""
        tx = (x - self._x0) * (1 << COARSE_SHIFT) - cx
        ty = (y - self._y0) * (1 << COARSE_SHIFT) - cy
        i00 = cy * (self._ncx + 1) + cx  # flat indices: much faster than 2-d fancy indexing
        i01 = i00 + (self._ncx + 1)
        return [_bilinear(node[i00], node[i00 + 1], node[i01], node[i01 + 1], tx, ty)
                for node in (self._node_x, self._node_y)]

    def _to_utm(self) -> pyproj.Transformer:
        """WGS84 → the plan's UTM zone, made once per index rather than per query (a
        single lookup off the raster spent most of its time making it)."""
        if self._utm is None:
            self._utm = _transformer(self.crs)
        return self._utm

    def _nearest_geos(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact nearest boundary segment through GEOS: for points off the raster only."""
        a = self._a
        if self._seg_tree is None:
            self._seg_tree = shapely.STRtree(_lines(a.seg_xy))
        px, py = self._to_utm().transform(x, y)
        pts = shapely.points(np.asarray(px), np.asarray(py))
        (pt, seg), d = self._seg_tree.query_nearest(pts, return_distance=True, all_matches=True)
        order = np.lexsort((a.seg_unit[seg], pt))
        pt, seg, d = pt[order], seg[order], d[order]
        first = np.r_[True, pt[1:] != pt[:-1]][:len(pt)]
        unit = np.full(len(x), -1, dtype=np.int64)
        dist = np.full(len(x), np.nan)
        unit[pt[first]] = a.seg_unit[seg[first]]
        dist[pt[first]] = d[first]
        # beyond the local projection's reach (inf, or distorted past use)
        far = np.flatnonzero((unit < 0) | ~(dist <= _FAR_M))
        if len(far):
            unit[far], dist[far] = self._nearest_far(x[far], y[far])
        return unit, dist

    def _nearest_far(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For points too far for the plan's UTM zone (another continent): the unit of the
        boundary vertex nearest on the ellipsoid's great circles (a chord on the unit
        sphere orders them the same) and the geodesic distance to it; a boundary segment is
        metres long, the distance thousands of kilometres."""
        if self._far is None:  # made on first use: rare, and ~0.7 ms to make
            from scipy.spatial import cKDTree  # not imported by every batch run

            a = self._a
            lon, lat = self._to_utm().transform(a.seg_xy[:, 0], a.seg_xy[:, 1],
                                                direction="INVERSE")
            self._far = cKDTree(_unit_sphere(lon, lat)), lon, lat
        tree, lon, lat = self._far
        near = tree.query(_unit_sphere(x, y))[1]
        _, _, metres = pyproj.Geod(ellps="WGS84").inv(x, y, lon[near], lat[near])
        return self._seg_unit[near], np.asarray(metres, dtype=np.float64)


# -------------------------------------------------------------------------------------------
# Query helpers
# -------------------------------------------------------------------------------------------


def _sub_pixel(block_start: np.ndarray, block_bits: np.ndarray, b: np.ndarray,
               gx: np.ndarray, gy: np.ndarray) -> np.ndarray:
    """Position of finest pixel (gx, gy) within block b: blocks of 2**bits pixels a side
    laid out row by row from block_start."""
    bits = block_bits[b].astype(np.int64)
    shift = FINE_BITS - bits
    lx = (gx & (_FINE - 1)) >> shift
    ly = (gy & (_FINE - 1)) >> shift
    return block_start[b] + (ly << bits) + lx


def _bilinear(v00, v10, v01, v11, tx, ty):
    return (v00 * (1 - tx) + v10 * tx) * (1 - ty) + (v01 * (1 - tx) + v11 * tx) * ty


def _lines(seg_xy: np.ndarray) -> np.ndarray:
    return shapely.linestrings(np.stack([seg_xy[:, :2], seg_xy[:, 2:]], axis=1))


class _Segments:
    """Segments (rows ax, ay, bx, by) as separate contiguous arrays for fast gathers."""

    def __init__(self, xy: np.ndarray) -> None:
        self.ax, self.ay, self.bx, self.by = (np.ascontiguousarray(xy[:, i]) for i in range(4))
        self.dx, self.dy = self.bx - self.ax, self.by - self.ay
        len2 = self.dx * self.dx + self.dy * self.dy
        self.len2 = len2
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

    def d2_one(self, px: float, py: float, seg: int) -> float:
        """:meth:`d2` of one point and one segment, the same operations in the same order
        on Python floats (the same IEEE doubles): the same bits."""
        dx, dy = self.dx.item(seg), self.dy.item(seg)
        ex = px - self.ax.item(seg)
        ey = py - self.ay.item(seg)
        t = min(max((ex * dx + ey * dy) * self.inv.item(seg), 0.0), 1.0)
        if t >= 1.0:
            dx, dy = self.bx.item(seg) - px, self.by.item(seg) - py
        else:
            dx, dy = t * dx - ex, t * dy - ey
        return dx * dx + dy * dy

    def d2(self, px: np.ndarray, py: np.ndarray, seg: np.ndarray) -> np.ndarray:
        """Squared distance from each point to segment ``seg[i]`` (broadcast). As in
        :meth:`nearest_point`, an end vertex is taken as stored, so segments sharing a vertex
        give bit-identical distances to it."""
        dx, dy = self.dx[seg], self.dy[seg]
        ex = px - self.ax[seg]
        ey = py - self.ay[seg]
        t = ex * dx
        t += ey * dy
        t *= self.inv[seg]
        np.clip(t, 0.0, 1.0, out=t)
        dx = t * dx  # the nearest point minus the point: t d - (p - a), or b - p at t = 1
        dx -= ex
        dy = t * dy
        dy -= ey
        end = t >= 1.0
        if end.any():
            np.copyto(dx, self.bx[seg] - px, where=end)
            np.copyto(dy, self.by[seg] - py, where=end)
        dx *= dx
        dy *= dy
        dx += dy
        return dx


def _unit_sphere(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    lon, lat = np.radians(lon), np.radians(lat)
    return np.column_stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)])


def _transformer(crs: pyproj.CRS) -> pyproj.Transformer:
    return pyproj.Transformer.from_crs("EPSG:4326", crs, always_xy=True)


# -------------------------------------------------------------------------------------------
# Construction
# -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Rings:
    """Every ring segment of every unit (rows of ``seg``: ax, ay, bx, by)."""

    seg: np.ndarray
    unit: np.ndarray  # the unit whose ring it is
    vertex: np.ndarray  # position of a in shapely.get_coordinates(unit geometries)
    left: np.ndarray  # the unit's interior is on the left of a → b
    edge: np.ndarray  # id of the edge, whichever way round (coordinates to the bit)
    #: on the service area's boundary, comparing coordinates on the 1e-8° grid the units
    #: were snapped to (for the nearest-segment search) and to the bit (for ownership)
    boundary: np.ndarray
    exact_boundary: np.ndarray


def _segments(geoms: np.ndarray) -> _Rings:
    """The ring segments of the units, and which are on the service area's boundary.

    An edge is inside the service area when it occurs exactly twice, with its unit's interior
    on one side once and on the other side once; any other edge is boundary, the safe side
    for both uses. Snapping leaves some shared vertices one ulp apart: the exact comparison
    counts those edges as boundary, since a point may (in theory) fall between them."""
    parts, part_of = shapely.get_parts(geoms, return_index=True)
    rings, ring_of = shapely.get_rings(parts, return_index=True)
    xy, ring = shapely.get_coordinates(rings, return_index=True)
    # the interior is on the left of an edge of a counter-clockwise shell or clockwise hole
    exterior = np.r_[True, ring_of[1:] != ring_of[:-1]]
    cross = xy[:-1, 0] * xy[1:, 1] - xy[1:, 0] * xy[:-1, 1]
    same = ring[1:] == ring[:-1]
    area = np.bincount(ring[:-1][same], weights=cross[same], minlength=len(rings))
    left = (area > 0) == exterior
    vertex = np.flatnonzero(same)
    vertex = vertex[(xy[vertex] != xy[vertex + 1]).any(axis=1)]
    seg = np.hstack([xy[vertex], xy[vertex + 1]])
    seg_ring = ring[vertex]
    left = left[seg_ring]
    unit = part_of[ring_of[seg_ring]].astype(np.int64)
    grid = np.round(seg / GRID_SIZE_DEG).astype(np.int64)
    interior, _ = _interior(grid, left)
    exact_interior, edge = _interior(seg, left, unit)
    return _Rings(seg=seg, unit=unit, vertex=vertex, left=left, edge=edge,
                  boundary=~interior, exact_boundary=~exact_interior)


def _interior(seg: np.ndarray, left: np.ndarray, unit: np.ndarray | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
    """Which edges (ax, ay, bx, by) occur twice, with ``left`` (interior on the left) once
    each way round, and (given ``unit``) in two units; and an id per edge, whichever way
    round. On the grid, slits one ulp wide into a unit count as interior (as they are for
    distances); to the bit, only an invalid geometry could repeat an edge in one unit."""
    a_first = (seg[:, 0] < seg[:, 2]) | ((seg[:, 0] == seg[:, 2]) & (seg[:, 1] <= seg[:, 3]))
    edge = np.where(a_first[:, None], seg, seg[:, [2, 3, 0, 1]])
    left = left == a_first  # interior on the left of the edge taken in its sorted direction
    inv = _row_ids(edge)
    once_each = (np.bincount(inv, weights=left) == 1) & (np.bincount(inv, weights=~left) == 1)
    if unit is not None:
        some_unit = np.zeros(len(once_each), dtype=np.int64)
        some_unit[inv] = unit
        once_each &= np.bincount(inv, weights=unit) != 2 * some_unit
    return once_each[inv], inv


def _row_ids(rows: np.ndarray) -> np.ndarray:
    """Number the distinct rows of a 2-d array (like np.unique(axis=0), three times faster)."""
    order = np.lexsort(rows.T[::-1])
    ordered = rows[order]
    new = np.r_[True, (ordered[1:] != ordered[:-1]).any(axis=1)]
    ids = np.empty(len(rows), dtype=np.int64)
    ids[order] = np.cumsum(new) - 1
    return ids


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
    from scipy import ndimage  # building only: a loaded index never needs it

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


def _distinct_lists(ptr: np.ndarray, values: np.ndarray, flag: np.ndarray, base: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Number each CSR list (with its flag) by its distinct content: returns the list id of
    every list and the position of one representative list per id. ``0 <= values < base``.

    Lists are packed exactly into int64 words (as many values per word as fit) and sorted."""
    n = len(ptr) - 1
    length = np.diff(ptr)
    bits = int(base).bit_length()
    per = max(1, 62 // bits)
    row = np.repeat(np.arange(n), length)
    pos = np.arange(len(values)) - np.repeat(ptr[:-1], length)
    words = np.zeros((-(-int(length.max(initial=1)) // per), n), dtype=np.int64)
    for k in range(per):
        sel = np.flatnonzero(pos % per == k)
        words[pos[sel] // per, row[sel]] |= (values[sel].astype(np.int64) + 1) << (bits * k)
    keys = np.vstack([words, length, flag.astype(np.int64)])
    order = np.lexsort(keys[::-1])
    ks = keys[:, order]
    new = np.r_[True, (ks[:, 1:] != ks[:, :-1]).any(axis=0)]
    ids = np.empty(n, dtype=np.int64)
    ids[order] = np.cumsum(new) - 1
    return ids, order[new]


def _split_pixels(rings: _Rings, pix: np.ndarray, seg: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pixels (pix[i] is touched by segment seg[i]) that exactly one edge touches, an edge
    shared by two units, one on each side (to the bit); the entry of each (its edge's rank
    among those) and the edges."""
    n_edge = int(rings.edge.max()) + 1
    key = np.sort(pix * n_edge + rings.edge[seg])
    key = key[np.r_[True, key[1:] != key[:-1]]]
    p, e = key // n_edge, key % n_edge
    alone = np.r_[True, p[1:] != p[:-1]] & np.r_[p[1:] != p[:-1], True]
    shared = np.zeros(n_edge, dtype=bool)
    shared[rings.edge[~rings.exact_boundary]] = True
    p, e = p[alone], e[alone]
    p, e = p[shared[e]], e[shared[e]]
    edges, entry = np.unique(e, return_inverse=True)
    return p, entry.ravel(), edges


def _edge_table(rings: _Rings, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For shared edges: the position of one occurrence's first vertex among the units'
    coordinates, and the units (n, 2) on the left and on the right of that occurrence."""
    order = np.argsort(rings.edge, kind="stable")
    at = np.searchsorted(rings.edge[order], edges)
    one, other = order[at], order[at + 1]  # a shared edge occurs exactly twice
    on_left = rings.left[one]
    units = np.column_stack([np.where(on_left, rings.unit[one], rings.unit[other]),
                             np.where(on_left, rings.unit[other], rings.unit[one])])
    return rings.vertex[one], units


def _palettes(fine: np.ndarray, size: np.ndarray, bits: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Codes of every cell's pixels (``fine``: cell after cell, ``size`` pixels each) as a
    palette per cell (its distinct codes) and a byte per pixel (a block has at most 256).
    One-pixel cells share a single zero byte. Returns cell_entry, pixels, palette."""
    cell = np.repeat(np.arange(len(size)), size)
    low = int(fine.min())
    span = int(fine.max()) - low + 1
    key = cell * span + (fine - low)
    order = np.argsort(key)
    ordered = key[order]
    new = np.r_[True, ordered[1:] != ordered[:-1]]
    inv = np.empty(len(key), dtype=np.int64)
    inv[order] = np.cumsum(new) - 1
    key = ordered[new]
    palette = (key % span + low).astype(np.int32)
    pal_start = np.searchsorted(key // span, np.arange(len(size)))
    index = (inv - pal_start[cell]).astype(np.uint8)
    block = size[cell] > 1
    pixels = np.r_[np.zeros(1, dtype=np.uint8), index[block]]
    pix_start = np.zeros(len(size), dtype=np.int64)
    big = size > 1
    pix_start[big] = 1 + np.r_[0, np.cumsum(size[big])[:-1]]
    if len(pixels) > _PIXEL_MASK or len(palette) >= 1 << 31:
        raise InvalidInputError("plan too large for an assignment index")
    return (pal_start.astype(np.int64) << 32) | (pix_start << 3) | bits, pixels, palette


def _build(plan: Plan) -> _Arrays:
    units = plan.units
    if units.crs is None or units.crs.to_epsg() != 4326:
        raise InvalidInputError(f"plan units must be in EPSG:4326, got {units.crs}")
    geoms = np.asarray(units.geometry.values, dtype=object)
    rings = _segments(geoms)
    seg, seg_unit, boundary = rings.seg, rings.unit, rings.boundary
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
    # cells that may hold outside points: outside ones and those the boundary touches
    need = (coarse == _OUTSIDE) & ~marked
    need[cell[boundary[k]]] = True

    # blocks: B about _AMBIGUITY x the boundary length inside the cell (in cell sides), a
    # power of two in 4..16: a line of length l makes ~1.3 l / B of a block's pixels
    # ambiguous, so the share stays bounded where units are small, and a cell one edge cuts
    # costs 4 x 4 pixels, not 16 x 16 (Shenzhen: 5.7 M block pixels, 21 % ambiguous)
    blocks = np.flatnonzero(marked)
    block_of = np.full(ncx * ncy, -1, dtype=np.int64)
    block_of[blocks] = np.arange(len(blocks))
    seg_len = np.hypot(g[:, 2] - g[:, 0], g[:, 3] - g[:, 1]) / _FINE  # in cell sides
    length = np.bincount(block_of[cell], weights=np.minimum(seg_len[k], 1.5),
                         minlength=len(blocks))
    bits = np.clip(np.ceil(np.log2(np.maximum(_AMBIGUITY * length, 1.0))), 2, FINE_BITS
                   ).astype(np.int8)
    side = 1 << bits.astype(np.int64)
    # every cell has an entry in fine, in cell order: one pixel, or its block's pixels
    size = np.ones(ncx * ncy, dtype=np.int64)
    size[blocks] = side * side
    cell_start = np.cumsum(size) - size
    block_start = cell_start[blocks]

    # fine pixels each segment touches within each block it crosses
    bk = block_of[cell]
    local = (g[k] - np.column_stack([ci, cj, ci, cj]) * _FINE) * (side[bk] / _FINE)[:, None]
    r, fi, fj = _touched(local, side[bk], side[bk])
    pix = block_start[bk[r]] + fj * side[bk[r]] + fi
    fine = np.empty(int(size.sum()), dtype=np.int64)
    fine[cell_start[~marked]] = coarse[~marked]
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

    # ambiguous pixels that one edge shared by two units crosses: that edge, resolved by the
    # side of it a point is on
    n_units = len(units)
    split_pix, split_entry, split_edges = _split_pixels(rings, pix, k[r])
    edge_vertex, edge_units = _edge_table(rings, split_edges)
    single = np.zeros(len(fine), dtype=bool)
    single[split_pix] = True
    # other ambiguous pixels: their candidate units, ascending, and whether the service
    # area's boundary stays clear of them (then the candidates cover the pixel); distinct
    # sets once
    multi = ~single[pix]
    key = np.sort(pix[multi] * n_units + seg_unit[k[r[multi]]])
    key = key[np.r_[True, key[1:] != key[:-1]]]
    amb_pix, pix_units = key // n_units, key % n_units
    new = np.r_[True, amb_pix[1:] != amb_pix[:-1]]
    pix_ptr = np.r_[np.flatnonzero(new), len(key)]
    amb_pix = amb_pix[new]
    near_boundary = np.zeros(len(fine), dtype=bool)
    near_boundary[pix[rings.exact_boundary[k[r]]]] = True
    pix_free = ~near_boundary[amb_pix]
    set_of, rep = _distinct_lists(pix_ptr, pix_units, pix_free, n_units)
    count = np.diff(pix_ptr)[rep]
    amb_ptr = np.r_[0, np.cumsum(count)]
    amb_units = pix_units[_expand(pix_ptr[rep], pix_ptr[rep] + count - 1)[1]]
    fine[amb_pix] = -2 - set_of
    fine[split_pix] = -2 - len(rep) - split_entry
    cell_bits = np.zeros(ncx * ncy, dtype=np.int64)
    cell_bits[blocks] = bits
    cell_entry, pixels, palette = _palettes(fine, size, cell_bits)

    out = _outside_lookup(units, seg[boundary], seg_unit[boundary], x0, y0, ncx, ncy, need)
    return _Arrays(
        meta_f=np.array([x0, y0]),
        meta_i=np.array([FORMAT_VERSION, ncx, ncy, n_units, out["epsg"]], dtype=np.int64),
        fingerprint=np.array(plan.fingerprint),
        cell_entry=cell_entry, pixels=pixels, palette=palette, amb_ptr=amb_ptr.astype(np.int32),
        amb_units=amb_units.astype(np.int32), amb_free=pix_free[rep],
        edge_vertex=edge_vertex.astype(np.int32), edge_units=edge_units.astype(np.int32),
        out_code=out["code"], out_block_row=out["block_row"],
        out_block_bits=out["block_bits"], out_ptr=out["ptr"], out_segs=out["segs"],
        seg_xy=out["seg_xy"], seg_unit=out["seg_unit"].astype(np.int32),
        node_x=out["node_x"], node_y=out["node_y"],
    )


class _Pruner:
    """Drops the boundary segments that cannot be nearest to any point of a region.

    A region is given by four corners (metres) whose convex hull holds the projection of
    every point of it; regions come with candidate pairs (region, segment) grouped by
    region, every region with at least one."""

    def __init__(self, seg_xy: np.ndarray, seg_unit: np.ndarray) -> None:
        self.segs = _Segments(seg_xy)
        self.unit = seg_unit
        n = len(seg_xy)
        vertex = _row_ids(np.concatenate([seg_xy[:, :2], seg_xy[:, 2:]]))
        self.va, self.vb = vertex[:n], vertex[n:]

    def __call__(self, corners: np.ndarray, rid: np.ndarray, sid: np.ndarray) -> np.ndarray:
        """Mask of the pairs to keep."""
        segs, slack = self.segs, _PRUNE_SLACK_M
        centre = corners.mean(axis=1)
        radius = np.sqrt(((corners - centre[:, None, :]) ** 2).sum(axis=2).max(axis=1))
        px, py = centre[rid, 0], centre[rid, 1]
        qx, qy = segs.nearest_point(px, py, sid)
        ex, ey = px - qx, py - qy
        d0 = np.hypot(ex, ey)
        gx = np.divide(ex, d0, out=np.zeros_like(d0), where=d0 > 0)
        gy = np.divide(ey, d0, out=np.zeros_like(d0), where=d0 > 0)
        cx, cy = corners[:, :, 0][rid], corners[:, :, 1][rid]  # (pairs, 4)
        # tangent plane of the distance to each segment at the centre: a lower bound
        plane = gx[:, None] * (cx - qx[:, None]) + gy[:, None] * (cy - qy[:, None])
        # the dominating segment: nearest to the centre, its distance at the corners
        starts = np.flatnonzero(np.r_[True, rid[1:] != rid[:-1]])
        nearest = np.minimum.reduceat(d0, starts)
        at_min = np.flatnonzero(d0 == nearest[rid])
        dom = sid[at_min[np.r_[True, rid[at_min][1:] != rid[at_min][:-1]]]]
        dd = np.sqrt(np.stack([segs.d2(corners[:, m, 0], corners[:, m, 1], dom)
                               for m in range(4)], axis=1))
        lower = np.maximum(d0 - radius[rid], plane.min(axis=1))
        keep = lower <= dd.max(axis=1)[rid] + slack
        keep &= ~(plane > dd[rid] + slack).all(axis=1)
        # segments whose nearest point is one of their ends all over the region: all the
        # segments ending at that vertex give the same distances; keep the lowest unit's
        kept = np.flatnonzero(keep)
        s = sid[kept]
        dx, dy = segs.dx[s][:, None], segs.dy[s][:, None]
        along = (cx[kept] - segs.ax[s][:, None]) * dx + (cy[kept] - segs.ay[s][:, None]) * dy
        at_a = (along <= 0).all(axis=1)
        at_b = (along >= segs.len2[s][:, None]).all(axis=1) & ~at_a
        end = np.flatnonzero(at_a | at_b)
        if len(end):
            s = s[end]
            vertex = np.where(at_a[end], self.va[s], self.vb[s])
            region = rid[kept[end]]
            o = np.lexsort((s, self.unit[s], vertex, region))
            region, vertex = region[o], vertex[o]
            dup = np.r_[False, (region[1:] == region[:-1]) & (vertex[1:] == vertex[:-1])]
            keep[kept[end[o[dup]]]] = False
        return keep


def _inherit(count: np.ndarray, sid: np.ndarray, parent: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray]:
    """Candidate pairs of new regions, region i taking the list of old region parent[i]
    (old pairs grouped by region, ``count`` per region)."""
    start = np.r_[0, np.cumsum(count)[:-1]][parent]
    rid, pos = _expand(start, start + count[parent] - 1)
    return rid, sid[pos]


def _quad(nx: np.ndarray, ny: np.ndarray, ci: np.ndarray, cj: np.ndarray, n: int,
          si: np.ndarray, sj: np.ndarray) -> np.ndarray:
    """Corners (k, 4, 2) of the bilinear images of sub-cells (si, sj) of n x n in cells
    (ci, cj), from the node grid."""
    i00 = cj * nx.shape[1] + ci
    i01 = i00 + nx.shape[1]
    out = []
    for di, dj in ((0, 0), (1, 0), (1, 1), (0, 1)):
        tx, ty = (si + di) / n, (sj + dj) / n
        out.append(np.stack([_bilinear(v[i00], v[i00 + 1], v[i01], v[i01 + 1], tx, ty)
                             for v in (nx.ravel(), ny.ravel())], axis=-1))
    return np.stack(out, axis=1)


def _box_corners(box: np.ndarray) -> np.ndarray:
    """(4, k) xmin, ymin, xmax, ymax → corners (k, 4, 2)."""
    x0, y0, x1, y1 = box
    return np.stack([np.stack(p, axis=-1) for p in ((x0, y0), (x1, y0), (x1, y1), (x0, y1))],
                    axis=1)


def _outside_lookup(units, seg, seg_unit, x0, y0, ncx, ncy, need) -> dict:
    """The nearest-segment candidates of every coarse cell that may hold outside points
    (``need``), split into sub-cells where there are many (see the module docstring)."""
    b = units.total_bounds
    crs = local_projected_crs([b[0], b[2]], [b[1], b[3]])
    tr = _transformer(crs)
    c = 1 << COARSE_SHIFT
    nx_, ny_ = np.meshgrid(x0 + np.arange(ncx + 1) / c, y0 + np.arange(ncy + 1) / c)
    node_x, node_y = (np.asarray(v).reshape(nx_.shape) for v in tr.transform(nx_, ny_))
    ax, ay = tr.transform(seg[:, 0], seg[:, 1])
    bx, by = tr.transform(seg[:, 2], seg[:, 3])
    seg_xy = np.column_stack([ax, ay, bx, by])
    prune = _Pruner(seg_xy, seg_unit)

    # quadtree levels over the raster padded to a multiple of the top regions' size
    top = max(0, int(np.ceil(np.log2(max(ncx, ncy) / _TOP_REGIONS))))
    wide, high = -(-ncx >> top) << top, -(-ncy >> top) << top
    needs = [np.zeros((high, wide), dtype=bool)]
    needs[0][:ncy, :ncx] = need.reshape(ncy, ncx)
    box = np.empty((4, high, wide))
    box[:2], box[2:] = np.inf, -np.inf
    corner_x = [node_x[j:j + ncy, i:i + ncx] for i in (0, 1) for j in (0, 1)]
    corner_y = [node_y[j:j + ncy, i:i + ncx] for i in (0, 1) for j in (0, 1)]
    box[:, :ncy, :ncx] = [np.minimum.reduce(corner_x), np.minimum.reduce(corner_y),
                          np.maximum.reduce(corner_x), np.maximum.reduce(corner_y)]
    boxes = [box]
    for _ in range(top):
        h, w = needs[-1].shape[0] // 2, needs[-1].shape[1] // 2
        needs.append(needs[-1].reshape(h, 2, w, 2).any(axis=(1, 3)))
        q = boxes[-1].reshape(4, h, 2, w, 2)
        boxes.append(np.concatenate([q[:2].min(axis=(2, 4)), q[2:].max(axis=(2, 4))]))

    # top regions: every segment within reach of the one nearest to the centre
    regions = np.flatnonzero(needs[top].ravel())
    bb = boxes[top].reshape(4, -1)[:, regions]
    corners = _box_corners(bb)
    tree = shapely.STRtree(_lines(seg_xy))
    qi, qs = tree.query_nearest(shapely.points(corners.mean(axis=1)), all_matches=False)
    near = np.empty(len(regions), dtype=np.int64)
    near[qi] = qs
    reach = np.sqrt(np.max([prune.segs.d2(corners[:, m, 0], corners[:, m, 1], near)
                            for m in range(4)], axis=0))
    rid, sid = tree.query(shapely.box(*bb), predicate="dwithin", distance=reach * 1.001 + 1)
    order = np.lexsort((sid, rid))
    rid, sid = rid[order], sid[order]
    for level in range(top, -1, -1):
        w = wide >> level
        ci, cj = regions % w, regions // w
        if level:  # a region's bounding box of nodes holds its cells' quadrilaterals
            corners = _box_corners(boxes[level].reshape(4, -1)[:, regions])
        else:
            corners = _quad(node_x, node_y, ci, cj, 1, 0, 0)
        keep = prune(corners, rid, sid)
        rid, sid = rid[keep], sid[keep]
        count = np.bincount(rid, minlength=len(regions))
        if level == 0:
            break
        child = np.stack([(2 * cj + dj) * (2 * w) + 2 * ci + di
                          for dj in (0, 1) for di in (0, 1)], axis=1)
        ok = needs[level - 1].ravel()[child]
        parent = np.repeat(np.arange(len(regions)), 4)[ok.ravel()]
        regions = child[ok]
        rid, sid = _inherit(count, sid, parent)
    cells = (regions // wide) * ncx + regions % wide
    ci, cj = cells % ncx, cells // ncx

    # rows: one per leaf (cell, or sub-cell of a split cell), pairs (row, segment)
    leaf = np.flatnonzero(count <= _MAX_CANDIDATES)
    code = np.full(ncx * ncy, -1, dtype=np.int64)
    code[cells[leaf]] = np.arange(len(leaf))
    lrid, lsid = _inherit(count, sid, leaf)
    rows, segs, n_rows = [lrid], [lsid], len(leaf)
    block_row, block_bits, n_blocks = [], [], 0
    split = np.flatnonzero(count > _MAX_CANDIDATES)
    # sub-cells being split: their cell, position, candidates
    owner, si, sj = split, np.zeros(len(split), np.int64), np.zeros(len(split), np.int64)
    rid, sid = _inherit(count, sid, split)
    count = count[split]
    for depth in range(1, _SUB_BITS + 1):
        if not len(owner):
            break
        parent = np.repeat(np.arange(len(owner)), 4)
        owner = owner[parent]
        si = 2 * si[parent] + np.tile([0, 1, 0, 1], len(parent) // 4)
        sj = 2 * sj[parent] + np.tile([0, 0, 1, 1], len(parent) // 4)
        rid, sid = _inherit(count, sid, parent)
        keep = prune(_quad(node_x, node_y, ci[owner], cj[owner], 1 << depth, si, sj), rid, sid)
        rid, sid = rid[keep], sid[keep]
        count = np.bincount(rid, minlength=len(owner))
        most = np.zeros(len(cells), dtype=np.int64)
        np.maximum.at(most, owner, count)
        done = (most[owner] <= _MAX_CANDIDATES) | (depth == _SUB_BITS)
        # cells done at this depth: a block of 2**depth x 2**depth rows
        fin = np.flatnonzero(done)
        fin_cells, first = np.unique(owner[fin], return_inverse=True)
        side = 1 << depth
        base = n_rows + np.arange(len(fin_cells)) * side * side
        code[cells[fin_cells]] = -2 - (n_blocks + np.arange(len(fin_cells)))
        n_blocks += len(fin_cells)
        block_row += [base]
        block_bits += [np.full(len(fin_cells), depth, dtype=np.int8)]
        row_of = base[first.ravel()] + sj[fin] * side + si[fin]
        frid, fsid = _inherit(count, sid, fin)
        rows.append(row_of[frid])
        segs.append(fsid)
        n_rows += len(fin_cells) * side * side
        more = np.flatnonzero(~done)
        rid, sid = _inherit(count, sid, more)
        owner, si, sj, count = owner[more], si[more], sj[more], count[more]
    rows, segs = np.concatenate(rows), np.concatenate(segs)
    order = np.argsort(rows, kind="stable")
    ptr = np.r_[0, np.cumsum(np.bincount(rows, minlength=n_rows))]
    block_row = np.concatenate(block_row) if n_blocks else np.zeros(0, np.int64)
    block_bits = np.concatenate(block_bits) if n_blocks else np.zeros(0, np.int8)
    return {"epsg": crs.to_epsg(), "node_x": node_x, "node_y": node_y, "seg_xy": seg_xy,
            "seg_unit": seg_unit, "code": code.astype(np.int32),
            "block_row": block_row.astype(np.int32), "block_bits": block_bits,
            "ptr": ptr.astype(np.int32),
            "segs": segs[order].astype(np.uint16 if len(seg_xy) <= 1 << 16 else np.int32)}
