"""Redrawing a stored plan: import, history, diff, edits and rebalance (planner role for
changes).

An edit or a rebalance names the version it starts from (``base``). When that is not the
service area's latest version any more (another planner saved one since), the request is
refused with 409 and the current version in ``X-Current-Version``, never merged silently.
The result is stored as the area's next version (its parent is ``base``); a version in force
is never changed.

Edits run in the request's worker thread (``run_in_threadpool``): they take seconds. A
rebalance (``POST /plans/{id}/rebalance``) and an import of a drawn map
(``POST /plans/import``) are background jobs like plan jobs (:mod:`api.jobs`): 202 with the
job to poll at ``Location``, its progress in the stages of :mod:`territory.progress`, the new
version's id in the job's ``plan_id`` once done. A rebalance whose base was superseded while
it ran fails with the same 409 problem: it is not saved over the newer version.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Annotated, Any, Literal

import pyogrio
from fastapi import APIRouter, File, Form, Query, Response, UploadFile, status
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from api.assignment import write_index
from api.auth import Planner, Reader
from api.deps import PlanDep, RunnerDep, SettingsDep, StoreDep, resolve_crs
from api.jobs import SAVING, read_inputs, save_upload
from api.problems import (
    ERRORS,
    ProblemError,
    field_problem,
    territory_problem,
    too_large,
)
from api.routes.jobs import public_job
from api.routes.plans import (
    BOUNDARY_SUFFIXES,
    POINT_SUFFIXES,
    check_capacity,
    form_request,
    upload_suffix,
)
from api.schemas import SERVICE_AREA, FieldError, JobPublic, TableOptions
from api.store import JobRecord, PlanRecord, PlanStore
from territory.atomic import write_json
from territory.crs_check import Warn
from territory.errors import InvalidInputError, TerritoryError
from territory.plan import Plan
from territory.progress import Progress
from territory.request import ImportRequest

router = APIRouter(prefix="/plans", tags=["redraw"])


class Edit(BaseModel):
    """One edit of the plan ``base`` (see :mod:`territory.edits`)."""

    base: str = Field(description="The plan id the edit starts from (the current version)")
    kind: Literal["move", "lock", "unlock", "split", "merge", "remove", "tolerance",
                  "add_store", "move_store", "close_store"]
    units: list[str] = Field(default_factory=list, description="Unit ids (move, lock)")
    grids: list[str] = Field(default_factory=list, description="Grid ids (lock: whole grids; "
                                                               "merge: keep, absorb)")
    to: str | None = Field(None, description="Target grid of a move")
    grid: str | None = Field(None, description="Grid to split or remove")
    parts: int = Field(2, ge=2, le=10)
    measure: str | None = None
    tolerance: float | None = Field(None, gt=0, lt=1)
    store_id: str | None = Field(None, min_length=1, max_length=100,
                                 description="Store to add, move or close")
    name: str = Field("", max_length=200, description="Name of a store added")
    lng: float | None = Field(None, allow_inf_nan=False, description="Store position: "
                              "longitude (or easting in a projected crs)")
    lat: float | None = Field(None, allow_inf_nan=False, description="Latitude (or northing)")
    crs: str | None = Field(None, description="System of lng/lat: wgs84, cgcs2000, gcj02, "
                                              "bd09 or EPSG:N (required with them)")
    message: str = Field("", max_length=500)


class RebalanceRequest(BaseModel):
    base: str = Field(description="The plan id to rebalance (the current version)")
    budget: str = Field(description="MEASURE=VALUE[%] with MEASURE customers, households, "
                                    "subscribers or units, e.g. customers=3%",
                        pattern=r"^(customers|households|subscribers|units)=[0-9]+(\.[0-9]+)?%?$")
    tolerance: float | None = Field(None, gt=0, lt=1, description="Tolerance of every "
                                                                   "measure (default: the "
                                                                   "plan's)")
    depth: int | None = Field(None, ge=1, le=50, description="Only units within this many "
                              "hops of a grid line may move (default: any)")
    headcount: dict[str, Annotated[int, Field(ge=-100, le=100)]] = Field(
        default_factory=dict, max_length=1_000, description="Branch id -> team members more "
        "(or fewer): each is a sub-grid split (merged) before the rebalance")
    time_limit: float = Field(30.0, gt=0, le=300, description="Seconds per solve")
    lock: list[str] = Field(default_factory=list, max_length=100_000,
                            description="Unit ids held where they are")
    message: str = Field("", max_length=500)


class ImportUpload(TableOptions):
    """The ``request`` part of an import upload: everything but the files."""

    service_area: str | None = SERVICE_AREA
    parameters: ImportRequest
    message: str = Field("imported from the drawn map", max_length=500)


class Version(BaseModel):
    plan_id: str
    version: int
    parent: str | None
    created: str
    author: str
    message: str


class Saved(BaseModel):
    plan_id: str
    parent: str
    service_area: str
    version: int
    message: str = Field("", description="What the edit did (and, closing a store a grid "
                                          "is centred on, what that means)")
    figures: dict[str, Any] = Field(default_factory=dict)


def _latest(store: PlanStore, area: str) -> PlanRecord:
    records, _ = store.list_plans(service_area=area, limit=1_000, offset=0)
    return max(records, key=lambda r: r.version)


def _check_base(store: PlanStore, record: PlanRecord, base: str) -> None:
    if base != record.plan_id:
        raise ProblemError(422, f"base {base!r} is not the plan of this URL "
                                f"({record.plan_id}); name the version you edit",
                           kind="validation-error")
    _check_current(store, record.service_area, base)


def _check_current(store: PlanStore, area: str, base: str) -> None:
    """409 with ``X-Current-Version`` unless ``base`` is the area's latest version."""
    current = _latest(store, area)
    if current.plan_id != base:
        raise ProblemError(409, f"plan {base} is not the current version of "
                                f"{area}: {current.plan_id} (version "
                                f"{current.version}) was saved since; reload it and edit "
                                "that", kind="stale-version", title="Stale version",
                           headers={"X-Current-Version": current.plan_id},
                           errors=[FieldError(field="base", message="stale version",
                                              fix=f"use {current.plan_id}")])


