"""Plan jobs: each plan is computed in a child process while the service keeps answering.

Why a process per job and not a thread: planning is minutes of CPU-bound Python that would
hold the GIL against the assignment endpoints, and it forks its own solver workers, which is
unsafe from a process that runs threads. The child is a fresh interpreter
(``python -m api.jobs``; not multiprocessing, which would re-import the caller's main
script), leads its own session so that stopping the service stops its solver workers too,
and reports progress by writing the job's row in the catalogue, which is where the service
reads it: no channel back is needed.

A small thread pool in the service bounds how many jobs run at once; each of its threads
starts one child and waits for it.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

from api.assignment import write_index
from api.problems import make_problem, territory_problem
from api.schemas import PlanParameters, TableOptions
from api.store import PlanStore, now
from territory.boundaries import load_city, read_boundaries
from territory.errors import TerritoryError
from territory.hierarchy import HierarchySpec
from territory.pipeline import Inputs, UnitOptions, read_points, run
from territory.synth import generate_city

log = logging.getLogger(__name__)

POINT_TABLES = ("customers", "communities", "stores", "key_accounts")

INTERRUPTED = make_problem(503, "the service stopped before this job finished; submit it again",
                           kind="interrupted", title="Job interrupted")


class _Progress:
    """The pipeline's ``progress(stage, done, total)``, written to the job's row: the
    service reports the same stages and counts as the ``territory`` command."""

    def __init__(self, store: PlanStore, job_id: str) -> None:
        self.store, self.job_id = store, job_id
        self.parent = os.getppid()

    def __call__(self, stage: str, done: int = 0, total: int | None = None) -> None:
        """Record the stage; give up if the service that started the job has died, since
        nobody is left to answer for it (a restarted service has failed it already)."""
        if os.getppid() != self.parent:
            raise _Interrupted
        self.store.update_job(self.job_id, stage=stage, done=done, total=total)


def _inputs(source: dict[str, Any]) -> Inputs:
    """The pipeline's Inputs from a job's source: a demo city, or files on disk."""
    if source["kind"] == "demo":
        areas = load_city(source["city"])
        data = generate_city(areas, n_customers=source["customers"], seed=source["seed"])
        return Inputs(areas, "adcode", data.customers, data.communities, data.stores,
                      data.key_accounts)
    opts = TableOptions.model_validate({k: source[k] for k in TableOptions.model_fields
                                        if k in source})
    areas = read_boundaries(source["boundaries"], crs=opts.boundaries_crs, repair=opts.repair)
    tables = {
        name: read_points(source[name], crs=opts.points_crs, lng=opts.lng_column,
                          lat=opts.lat_column, name=name, areas=areas,
                          encoding=opts.encoding, on_warning=lambda m: log.warning("%s", m))
        if source.get(name) else None
        for name in POINT_TABLES
    }
    return Inputs(areas, opts.branch_column, **tables,
                  dissolve_branches=opts.dissolve_branches)


def _public_paths(store: PlanStore, source: dict[str, Any]) -> dict[str, str]:
    """The job's files by the names a client knows them by: an upload by its form field,
    a dataset by its name in ``datasets/``; never the server's paths."""
    out = {}
    root = store.datasets_dir.resolve()
    for name in ("boundaries", *POINT_TABLES):
        if source.get(name) and source.get("kind") == "files":
            path = Path(source[name])
            out[str(path)] = (f"dataset {path.relative_to(root).as_posix()!r}"
                              if path.is_relative_to(root) else f"the uploaded {name} file")
    return out


