"""Plans: create (as a background job), list, read, delete, activate, metrics.

A plan is computed from either a shipped demo city with synthetic customers, files already in
the data directory's ``datasets/`` folder (``POST /plans``), or uploaded files
(``POST /plans/upload``). Both answer 202 with the job to poll at ``Location``; the job's
``plan_id`` names the plan once it is done.

Each plan belongs to a service area. ``POST /plans/{id}/activate`` puts it in force from a
date; the area's plan in force on any day is the one with the latest activation on or before
it, so assignment can be asked about a past or future day and gets the plan of that day.
"""

from __future__ import annotations

import shutil
from collections import defaultdict
from datetime import date
from pathlib import Path
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, File, Form, Query, Request, Response, UploadFile, status
from pydantic import BaseModel, ValidationError

from api.auth import Planner, Principal, Reader
from api.deps import PlanDep, RunnerDep, SettingsDep, StoreDep, Today, resolve_crs
from api.jobs import POINT_TABLES, JobRunner, hand_over, plan_spec, save_upload
from api.problems import (
    ERRORS,
    ProblemError,
    field_errors,
    field_problem,
    territory_problem,
    unsupported_file,
)
from api.routes.jobs import public_job
from api.schemas import (
    MAX_LIMIT,
    Activate,
    DatasetSource,
    Day,
    FieldError,
    JobPublic,
    PlanCreate,
    PlanParameters,
    PlanPublic,
    PlansPublic,
    PlanState,
    PlanUpload,
    Window,
)
from api.settings import Settings
from api.store import PlanRecord, PlanStore, WindowRecord
from territory.errors import TerritoryError

router = APIRouter(prefix="/plans", tags=["plans"])

M = TypeVar("M", bound=BaseModel)

BOUNDARY_SUFFIXES = (".gpkg", ".geojson", ".json", ".zip", ".fgb")
POINT_SUFFIXES = (".csv", ".txt", ".parquet")


# -- views ---------------------------------------------------------------------------------
def public_window(w: WindowRecord) -> Window:
    return Window(**vars(w))


def plan_state(windows: list[WindowRecord], on: date) -> PlanState:
    """In force on ``on``; else scheduled for later; else retired; else never activated."""
    if any(w.effective_from <= on and (w.effective_to is None or on < w.effective_to)
           for w in windows):
        return PlanState.in_force
    if any(w.effective_from > on for w in windows):
        return PlanState.scheduled
    return PlanState.retired if windows else PlanState.draft


def public_plan(record: PlanRecord, windows: list[WindowRecord], on: date) -> PlanPublic:
    return PlanPublic(
        plan_id=record.plan_id, service_area=record.service_area, version=record.version,
        state=plan_state(windows, on), created=record.created, created_by=record.created_by,
        job_id=record.job_id, measures=record.measures, parameters=record.parameters,
        n_units=record.n_units, n_grids=record.n_grids,
        windows=[public_window(w) for w in windows],
    )


def _plans_page(store: PlanStore, records: list[PlanRecord], count: int, on: date
                ) -> PlansPublic:
    by_plan: dict[str, list[WindowRecord]] = defaultdict(list)
    for area in {r.service_area for r in records}:
        for w in store.windows(service_area=area):
            by_plan[w.plan_id].append(w)
    return PlansPublic(data=[public_plan(r, by_plan[r.plan_id], on) for r in records],
                       count=count)


# -- creation ------------------------------------------------------------------------------
def _precheck(store: PlanStore, runner: JobRunner, settings: Settings, job_id: str, *,
              source: dict[str, Any], parameters: PlanParameters, prefix: str) -> None:
    """Refuse (422, naming the fields and the fix) a request whose parameters or targets
    cannot work, before a job is queued; hand the units built for the check to the job.

    The parameters are checked at once; the units only when that is quick: a large demo
    city, or a check past ``precheck_seconds``, is left to the job's first stage, which
    fails the job with the same problem. (This route is a plain function, so FastAPI runs
    it in a worker thread: the event loop is never held up.)"""
    try:
        plan_spec(parameters, settings.solver_workers).validate(
            centred=parameters.stores_as_centres)
        quick = source["kind"] != "demo" or \
            source["customers"] <= settings.precheck_max_customers
        prepared = runner.precheck(source, parameters, timeout=settings.precheck_seconds) \
            if quick else None
    except TerritoryError as exc:
        shutil.rmtree(store.upload_dir(job_id), ignore_errors=True)
        raise ProblemError.of(territory_problem(exc, prefix=prefix)) from None
    if prepared is not None:
        hand_over(store, job_id, prepared)


