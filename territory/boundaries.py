"""Administrative boundaries: the shipped demo cities and a planner's own polygon layers.

Everything returned here is in WGS84 lon/lat (EPSG:4326) unless asked otherwise, with valid
polygonal geometries, because every later step (H3 cells, areas in a local UTM zone, customer
assignment) assumes exactly that. Boundary files from Chinese web maps are usually GCJ-02
while labelled as EPSG:4326, so the source system can always be overridden with ``crs=``.

The shipped districts (``data/boundaries/``, see its SOURCE.md) are stored as distributed, in
GCJ-02, and converted at load time by :func:`territory.crs.gcj02_to_wgs84`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import geopandas
import numpy as np
import pandas as pd
import pyogrio
import pyogrio.errors
import pyproj
import shapely
from numpy.typing import NDArray

from territory.crs import frame_crs, normalize_crs, to_crs_frame
from territory.errors import InvalidInputError

__all__ = ["CITIES", "DATA_DIR", "load_city", "read_boundaries", "repair_polygons"]

DATA_DIR: Path = Path(__file__).resolve().parent.parent / "data" / "boundaries"
"""Directory of the shipped boundary files (the repository's ``data/boundaries``)."""

CITIES: tuple[str, ...] = ("shenzhen", "xiamen")
"""Cities whose district boundaries ship with the project."""

_CITY_ALIASES: dict[str, str] = {
    "shenzhen": "shenzhen",
    "深圳": "shenzhen",
    "深圳市": "shenzhen",
    "xiamen": "xiamen",
    "厦门": "xiamen",
    "厦门市": "xiamen",
}

_CITY_COLUMNS = ["adcode", "name", "city", "province"]

# Shapely type ids.
_POLYGON = 3
_MULTIPOLYGON = 6

# How many offending rows an error message lists before "and N more".
_MAX_LISTED = 10

# Read errors that mean "this is not a readable vector file".
_READ_ERRORS = (
    pyogrio.errors.DataSourceError,
    pyogrio.errors.DataLayerError,
    OSError,
    UnicodeDecodeError,
)


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _list_ids(ids: Sequence[object]) -> str:
    shown = [i.item() if isinstance(i, np.generic) else i for i in ids[:_MAX_LISTED]]
    text = repr(shown)
    if len(ids) > _MAX_LISTED:
        text += f" and {len(ids) - _MAX_LISTED} more"
    return text


def _reason(exc: BaseException) -> str:
    """The first sentence of a GDAL error, without GDAL's advice about driver prefixes."""
    text = str(exc).split("; It might help", 1)[0].strip()
    return text.rstrip(".")


def _layer_text(layer: str | int | None) -> str:
    return "" if layer is None else f" (layer {layer!r})"


def repair_polygons(geoms: NDArray[np.object_] | Sequence[object]) -> NDArray[np.object_]:
    """Make polygons valid, keeping only polygonal parts: a bow-tie becomes two triangles.

    GEOS' "structure" repair (:func:`shapely.make_valid`) rebuilds areas from the rings and,
    with ``keep_collapsed=False``, drops parts that collapse to lines or points (they have no
    area and would break every later area and overlay step). A geometry with no area left
    becomes an empty Polygon (the caller decides whether that is an error).
    """
    return shapely.make_valid(np.asarray(geoms, dtype=object), method="structure",
                              keep_collapsed=False)


def _normalize_city(city: str) -> str:
    key = city.strip().lower() if isinstance(city, str) else None
    if key not in _CITY_ALIASES:
        raise InvalidInputError(
            f"city {city!r} is not shipped; use one of {list(CITIES)}, or load your own "
            "boundary file with read_boundaries(path)"
        )
    return _CITY_ALIASES[key]


# --------------------------------------------------------------------------------------------
# Shipped cities
# --------------------------------------------------------------------------------------------


def load_city(city: str, crs: str = "wgs84") -> geopandas.GeoDataFrame:
    """Load the shipped district boundaries of ``city`` (one of :data:`CITIES`).

    The file is stored in GCJ-02 as distributed and converted here to ``crs`` (default WGS84;
    any name :func:`territory.crs.normalize_crs` accepts). Columns: ``adcode`` (national
    division code, str), ``name``, ``city``, ``province``, ``geometry``. The CRS label is
    EPSG:4326 for wgs84/gcj02/bd09 (see :func:`territory.crs.frame_crs`). Geometries are valid.

    These are demo/test boundaries, not authoritative ones (see data/boundaries/SOURCE.md).

    Raises:
        InvalidInputError: unknown city (the message lists :data:`CITIES`) or unknown ``crs``.
    """
    key = _normalize_city(city)
    dst = normalize_crs(crs)
    path = DATA_DIR / f"{key}_districts_gcj02.geojson"
    if not path.is_file():
        raise InvalidInputError(
            f"shipped boundary file {path} is missing; reinstall territory from a source "
            "checkout that contains data/boundaries"
        )
    gdf = pyogrio.read_dataframe(path)
    gdf = gdf[[*_CITY_COLUMNS, gdf.geometry.name]]
    gdf["adcode"] = gdf["adcode"].astype(str)
    out = to_crs_frame(gdf, "gcj02", dst)
    geoms = np.asarray(out.geometry.values, dtype=object)
    invalid = ~shapely.is_valid(geoms)
    if invalid.any():
        geoms = geoms.copy()
        geoms[invalid] = repair_polygons(geoms[invalid])
        out = out.set_geometry(
            geopandas.GeoSeries(geoms, index=out.index, crs=frame_crs(dst)), crs=frame_crs(dst)
        )
    return out.reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# A planner's own boundary file
# --------------------------------------------------------------------------------------------


def _choose_layer(path: Path, layer: str | int | None) -> str | int | None:
    """Pick the layer to read; refuse to guess between several spatial layers."""
    try:
        layers = pyogrio.list_layers(path)
    except _READ_ERRORS as exc:
        raise InvalidInputError(
            f"boundary file {path} could not be read as a vector file (GeoPackage, GeoJSON, "
            f"Shapefile): {_reason(exc)}; check the `path` points to a valid, complete file"
        ) from exc
    names = [str(row[0]) for row in layers]
    spatial = [str(row[0]) for row in layers if row[1] is not None]
    if layer is None:
        if len(spatial) > 1:
            raise InvalidInputError(
                f"boundary file {path} has {len(spatial)} spatial layers {spatial}; "
                "pass `layer` with the one holding the boundary polygons"
            )
        return spatial[0] if spatial else None
    if isinstance(layer, str) and layer not in names:
        raise InvalidInputError(
            f"layer {layer!r} is not in boundary file {path}; pass `layer` as one of {names}"
        )
    if isinstance(layer, int) and not 0 <= layer < len(names):
        raise InvalidInputError(
            f"layer index {layer} is out of range for boundary file {path} which has "
            f"{len(names)} layers {names}; pass `layer` as one of them"
        )
    return layer


_GEOJSON_SUFFIXES = (".geojson", ".json")
_CRS_FIX = ("pass `crs` with the system its coordinates are really in (e.g. 'wgs84', 'gcj02', "
            "'cgcs2000' or 'EPSG:4547')")


def _check_geojson_crs_label(path: Path, read_as: pyproj.CRS | None) -> None:
    """Refuse a GeoJSON ``crs`` member that names no known system, or another one than the
    file was read in (``read_as``).

    GDAL reads such a file as WGS84 without a word (RFC 7946's default), so a projected or
    local file with a typo in its label would land on the wrong side of the globe.
    """
    try:
        with open(path, "rb") as f:
            member = json.load(f).get("crs")
    except (ValueError, AttributeError):
        return  # not a JSON object: pyogrio has read it, so it is another format
    if member is None:
        return
    props = member.get("properties") if isinstance(member, dict) else None
    label = (props or {}).get("name") or (props or {}).get("code")
    if isinstance(label, int) or (isinstance(member, dict) and member.get("type") == "EPSG"):
        label = f"EPSG:{label}"
    declared = json.dumps(member, ensure_ascii=False)[:200]
    try:
        crs = pyproj.CRS.from_user_input(label)
    except (pyproj.exceptions.CRSError, TypeError):
        raise InvalidInputError(
            f"boundary file {path} declares the coordinate system {declared}, which is not "
            f"one pyproj knows (it would be read as WGS84); fix the label or {_CRS_FIX}"
        ) from None
    if read_as is None or not crs.equals(read_as, ignore_axis_order=True):
        raise InvalidInputError(
            f"boundary file {path} declares the coordinate system {declared} but reads as "
            f"{read_as.to_string() if read_as else 'none'}; {_CRS_FIX}"
        )


def _to_wgs84_without_epsg(gdf: geopandas.GeoDataFrame, path: Path) -> geopandas.GeoDataFrame:
    """Convert a layer whose CRS has no EPSG code (an ESRI .prj); refuse local systems."""
    crs = gdf.crs
    if not (crs.is_geographic or crs.is_projected):
        raise InvalidInputError(
            f"boundary file {path} is in {crs.name!r}, a local ({crs.type_name}) coordinate "
            f"system with no known relation to the Earth; {_CRS_FIX}"
        )
    try:
        return gdf.to_crs("EPSG:4326")
    except (pyproj.exceptions.ProjError, pyproj.exceptions.CRSError) as exc:
        raise InvalidInputError(
            f"boundary file {path} is in {crs.name!r}, which cannot be converted to WGS84 "
            f"({exc}); {_CRS_FIX}"
        ) from None


def _row_labels(gdf: pd.DataFrame, id_column: str | None) -> tuple[str, NDArray[np.object_]]:
    if id_column is None:
        return "rows", np.arange(len(gdf), dtype=object)
    return f"rows with {id_column}", gdf[id_column].to_numpy(dtype=object)


def read_boundaries(
    path: str | os.PathLike[str],
    crs: str | None = None,
    layer: str | int | None = None,
    id_column: str | None = None,
    repair: bool = False,
) -> geopandas.GeoDataFrame:
    """Read a planner's polygon layer (GeoPackage, GeoJSON, Shapefile, ...) into WGS84.

    Args:
        path: the file (read with pyogrio, so any OGR vector format works).
        crs: the system the coordinates are in (any name
            :func:`territory.crs.normalize_crs` accepts: "wgs84", "cgcs2000", "gcj02", "bd09",
            "EPSG:N"). It overrides the file's declared CRS, which is needed for GCJ-02/BD-09
            data: such files (every GeoJSON in particular) are labelled EPSG:4326. When not
            given, the file's declared CRS is used; a file without one is refused.
        layer: layer name or index, required when the file has several spatial layers.
        id_column: column identifying each polygon; must be non-null and unique. Error
            messages name rows by it (by 0-based row position when not given).
        repair: make invalid polygons valid (:func:`repair_polygons`) instead of refusing them.

    Returns:
        A GeoDataFrame with the file's attribute columns and ``geometry`` (Polygon or
        MultiPolygon, 2D, valid), CRS EPSG:4326, index 0..n-1.

    Raises:
        InvalidInputError: missing, empty, unreadable or malformed file; no or unknown CRS;
            missing or duplicate ids; rows with missing, empty, non-polygonal or (unless
            ``repair``) invalid geometries; coordinates that are not lon/lat after conversion
            (a wrong ``crs``). Each message names the rows and the fix.
    """
    path = Path(path)
    if not path.exists():
        raise InvalidInputError(f"boundary file {path} does not exist; check the `path`")
    if path.is_file() and path.stat().st_size == 0:
        raise InvalidInputError(
            f"boundary file {path} is empty (0 bytes); export the boundary layer again"
        )
    src = normalize_crs(crs) if crs is not None else None
    chosen = _choose_layer(path, layer)
    try:
        gdf = pyogrio.read_dataframe(path, layer=chosen)
    except _READ_ERRORS as exc:
        raise InvalidInputError(
            f"boundary file {path} could not be read: {_reason(exc)}; check the `path` points to a "
            "valid, complete vector file (GeoPackage, GeoJSON, Shapefile)"
        ) from exc
    if not isinstance(gdf, geopandas.GeoDataFrame):
        raise InvalidInputError(
            f"boundary file {path}{_layer_text(chosen)} has no geometry column; pass the file "
            "or `layer` that holds the boundary polygons"
        )
    if len(gdf) == 0:
        raise InvalidInputError(
            f"boundary file {path}{_layer_text(chosen)} has no features; export the boundary "
            "polygons into it, or pass the right `layer`"
        )
    gdf = gdf.reset_index(drop=True)
    if gdf.geometry.name != "geometry":
        if "geometry" in gdf.columns:
            gdf = gdf.drop(columns="geometry")
        gdf = gdf.rename_geometry("geometry")

    # Ids.
    if id_column is not None:
        if id_column not in gdf.columns or id_column == "geometry":
            columns = [c for c in gdf.columns if c != "geometry"]
            raise InvalidInputError(
                f"id_column {id_column!r} is not a column of {path}; pass one of {columns}"
            )
        ids = gdf[id_column]
        null_rows = np.flatnonzero(ids.isna().to_numpy())
        if null_rows.size:
            raise InvalidInputError(
                f"id_column {id_column!r} is empty in rows {_list_ids(null_rows)} of {path}; "
                "give every polygon an id"
            )
        dup = ids[ids.duplicated(keep=False)].unique()
        if dup.size:
            raise InvalidInputError(
                f"id_column {id_column!r} has duplicate values {_list_ids(list(dup))} in "
                f"{path}; ids must be unique (merge or renumber those polygons)"
            )
    what, labels = _row_labels(gdf, id_column)

    geoms = np.asarray(gdf.geometry.values, dtype=object)
    missing = np.flatnonzero(shapely.is_missing(geoms))
    if missing.size:
        raise InvalidInputError(
            f"{what} {_list_ids(labels[missing])} of {path} have no geometry; delete them or "
            "draw their polygons"
        )
    empty = np.flatnonzero(shapely.is_empty(geoms))
    if empty.size:
        raise InvalidInputError(
            f"{what} {_list_ids(labels[empty])} of {path} have empty geometries; delete them "
            "or draw their polygons"
        )
    types = shapely.get_type_id(geoms)
    non_poly = np.flatnonzero(~np.isin(types, (_POLYGON, _MULTIPOLYGON)))
    if non_poly.size:
        kinds = sorted({g.geom_type for g in geoms[non_poly]})
        raise InvalidInputError(
            f"{what} {_list_ids(labels[non_poly])} of {path} have {', '.join(kinds)} "
            "geometries; boundaries must be Polygon or MultiPolygon (buffer points/lines into "
            "areas or remove those rows)"
        )
    geoms = shapely.force_2d(geoms)
    if not np.isfinite(shapely.get_coordinates(geoms)).all():
        bad = np.flatnonzero([not np.isfinite(shapely.get_coordinates(g)).all() for g in geoms])
        raise InvalidInputError(
            f"{what} {_list_ids(labels[bad])} of {path} have NaN or infinite coordinates; "
            "fix or remove those vertices"
        )

    # Validity, checked in the file's own coordinates: these are the planner's data errors.
    invalid = np.flatnonzero(~shapely.is_valid(geoms))
    if invalid.size:
        if not repair:
            reasons = "; ".join(
                f"{labels[i]!r}: {shapely.is_valid_reason(geoms[i])}" for i in invalid[:_MAX_LISTED]
            )
            raise InvalidInputError(
                f"{what} {_list_ids(labels[invalid])} of {path} have invalid (e.g. "
                f"self-intersecting) polygons ({reasons}); repair them in your GIS, or set "
                "`repair` to make them valid (self-intersections split into valid parts)"
            )
        geoms = geoms.copy()
        geoms[invalid] = repair_polygons(geoms[invalid])
        collapsed = invalid[shapely.is_empty(geoms[invalid])]
        if collapsed.size:
            raise InvalidInputError(
                f"{what} {_list_ids(labels[collapsed])} of {path} have no area left after "
                "repair (degenerate polygons); delete them or redraw their polygons"
            )
    gdf = gdf.set_geometry(geopandas.GeoSeries(geoms, index=gdf.index, crs=gdf.crs))

    # CRS: explicit option, else the file's declaration, else refuse.
    if src is None:
        if path.suffix.lower() in _GEOJSON_SUFFIXES:
            _check_geojson_crs_label(path, gdf.crs)
        if gdf.crs is None:
            raise InvalidInputError(
                f"boundary file {path} declares no coordinate system; pass the `crs` option "
                "(e.g. crs='wgs84', 'gcj02', 'bd09', 'cgcs2000' or 'EPSG:4547')"
            )
        epsg = gdf.crs.to_epsg()
        if epsg is None:
            # A WKT without an EPSG code (e.g. an ESRI .prj): let pyproj handle it directly.
            out = _to_wgs84_without_epsg(gdf, path)
            src_text = "the file's CRS"
        else:
            src = normalize_crs(f"EPSG:{epsg}")
    if src is not None:
        out = to_crs_frame(gdf, src, "wgs84")
        src_text = repr(src)

    coords = shapely.get_coordinates(np.asarray(out.geometry.values, dtype=object))
    lon_ok = (coords[:, 0] >= -180.0) & (coords[:, 0] <= 180.0)
    lat_ok = (coords[:, 1] >= -90.0) & (coords[:, 1] <= 90.0)
    if not (lon_ok & lat_ok).all():
        first_bad = coords[~(lon_ok & lat_ok)][0]
        raise InvalidInputError(
            f"boundary file {path} has coordinates outside lon/lat range after conversion from "
            f"{src_text} to WGS84 (e.g. ({first_bad[0]:.6g}, {first_bad[1]:.6g})); the data are "
            "probably projected: pass the right `crs` (e.g. 'EPSG:4547')"
        )

    # A datum shift moves each vertex slightly differently; repair anything that broke.
    out_geoms = np.asarray(out.geometry.values, dtype=object)
    broken = ~shapely.is_valid(out_geoms)
    if broken.any():
        out_geoms = out_geoms.copy()
        out_geoms[broken] = repair_polygons(out_geoms[broken])
    out = out.set_geometry(
        geopandas.GeoSeries(out_geoms, index=out.index, crs="EPSG:4326"), crs="EPSG:4326"
    )
    return out.reset_index(drop=True)