def _save(store: PlanStore, record: PlanRecord, plan: Plan, user: str, figures=None,
          job_id: str | None = None) -> Saved:
    saved = store.add_plan(plan, service_area=record.service_area, created_by=user,
                           job_id=job_id,
                           parameters={"parent": record.plan_id, "message": plan.message,
                                       **({"rebalance": figures} if figures else {})},
                           index_writer=write_index)
    return Saved(plan_id=saved.plan_id, parent=record.plan_id,
                 service_area=saved.service_area, version=saved.version,
                 message=plan.message, figures=figures or {})


def _store_fields(body: Edit) -> None:
    """422 naming each field a store edit lacks."""
    need = ["store_id"] + (["lng", "lat", "crs"] if body.kind != "close_store" else [])
    missing = [f for f in need if getattr(body, f) is None]
    if missing:
        raise ProblemError(422, f"{body.kind} needs {', '.join(missing)}",
                           kind="validation-error", title="Invalid request",
                           errors=[FieldError(field=f, message="required for "
                                              f"{body.kind}", fix=f"give {f}")
                                   for f in missing])


def _apply_store(plan: Plan, body: Edit, author: str) -> Plan:
    from territory import stores

    kw = {"author": author, "message": body.message}
    sid = body.store_id or ""
    if body.kind == "add_store":
        return stores.add_store(plan, sid, body.lng, body.lat, crs=body.crs, name=body.name,
                                **kw)
    if body.kind == "move_store":
        return stores.move_store(plan, sid, body.lng, body.lat, crs=body.crs, **kw)
    return stores.close_store(plan, sid, **kw)


def _apply_edit(plan: Plan, body: Edit, author: str) -> Plan:
    from territory import edits
    from territory.graph import build_graph

    if body.kind.endswith("_store"):  # a store edit moves no unit: no graph needed
        return _apply_store(plan, body, author)
    graph = build_graph(plan.units)
    kw = {"author": author, "message": body.message}
    if body.kind == "move":
        return edits.move_units(plan, graph, body.units, body.to or "", **kw)
    if body.kind in ("lock", "unlock"):
        return edits.set_lock(plan, graph, unit_ids=body.units, grids=body.grids,
                              lock=body.kind == "lock", **kw)
    if body.kind == "split":
        return edits.split_grid(plan, graph, body.grid or "", parts=body.parts, **kw)
    if body.kind == "merge":
        if len(body.grids) != 2:
            raise ProblemError(422, "merge needs grids: [keep, absorb]",
                               kind="validation-error")
        return edits.merge_grids(plan, graph, body.grids[0], body.grids[1], **kw)
    if body.kind == "remove":
        return edits.remove_grid(plan, graph, body.grid or "", **kw)
    return edits.set_tolerance(plan, graph, body.measure or "", body.tolerance or 0.0, **kw)


