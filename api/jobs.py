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
import pickle
import shutil
import signal
import subprocess
import sys
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from api.assignment import write_index
from api.problems import ProblemError, make_problem, territory_problem
from api.schemas import PlanParameters, TableOptions
from api.store import JobRecord, PlanStore, now
from territory.atomic import atomic_path
from territory.boundaries import load_city, read_boundaries
from territory.crs_check import Warn
from territory.errors import TerritoryError
from territory.hierarchy import HierarchySpec
from territory.pipeline import Inputs, precheck_units, read_points, run
from territory.progress import Progress
from territory.synth import generate_city

log = logging.getLogger(__name__)

POINT_TABLES = ("customers", "communities", "stores", "key_accounts")
#: every file a job's source may name (an import's drawn grids besides a plan's tables)
FILE_FIELDS = ("boundaries", *POINT_TABLES, "grids", "sub_grids")
#: jobs that store a new version of a plan (run by :func:`api.routes.redraw.run_redraw`)
REDRAW_KINDS = ("rebalance", "import")
#: the last stage of a job: the new plan written with its assignment index
SAVING = "saving the plan and its assignment index"

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


def _inputs(source: dict[str, Any], on_warning: Warn) -> Inputs:
    """The pipeline's Inputs from a job's source: a demo city, or files on disk; what the
    point tables' CRS check finds goes to ``on_warning``."""
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
                          encoding=opts.encoding, on_warning=on_warning)
        if source.get(name) else None
        for name in POINT_TABLES
    }
    return Inputs(areas, opts.branch_column, **tables,
                  dissolve_branches=opts.dissolve_branches)


def plan_spec(p: PlanParameters, solver_workers: int) -> HierarchySpec:
    """The library's hierarchy options from a request's plan parameters."""
    return p.spec(workers=solver_workers)


@dataclass
class Prepared:
    """What the pre-check read and built for a request, handed to its job so that nothing
    is read or built twice: the inputs, their CRS warnings, the units and their report."""

    inputs: Inputs
    warnings: list[str]
    built: tuple[Any, dict]


#: The pre-check's hand-over, in the job's upload folder (removed with it when it ends).
PREPARED = "prepared.pickle"


def prepare(source: dict[str, Any], parameters: PlanParameters, solver_workers: int
            ) -> Prepared | None:
    """Read the inputs and build and check their units (:func:`precheck_units`).

    Raises the library's error for a request the inputs cannot serve (a balance measure
    the tables lack, targets the unit loads cannot meet: what the job would fail with, as
    422). Inputs that cannot be read, or an unexpected failure, return None: the job meets
    them again in its first stage and reports them as it always has (400 for a file that
    cannot be used as sent), so the pre-check never changes how those are answered.
    """
    warnings: list[str] = []
    try:
        inputs = _inputs(source, warnings.append)
    except Exception as exc:  # the job meets it again and reports it
        log.info("pre-check left to the job: inputs not read (%s)", exc)
        return None
    try:
        built = precheck_units(inputs, parameters.unit_options(),
                               plan_spec(parameters, solver_workers),
                               stores_as_centres=parameters.stores_as_centres)
    except TerritoryError:
        raise
    except Exception:  # the job meets it again and reports it
        log.exception("pre-check failed; left to the job")
        return None
    return Prepared(inputs, warnings, built)


def hand_over(store: PlanStore, job_id: str, prepared: Prepared) -> None:
    """Pickle the pre-check's work into the job's folder, written atomically: the job is a
    separate process started later, and a file in its own folder is removed with it."""
    folder = store.upload_dir(job_id)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / PREPARED) as tmp, open(tmp, "wb") as out:
        pickle.dump(prepared, out, protocol=pickle.HIGHEST_PROTOCOL)


def _handed_over(store: PlanStore, job_id: str) -> Prepared | None:
    """The pre-check's work for this job, if it was done in time (our own file, written by
    the service that started this process)."""
    path = store.upload_dir(job_id) / PREPARED
    if not path.is_file():
        return None
    with open(path, "rb") as f:
        return pickle.load(f)  # noqa: S301 - written by this service into its own folder


