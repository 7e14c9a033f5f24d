"""Dependencies shared by the routers: the app's settings, store and job runner, and "today".

They read ``request.app.state``, filled by :func:`api.main.create_app`, so a route never
reaches for a global and a test gets a fresh store by building a fresh app.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated
from zoneinfo import ZoneInfo

from fastapi import Depends, Request

from api.jobs import JobRunner
from api.problems import ProblemError, field_problem
from api.settings import Settings
from api.store import PlanRecord, PlanStore
from territory.crs import normalize_crs
from territory.errors import InvalidInputError


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_store(request: Request) -> PlanStore:
    return request.app.state.store


async def get_runner(request: Request) -> JobRunner:
    return request.app.state.runner


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[PlanStore, Depends(get_store)]
RunnerDep = Annotated[JobRunner, Depends(get_runner)]


def today_in(settings: Settings) -> date:
    """The date in the service's time zone: effective dates are local, not UTC."""
    return datetime.now(ZoneInfo(settings.timezone)).date()


async def today(settings: SettingsDep) -> date:
    return today_in(settings)


Today = Annotated[date, Depends(today)]


async def plan_or_404(store: StoreDep, plan_id: str) -> PlanRecord:
    """The stored plan named in the path, or a 404 that says how to find one."""
    record = store.get_plan(plan_id)
    if record is None:
        raise ProblemError(404, f"no plan {plan_id!r}; GET /plans lists the stored plans",
                           kind="not-found", title="Plan not found")
    return record


PlanDep = Annotated[PlanRecord, Depends(plan_or_404)]

CRS_FIX = "use wgs84, cgcs2000, gcj02, bd09 or EPSG:<code>"


def resolve_crs(crs: str | None, settings: Settings, service_area: str,
                field: str = "query.crs") -> str:
    """The request's crs (canonical), else the one configured for the service area (the
    settings' ``points_crs``); else a 422 naming ``field``: no system is ever assumed."""
    if crs is None:
        crs = settings.points_crs.get(service_area)
    if crs is None:
        raise field_problem(field, f"{field.rsplit('.', 1)[-1]} is required: no system is "
                            f"configured for the coordinates of service area "
                            f"{service_area!r}, and none is assumed",
                            f"{CRS_FIX}: the system your coordinates are in")
    try:
        return normalize_crs(crs)
    except InvalidInputError as exc:
        raise field_problem(field, str(exc), CRS_FIX) from None