@router.get("/{plan_id}/history", response_model=list[Version], responses=ERRORS)
async def history(record: PlanDep, store: StoreDep, user: Reader) -> list[Version]:
    """The versions the plan descends from, oldest first, then the plan itself."""
    plan = await run_in_threadpool(Plan.load, store.plan_path(record.plan_id))
    return [Version(**{k: h.get(k) or ("" if k in ("author", "message") else None)
                       for k in Version.model_fields})
            for h in (*plan.history, plan.record())]


@router.get("/{plan_id}/diff/{other_id}", responses=ERRORS)
async def diff(record: PlanDep, other_id: str, store: StoreDep, user: Reader,
               limit: Annotated[int, Query(ge=1, le=10_000)] = 1_000) -> dict[str, Any]:
    """Units that change grid from this plan to ``other_id``, grids touched, balance."""
    from territory.diff import diff_plans

    other = store.get_plan(other_id)
    if other is None:
        raise ProblemError(404, f"no plan {other_id!r}", kind="not-found")

    def work() -> dict[str, Any]:
        d = diff_plans(Plan.load(store.plan_path(record.plan_id)),
                       Plan.load(store.plan_path(other_id)))
        return {"count": len(d.changes),
                "changes": d.changes.head(limit).to_dict(orient="records"),
                "stores": json.loads(d.stores.to_json(orient="records")),
                "grids": d.grids.to_dict(orient="records"),
                "balance": d.balance.to_dict(orient="records")}

    try:
        return await run_in_threadpool(work)
    except TerritoryError as exc:
        raise ProblemError(422, str(exc), kind="invalid-input") from None


@router.post("/{plan_id}/edits", status_code=status.HTTP_201_CREATED, responses=ERRORS)
async def edit(record: PlanDep, body: Edit, store: StoreDep, user: Planner) -> Saved:
    """Apply one edit to the current version: 201 with the new version, 409 when ``base``
    is stale, 422 with the broken rule and the fix when the edit is refused.

    Store edits (``add_store``, ``move_store``, ``close_store``) change no grid; closing
    the store a main grid is centred on flags that grid ``without a store`` and the new
    version's message says so."""
    if body.kind.endswith("_store"):
        _store_fields(body)
    _check_base(store, record, body.base)

    def work() -> Saved:
        plan = Plan.load(store.plan_path(record.plan_id))
        return _save(store, record, _apply_edit(plan, body, user.name), user.name)

    try:
        return await run_in_threadpool(work)
    except TerritoryError as exc:
        raise ProblemError(422, territory_problem(exc).detail, kind="edit-refused",
                           title="Edit refused") from None


def _queue(store: PlanStore, runner, response: Response, *, service_area: str,
           user: str, request: dict[str, Any], job_id: str | None = None) -> JobPublic:
    """Create the job, hand it to the runner and answer 202 with its ``Location``."""
    job = store.create_job(job_id=job_id or store.new_job_id(), service_area=service_area,
                           created_by=user, runner=runner.id, request=request)
    runner.submit(job.job_id)
    response.status_code = status.HTTP_202_ACCEPTED
    response.headers["Location"] = f"/jobs/{job.job_id}"
    return public_job(job)


@router.post("/{plan_id}/rebalance", status_code=202, response_model=JobPublic,
             responses=ERRORS, summary="Rebalance the current version within a disruption "
                                       "budget (a background job)")
