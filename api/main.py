"""The FastAPI application factory: ``uvicorn --factory api.main:create_app``.

Nothing is read or opened at import: settings are built here (or passed in by a test), the
store opens its catalogue on first use, and job processes start only when a job is submitted.
Several apps can therefore live in one process, each on its own data directory.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api import problems
from api.assignment import Indexes
from api.auth import AuthMiddleware, KeyRing
from api.batches import BatchGate
from api.jobs import JobRunner
from api.routes import (
    assign,
    datasets,
    exports,
    grids,
    health,
    jobs,
    maps,
    plans,
    redraw,
    reports,
    staff,
)
from api.settings import Settings
from api.store import PlanStore

log = logging.getLogger(__name__)

DESCRIPTION = """
Grid maps of a telecom operator's service areas (branches → main grids → sub-grids) and the
assignment of customers to them.

* **Plans** are computed as background jobs (`POST /plans`, `POST /plans/upload`; poll
  `GET /jobs/{id}`), then put in force per service area from a date
  (`POST /plans/{id}/activate`).
* **Assignment** answers which sub-grid, main grid and branch own a point, one at a time or in
  batches, on a given plan or on the plan in force on a day (`as_of`).

Send an API key in `X-API-Key` (or `Authorization: Bearer`). Roles: `planner` (create,
activate, delete plans), `operations` (assign), `viewer` (read). Errors are RFC 9457 problem
details (`application/problem+json`).
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the service on ``settings`` (default: from the environment and config file)."""
    settings = settings or Settings()
    store = PlanStore(settings.data_dir)
    runner = JobRunner(store, max_running=settings.max_running_jobs,
                       solver_workers=settings.solver_workers)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not settings.api_keys:
            log.warning("no API keys configured: every endpoint but /health and the docs "
                        "answers 401; set TERRITORY_API_KEYS or TERRITORY_CONFIG")
        store.sweep_scratch()
        runner.start()
        store.sweep_plans()  # after runner.start(): jobs of a dead service are failed now
        # The libraries loaded by now (geopandas, pandas, pyproj, FastAPI) leave ~170 000
        # objects for the cyclic garbage collector, and a full collection walks them all:
        # ~100 ms, every so often, in the middle of some request (the whole p99 of single
        # assignments). Frozen, they are skipped; only the requests' own objects are walked.
        gc.collect()
        gc.freeze()
        yield
        runner.shutdown()

    app = FastAPI(title="territory", description=DESCRIPTION,
                  version=health.package_version(), lifespan=lifespan)
    app.state.settings = settings
    app.state.store = store
    app.state.runner = runner
    app.state.indexes = Indexes(store, settings.index_cache_size)
    app.state.batches = BatchGate(settings.max_concurrent_batches, settings.batch_wait_seconds)
    app.state.layers = maps.LayerCache(store)
    problems.install(app)
    # added first, so it runs last of the middleware: inside the key check and body limit
    app.add_middleware(assign.SingleAssignFastPath)
    app.add_middleware(problems.BodyLimitMiddleware, max_bytes=settings.max_request_bytes)
    # added last, so it runs first: no body is read and no id looked up for an anonymous caller
    app.add_middleware(AuthMiddleware, keys=KeyRing(settings),
                       open_paths=[p for p in (app.docs_url, app.redoc_url, app.openapi_url,
                                               app.swagger_ui_oauth2_redirect_url, "/health")
                                   if p])
    # assignment first: its routes are the hot path, and routes are matched in order; the
    # single lookup on the plan in force before every other route
    assign.add_single_route(app)
    for module in (assign, health, plans, jobs, grids, datasets, maps, exports, reports, staff,
                   redraw):
        app.include_router(module.router)
    return app
