"""Exports of a plan's grids for other tools, one file per request: GeoJSON (WGS84 or GCJ-02
for Chinese web maps), GeoPackage, KML (phone map apps) and CSV (BOSS/CRM).

The files are the core library's (:mod:`territory.exports`), written into a scratch folder
from the cached layer tables (:class:`api.routes.maps.LayerCache`) and removed once sent.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse
from starlette.background import BackgroundTask

from api.auth import Reader
from api.deps import PlanDep, StoreDep
from api.problems import field_problem
from api.routes.maps import LayerCacheDep, content_disposition, file_stem
from api.routes.plans import ERRORS
from territory.exports import write_csv, write_geojson, write_gpkg, write_kml
from territory.mapdata import PlanLayers
from territory.plan import LAYER, LEVELS

router = APIRouter(prefix="/plans/{plan_id}/exports", tags=["exports"])

MEDIA = {
    "geojson": "application/geo+json",
    "gpkg": "application/geopackage+sqlite3",
    "kml": "application/vnd.google-earth.kml+xml",
    "csv": "text/csv",
}
ExportFormat = Literal["geojson", "gpkg", "kml", "csv"]
#: ``unit``: the CSV of every unit (H3 cell) with its sub-grid, main grid and branch.
ExportLevel = Literal["branch", "main_grid", "sub_grid", "unit"]
ExportCrs = Literal["wgs84", "gcj02"]
DEFAULT_LEVEL = "main_grid"

EXPORT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {m: {} for m in MEDIA.values()},
          "description": "The file, as an attachment; every grid with its key figures"},
    **ERRORS,
}


def _write(layers: PlanLayers, fmt: str, level: str | None, crs: str, folder: Path) -> Path:
    if fmt == "gpkg":
        return write_gpkg(layers, [level] if level else list(LEVELS), folder)
    level = level or DEFAULT_LEVEL
    if fmt == "geojson":
        return write_geojson(layers, level, folder, crs)
    if fmt == "kml":
        return write_kml(layers, level, folder)
    written = write_csv(layers, [] if level == "unit" else [level], folder)
    return written[0] if level == "unit" else written[-1]


@router.get("/{format}", response_class=FileResponse, responses=EXPORT_RESPONSES,
            summary="The grids of a level as GeoJSON, GeoPackage, KML or CSV")
def export(
    user: Reader, plan: PlanDep, store: StoreDep, cache: LayerCacheDep,
    format: ExportFormat,
    level: Annotated[ExportLevel | None, Query(
        description="branch, main_grid or sub_grid; csv also takes unit (unit → grids). "
                    "Default main_grid; a GeoPackage without it holds every level")] = None,
    crs: Annotated[ExportCrs, Query(
        description="wgs84, or gcj02 for Chinese web maps (AMap, Tencent): geojson only")]
    = "wgs84",
) -> FileResponse:
    """* ``geojson``: a FeatureCollection (RFC 7946) of one level;
    * ``gpkg``: a GeoPackage with a layer per level (``branches``, ``main_grids``,
      ``sub_grids``), or only the level asked for;
    * ``kml``: placemarks named by grid id, filled as on the maps, key figures as
      description;
    * ``csv``: the key figures of each grid of a level, or ``level=unit``: each unit with its
      sub-grid, main grid and branch."""
    if level == "unit" and format != "csv":
        raise field_problem("query.level", f"level 'unit' is exported as csv only, not {format}",
                            f"use one of {list(LEVELS)} with {format}, or format csv")
    if crs == "gcj02" and format != "geojson":
        raise field_problem("query.crs", f"crs 'gcj02' is for geojson only; {format} is written "
                            "in wgs84 (its readers expect it)", "use crs wgs84 (or leave it "
                            "out), or format geojson")
    layers = cache.layers(plan.plan_id)
    folder = store.scratch_dir()
    try:
        path = _write(layers, format, level, crs, folder)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    name = f"{LAYER[level]}.gpkg" if format == "gpkg" and level else path.name
    return FileResponse(
        path, media_type=MEDIA[format],
        headers={"Content-Disposition": content_disposition(f"{file_stem(plan)}-{name}")},
        background=BackgroundTask(shutil.rmtree, folder, ignore_errors=True),
    )
