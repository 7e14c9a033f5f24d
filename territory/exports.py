"""Exports of a plan for other tools: GeoJSON, GeoPackage, KML and CSV, level by level.

* **GeoJSON** for web maps, in WGS84 (RFC 7946) or, for Chinese web maps (AMap, Tencent)
  that draw in GCJ-02, converted with :mod:`territory.crs`; the file name then says so
  (``main_grids.gcj02.geojson``) because GCJ-02 has no code a reader could check.
* **GeoPackage** for GIS: one file, a layer per level.
* **KML** for the phone map apps field teams use: one file per level, each grid a
  placemark named by its id, coloured as on the maps (neighbours differ), with its key
  figures as the description. KML viewers show names, descriptions and data as HTML, so
  every text there is escaped (:func:`kml_text`): KML is for showing, the other formats
  carry the data as it is.
* **CSV** for BOSS/CRM: ``units.csv`` (unit -> sub-grid, main grid, branch), one KPI table
  per level, and ``customers.csv`` (each customer with its unit and grids) when a customer
  table is given. The cells are the data exactly as it is, because CRM imports match ids
  byte for byte; a spreadsheet opening such a file runs a cell starting with ``=``, ``+``,
  ``-``, ``@``, a tab or a carriage return as a formula (CSV injection). ``excel_safe``
  prefixes those text cells with ``'`` for files meant for people, not for imports.

Every property carries the grid's KPIs (:func:`territory.mapdata.grid_kpis`). Every file is
written to a temporary file in the target folder and renamed into place, so a reader never
sees half an export and a failed export leaves the previous one intact.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence
from pathlib import Path

import geopandas as gpd
import pandas as pd
import pyogrio

from territory.atomic import atomic_path
from territory.crs import normalize_crs, transform_geometries
from territory.errors import InvalidInputError
from territory.mapdata import PlanLayers, key_figures, place_points
from territory.plan import LAYER, LEVELS, Plan

FORMATS = ("geojson", "gpkg", "kml", "csv")
#: Decimal places of GeoJSON coordinates: 1e-7 degrees is about 1 cm.
GEOJSON_PRECISION = 7
#: Boundary width in KML per level (pixels), as on the interactive maps.
KML_WIDTH = {"branch": 4, "main_grid": 2, "sub_grid": 1}
#: Fill opacity of KML grids (hex alpha): a phone's base map stays readable underneath.
KML_FILL_ALPHA = "80"
#: First characters that make a spreadsheet read a CSV cell as a formula.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _levels(levels: Sequence[str] | None) -> list[str]:
    chosen = list(levels) if levels else list(LEVELS)
    bad = [lv for lv in chosen if lv not in LEVELS]
    if bad:
        raise InvalidInputError(f"levels {bad}: choose from {list(LEVELS)}")
    return chosen


def _export_table(layers: PlanLayers, level: str) -> gpd.GeoDataFrame:
    """A level's grids with their KPIs, ready for a file (plain column types)."""
    table = layers.kpis(level)
    table["contiguous"] = table["contiguous"].astype(bool)
    return table


def write_geojson(layers: PlanLayers, level: str, out_dir: Path, crs: str = "wgs84") -> Path:
    """``<layer>.geojson`` (or ``<layer>.gcj02.geojson``) of one level."""
    table = _export_table(layers, level)
    suffix = ".geojson"
    if crs == "gcj02":
        table = table.set_geometry(transform_geometries(table.geometry, "wgs84", "gcj02"))
        suffix = ".gcj02.geojson"
    path = out_dir / f"{LAYER[level]}{suffix}"
    with atomic_path(path) as tmp:
        pyogrio.write_dataframe(table, tmp, driver="GeoJSON", layer=LAYER[level],
                                layer_options={"RFC7946": "YES",
                                               "COORDINATE_PRECISION": GEOJSON_PRECISION})
    return path


def write_gpkg(layers: PlanLayers, levels: Sequence[str], out_dir: Path) -> Path:
    """``grids.gpkg`` with a layer per level (``branches``, ``main_grids``, ``sub_grids``)."""
    path = out_dir / "grids.gpkg"
    with atomic_path(path) as tmp:
        for level in levels:
            pyogrio.write_dataframe(_export_table(layers, level), tmp, driver="GPKG",
                                    layer=LAYER[level])
    return path


def _kml_driver() -> str:
    """LIBKML writes each placemark's fill colour from its style; the plain KML driver
    (GDAL builds without libkml) keeps outlines only."""
    return "LIBKML" if "LIBKML" in pyogrio.list_drivers(write=True) else "KML"


