"""Customer assignment (用户归属): which sub-grid, main grid and branch own a point.

On a named plan (``/plans/{id}/assign``) or on the plan in force in a service area on a day
(``/assign?as_of=``): one point (GET), a JSON array of points (POST), or a CSV/Parquet file
(POST ``…/assign/file``), answered in the format it came in.

A single point with unusable coordinates (NaN, out of range, not convertible) is a 422. In a
batch, such a row comes back with ``status`` ``invalid`` and its ``reason``, like the
library's nightly batch: one bad row must not lose the other 99 999. NaN and Infinity are
not JSON, so a JSON batch holding them is refused whole (422).

The coordinates' system is never assumed: a request names its ``crs`` (a file may name each
row's in a column), or the service area has one configured (``points_crs`` in the settings);
otherwise the request is refused (422 naming ``crs``). Every batch (JSON or file) is checked
for a mistaken ``crs`` on a sample (:mod:`territory.crs_check`): a batch that fits the plan
clearly better in another system is assigned as declared, and answered with a ``warnings``
list (JSON) or an ``X-Assign-Warnings`` header (a JSON list; files). Single points are not
checked: one point says nothing about its system.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from datetime import date
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from fastapi import APIRouter, Depends, FastAPI, File, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, Response
from pydantic import BaseModel, Field, ValidationError
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from api.assignment import Indexes, LockedIndex
from api.auth import KEY_SECURITY, Operator, operator
from api.batches import POINTS_BODY, GateDep, Points, records_json
from api.deps import CRS_FIX, PlanDep, SettingsDep, StoreDep, Today, resolve_crs, today_in
from api.problems import (
    ProblemError,
    field_problem,
    public_message,
    too_large,
    unsupported_file,
)
from api.routes.plans import ERRORS
from api.schemas import (
    BatchAssignment,
    Day,
    PlanRef,
    SingleAssignment,
)
from api.settings import Settings
from api.store import PlanRecord, PlanStore, WindowRecord
from territory.assign import AS_WGS84, STATUSES, Assignment, Columns, assign, assign_file
from territory.crs import normalize_crs
from territory.errors import InvalidInputError, TerritoryError
from territory.tables import codec

router = APIRouter(tags=["assign"])

#: Rows per engine call of a file: the index lock is released between chunks.
FILE_CHUNK = 50_000
MEDIA = {".csv": "text/csv; charset=utf-8", ".parquet": "application/vnd.apache.parquet"}
_SUFFIX_OF_TYPE = {"text/csv": ".csv", "application/vnd.apache.parquet": ".parquet",
                   "application/x-parquet": ".parquet", "application/parquet": ".parquet"}
_SUFFIXES = {".csv": ".csv", ".txt": ".csv", ".parquet": ".parquet", ".pq": ".parquet"}


async def get_indexes(request: Request) -> Indexes:
    return request.app.state.indexes


IndexesDep = Annotated[Indexes, Depends(get_indexes)]


CRS_HELP = ("System of the coordinates: wgs84, cgcs2000, gcj02, bd09 or EPSG:<code>; "
            "required unless the service area has one configured")


async def crs_param(
    crs: Annotated[str | None, Query(description=CRS_HELP)] = None,
) -> str | None:
    """The coordinate system, checked up front so a typo names the parameter."""
    if crs is None:
        return None
    try:
        return normalize_crs(crs)
    except InvalidInputError as exc:
        raise field_problem("query.crs", str(exc), CRS_FIX) from None


Crs = Annotated[str | None, Depends(crs_param)]

LNG_HELP = "Longitude (or easting in a projected crs)"
LAT_HELP = "Latitude (or northing in a projected crs)"
AS_OF_HELP = "The day whose plan answers (default today, in the service's time zone)"
AREA_HELP = "Service area; needed only when several have a plan in force"
Lng = Annotated[float, Query(allow_inf_nan=False, description=LNG_HELP)]
Lat = Annotated[float, Query(allow_inf_nan=False, description=LAT_HELP)]
AsOf = Annotated[Day | None, Query(description=AS_OF_HELP)]
Area = Annotated[str | None, Query(description=AREA_HELP)]


class PointOnDay(BaseModel):
    """The query of a single assignment on the plan in force. The route validates it
    itself (:func:`_point_on_day`): FastAPI's own query parsing cost as much as the lookup."""

    lng: float = Field(allow_inf_nan=False, description=LNG_HELP)
    lat: float = Field(allow_inf_nan=False, description=LAT_HELP)
    crs: str | None = Field(None, description=CRS_HELP)  # checked by resolve_crs
    as_of: Day | None = Field(None, description=AS_OF_HELP)
    service_area: str | None = Field(None, description=AREA_HELP)