def rebalance(record: PlanDep, body: RebalanceRequest, store: StoreDep, user: Planner,
              runner: RunnerDep, settings: SettingsDep, response: Response) -> JobPublic:
    """Queue the rebalance of ``base``; poll the job at ``Location``: its ``plan_id`` is the
    new version (parent ``base``), whose ``parameters.rebalance`` holds the figures (moved,
    worst excess, the smallest budget that works when the given one does not). 409 when
    ``base`` is stale, now or when the job ends."""
    _check_base(store, record, body.base)
    check_capacity(store, settings)
    return _queue(store, runner, response, service_area=record.service_area,
                  user=user.name, request={"kind": "rebalance", "plan_id": record.plan_id,
                                           **body.model_dump()})


GRID_SUFFIXES = (".geojson", ".json", ".gpkg", ".kml", ".zip")


def _check_grids(path: Path, field: str, params: ImportRequest) -> None:
    """Read the drawn layer now: a file GDAL cannot read is 400, a column it lacks 422,
    both before a job is queued."""
    from territory.importer import read_grids

    try:
        pyogrio.read_info(path)
    except (pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError) as exc:
        raise field_problem(field, f"the uploaded {field} file is not a layer GDAL reads "
                            f"({str(exc).replace(str(path), field)})",
                            f"upload a {'/'.join(GRID_SUFFIXES)} file of polygons",
                            status=400, kind="malformed-file",
                            title="Malformed file") from None
    try:
        read_grids(path, grid_column=params.grid_column, parent_column=params.parent_column,
                   crs=params.grids_crs)
    except TerritoryError as exc:
        raise ProblemError.of(territory_problem(exc, paths={str(path): f"the {field} file"},
                                                prefix="request.parameters.")) from None


@router.post("/import", status_code=202, response_model=JobPublic, responses=ERRORS,
             summary="Import a drawn grid map: audit it and snap it to units (a background "
                     "job)")
def import_plan(
    user: Planner, store: StoreDep, runner: RunnerDep, settings: SettingsDep,
    response: Response,
    boundaries: Annotated[UploadFile, File(description="GeoPackage, GeoJSON or zipped "
                                                      "Shapefile of the areas (branches)")],
    grids: Annotated[UploadFile, File(description="The drawn main grids: GeoJSON, "
                                                 "GeoPackage, KML or zipped Shapefile")],
    customers: Annotated[UploadFile, File(description="CSV or Parquet with lng/lat")],
    request: Annotated[str, Form(description="JSON: parameters (grid_column, parent_column, "
                                             "grids_crs, units and balance), service_area "
                                             "and how to read the files (see ImportUpload)",
                                 examples=['{"parameters": {"grid_column": "name"}}'])],
    sub_grids: Annotated[UploadFile | None, File(description="The drawn sub-grids")] = None,
    communities: Annotated[UploadFile | None, File()] = None,
    stores: Annotated[UploadFile | None, File()] = None,
    key_accounts: Annotated[UploadFile | None, File()] = None,
) -> JobPublic:
    """Queue the import; poll the job at ``Location``; once done its ``plan_id`` is the
    snapped plan (a version of the service area) and ``GET /plans/{plan_id}/diagnosis`` the
    audit of the map as drawn (the keys of ``territory import``'s ``diagnosis.json``)."""
    check_capacity(store, settings)
    body = form_request(request, ImportUpload, "import request")
    area = body.service_area or Path(boundaries.filename or "import").stem
    points_crs = resolve_crs(body.points_crs, settings, area, "request.points_crs")
    files = {"boundaries": (boundaries, upload_suffix(boundaries, "boundaries", BOUNDARY_SUFFIXES))}
    for name, upload in (("grids", grids), ("sub_grids", sub_grids)):
        if upload is not None:
            if (upload.size or 0) > settings.max_grid_layer_bytes:
                raise too_large(f"the {name} file is {upload.size} bytes, over the "
                                f"{settings.max_grid_layer_bytes} a drawn layer may have",
                                name, "simplify the drawing or split the service area")
            files[name] = (upload, upload_suffix(upload, name, GRID_SUFFIXES))
    for name, upload in (("customers", customers), ("communities", communities),
                         ("stores", stores), ("key_accounts", key_accounts)):
        if upload is not None:
            files[name] = (upload, upload_suffix(upload, name, POINT_SUFFIXES))
    job_id = store.new_job_id()
    source: dict[str, Any] = body.model_dump(exclude={"service_area", "parameters",
                                                      "message"})
    source["kind"], source["points_crs"] = "files", points_crs
    for name, (upload, suffix) in files.items():
        source[name] = str(save_upload(store, job_id, name, suffix, upload.file))
    try:
        for name in ("grids", "sub_grids"):
            if name in source:
                _check_grids(Path(source[name]), name, body.parameters)
    except ProblemError:
        shutil.rmtree(store.upload_dir(job_id), ignore_errors=True)
        raise
    return _queue(store, runner, response, service_area=area, user=user.name,
                  job_id=job_id, request={"kind": "import", "source": source,
                                          "parameters": body.parameters.model_dump(),
                                          "message": body.message})