def _submit(store: PlanStore, runner: JobRunner, settings: Settings, user: Principal,
            response: Response, *, service_area: str, source: dict[str, Any],
            parameters: PlanParameters, job_id: str | None = None,
            prefix: str = "parameters.") -> JobPublic:
    """Pre-check the request, queue a plan job and answer 202 with its Location."""
    job_id = job_id or store.new_job_id()
    _precheck(store, runner, settings, job_id, source=source, parameters=parameters,
              prefix=prefix)
    job = store.create_job(
        job_id=job_id, service_area=service_area, created_by=user.name, runner=runner.id,
        request={"source": source, "parameters": parameters.model_dump(mode="json")},
    )
    runner.submit(job.job_id)
    response.status_code = status.HTTP_202_ACCEPTED
    response.headers["Location"] = f"/jobs/{job.job_id}"
    return public_job(job)


def check_capacity(store: PlanStore, settings: Settings) -> None:
    pending = store.pending_jobs()
    if pending >= settings.max_pending_jobs:
        raise ProblemError(429, f"{pending} plan jobs are queued or running; wait for one "
                                "to finish", kind="busy", title="Too many plan jobs",
                           headers={"Retry-After": "30"})


def _dataset(store: PlanStore, name: str | None, field: str, suffixes: tuple[str, ...]
             ) -> str | None:
    """The absolute path of a dataset named relative to ``datasets/``; 422 if unusable."""
    if name is None:
        return None
    root = store.datasets_dir.resolve()
    path = None if "\0" in name else (root / name).resolve()
    problem = None
    if path is None:
        problem = ("holds a NUL byte, which no file name can", "GET /datasets lists the files "
                   "you can name")
    elif not path.is_relative_to(root) or path == root:
        problem = ("is outside the datasets folder", "name a file inside datasets/")
    elif not path.is_file():
        problem = ("does not exist", "GET /datasets lists the files you can name")
    elif path.suffix.lower() not in suffixes:
        problem = (f"is not one of {list(suffixes)}", f"use a {'/'.join(suffixes)} file")
    if problem:
        raise field_problem(field, f"dataset {name!r} {problem[0]}", problem[1])
    return str(path)


@router.post("", status_code=202, response_model=JobPublic, responses=ERRORS,
             summary="Create a plan from a demo city or from datasets in the data directory")
def create_plan(body: PlanCreate, user: Planner, store: StoreDep, runner: RunnerDep,
                settings: SettingsDep, response: Response) -> JobPublic:
    """Queue a plan job; poll the job at ``Location`` until it is done or failed."""
    check_capacity(store, settings)
    src = body.source
    if isinstance(src, DatasetSource):
        source = src.model_dump(exclude={"kind"}) | {"kind": "files"}
        source["boundaries"] = _dataset(store, src.boundaries, "source.boundaries",
                                        BOUNDARY_SUFFIXES)
        for name in POINT_TABLES:
            source[name] = _dataset(store, getattr(src, name), f"source.{name}",
                                    POINT_SUFFIXES)
        area = body.service_area or Path(src.boundaries).stem
        source["points_crs"] = resolve_crs(src.points_crs, settings, area, "source.points_crs")
    else:
        source, area = src.model_dump(), body.service_area or src.city
    return _submit(store, runner, settings, user, response, service_area=area,
                   source=source, parameters=body.parameters)


def upload_suffix(upload: UploadFile, field: str, suffixes: tuple[str, ...]) -> str:
    name = upload.filename or ""
    suffix = Path(name).suffix.lower()
    if suffix not in suffixes:
        raise unsupported_file(field, f"file {name!r} is not one of {list(suffixes)}",
                               f"upload a {'/'.join(suffixes)} file")
    return suffix


def form_request(text: str, model: type[M], what: str = "plan request") -> M:
    """The JSON ``request`` part of a multipart upload as ``model``; 422 naming each bad
    field as ``request.<field>``."""
    try:
        return model.model_validate_json(text)
    except ValidationError as exc:
        errors = [FieldError(field=f"request.{e.field}", message=e.message, fix=e.fix)
                  for e in field_errors(exc.errors())]
        raise ProblemError(422, f"the `request` part is not a valid {what}",
                           kind="validation-error", title="Invalid request",
                           errors=errors) from None


@router.post("/upload", status_code=202, response_model=JobPublic, responses=ERRORS,
             summary="Create a plan from uploaded boundary and point files")
