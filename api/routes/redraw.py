"""Redrawing a stored plan: history, diff, edits and rebalance (planner role for changes).

An edit or a rebalance names the version it starts from (``base``). When that is not the
service area's latest version any more (another planner saved one since), the request is
refused with 409 and the current version, never merged silently. The result is stored as the
area's next version (its parent is ``base``); a version in force is never changed.

Edits and rebalances run in the request's worker thread (``run_in_threadpool``): they take
seconds on a city, not minutes (rebalance is bounded by its ``time_limit``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, status
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from api.assignment import write_index
from api.auth import Planner, Reader
from api.deps import PlanDep, StoreDep
from api.problems import ERRORS, ProblemError, territory_problem
from api.store import PlanRecord, PlanStore
from territory.errors import TerritoryError
from territory.plan import Plan

router = APIRouter(prefix="/plans", tags=["redraw"])


class Edit(BaseModel):
    """One edit of the plan ``base`` (see :mod:`territory.edits`)."""

    base: str = Field(description="The plan id the edit starts from (the current version)")
    kind: Literal["move", "lock", "unlock", "split", "merge", "remove", "tolerance"]
    units: list[str] = Field(default_factory=list, description="Unit ids (move, lock)")
    grids: list[str] = Field(default_factory=list, description="Grid ids (lock: whole grids; "
                                                               "merge: keep, absorb)")
    to: str | None = Field(None, description="Target grid of a move")
    grid: str | None = Field(None, description="Grid to split or remove")
    parts: int = Field(2, ge=2, le=10)
    measure: str | None = None
    tolerance: float | None = Field(None, gt=0, lt=1)
    message: str = Field("", max_length=500)


class RebalanceRequest(BaseModel):
    base: str = Field(description="The plan id to rebalance (the current version)")
    budget: str = Field(description="MEASURE=VALUE[%], e.g. customers=3%",
                        pattern=r"^\w+=[0-9.]+%?$")
    tolerance: float | None = Field(None, gt=0, lt=1)
    time_limit: float = Field(30.0, gt=0, le=300)
    message: str = Field("", max_length=500)


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
    figures: dict[str, Any] = Field(default_factory=dict)


def _latest(store: PlanStore, area: str) -> PlanRecord:
    records, _ = store.list_plans(service_area=area, limit=1_000, offset=0)
    return max(records, key=lambda r: r.version)


def _check_base(store: PlanStore, record: PlanRecord, base: str) -> None:
    if base != record.plan_id:
        raise ProblemError(422, f"base {base!r} is not the plan of this URL "
                                f"({record.plan_id}); name the version you edit",
                           kind="validation-error")
    current = _latest(store, record.service_area)
    if current.plan_id != base:
        raise ProblemError(409, f"plan {base} is not the current version of "
                                f"{record.service_area}: {current.plan_id} (version "
                                f"{current.version}) was saved since; reload it and edit "
                                "that", kind="stale-version", title="Stale version",
                           headers={"X-Current-Version": current.plan_id})


def _save(store: PlanStore, record: PlanRecord, plan: Plan, user: str, figures=None) -> Saved:
    saved = store.add_plan(plan, service_area=record.service_area, created_by=user,
                           parameters={"parent": record.plan_id, "message": plan.message},
                           index_writer=write_index)
    return Saved(plan_id=saved.plan_id, parent=record.plan_id,
                 service_area=saved.service_area, version=saved.version,
                 figures=figures or {})


def _apply_edit(plan: Plan, body: Edit, author: str) -> Plan:
    from territory import edits
    from territory.graph import build_graph

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
                "grids": d.grids.to_dict(orient="records"),
                "balance": d.balance.to_dict(orient="records")}

    try:
        return await run_in_threadpool(work)
    except TerritoryError as exc:
        raise ProblemError(422, str(exc), kind="invalid-input") from None


@router.post("/{plan_id}/edits", status_code=status.HTTP_201_CREATED, responses=ERRORS)
async def edit(record: PlanDep, body: Edit, store: StoreDep, user: Planner) -> Saved:
    """Apply one edit to the current version: 201 with the new version, 409 when ``base``
    is stale, 422 with the broken rule and the fix when the edit is refused."""
    _check_base(store, record, body.base)

    def work() -> Saved:
        plan = Plan.load(store.plan_path(record.plan_id))
        return _save(store, record, _apply_edit(plan, body, user.name), user.name)

    try:
        return await run_in_threadpool(work)
    except TerritoryError as exc:
        raise ProblemError(422, territory_problem(exc).detail, kind="edit-refused",
                           title="Edit refused") from None


@router.post("/{plan_id}/rebalance", status_code=status.HTTP_201_CREATED, responses=ERRORS)
async def rebalance(record: PlanDep, body: RebalanceRequest, store: StoreDep,
                    user: Planner) -> Saved:
    """Rebalance the current version within a disruption budget (a new version)."""
    from territory.graph import build_graph
    from territory.rebalance import Budget
    from territory.rebalance import rebalance as run

    _check_base(store, record, body.base)

    def work() -> Saved:
        plan = Plan.load(store.plan_path(record.plan_id))
        res = run(plan, build_graph(plan.units), Budget.parse(body.budget, plan),
                  tolerance=body.tolerance, time_limit=body.time_limit, author=user.name,
                  message=body.message)
        figures = {"feasible": res.feasible, "moved_units": res.moved_units,
                   "moved_budget": res.moved_budget, "max_deviation": res.max_deviation,
                   "smallest_budget": res.smallest_budget, "message": res.message}
        return _save(store, record, res.plan, user.name, figures)

    try:
        return await run_in_threadpool(work)
    except TerritoryError as exc:
        raise ProblemError(422, str(exc), kind="invalid-input") from None
