"""Each main grid's own analysis over the service: the city page and a page or PDF per grid.

The pages are the core library's (:mod:`territory.reports`), drawn as ``territory report``
draws them: from the plan, the point tables its job read (kept beside it in the store:
value tiers, key accounts by type, the ranked community list) and the staff of its latest
finished staffing job (``POST /plans/{id}/staffing``), when it has them. Links on the
city page are the grids' safe file names (:func:`territory.filenames.safe_filename`), which
these routes map back to the grid ids, so an id holding ``/`` or ``..`` still has a page.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path as FsPath
from typing import Annotated

import pandas as pd
from fastapi import APIRouter, Depends, Path, Response
from fastapi.responses import HTMLResponse

from api.auth import Principal, require_role
from api.deps import PlanDep, StoreDep
from api.problems import ProblemError
from api.routes.maps import (
    _PRINTING,
    HTML_RESPONSES,
    LAYERS_CACHE_SIZE,
    PRINT_MEDIA,
    PRINT_RESPONSES,
    LayerCache,
    LayerCacheDep,
    content_disposition,
    file_stem,
)
from api.routes.staff import latest_staff
from api.settings import Role
from api.store import PlanStore
from territory.filenames import safe_filename
from territory.mapdata import PlanLayers, Tables
from territory.reports import (
    Figures,
    grid_figures,
    grid_html,
    grid_page,
    index_html,
    read_staff,
    write_pdf,
)

router = APIRouter(prefix="/plans/{plan_id}/reports", tags=["reports"])

#: Planners and viewers read the analyses (operations assign customers; they do not).
ReportReader = Annotated[Principal, Depends(require_role(Role.planner, Role.viewer))]
PageName = Annotated[str, Path(max_length=200, description="A main grid's page name: its id "
                                                            "as a safe file name, as the "
                                                            "city page links it")]


@dataclass(frozen=True)
class Analysis:
    """What a plan's pages are drawn from."""

    figures: Figures
    tables: Tables
    staff: pd.DataFrame | None


@lru_cache(maxsize=LAYERS_CACHE_SIZE)
def _analysis(store: PlanStore, layers: PlanLayers, plan_id: str, staff_csv: FsPath | None
              ) -> Analysis:
    """The city's figures, once per cached plan and staffing (a few seconds for a city):
    a plan's tables never change, and each staffing job has its own ``staff.csv``."""
    tables = store.read_tables(plan_id)
    staff = read_staff(staff_csv) if staff_csv is not None else None
    return Analysis(grid_figures(layers, tables, staff), tables, staff)


def analysis(store: PlanStore, cache: LayerCache, plan_id: str) -> tuple[PlanLayers, Analysis]:
    """The plan's layers and what its pages are drawn from."""
    layers = cache.layers(plan_id)
    return layers, _analysis(store, layers, plan_id, latest_staff(store, plan_id))


def _grid(figures: Figures, plan_id: str, name: str) -> str:
    """The main grid whose page is ``name``, or a 404 naming some."""
    for grid_id in figures.grids.index:
        if safe_filename(grid_id) == name:
            return grid_id
    examples = list(figures.grids.index[:3])
    raise ProblemError(404, f"plan {plan_id} has no main grid page {name!r}; its main grids "
                            f"are e.g. {examples} (GET /plans/{plan_id}/reports/index.html "
                            "links them all)", kind="not-found", title="Grid not found")


@router.get("/index.html", response_class=HTMLResponse, responses=HTML_RESPONSES,
            summary="The city's page: its figures and every main grid's, linked")
def report_index(user: ReportReader, plan: PlanDep, store: StoreDep,
                 cache: LayerCacheDep) -> HTMLResponse:
    layers, a = analysis(store, cache, plan.plan_id)
    return HTMLResponse(index_html(layers, a.figures), headers={
        "Content-Disposition": content_disposition(f"{file_stem(plan)}-reports.html",
                                                   "inline")})


@router.get("/{name}.html", response_class=HTMLResponse, responses=HTML_RESPONSES,
            summary="One main grid's analysis: map, KPIs, comparison with branch and city")
def report_page(user: ReportReader, plan: PlanDep, store: StoreDep, cache: LayerCacheDep,
                name: PageName) -> HTMLResponse:
    """A self-contained page (its field map embedded with Leaflet inlined): it works
    offline."""
    layers, a = analysis(store, cache, plan.plan_id)
    grid_id = _grid(a.figures, plan.plan_id, name)
    page = grid_page(layers, a.figures, grid_id, a.tables, a.staff)
    with _PRINTING:  # its charts are drawn with matplotlib's process-wide settings
        html = grid_html(layers, a.figures, page, a.tables)
    return HTMLResponse(html, headers={
        "Content-Disposition": content_disposition(f"{file_stem(plan)}-{name}.html",
                                                   "inline")})


@router.get("/{name}.pdf", response_class=Response, responses=PRINT_RESPONSES,
            summary="One main grid's analysis, printable (landscape A4)")
def report_pdf(user: ReportReader, plan: PlanDep, store: StoreDep, cache: LayerCacheDep,
               name: PageName) -> Response:
    layers, a = analysis(store, cache, plan.plan_id)
    grid_id = _grid(a.figures, plan.plan_id, name)
    page = grid_page(layers, a.figures, grid_id, a.tables, a.staff)
    folder = store.scratch_dir()
    try:
        with _PRINTING:
            pdf = write_pdf(layers, a.figures, page, a.tables,
                            folder / "report.pdf").read_bytes()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return Response(pdf, media_type=PRINT_MEDIA["pdf"], headers={
        "Content-Disposition": content_disposition(f"{file_stem(plan)}-{name}.pdf",
                                                   "inline")})