def upload_plan(
    user: Planner, store: StoreDep, runner: RunnerDep, settings: SettingsDep,
    response: Response,
    boundaries: Annotated[UploadFile, File(description="GeoPackage, GeoJSON or zipped "
                                                      "Shapefile of the areas")],
    customers: Annotated[UploadFile, File(description="CSV or Parquet with lng/lat")],
    request: Annotated[str, Form(description="JSON: service_area, parameters and how to "
                                             "read the files (see PlanUpload)",
                                 examples=['{"parameters": {"main_grids": 12}}'])],
    communities: Annotated[UploadFile | None, File()] = None,
    stores: Annotated[UploadFile | None, File()] = None,
    key_accounts: Annotated[UploadFile | None, File()] = None,
) -> JobPublic:
    """Queue a plan job on the uploaded files (multipart/form-data)."""
    check_capacity(store, settings)
    body = form_request(request, PlanUpload)
    area = body.service_area or Path(boundaries.filename or "upload").stem
    points_crs = resolve_crs(body.points_crs, settings, area, "request.points_crs")
    files = {"boundaries": (boundaries, upload_suffix(boundaries, "boundaries", BOUNDARY_SUFFIXES))}
    for name, upload in (("customers", customers), ("communities", communities),
                         ("stores", stores), ("key_accounts", key_accounts)):
        if upload is not None:
            files[name] = (upload, upload_suffix(upload, name, POINT_SUFFIXES))
    job_id = store.new_job_id()
    source: dict[str, Any] = body.model_dump(exclude={"service_area", "parameters"})
    source["kind"], source["points_crs"] = "files", points_crs
    for name, (upload, suffix) in files.items():
        source[name] = str(save_upload(store, job_id, name, suffix, upload.file))
    return _submit(store, runner, settings, user, response, service_area=area,
                   source=source, parameters=body.parameters, job_id=job_id,
                   prefix="request.parameters.")


# -- reading -------------------------------------------------------------------------------
@router.get("", response_model=PlansPublic, responses=ERRORS, summary="List plans")
def list_plans(
    user: Reader, store: StoreDep, on: Today,
    service_area: Annotated[str | None, Query(description="Only this area's plans")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> PlansPublic:
    """Newest first; ``count`` is the number of matching plans over all pages."""
    records, count = store.list_plans(service_area=service_area, limit=limit, offset=offset)
    return _plans_page(store, records, count, on)


@router.get("/effective", response_model=PlansPublic, responses=ERRORS,
            summary="The plan in force in each service area on a day")
def effective_plans(
    user: Reader, store: StoreDep, on: Today,
    service_area: Annotated[str | None, Query(description="Only this area")] = None,
    as_of: Annotated[Day | None, Query(description="The day (default today)")] = None,
) -> PlansPublic:
    windows = store.in_force(as_of or on, service_area)
    records = [r for w in windows if (r := store.get_plan(w.plan_id)) is not None]
    return _plans_page(store, records, len(records), on)


@router.get("/{plan_id}", response_model=PlanPublic, responses=ERRORS, summary="One plan")
def get_plan(plan: PlanDep, user: Reader, store: StoreDep, on: Today) -> PlanPublic:
    return public_plan(plan, store.windows(plan_id=plan.plan_id), on)


@router.get("/{plan_id}/metrics", responses=ERRORS,
            summary="Balance, compactness, contiguity and coverage of each level")
def get_metrics(plan: PlanDep, user: Reader) -> dict[str, Any]:
    """``territory.metrics.plan_metrics`` as computed when the plan was made."""
    return {"plan_id": plan.plan_id, "measures": plan.measures, **plan.metrics}


# -- changing ------------------------------------------------------------------------------
@router.delete("/{plan_id}", status_code=204, responses=ERRORS, summary="Delete a plan")
def delete_plan(plan: PlanDep, user: Planner, store: StoreDep, on: Today,
                request: Request) -> Response:
    """Refused (409) for a plan that is or was in force: past assignments must stay
    answerable. Deleting a scheduled plan cancels its schedule."""
    started = [w for w in store.windows(plan_id=plan.plan_id) if w.effective_from <= on]
    if started:
        raise ProblemError(
            409, f"plan {plan.plan_id} has been in force since {started[0].effective_from}; "
                 "it answers assignments as of those days and is kept",
            kind="in-force", title="Plan in force")
    store.delete_plan(plan.plan_id)
    request.app.state.indexes.forget(plan.plan_id)
    return Response(status_code=204)


@router.post("/{plan_id}/activate", response_model=PlanPublic, responses=ERRORS,
             summary="Put a plan in force in its service area from a date")
def activate_plan(plan: PlanDep, user: Planner, store: StoreDep, on: Today,
                  body: Activate | None = None) -> PlanPublic:
    """The plan becomes its area's plan from ``effective_from`` (today by default) until
    the next activation. A date that already has an activation is rescheduled to this plan.
    """
    start = (body.effective_from if body else None) or on
    if start < on:
        raise field_problem("effective_from", f"effective_from {start} is in the past "
                            f"(today is {on})", f"give {on} or a later day")
    store.activate(plan.plan_id, start, user.name)
    return public_plan(plan, store.windows(plan_id=plan.plan_id), on)