def _point_on_day(request: Request) -> PointOnDay:
    """The query as FastAPI would read it (the last of repeated parameters; unknown ones
    ignored), its errors the same 422."""
    try:
        return PointOnDay.model_validate(dict(request.query_params))
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("query", *e["loc"])} for e in exc.errors(include_url=False)]
        ) from None


def query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    """The OpenAPI ``parameters`` of a query read as ``model`` (for a route that reads it
    itself), as FastAPI would list them."""
    schema = model.model_json_schema()
    return [{"name": name, "in": "query", "required": name in schema.get("required", ()),
             "schema": prop, "description": prop.get("description", "")}
            for name, prop in schema["properties"].items()]


def _ref(plan: PlanRecord) -> PlanRef:
    return PlanRef(plan_id=plan.plan_id, service_area=plan.service_area, version=plan.version)


def _effective(store: PlanStore, service_area: str | None, on: date) -> PlanRef:
    """The plan in force on ``on``: 404 when none is, 422 when the area is ambiguous."""
    return _window_ref(_in_force(store, service_area, on))


def _in_force(store: PlanStore, service_area: str | None, on: date) -> WindowRecord:
    windows = store.in_force(on, service_area)
    if not windows:
        where = f"in service area {service_area!r}" if service_area else "in any service area"
        raise ProblemError(404, f"no plan is in force {where} on {on}; activate one with "
                                "POST /plans/{id}/activate", kind="no-plan-in-force",
                           title="No plan in force")
    if len(windows) > 1:
        areas = [w.service_area for w in windows]
        message = f"{len(areas)} service areas have a plan in force on {on}: {areas}"
        raise field_problem("query.service_area", message, f"name one of {areas}")
    return windows[0]


def _window_ref(w: WindowRecord) -> PlanRef:
    return PlanRef(plan_id=w.plan_id, service_area=w.service_area, version=w.version,
                   effective_from=w.effective_from, effective_to=w.effective_to)


@lru_cache(maxsize=64)
def _window_json(w: WindowRecord) -> str:
    """The ``plan`` part of a single assignment on the plan in force, rendered once per
    window."""
    return _window_ref(w).model_dump_json()


#: The members of a point inside a unit after its ids
_INSIDE = '"status":"ok","nearest_grid_id":null,"distance_m":0.0,"reason":null'


def _single(index: LockedIndex, plan_json: str, lng: float, lat: float, crs: str) -> Response:
    """One point's :class:`SingleAssignment` as JSON, assembled from the index's
    precomputed parts (:meth:`LockedIndex.unit_json`) and the plan's: building and
    validating the pydantic model cost more than the lookup itself. A WGS84 point in range
    (most of a counter's) is answered by the index's single-point path
    (:meth:`~territory.assign_index.AssignmentIndex.locate_one`, then
    :meth:`~territory.assign_index.AssignmentIndex.nearest_one` outside the service area),
    plain Python arithmetic with the array path's answers, without its per-call numpy
    overhead; any other point goes through the engine (CRS conversion, invalid reasons)."""
    if crs in AS_WGS84 and -180 <= lng <= 180 and -90 <= lat <= 90:
        unit = index.locate_one(lng, lat)
        if unit >= 0:
            return Response(f'{{"id":null,{index.unit_json(unit)},{_INSIDE},'
                            f'"plan":{plan_json}}}', media_type="application/json")
        # outside the service area, as the engine would find
        status, reason = "outside", None
        nearest, distance = index.nearest_one(lng, lat)
    else:
        result = assign(index, np.array([lng]), np.array([lat]), crs=crs)
        status = STATUSES[int(result.code[0])]
        if status == "invalid":
            reason = str(result.reason[0])
            name = reason.split(" ", 1)[0]
            field = f"query.{name}" if name in ("lng", "lat") else "query"
            raise field_problem(field, reason, "give lng in [-180, 180] and lat in [-90, 90] "
                                "for a geographic crs, or the crs the coordinates are really "
                                "in", kind="invalid-coordinates", title="Invalid coordinates")
        unit, nearest = int(result.unit[0]), int(result.nearest_unit[0])
        distance, reason = float(result.distance_m[0]), result.reason[0]
    tail = json.dumps({"status": status, "nearest_grid_id": index.sub_grid_id(nearest),
                       "distance_m": None if np.isnan(distance) else distance,
                       "reason": reason}, ensure_ascii=False, separators=(",", ":"))
    return Response(f'{{"id":null,{index.unit_json(unit)},{tail[1:-1]},"plan":{plan_json}}}',
                    media_type="application/json")