@router.get("/{plan_id}/diagnosis", responses=ERRORS,
            summary="The audit of an imported map as drawn")
def diagnosis(record: PlanDep, store: StoreDep, user: Reader) -> dict[str, Any]:
    """Overlaps, gaps, multi-part grids, slivers, grids crossing a branch line, sub-grids
    outside their main grid, repaired geometries, balance per level and what snapping
    changed: the keys of ``territory import``'s ``diagnosis.json`` (areas in m²)."""
    path = store.plan_dir(record.plan_id) / DIAGNOSIS
    if not path.is_file():
        raise ProblemError(404, f"plan {record.plan_id} was not imported from a drawn map: "
                                "it has no diagnosis", kind="not-found",
                           title="No diagnosis")
    return json.loads(path.read_text(encoding="utf-8"))


#: the imported plan's audit, in its folder beside the plan
DIAGNOSIS = "diagnosis.json"


# -- the jobs' bodies (in the job's child process) -----------------------------------------
def run_redraw(store: PlanStore, job: JobRecord, progress: Progress, warn: Warn) -> str:
    """Run a rebalance or an import job (:func:`api.jobs.run_job` maps its errors); the id
    of the version it stored."""
    if job.request["kind"] == "rebalance":
        return _run_rebalance(store, job, progress)
    return _run_import(store, job, progress, warn)


def _run_rebalance(store: PlanStore, job: JobRecord, progress: Progress) -> str:
    from territory.rebalance_run import rebalance_plan

    request = job.request
    record = store.get_plan(request["plan_id"])
    if record is None:
        raise ProblemError(404, f"plan {request['plan_id']} was deleted before its rebalance "
                                "ran", kind="not-found")
    plan = Plan.load(store.plan_path(record.plan_id))
    done = rebalance_plan(plan, request["budget"], tolerance=request["tolerance"],
                          depth=request["depth"], time_limit=request["time_limit"],
                          lock=request["lock"], headcount=request.get("headcount") or None,
                          author=job.created_by,
                          message=request["message"], progress=progress)
    progress(SAVING, 0, None)
    _check_current(store, record.service_area, record.plan_id)  # none saved meanwhile
    saved = _save(store, record, done.result.plan, job.created_by, done.figures(),
                  job_id=job.job_id)
    return saved.plan_id


def _run_import(store: PlanStore, job: JobRecord, progress: Progress, warn: Warn) -> str:
    from api.jobs import MalformedInput
    from territory.import_run import import_map
    from territory.importer import read_grids

    request, source = job.request, job.request["source"]
    params = ImportRequest.model_validate(request["parameters"])
    inputs = read_inputs(source, warn)
    try:
        main, sub = (None if not source.get(name) else read_grids(
            source[name], grid_column=params.grid_column, parent_column=params.parent_column,
            crs=params.grids_crs) for name in ("grids", "sub_grids"))
    except InvalidInputError as exc:
        raise MalformedInput(exc) from exc
    done = import_map(inputs, main, sub, params, source="the uploaded grids file",
                      author=job.created_by, message=request["message"], progress=progress)
    progress(SAVING, 0, None)

    def write(plan: Plan, folder: Path) -> None:
        write_index(plan, folder)
        write_json(folder / DIAGNOSIS, done.diagnosis.to_json())

    record = store.add_plan(done.plan, service_area=job.service_area,
                            created_by=job.created_by, job_id=job.job_id,
                            parameters={"imported": True, "message": request["message"],
                                        **request["parameters"]},
                            index_writer=write)
    return record.plan_id
