"""Liveness and readiness: open to all, so a load balancer needs no key."""

from __future__ import annotations

import functools
import sqlite3
from importlib.metadata import PackageNotFoundError, version

from fastapi import APIRouter

from api.deps import StoreDep
from api.problems import ProblemError, problem_response
from api.schemas import Health

router = APIRouter(tags=["health"])


@functools.cache
def package_version() -> str:
    """The installed package version (read once: the metadata lookup scans the disk)."""
    try:
        return version("territory")
    except PackageNotFoundError:
        return "unknown"


@router.get("/health", response_model=Health,
            responses={503: problem_response(503, "The plan store cannot be read")},
            summary="Is the service up and its store readable")
def health(store: StoreDep) -> Health:
    """503 when the catalogue cannot be read: the service cannot answer anything useful."""
    try:
        plans = store.count_plans()
    except (sqlite3.Error, OSError) as exc:
        raise ProblemError(503, f"the plan store cannot be read ({exc})",
                           kind="store-unavailable") from None
    return Health(status="ok", version=package_version(), plans=plans)