def _batch(index: LockedIndex, ref: PlanRef, points: Points, crs: str) -> Response:
    """The batch's rows as JSON, serialised by pandas: 100 000 pydantic models would take
    longer to build than the assignment itself."""
    warnings: list[str] = []
    result: Assignment = assign(index, points.lng, points.lat, crs=crs,
                                on_warning=warnings.append)
    counts = dict(zip(STATUSES, np.bincount(result.code, minlength=len(STATUSES)).tolist(),
                      strict=True))
    head = json.dumps({"plan": ref.model_dump(mode="json"), "count": len(points),
                       "counts": counts, "warnings": warnings}, ensure_ascii=False)
    rows = records_json(result, points.ids)
    return Response(f'{head[:-1]}, "data": {rows}}}', media_type="application/json")


def _file_suffix(upload: UploadFile) -> str:
    suffix = _SUFFIXES.get(Path(upload.filename or "").suffix.lower())
    suffix = suffix or _SUFFIX_OF_TYPE.get((upload.content_type or "").split(";")[0])
    if suffix is None:
        message = (f"file {upload.filename!r} ({upload.content_type}) is neither CSV nor "
                   "Parquet")
        raise unsupported_file("file", message, "upload a .csv or .parquet file")
    return suffix


def _readable(path: Path, suffix: str, encoding: str) -> None:
    """400 for a file that is not what it says it is, before any work is done on it.
    Undecodable text is left to the reader, whose message names the line and the fix."""
    try:
        if suffix == ".parquet":
            pq.ParquetFile(path).close()
        else:
            pd.read_csv(path, nrows=1, dtype=str, encoding=codec(encoding),
                        encoding_errors="replace")
    except (ValueError, OSError, pa.ArrowException) as exc:
        message = f"the upload cannot be read as {suffix[1:].upper()} ({exc})"
        raise field_problem("file", message, "send a complete, well-formed CSV (text in "
                            "`encoding`) or Parquet file", status=400, kind="malformed-file",
                            title="Malformed file") from None


def _file(index: LockedIndex, ref: PlanRef, upload: UploadFile, columns: FileColumnsIn,
          crs: str | None, store: PlanStore, settings: Settings) -> FileResponse:
    """Assign an uploaded CSV or Parquet file; answer a file of the same format."""
    if columns.crs_column is None:
        crs = resolve_crs(crs, settings, ref.service_area)
    else:  # the rows' own systems; a blank cell takes this one, if there is one
        crs = crs or settings.points_crs.get(ref.service_area)
    suffix = _file_suffix(upload)
    folder = store.scratch_dir()
    try:
        src, dst = folder / f"input{suffix}", folder / f"output{suffix}"
        with open(src, "wb") as out:
            shutil.copyfileobj(upload.file, out, 1 << 20)
        _readable(src, suffix, columns.encoding)

        def limit(done: int, total: int | None) -> None:
            if max(done, total or 0) > settings.max_batch_points:
                raise too_large(f"the file has more than {settings.max_batch_points} rows",
                                "file", f"split it into files of at most "
                                        f"{settings.max_batch_points} rows")

        warnings: list[str] = []
        try:
            counts = assign_file(index, src, dst,
                                 columns=Columns(lng=columns.lng, lat=columns.lat, crs=crs,
                                                 crs_column=columns.crs_column),
                                 chunk_size=FILE_CHUNK, progress=limit,
                                 on_warning=warnings.append, encoding=columns.encoding)
        except TerritoryError as exc:  # the same error, without the server's path
            raise type(exc)(public_message(str(exc), {str(src): "the uploaded file"})) from None
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    stem = Path(upload.filename or "points").stem
    return FileResponse(
        dst, media_type=MEDIA[suffix], filename=f"{stem}.assigned{suffix}",
        headers={"X-Plan-Id": ref.plan_id, "X-Plan-Version": str(ref.version),
                 "X-Assign-Counts": json.dumps(counts),
                 "X-Assign-Warnings": json.dumps(warnings)},
        background=BackgroundTask(shutil.rmtree, folder, ignore_errors=True),
    )