def kml_text(table: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """``table`` with every text value and column name escaped for HTML. Google Earth and
    the phone apps render a placemark's name, description and data in an HTML balloon, so
    a grid id like ``<img src=x onerror=…>`` would run there; escaped, it shows as written
    (the XML writer escapes once more for XML, and the reader's XML parser undoes only
    that)."""
    columns = [c for c in table.columns if c != table.geometry.name]
    text = [c for c in columns if pd.api.types.is_string_dtype(table[c])
            or pd.api.types.is_object_dtype(table[c])]
    escaped = {c: table[c].map(lambda v: v if pd.isna(v) else html.escape(str(v)))
               for c in text}
    return table.assign(**escaped).rename(columns={c: html.escape(str(c)) for c in columns})


def kml_description(figures: pd.Series) -> str:
    """A placemark's description: one ``label: value`` line per key figure, as HTML (what
    KML viewers render), the labels and values escaped."""
    return "<br>".join(f"{html.escape(str(k))}: {html.escape(str(v))}"
                       for k, v in figures.items())


def write_kml(layers: PlanLayers, level: str, out_dir: Path) -> Path:
    """``<layer>.kml``: placemarks named by grid id, coloured as on the maps, with the key
    figures as description."""
    table = _export_table(layers, level)
    figures = key_figures(table, level, layers.plan.measures)
    table = kml_text(table)
    table.insert(0, "Name", table["grid_id"])
    table.insert(1, "Description", figures.apply(kml_description, axis=1))
    table["OGR_STYLE"] = [f"BRUSH(fc:{c}{KML_FILL_ALPHA});PEN(c:#222222,w:{KML_WIDTH[level]}px)"
                          for c in table["colour"]]
    path = out_dir / f"{LAYER[level]}.kml"
    with atomic_path(path) as tmp:
        pyogrio.write_dataframe(table, tmp, driver=_kml_driver(), layer=LAYER[level])
    return path


def excel_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``frame`` whose text cells starting with :data:`FORMULA_START` begin with
    ``'``, which a spreadsheet shows as text instead of running (numbers are left alone)."""
    out = frame.copy()
    for column in out.columns:
        if out[column].dtype == object or isinstance(out[column].dtype, pd.StringDtype):
            out[column] = out[column].map(
                lambda v: "'" + v if isinstance(v, str) and v.startswith(FORMULA_START) else v)
    return out


def _write_csv(frame: pd.DataFrame, path: Path, safe: bool = False) -> Path:
    """RFC 4180 lines (CRLF): the csv module then quotes a cell holding a lone carriage
    return, which a ``\n`` line end leaves bare and readers split into two rows."""
    with atomic_path(path) as tmp:
        (excel_safe(frame) if safe else frame).to_csv(tmp, index=False, encoding="utf-8",
                                                      lineterminator="\r\n")
    return path


def write_csv(layers: PlanLayers, levels: Sequence[str], out_dir: Path,
              customers: pd.DataFrame | None = None, staff: pd.DataFrame | None = None, *,
              safe: bool = False) -> list[Path]:
    """``units.csv``, ``<layer>.csv`` KPI tables and, given customers, ``customers.csv``;
    given a staffing (``staff.csv`` of ``territory staff``), ``staff.csv`` with each
    person's branch, main grid and sub-grid checked against the plan; ``safe`` applies
    :func:`excel_safe` to each."""
    plan = layers.plan
    ids = ["sub_grid_id", "main_grid_id", "branch_id"]
    written = [_write_csv(plan.units[ids].reset_index(), out_dir / "units.csv", safe)]
    for level in levels:
        table = pd.DataFrame(_export_table(layers, level).drop(columns="geometry"))
        written.append(_write_csv(table, out_dir / f"{LAYER[level]}.csv", safe))
    if customers is not None:
        written.append(_write_csv(place_points(plan, customers), out_dir / "customers.csv",
                                  safe))
    if staff is not None:
        unknown = set(staff["main_grid_id"].astype(str)) - set(plan.units["main_grid_id"])
        if unknown:
            raise InvalidInputError(f"staff: main grids {sorted(unknown)[:5]} are not in plan "
                                    f"{plan.plan_id}; export the staffing of this plan")
        written.append(_write_csv(staff, out_dir / "staff.csv", safe))
    return written


def export_plan(plan: Plan | PlanLayers, fmt: str, out_dir: str | Path, *,
                levels: Sequence[str] | None = None, crs: str = "wgs84",
                customers: pd.DataFrame | None = None, staff: pd.DataFrame | None = None,
                excel_safe: bool = False) -> list[Path]:
    """Write the plan's grids at ``levels`` (default all) in format ``fmt`` into ``out_dir``;
    returns the files written.

    ``crs`` is ``wgs84`` or, for GeoJSON only, ``gcj02``: GeoPackage and KML readers expect
    WGS84 (KML by its specification). ``customers`` (WGS84 ``lng``/``lat``) and ``staff``
    (``staff.csv`` of ``territory staff``) are used by the CSV export; ``excel_safe`` (CSV
    only) guards its text cells against formula injection.
    """
    if fmt not in FORMATS:
        raise InvalidInputError(f"format {fmt!r}: choose one of {list(FORMATS)}")
    crs = normalize_crs(crs)
    if crs not in ("wgs84", "gcj02") or (crs == "gcj02" and fmt != "geojson"):
        raise InvalidInputError(
            f"crs {crs!r} with format {fmt!r}: GeoJSON can be wgs84 or gcj02, every other "
            "format is written in wgs84"
        )
    if customers is not None and fmt != "csv":
        raise InvalidInputError("a customer table is exported with `format` 'csv'")
    if excel_safe and fmt != "csv":
        raise InvalidInputError("`excel_safe` applies to `format` 'csv' only")
    if staff is not None and fmt != "csv":
        raise InvalidInputError("a staff table is exported with `format` 'csv'")
    layers = PlanLayers.of(plan)
    chosen = _levels(levels)
    out = Path(out_dir)
    writers: dict[str, Callable[[], list[Path]]] = {
        "geojson": lambda: [write_geojson(layers, lv, out, crs) for lv in chosen],
        "gpkg": lambda: [write_gpkg(layers, chosen, out)],
        "kml": lambda: [write_kml(layers, lv, out) for lv in chosen],
        "csv": lambda: write_csv(layers, chosen, out, customers, staff, safe=excel_safe),
    }
    return writers[fmt]()
