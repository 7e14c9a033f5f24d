"""Staffing of a stored plan: allocate a roster to its grids as a background job.

``POST /plans/{plan_id}/staffing`` (planner) takes the roster CSV, and optionally a counts CSV
(headcount by branch and role) and a stores CSV (home bases given as store ids), answers 202
with the job to poll at ``Location``. The job runs in a child process like a plan job
(:mod:`api.jobs`) and writes the same files as ``territory staff``; read them with
``GET /plans/{plan_id}/staffing/{job_id}`` (the summary per role) and
``GET /plans/{plan_id}/staffing/{job_id}/{table}`` (``staff``, ``grids_staffing`` or
``roles_staffing`` as CSV).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Form, Response, UploadFile, status
from fastapi.responses import FileResponse

from api.auth import Planner, Reader
from api.deps import PlanDep, RunnerDep, StoreDep
from api.jobs import save_upload
from api.problems import ERRORS, ProblemError, field_problem, make_problem, territory_problem
from api.routes.jobs import public_job
from api.schemas import JobPublic
from api.store import PlanStore, now
from territory.errors import TerritoryError

router = APIRouter(prefix="/plans/{plan_id}/staffing", tags=["staffing"])

KIND = "staffing"


def result_dir(store: PlanStore, plan_id: str, job_id: str) -> Path:
    return store.plan_dir(plan_id) / "staffing" / job_id


@router.post("", status_code=202, response_model=JobPublic, responses=ERRORS,
             summary="Allocate a roster to the plan's grids (a background job)")
def create_staffing(
    record: PlanDep, user: Planner, store: StoreDep, runner: RunnerDep, response: Response,
    roster: Annotated[UploadFile, File(description="Roster CSV: person_id, name, role, hours, "
                                                   "home_store_id or home_lng/home_lat/"
                                                   "home_crs, current_grid, branch_id")],
    counts: Annotated[UploadFile | None, File(description="CSV branch_id, role, headcount")]
    = None,
    stores: Annotated[UploadFile | None, File(description="CSV store_id, lng, lat")] = None,
    stores_crs: Annotated[str | None, Form(description="CRS of the stores file")] = None,
    within: Annotated[float, Form(ge=0, le=10, description="Band around the mean workload "
                                                          "per person, e.g. 0.1")] = 0.10,
) -> JobPublic:
    """Queue the allocation; poll the job at ``Location``; the job's ``plan_id`` is the plan."""
    if stores is not None and not stores_crs:
        raise field_problem("stores_crs", "stores_crs is required with a stores file: no "
                            "system is assumed", "wgs84, cgcs2000, gcj02, bd09 or EPSG:<code>")
    job_id = store.new_job_id()
    files = {}
    for name, upload in (("roster", roster), ("counts", counts), ("stores", stores)):
        if upload is not None:
            if Path(upload.filename or "").suffix.lower() not in (".csv", ".txt"):
                raise ProblemError(415, f"{name}: file {upload.filename!r} is not a CSV",
                                   kind="unsupported-file", title="Unsupported file")
            files[name] = str(save_upload(store, job_id, name, ".csv", upload.file))
    job = store.create_job(
        job_id=job_id, service_area=record.service_area, created_by=user.name,
        runner=runner.id,
        request={"kind": KIND, "plan_id": record.plan_id, "files": files,
                 "stores_crs": stores_crs, "within": within},
    )
    runner.submit(job.job_id)
    response.status_code = status.HTTP_202_ACCEPTED
    response.headers["Location"] = f"/jobs/{job.job_id}"
    return public_job(job)


def latest_staff(store: PlanStore, plan_id: str) -> Path | None:
    """``staff.csv`` of the plan's most recently finished staffing job (its
    ``staffing.json`` is written last), or None when none has finished."""
    done = list((store.plan_dir(plan_id) / "staffing").glob("*/staffing.json"))
    if not done:
        return None
    return max(done, key=lambda p: (p.stat().st_mtime_ns, p.parent.name)).parent / "staff.csv"


def _done_dir(store: PlanStore, plan_id: str, job_id: str) -> Path:
    folder = result_dir(store, plan_id, job_id)
    if not (folder / "staffing.json").exists():
        raise ProblemError(404, f"no finished staffing {job_id!r} of plan {plan_id!r}; poll "
                                f"GET /jobs/{job_id} until it is done", kind="not-found",
                           title="Staffing not found")
    return folder


@router.get("/{job_id}", summary="The staffing's summary per role", responses=ERRORS)
def get_staffing(record: PlanDep, job_id: str, user: Reader, store: StoreDep) -> dict:
    """Per role: staff, workload, mean and highest workload per person, the worst grid and
    the branch headcount that would bring it within the band."""
    folder = _done_dir(store, record.plan_id, job_id)
    return json.loads((folder / "staffing.json").read_text(encoding="utf-8"))


@router.get("/{job_id}/{table}", response_class=FileResponse, responses=ERRORS,
            summary="A staffing table as CSV")
def get_staffing_table(record: PlanDep, job_id: str,
                       table: Literal["staff", "grids_staffing", "roles_staffing"],
                       user: Reader, store: StoreDep) -> FileResponse:
    folder = _done_dir(store, record.plan_id, job_id)
    return FileResponse(folder / f"{table}.csv", media_type="text/csv",
                        filename=f"{record.plan_id}-{table}.csv")


def run_staffing(store: PlanStore, job_id: str, request: dict[str, Any]) -> None:
    """Child-process body of a staffing job (called by :func:`api.jobs.run_job`)."""
    from territory.plan import Plan
    from territory.staffing import (
        StaffAllocator,
        read_counts,
        read_roster,
        read_stores,
        write_staffing,
    )

    plan_id, files = request["plan_id"], request["files"]
    try:
        store.update_job(job_id, stage="reading the roster")
        roster = read_roster(files["roster"])
        counts = read_counts(files["counts"]) if "counts" in files else None
        stores = (read_stores(files["stores"], crs=request["stores_crs"])
                  if "stores" in files else None)
        plan = Plan.load(store.plan_path(plan_id))
        store.update_job(job_id, stage="allocating staff")
        result = StaffAllocator(within=request["within"]).solve(plan, roster, counts=counts,
                                                                stores=stores)
        write_staffing(result, result_dir(store, plan_id, job_id))
        store.update_job(job_id, status="done", stage="done", plan_id=plan_id, finished=now())
    except TerritoryError as exc:
        store.update_job(job_id, status="failed", finished=now(),
                         error=territory_problem(exc).model_dump())
    except Exception as exc:  # the job must end with a status, whatever happened
        store.update_job(job_id, status="failed", finished=now(), error=make_problem(
            500, f"the staffing job failed unexpectedly ({type(exc).__name__}: {exc})",
            kind="internal-error").model_dump())
    finally:
        shutil.rmtree(store.upload_dir(job_id), ignore_errors=True)