#: Text encodings a CSV upload may be in.
FileEncoding = Literal["utf-8", "gbk", "gb18030"]


@dataclass(frozen=True)
class FileColumnsIn:
    """The file's column names and text encoding; its crs is resolved per service area
    (:func:`_file`)."""

    lng: str
    lat: str
    crs_column: str | None
    encoding: str


def file_columns(
    lng_column: Annotated[str, Query(description="Longitude / easting column")] = "lng",
    lat_column: Annotated[str, Query(description="Latitude / northing column")] = "lat",
    crs_column: Annotated[str | None, Query(description="Column naming each row's crs "
                                                        "(blank: `crs`)")] = None,
    encoding: Annotated[FileEncoding, Query(description="Text encoding of a CSV file: "
                                                        "Chinese CRM exports are often "
                                                        "gb18030 or gbk")] = "utf-8",
) -> FileColumnsIn:
    return FileColumnsIn(lng=lng_column, lat=lat_column, crs_column=crs_column,
                         encoding=encoding)


FileColumns = Annotated[FileColumnsIn, Depends(file_columns)]
Upload = Annotated[UploadFile, File(description="CSV or Parquet with coordinate columns")]
FILE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {m: {} for m in MEDIA.values()},
          "description": "The input rows with sub_grid_id, main_grid_id, branch_id, status, "
                         "nearest_grid_id, distance_m, reason added",
          "headers": {"X-Assign-Warnings": {
              "description": "JSON list of doubts about the batch, e.g. points that fit the "
                             "plan better in another crs", "schema": {"type": "string"}}}},
    **ERRORS,
}


# -- on a named plan -----------------------------------------------------------------------
@router.get("/plans/{plan_id}/assign", response_model=SingleAssignment, responses=ERRORS,
            summary="Assign one point on this plan")
async def assign_one_on_plan(plan: PlanDep, user: Operator, indexes: IndexesDep,
                             settings: SettingsDep, lng: Lng, lat: Lat, crs: Crs
                             ) -> Response:
    return _single(await indexes.get(plan.plan_id), _ref(plan).model_dump_json(), lng, lat,
                   resolve_crs(crs, settings, plan.service_area))


@router.post("/plans/{plan_id}/assign", response_model=BatchAssignment, responses=ERRORS,
             summary="Assign a JSON array of points on this plan", openapi_extra=POINTS_BODY)
async def assign_many_on_plan(plan: PlanDep, user: Operator, indexes: IndexesDep,
                              settings: SettingsDep, gate: GateDep, crs: Crs,
                              request: Request) -> Response:
    """One row per point, in order, each with a status; ``id`` is echoed back."""
    crs = resolve_crs(crs, settings, plan.service_area)  # a 422 before the body is read
    async with gate.slot():
        points = await gate.read_points(request, settings.max_batch_points)
        return await gate.run(_batch, await indexes.get(plan.plan_id), _ref(plan), points, crs)


@router.post("/plans/{plan_id}/assign/file", response_class=FileResponse,
             responses=FILE_RESPONSES, summary="Assign a CSV or Parquet file on this plan")
