"""Coordinate systems used in China, and conversions between them.

Customer locations and boundary layers reach the engine in several systems:

* ``wgs84`` (EPSG:4326): GPS, and what the engine works in internally.
* ``cgcs2000`` (EPSG:4490): the official Chinese datum. It is within centimetres of WGS84, far
  below the precision of any grid plan, so it is treated as identical to WGS84.
* ``gcj02``: the offset system published by AMap/Gaode and Tencent maps. It is WGS84 distorted
  by a public obfuscation formula; the shift is several hundred metres.
* ``bd09``: Baidu's system, offset again from GCJ-02.
* any ``EPSG:N`` code that pyproj knows (e.g. EPSG:4547, CGCS2000 3-degree Gauss-Kruger).

GCJ-02 and BD-09 have no EPSG code. Files and GeoDataFrames holding them carry the EPSG:4326
label (axis order lon/lat, degrees) because that is what their numbers look like; the label is
wrong about the datum, so the source system must always be given explicitly to the functions
here. Points outside the GCJ-02 bounding box of China are returned unchanged by every GCJ-02
and BD-09 conversion, as the map providers do not offset them.

All conversions are vectorised with numpy (no Python loop over points) so that millions of
customer coordinates convert in seconds. NaN coordinates pass through as NaN: callers flag
invalid rows themselves rather than lose a whole batch to one exception.

Areas and distances are never computed in degrees: use :func:`local_projected_crs` to get the
UTM zone of the data and project into it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np
import pyproj
import shapely
from numpy.typing import ArrayLike, NDArray

from territory.errors import InvalidInputError

if TYPE_CHECKING:
    import geopandas

__all__ = [
    "CRS_NAMES",
    "bd09_to_gcj02",
    "bd09_to_wgs84",
    "convert",
    "from_wgs84",
    "frame_crs",
    "gcj02_to_bd09",
    "gcj02_to_wgs84",
    "local_projected_crs",
    "normalize_crs",
    "to_crs_frame",
    "to_wgs84",
    "transform_geometries",
    "wgs84_to_bd09",
    "wgs84_to_gcj02",
]

FloatArray = NDArray[np.float64]

CRS_NAMES: tuple[str, ...] = ("wgs84", "cgcs2000", "gcj02", "bd09")
"""Canonical names of the named systems; any ``EPSG:N`` known to pyproj is accepted too."""

# Krasovsky 1940 ellipsoid, as used by the public GCJ-02 formula.
_A = 6378245.0
_EE = 0.00669342162296594323
# BD-09 rotation constant.
_X_PI = np.pi * 3000.0 / 180.0

# The GCJ-02 "out of China" box of the public formula (a rectangle, not the border).
_LNG_MIN, _LNG_MAX = 72.004, 137.8347
_LAT_MIN, _LAT_MAX = 0.8293, 55.8271

# Fixed-point inversion of the forward offsets.
_INVERSE_TOLERANCE_DEG = 1e-7
_INVERSE_MAX_ITERATIONS = 10

# Points per chunk in the vectorised formulas, and the thread cap (see _map_chunks).
_CHUNK = 1 << 17
_MAX_WORKERS = 8

_ALIASES: dict[str, str] = {
    "wgs84": "wgs84",
    "wgs-84": "wgs84",
    "wgs_84": "wgs84",
    "wgs 84": "wgs84",
    "epsg:4326": "wgs84",
    "crs84": "wgs84",
    "ogc:crs84": "wgs84",
    "urn:ogc:def:crs:ogc:1.3:crs84": "wgs84",
    "cgcs2000": "cgcs2000",
    "cgcs-2000": "cgcs2000",
    "cgcs_2000": "cgcs2000",
    "epsg:4490": "cgcs2000",
    "gcj02": "gcj02",
    "gcj-02": "gcj02",
    "gcj_02": "gcj02",
    "bd09": "bd09",
    "bd-09": "bd09",
    "bd_09": "bd09",
    "bd09ll": "bd09",
}

_EPSG_RE = re.compile(r"^epsg:\s*(\d+)$")

# Geographic CRS the GeoDataFrame of each named system is labelled with (see module docstring).
_FRAME_EPSG: dict[str, str] = {
    "wgs84": "EPSG:4326",
    "gcj02": "EPSG:4326",
    "bd09": "EPSG:4326",
    "cgcs2000": "EPSG:4490",
}


def _allowed_message() -> str:
    return ", ".join(repr(n) for n in CRS_NAMES) + ", or 'EPSG:<code>' known to pyproj"


def normalize_crs(name: str | None) -> str:
    """Return the canonical name of a coordinate system.

    Accepts the names in :data:`CRS_NAMES` and their common spellings, case-insensitively
    ("WGS84", "wgs-84", "EPSG:4326" -> "wgs84"; "EPSG:4490" -> "cgcs2000"; "GCJ-02" -> "gcj02";
    "BD-09" -> "bd09"), and any other ``EPSG:N`` that pyproj knows, returned as ``"EPSG:N"``.
    One canonical spelling lets callers compare systems with ``==`` and pick a conversion path.

    Raises:
        InvalidInputError: the name is missing (None: a system is never assumed) or not
            recognised; the message lists the allowed values.
    """
    if name is None:
        raise InvalidInputError(f"crs is required: name the system of the coordinates "
                                f"({_allowed_message()}); it is never assumed")
    if not isinstance(name, str):
        raise InvalidInputError(
            f"crs must be a string such as 'wgs84' or 'EPSG:4547', got {type(name).__name__} "
            f"{name!r}; allowed: {_allowed_message()}"
        )
    key = name.strip().lower()
    if key in _ALIASES:
        return _ALIASES[key]
    match = _EPSG_RE.match(key)
    if match:
        code = int(match.group(1))
        try:
            pyproj.CRS.from_user_input(f"EPSG:{code}")
        except pyproj.exceptions.CRSError as exc:
            raise InvalidInputError(
                f"crs {name!r} is not an EPSG code pyproj knows ({exc}); "
                f"use one of {_allowed_message()}"
            ) from exc
        return f"EPSG:{code}"
    raise InvalidInputError(f"crs {name!r} is not recognised; use one of {_allowed_message()}")


def frame_crs(crs: str) -> str:
    """The CRS label a GeoDataFrame holding coordinates in ``crs`` carries.

    GCJ-02 and BD-09 have no EPSG code; their frames are labelled EPSG:4326 (lon/lat degrees),
    which is right about the axes and wrong about the datum.
    """
    canonical = normalize_crs(crs)
    return _FRAME_EPSG.get(canonical, canonical)


# --------------------------------------------------------------------------------------------
# Array helpers
# --------------------------------------------------------------------------------------------


def _as_arrays(lng: ArrayLike, lat: ArrayLike) -> tuple[FloatArray, FloatArray]:
    """Coerce to float64 arrays of one shape (None becomes NaN); NaN in either makes both NaN."""
    try:
        x = np.asarray(lng, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(
            f"lng must be numbers (array-like of float); could not convert: {exc}"
        ) from exc
    try:
        y = np.asarray(lat, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(
            f"lat must be numbers (array-like of float); could not convert: {exc}"
        ) from exc
    if x.shape != y.shape:
        raise InvalidInputError(
            f"lng and lat must have the same shape, got {x.shape} and {y.shape}; "
            "pass one longitude per latitude"
        )
    # A point with one NaN coordinate is invalid as a whole: make both NaN so no caller can
    # mistake an unconverted half for a converted one.
    half = np.isnan(x) != np.isnan(y)
    if half.any():
        x = np.where(half, np.nan, x)
        y = np.where(half, np.nan, y)
    return x, y


def _map_chunks(
    func: Callable[[FloatArray, FloatArray], tuple[FloatArray, FloatArray]],
    lng: FloatArray,
    lat: FloatArray,
) -> tuple[FloatArray, FloatArray]:
    """Apply an element-wise conversion over chunks of the flattened inputs, in threads.

    Chunks keep the formula's many temporaries small enough to stay in cache (one 10-million
    point pass allocates dozens of 80 MB arrays otherwise), and numpy releases the GIL inside
    ufuncs, so a thread pool uses every core. Output has the shape of the input.
    """
    shape = lng.shape
    flat_x = lng.ravel()
    flat_y = lat.ravel()
    n = flat_x.size
    if n <= _CHUNK:
        ox, oy = func(flat_x, flat_y)
        return ox.reshape(shape), oy.reshape(shape)
    out_x = np.empty(n, dtype=np.float64)
    out_y = np.empty(n, dtype=np.float64)

    def work(start: int) -> None:
        stop = min(start + _CHUNK, n)
        out_x[start:stop], out_y[start:stop] = func(flat_x[start:stop], flat_y[start:stop])

    workers = max(1, min(_MAX_WORKERS, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        # list() re-raises any exception from a worker.
        list(pool.map(work, range(0, n, _CHUNK)))
    return out_x.reshape(shape), out_y.reshape(shape)


def _in_china(lng: FloatArray, lat: FloatArray) -> NDArray[np.bool_]:
    """True inside the GCJ-02 box; False outside it and for NaN (so NaN passes unchanged)."""
    return (lng >= _LNG_MIN) & (lng <= _LNG_MAX) & (lat >= _LAT_MIN) & (lat <= _LAT_MAX)


def _gcj02_offset(lng: FloatArray, lat: FloatArray) -> tuple[FloatArray, FloatArray]:
    """The public GCJ-02 forward offset (degrees) at WGS84 points, no China test applied.

    This is the hot loop (the inverse calls it three times per point), so it computes the
    textbook formula with 8 trigonometric calls instead of 12, using exact identities:
    sin(3t) = sin t (3 - 4 sin^2 t), cos(3t) = cos t (4 cos^2 t - 3), sin(2t) = 2 sin t cos t,
    and cos(lat) = sqrt(1 - sin^2 lat) (|lat| < 90). The rounding difference from the
    textbook form is ~1e-15 degrees; tests check it against a literal transcription.
    """
    pi = np.pi
    x = lng - 105.0
    y = lat - 35.0

    # sin(x pi), sin(2 x pi), sin(6 x pi) from sin/cos(x pi / 3).
    a = x * (pi / 3.0)
    sin_x3 = np.sin(a)
    cos_x3 = np.cos(a)
    sin_x = sin_x3 * (3.0 - 4.0 * sin_x3 * sin_x3)
    cos_x = cos_x3 * (4.0 * cos_x3 * cos_x3 - 3.0)
    sin_2x = 2.0 * sin_x * cos_x
    sin_6x = sin_2x * (3.0 - 4.0 * sin_2x * sin_2x)
    # sin(y pi) from sin(y pi / 3).
    sin_y3 = np.sin(y * (pi / 3.0))
    sin_y = sin_y3 * (3.0 - 4.0 * sin_y3 * sin_y3)

    common = 20.0 * sin_6x + 20.0 * sin_2x
    xy01 = 0.1 * x * y
    sqrt_abs_x = np.sqrt(np.abs(x))

    dlat = -100.0 + 2.0 * x + 3.0 * y + 0.2 * y * y + xy01 + 0.2 * sqrt_abs_x
    terms = common + 20.0 * sin_y
    terms += 40.0 * sin_y3
    terms += 160.0 * np.sin(y * (pi / 12.0))
    terms += 320.0 * np.sin(y * (pi / 30.0))
    dlat += terms * (2.0 / 3.0)

    dlng = 300.0 + x + 2.0 * y + 0.1 * x * x + xy01 + 0.1 * sqrt_abs_x
    terms = common + 20.0 * sin_x
    terms += 40.0 * sin_x3
    terms += 150.0 * np.sin(x * (pi / 12.0))
    terms += 300.0 * np.sin(x * (pi / 30.0))
    dlng += terms * (2.0 / 3.0)

    sin_lat = np.sin(lat * (pi / 180.0))
    sin2_lat = sin_lat * sin_lat
    magic = 1.0 - _EE * sin2_lat
    sqrt_magic = np.sqrt(magic)
    cos_lat = np.sqrt(1.0 - sin2_lat)
    dlat *= 180.0
    dlat /= (_A * (1.0 - _EE)) / (magic * sqrt_magic) * pi
    dlng *= 180.0
    dlng /= _A / sqrt_magic * cos_lat * pi
    return dlng, dlat


def _invert(
    forward: Callable[[FloatArray, FloatArray], tuple[FloatArray, FloatArray]],
    target_lng: FloatArray,
    target_lat: FloatArray,
    start: tuple[FloatArray, FloatArray],
) -> tuple[FloatArray, FloatArray]:
    """Solve ``forward(p) == target`` by fixed-point iteration ``p -= forward(p) - target``.

    The offsets vary slowly (their derivative is ~1e-3), so the error shrinks about a
    thousand-fold per step; 2-3 steps reach 1e-7 degrees (1 cm). Only the points that have
    not converged are iterated again, which keeps the cost down for big batches.
    """
    lng, lat = start[0].copy(), start[1].copy()
    active = np.flatnonzero(np.isfinite(lng) & np.isfinite(lat))
    for _ in range(_INVERSE_MAX_ITERATIONS):
        if active.size == 0:
            break
        fx, fy = forward(lng[active], lat[active])
        rx = fx - target_lng[active]
        ry = fy - target_lat[active]
        lng[active] -= rx
        lat[active] -= ry
        keep = (np.abs(rx) >= _INVERSE_TOLERANCE_DEG) | (np.abs(ry) >= _INVERSE_TOLERANCE_DEG)
        active = active[keep]
    return lng, lat


# --------------------------------------------------------------------------------------------
# GCJ-02 / BD-09 formulas
# --------------------------------------------------------------------------------------------


def _wgs84_to_gcj02_raw(lng: FloatArray, lat: FloatArray) -> tuple[FloatArray, FloatArray]:
    inside = _in_china(lng, lat)
    out_lng = lng.copy()
    out_lat = lat.copy()
    if inside.all():
        dlng, dlat = _gcj02_offset(lng, lat)
        out_lng += dlng
        out_lat += dlat
    elif inside.any():
        dlng, dlat = _gcj02_offset(lng[inside], lat[inside])
        out_lng[inside] += dlng
        out_lat[inside] += dlat
    return out_lng, out_lat


def _gcj02_forward(lng: FloatArray, lat: FloatArray) -> tuple[FloatArray, FloatArray]:
    dlng, dlat = _gcj02_offset(lng, lat)
    return lng + dlng, lat + dlat


def _gcj02_to_wgs84_raw(lng: FloatArray, lat: FloatArray) -> tuple[FloatArray, FloatArray]:
    out_lng = lng.copy()
    out_lat = lat.copy()
    inside = _in_china(lng, lat)
    if inside.any():
        gx, gy = lng[inside], lat[inside]
        out_lng[inside], out_lat[inside] = _invert(_gcj02_forward, gx, gy, (gx, gy))
    return out_lng, out_lat


def _gcj02_to_bd09_formula(lng: FloatArray, lat: FloatArray) -> tuple[FloatArray, FloatArray]:
    z = np.hypot(lng, lat) + 0.00002 * np.sin(lat * _X_PI)
    theta = np.arctan2(lat, lng) + 0.000003 * np.cos(lng * _X_PI)
    return z * np.cos(theta) + 0.0065, z * np.sin(theta) + 0.006


def _bd09_to_gcj02_formula(lng: FloatArray, lat: FloatArray) -> tuple[FloatArray, FloatArray]:
    x = lng - 0.0065
    y = lat - 0.006
    z = np.hypot(x, y) - 0.00002 * np.sin(y * _X_PI)
    theta = np.arctan2(y, x) - 0.000003 * np.cos(x * _X_PI)
    return z * np.cos(theta), z * np.sin(theta)


def _gcj02_to_bd09_raw(lng: FloatArray, lat: FloatArray) -> tuple[FloatArray, FloatArray]:
    out_lng = lng.copy()
    out_lat = lat.copy()
    inside = _in_china(lng, lat)
    if inside.any():
        out_lng[inside], out_lat[inside] = _gcj02_to_bd09_formula(lng[inside], lat[inside])
    return out_lng, out_lat


def _bd09_to_gcj02_raw(lng: FloatArray, lat: FloatArray) -> tuple[FloatArray, FloatArray]:
    out_lng = lng.copy()
    out_lat = lat.copy()
    inside = _in_china(lng, lat)
    if inside.any():
        bx, by = lng[inside], lat[inside]
        start = _bd09_to_gcj02_formula(bx, by)
        out_lng[inside], out_lat[inside] = _invert(_gcj02_to_bd09_formula, bx, by, start)
    return out_lng, out_lat


def _wgs84_to_bd09_raw(lng: FloatArray, lat: FloatArray) -> tuple[FloatArray, FloatArray]:
    return _gcj02_to_bd09_raw(*_wgs84_to_gcj02_raw(lng, lat))


def _bd09_to_wgs84_raw(lng: FloatArray, lat: FloatArray) -> tuple[FloatArray, FloatArray]:
    return _gcj02_to_wgs84_raw(*_bd09_to_gcj02_raw(lng, lat))


def wgs84_to_gcj02(lng: ArrayLike, lat: ArrayLike) -> tuple[FloatArray, FloatArray]:
    """WGS84 -> GCJ-02 by the public forward formula (Krasovsky ellipsoid).

    Points outside the China box are returned unchanged; NaN stays NaN.
    """
    return _map_chunks(_wgs84_to_gcj02_raw, *_as_arrays(lng, lat))


def gcj02_to_wgs84(lng: ArrayLike, lat: ArrayLike) -> tuple[FloatArray, FloatArray]:
    """GCJ-02 -> WGS84, inverting the forward formula by fixed-point iteration.

    The common one-step inverse ("subtract the offset computed at the GCJ point") is off by
    up to ~5 m; iterating until the forward residual is below 1e-7 degrees (about 1 cm)
    makes the round trip exact for planning purposes (3 steps in practice). Points outside
    the China box are returned unchanged; NaN stays NaN.
    """
    return _map_chunks(_gcj02_to_wgs84_raw, *_as_arrays(lng, lat))


def gcj02_to_bd09(lng: ArrayLike, lat: ArrayLike) -> tuple[FloatArray, FloatArray]:
    """GCJ-02 -> BD-09 by Baidu's public formula (x_pi = pi * 3000 / 180).

    Points outside the China box are returned unchanged; NaN stays NaN.
    """
    return _map_chunks(_gcj02_to_bd09_raw, *_as_arrays(lng, lat))


def bd09_to_gcj02(lng: ArrayLike, lat: ArrayLike) -> tuple[FloatArray, FloatArray]:
    """BD-09 -> GCJ-02: the public closed-form inverse, refined by fixed-point iteration.

    The closed form is only approximate (errors up to ~1e-6 degrees, 10 cm); refinement
    against the forward formula makes ``bd09_to_gcj02(gcj02_to_bd09(p)) == p`` to 1e-7
    degrees. Points outside the China box are returned unchanged; NaN stays NaN.
    """
    return _map_chunks(_bd09_to_gcj02_raw, *_as_arrays(lng, lat))


def wgs84_to_bd09(lng: ArrayLike, lat: ArrayLike) -> tuple[FloatArray, FloatArray]:
    """WGS84 -> BD-09 (through GCJ-02)."""
    return _map_chunks(_wgs84_to_bd09_raw, *_as_arrays(lng, lat))


def bd09_to_wgs84(lng: ArrayLike, lat: ArrayLike) -> tuple[FloatArray, FloatArray]:
    """BD-09 -> WGS84 (through GCJ-02)."""
    return _map_chunks(_bd09_to_wgs84_raw, *_as_arrays(lng, lat))


# --------------------------------------------------------------------------------------------
# Generic conversions
# --------------------------------------------------------------------------------------------


@lru_cache(maxsize=64)
def _transformer(src: str, dst: str) -> pyproj.Transformer:
    # always_xy: lon/lat (easting/northing) order whatever the CRS's declared axis order.
    return pyproj.Transformer.from_crs(src, dst, always_xy=True)


def _pyproj_transform(
    x: FloatArray, y: FloatArray, src: str, dst: str
) -> tuple[FloatArray, FloatArray]:
    ox, oy = _transformer(src, dst).transform(x, y, errcheck=False)
    ox = np.asarray(ox, dtype=np.float64).reshape(x.shape)
    oy = np.asarray(oy, dtype=np.float64).reshape(y.shape)
    # pyproj reports failed points as inf; the contract here is NaN for invalid rows.
    bad = ~(np.isfinite(ox) & np.isfinite(oy))
    if bad.any():
        ox = np.where(bad, np.nan, ox)
        oy = np.where(bad, np.nan, oy)
    return ox, oy


def to_wgs84(lng: ArrayLike, lat: ArrayLike, crs: str) -> tuple[FloatArray, FloatArray]:
    """Convert coordinates from ``crs`` to WGS84 lon/lat.

    ``crs`` is any name accepted by :func:`normalize_crs`. For a projected ``EPSG:N`` the
    inputs are easting/northing (metres), in that order. CGCS2000 is returned as is (within
    centimetres of WGS84). NaN, and points pyproj cannot transform, come back as NaN.
    """
    src = normalize_crs(crs)
    x, y = _as_arrays(lng, lat)
    if src in ("wgs84", "cgcs2000"):
        return x.copy(), y.copy()
    if src == "gcj02":
        return gcj02_to_wgs84(x, y)
    if src == "bd09":
        return bd09_to_wgs84(x, y)
    return _pyproj_transform(x, y, src, "EPSG:4326")


def from_wgs84(lng: ArrayLike, lat: ArrayLike, crs: str) -> tuple[FloatArray, FloatArray]:
    """Convert WGS84 lon/lat to ``crs`` (the reverse of :func:`to_wgs84`)."""
    dst = normalize_crs(crs)
    x, y = _as_arrays(lng, lat)
    if dst in ("wgs84", "cgcs2000"):
        return x.copy(), y.copy()
    if dst == "gcj02":
        return wgs84_to_gcj02(x, y)
    if dst == "bd09":
        return wgs84_to_bd09(x, y)
    return _pyproj_transform(x, y, "EPSG:4326", dst)


def convert(lng: ArrayLike, lat: ArrayLike, src: str, dst: str) -> tuple[FloatArray, FloatArray]:
    """Convert coordinates from ``src`` to ``dst`` (any names :func:`normalize_crs` accepts).

    Takes the direct path where there is one (GCJ-02 <-> BD-09, EPSG -> EPSG) rather than
    going through WGS84, so no precision is lost to an unnecessary inversion.
    """
    s = normalize_crs(src)
    d = normalize_crs(dst)
    x, y = _as_arrays(lng, lat)
    geographic_wgs = ("wgs84", "cgcs2000")
    if s == d or (s in geographic_wgs and d in geographic_wgs):
        return x.copy(), y.copy()
    if s == "gcj02" and d == "bd09":
        return gcj02_to_bd09(x, y)
    if s == "bd09" and d == "gcj02":
        return bd09_to_gcj02(x, y)
    if s.startswith("EPSG:") and d.startswith("EPSG:"):
        return _pyproj_transform(x, y, s, d)
    return from_wgs84(*to_wgs84(x, y, s), d)


def transform_geometries(
    geoms: shapely.Geometry | NDArray[np.object_] | geopandas.GeoSeries, src: str, dst: str
) -> shapely.Geometry | NDArray[np.object_] | geopandas.GeoSeries:
    """Convert geometries (points, lines, polygons) from ``src`` to ``dst``.

    ``geoms`` is a shapely geometry, an array of them, or a GeoSeries; the result has the same
    kind (a GeoSeries keeps its index and gets the CRS label of ``dst``, see
    :func:`frame_crs`). All vertices of all geometries are converted in one vectorised call
    through :func:`shapely.transform`. The result is 2D: boundaries and customer locations
    carry no elevation. A conversion can in principle make a polygon invalid (it moves every
    vertex a slightly different amount); callers that need validity check it afterwards.
    """
    s = normalize_crs(src)
    d = normalize_crs(dst)

    def _func(coords: FloatArray) -> FloatArray:
        ox, oy = convert(coords[:, 0], coords[:, 1], s, d)
        return np.column_stack([ox, oy])

    import geopandas  # imported here so that point conversions do not pay for it

    if isinstance(geoms, geopandas.GeoSeries):
        values = shapely.transform(np.asarray(geoms.values, dtype=object), _func)
        return geopandas.GeoSeries(values, index=geoms.index, crs=frame_crs(d), name=geoms.name)
    return shapely.transform(geoms, _func)


def to_crs_frame(gdf: geopandas.GeoDataFrame, src: str, dst: str) -> geopandas.GeoDataFrame:
    """Return a copy of ``gdf`` with its active geometry converted from ``src`` to ``dst``.

    ``src`` is required: a GCJ-02 or BD-09 frame is labelled EPSG:4326 like a WGS84 one, so the
    label cannot tell them apart. The result's CRS label is :func:`frame_crs` of ``dst``
    (EPSG:4326 for wgs84/gcj02/bd09, EPSG:4490 for cgcs2000, the code itself for EPSG:N).
    """
    out = gdf.copy()
    geom_col = out.geometry.name
    converted = transform_geometries(out.geometry, src, dst)
    out[geom_col] = converted
    return out.set_geometry(geom_col, crs=frame_crs(dst))


def local_projected_crs(lng: ArrayLike, lat: ArrayLike) -> pyproj.CRS:
    """The WGS84 / UTM zone (EPSG:326xx north, 327xx south) at the centre of the coordinates.

    Areas and distances are computed in metres in this CRS, never in degrees: a degree of
    longitude is 111 km at the equator and 92 km in Beijing. The centre is the middle of the
    bounding box of the finite WGS84 coordinates given; a city fits well inside one zone (the
    scale error at 3 degrees from the central meridian is 0.1%). The Norway/Svalbard zone
    exceptions are ignored.

    Raises:
        InvalidInputError: no finite coordinate, or the centre is not a valid lon/lat.
    """
    x, y = _as_arrays(lng, lat)
    finite = np.isfinite(x) & np.isfinite(y)
    if not finite.any():
        raise InvalidInputError(
            "lng/lat contain no finite coordinate; pass at least one valid WGS84 lon/lat to "
            "choose the projected CRS"
        )
    xf, yf = x[finite], y[finite]
    c_lng = (float(xf.min()) + float(xf.max())) / 2.0
    c_lat = (float(yf.min()) + float(yf.max())) / 2.0
    if not (-180.0 <= c_lng <= 180.0 and -90.0 <= c_lat <= 90.0):
        raise InvalidInputError(
            f"centre ({c_lng:.6f}, {c_lat:.6f}) is not a WGS84 lon/lat; convert the coordinates "
            "to WGS84 (to_wgs84) before choosing the projected CRS"
        )
    zone = min(int((c_lng + 180.0) // 6.0) + 1, 60)
    epsg = (32600 if c_lat >= 0.0 else 32700) + zone
    return pyproj.CRS.from_epsg(epsg)