def _public_paths(store: PlanStore, source: dict[str, Any]) -> dict[str, str]:
    """The job's files by the names a client knows them by: an upload by its form field,
    a dataset by its name in ``datasets/``; never the server's paths."""
    out = {}
    root = store.datasets_dir.resolve()
    for name in FILE_FIELDS:
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
    if request.get("kind") == "staffing":  # a roster allocated to a stored plan
        from api.routes.staff import run_staffing
        return run_staffing(store, job_id, request)
    warnings: list[str] = []

    def warn(message: str) -> None:
        """Keep a warning in the job's row, where its client reads it, and in the log."""
        log.warning("plan job %s: %s", job_id, message)
        warnings.append(message)
        store.update_job(job_id, warnings=warnings)

    source = request.get("source") or {}
    try:
        progress = _Progress(store, job_id)
        if request.get("kind") in REDRAW_KINDS:  # an import or a rebalance: a new version
            from api.routes.redraw import run_redraw
            plan_id = run_redraw(store, job, progress, warn)
        else:
            plan_id = _plan_job(store, job, progress, warn, solver_workers)
        store.update_job(job_id, status="done", stage="done", plan_id=plan_id,
                         finished=now())
    except _Interrupted:
        _fail(store, job_id, INTERRUPTED.model_dump())
    except ProblemError as exc:  # refused as the service refuses a request (e.g. 409)
        _fail(store, job_id, exc.body.model_dump())
    except MalformedInput as exc:
        _fail(store, job_id, territory_problem(
            exc.cause, status=400, paths=_public_paths(store, source)).model_dump())
    except TerritoryError as exc:
        _fail(store, job_id, territory_problem(
            exc, paths=_public_paths(store, source),
            prefix=parameters_field(source, store.upload_dir(job_id))
        ).model_dump())
    except Exception as exc:
        log.exception("plan job %s failed", job_id)
        _fail(store, job_id, make_problem(
            500, f"the plan job failed unexpectedly ({type(exc).__name__}: {exc})",
            kind="internal-error").model_dump())
    finally:
        shutil.rmtree(store.upload_dir(job_id), ignore_errors=True)


def read_inputs(source: dict[str, Any], warn: Warn) -> Inputs:
    """The job's inputs; files that cannot be used as sent are :class:`MalformedInput`."""
    try:
        return _inputs(source, warn)
    except TerritoryError as exc:
        raise MalformedInput(exc) from exc


def _plan_job(store: PlanStore, job: JobRecord, progress: Progress, warn: Warn,
              solver_workers: int) -> str:
    """Compute a plan job's plan and store it; its id."""
    request = job.request
    prepared = _handed_over(store, job.job_id)
    if prepared is None:
        inputs = read_inputs(request["source"], warn)
    else:
        inputs = prepared.inputs
        for message in prepared.warnings:
            warn(message)
    p = PlanParameters.model_validate(request["parameters"])
    result = run(inputs, p.unit_options(), plan_spec(p, solver_workers),
                 stores_as_centres=p.stores_as_centres, progress=progress,
                 built=prepared.built if prepared else None)
    progress(SAVING, 0, None)
    record = store.add_plan(result.plan, service_area=job.service_area,
                            created_by=job.created_by, job_id=job.job_id,
                            parameters=request["parameters"], index_writer=write_index,
                            tables=inputs.tables())
    return record.plan_id


def parameters_field(source: dict[str, Any], uploads: Path) -> str:
    """Where a request holds its plan parameters: inside the ``request`` form part of an
    upload, at the top of a JSON request."""
    uploaded = any(Path(source[name]).is_relative_to(uploads)
                   for name in FILE_FIELDS
                   if source.get("kind") == "files" and source.get(name))
    return "request.parameters." if uploaded else "parameters."


class _Interrupted(Exception):
    """The service that started the job is gone."""


class MalformedInput(Exception):
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
        self._precheck = ThreadPoolExecutor(max_workers=1, thread_name_prefix="plan-precheck")
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()
        self._closing = False

    def start(self) -> None:
        """Fail the jobs an earlier service left unfinished: nobody will run them now."""
        n = self.store.fail_orphaned_jobs(self.id, INTERRUPTED.model_dump())
        if n:
            log.warning("%d unfinished plan jobs of an earlier service marked failed", n)

    def precheck(self, source: dict[str, Any], parameters: PlanParameters, *,
                 timeout: float) -> Prepared | None:
        """:func:`prepare` in the pre-check thread, waited for up to ``timeout`` seconds.

        One thread: requests' pre-checks take turns, so a burst of them cannot take every
        core from running jobs. Past the timeout None is returned and the job checks its
        own units; the late pre-check still runs to its end (a thread cannot be stopped) and
        its result is dropped.
        """
        if timeout <= 0:
            return None
        future = self._precheck.submit(prepare, source, parameters, self.solver_workers)
        try:
            return future.result(timeout=timeout)
        except FutureTimeout:
            log.info("pre-check took over %s s; left to the job", timeout)
            return None

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
        self._precheck.shutdown(wait=False, cancel_futures=True)


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