async def assign_file_on_plan(plan: PlanDep, user: Operator, indexes: IndexesDep,
                              store: StoreDep, settings: SettingsDep, gate: GateDep,
                              file: Upload, columns: FileColumns, crs: Crs) -> FileResponse:
    async with gate.slot():
        return await gate.run(_file, await indexes.get(plan.plan_id), _ref(plan), file,
                              columns, crs, store, settings)


# -- on the plan in force ------------------------------------------------------------------
async def assign_one(request: Request) -> Response:
    """Needs the ``operations`` role."""
    # The counter's lookup, the service's hot path: the caller's role and the app's state
    # are read directly rather than through a dependency each (FastAPI's solving of them
    # cost twice the lookup), the plan in force is memoised by the store, and the answer
    # is assembled from precomputed parts (_single).
    operator(request)
    q = _point_on_day(request)
    state = request.app.state
    settings: Settings = state.settings
    window = _in_force(state.store, q.service_area, q.as_of or today_in(settings))
    crs = resolve_crs(q.crs, settings, window.service_area)
    return _single(await state.indexes.get(window.plan_id), _window_json(window), q.lng, q.lat,
                   crs)


def add_single_route(app: FastAPI) -> None:
    """``GET /assign`` first on the app's own router, ahead of the documentation's routes
    and the included routers: FastAPI matches a path against every route of an included
    router in turn, twice per request (the router, then its route). Most lookups never
    reach it (:class:`SingleAssignFastPath` answers them); it answers the rest, the refused
    ones, and documents the operation."""
    app.add_api_route("/assign", assign_one, methods=["GET"], response_model=SingleAssignment,
                      responses=ERRORS, tags=["assign"],
                      summary="Assign one point on the plan in force on a day",
                      openapi_extra={**KEY_SECURITY,
                                     "parameters": query_parameters(PointOnDay)})
    app.router.routes.insert(0, app.router.routes.pop())  # routes are matched in order


class SingleAssignFastPath:
    """Answers ``GET /assign`` before FastAPI's routing: the route's own function
    (:func:`assign_one`) on a plain :class:`~starlette.requests.Request`, its response sent
    as is. Starlette's exception layer, the router's matching and FastAPI's request
    handling cost the counter's lookup about as much again as all of its own work (on the
    shipped city, in-process: 51 µs a request through them, 24 µs past them, against 34 µs
    for a bare FastAPI route answering a constant).

    Installed inside the authentication and body-limit middleware, so a caller is checked
    as for any route. A request it cannot answer (a role, a query or a point the route
    refuses) is handed to the app unchanged, whose route raises the same error again and
    renders it through the app's problem handlers: every answer, 200 or not, is the
    route's."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET" and scope["path"] == "/assign":
            try:
                response = await assign_one(Request(scope))
            except (StarletteHTTPException, RequestValidationError, TerritoryError):
                pass  # the route answers, through the app's error handlers
            else:
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


@router.post("/assign", response_model=BatchAssignment, responses=ERRORS,
             summary="Assign a JSON array of points on the plan in force on a day",
             openapi_extra=POINTS_BODY)
async def assign_many(user: Operator, store: StoreDep, indexes: IndexesDep,
                      settings: SettingsDep, gate: GateDep, on: Today, crs: Crs,
                      request: Request, as_of: AsOf = None, service_area: Area = None
                      ) -> Response:
    ref = _effective(store, service_area, as_of or on)
    crs = resolve_crs(crs, settings, ref.service_area)  # a 422 before the body is read
    async with gate.slot():
        points = await gate.read_points(request, settings.max_batch_points)
        return await gate.run(_batch, await indexes.get(ref.plan_id), ref, points, crs)


@router.post("/assign/file", response_class=FileResponse, responses=FILE_RESPONSES,
             summary="Assign a CSV or Parquet file on the plan in force on a day")
async def assign_file_effective(user: Operator, store: StoreDep, indexes: IndexesDep,
                                settings: SettingsDep, gate: GateDep, on: Today,
                                file: Upload, columns: FileColumns, crs: Crs,
                                as_of: AsOf = None, service_area: Area = None) -> FileResponse:
    ref = _effective(store, service_area, as_of or on)
    async with gate.slot():
        return await gate.run(_file, await indexes.get(ref.plan_id), ref, file, columns,
                              crs, store, settings)