def run_job(root: str, job_id: str, solver_workers: int) -> None:
    """Child-process entry point: compute one plan job and store the plan or the error."""
    store = PlanStore(root)
    job = store.get_job(job_id)
    if job is None:
        return
    store.update_job(job_id, status="running", stage="reading inputs", started=now(),
                     worker_pid=os.getpid())
    request = job.request
    try:
        try:
            inputs = _inputs(request["source"])
        except TerritoryError as exc:
            # the files themselves are unusable: a client error about what was sent
            raise _Malformed(exc) from exc
        p = PlanParameters.model_validate(request["parameters"])
        spec = HierarchySpec(
            measures=dict(p.balance), n_main=p.main_grids, main_size=p.main_size,
            n_sub=p.sub_grids, sub_size=p.sub_size, objective=p.objective,
            time_limit_main=p.time_limit_main, time_limit_sub=p.time_limit_sub,
            own_grid_islands=p.own_grid_islands, workers=solver_workers,
            random_state=p.seed,
        )
        progress = _Progress(store, job_id)
        result = run(inputs, UnitOptions(p.resolution, p.target_per_unit, p.min_resolution),
                     spec, stores_as_centres=p.stores_as_centres, progress=progress)
        progress("saving the plan and its assignment index")
        record = store.add_plan(result.plan, service_area=job.service_area,
                                created_by=job.created_by, job_id=job_id,
                                parameters=request["parameters"], index_writer=write_index)
        store.update_job(job_id, status="done", stage="done", plan_id=record.plan_id,
                         finished=now())
    except _Interrupted:
        _fail(store, job_id, INTERRUPTED.model_dump())
    except _Malformed as exc:
        _fail(store, job_id, territory_problem(
            exc.cause, status=400, paths=_public_paths(store, request["source"])).model_dump())
    except TerritoryError as exc:
        _fail(store, job_id, territory_problem(
            exc, paths=_public_paths(store, request["source"])).model_dump())
    except Exception as exc:
        log.exception("plan job %s failed", job_id)
        _fail(store, job_id, make_problem(
            500, f"the plan job failed unexpectedly ({type(exc).__name__}: {exc})",
            kind="internal-error").model_dump())
    finally:
        shutil.rmtree(store.upload_dir(job_id), ignore_errors=True)


class _Interrupted(Exception):
    """The service that started the job is gone."""


class _Malformed(Exception):
    """An input file could not be used as sent (answered as 400, not 422)."""

    def __init__(self, cause: TerritoryError) -> None:
        super().__init__(str(cause))
        self.cause = cause


def _fail(store: PlanStore, job_id: str, error: dict[str, Any]) -> None:
    store.update_job(job_id, status="failed", error=error, finished=now())


class JobRunner:
    """Runs plan jobs in child processes, at most ``max_running`` at a time."""

    def __init__(self, store: PlanStore, *, max_running: int, solver_workers: int) -> None:
        self.store = store
        self.solver_workers = solver_workers
        self.id = f"{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._pool = ThreadPoolExecutor(max_workers=max_running, thread_name_prefix="plan-job")
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()
        self._closing = False

    def start(self) -> None:
        """Fail the jobs an earlier service left unfinished: nobody will run them now."""
        n = self.store.fail_orphaned_jobs(self.id, INTERRUPTED.model_dump())
        if n:
            log.warning("%d unfinished plan jobs of an earlier service marked failed", n)

    def submit(self, job_id: str) -> None:
        self._pool.submit(self._supervise, job_id)

    def _supervise(self, job_id: str) -> None:
        with self._lock:
            if self._closing:
                return
            child = subprocess.Popen(
                [sys.executable, "-m", "api.jobs", str(self.store.root), job_id,
                 str(self.solver_workers)],
                start_new_session=True, stdin=subprocess.DEVNULL,
            )
            self._children[job_id] = child
        code = child.wait()
        with self._lock:
            self._children.pop(job_id, None)
        job = self.store.get_job(job_id)
        if job is not None and job.status in ("queued", "running"):
            _fail(self.store, job_id, (INTERRUPTED if self._closing else make_problem(
                500, f"the job process ended without a result (exit code {code})",
                kind="internal-error")).model_dump())
            shutil.rmtree(self.store.upload_dir(job_id), ignore_errors=True)
            self.store.sweep_plans()  # what the dead process was writing

    def shutdown(self) -> None:
        """Stop running jobs (with their solver workers) and drop queued ones."""
        with self._lock:
            self._closing = True
            children = list(self._children.values())
        for child in children:
            try:
                os.killpg(child.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        self._pool.shutdown(wait=True, cancel_futures=True)


def save_upload(store: PlanStore, job_id: str, name: str, suffix: str, data: BinaryIO) -> Path:
    """Copy an uploaded file into the job's upload folder; returns where it now is."""
    folder = store.upload_dir(job_id)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}{suffix}"
    with open(path, "wb") as out:
        shutil.copyfileobj(data, out, 1 << 20)
    return path


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s plan job: %(message)s")
    run_job(sys.argv[1], sys.argv[2], int(sys.argv[3]))
