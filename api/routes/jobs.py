"""Plan jobs: poll a job to follow a plan being computed, and find the plan it made."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from api.auth import Reader
from api.deps import StoreDep
from api.problems import ERRORS, ProblemError
from api.schemas import MAX_LIMIT, JobProgress, JobPublic, JobsPublic, JobStatus, Problem
from api.store import JobRecord

router = APIRouter(prefix="/jobs", tags=["jobs"])


def public_job(job: JobRecord) -> JobPublic:
    return JobPublic(
        job_id=job.job_id, status=JobStatus(job.status),
        progress=JobProgress(stage=job.stage, done=job.done, total=job.total),
        service_area=job.service_area, plan_id=job.plan_id,
        error=Problem.model_validate(job.error) if job.error else None,
        created=job.created, started=job.started, finished=job.finished,
        created_by=job.created_by,
    )


@router.get("", response_model=JobsPublic, responses=ERRORS,
            summary="List plan jobs, newest first")
def list_jobs(
    user: Reader, store: StoreDep,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> JobsPublic:
    jobs, count = store.list_jobs(limit=limit, offset=offset)
    return JobsPublic(data=[public_job(j) for j in jobs], count=count)


@router.get("/{job_id}", response_model=JobPublic, responses=ERRORS,
            summary="One plan job: status and progress")
def get_job(job_id: str, user: Reader, store: StoreDep) -> JobPublic:
    """``status`` is queued, running, done (``plan_id`` set) or failed (``error`` set)."""
    job = store.get_job(job_id)
    if job is None:
        raise ProblemError(404, f"no job {job_id!r}; GET /jobs lists them", kind="not-found",
                           title="Job not found")
    return public_job(job)
