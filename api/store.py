"""The plan store: GeoPackage plans and their assignment indexes in a folder, with a catalogue.

Layout of the data directory::

    catalogue.sqlite        plans, their effective dates (activations) and plan jobs
    plans/<plan_id>/plan.gpkg     the core library's GeoPackage (Plan.save / Plan.load)
    plans/<plan_id>/<index file>  the assignment index built from it
    plans/<plan_id>/tables/<name>.parquet  the point tables its job read (customers,
                            communities, stores, key accounts; WGS84 lng/lat), for the
                            grid analyses' tiers and community lists
    plans/<plan_id>/staffing/<job_id>/     its staffing jobs' tables (api.routes.staff)
    datasets/               files a plan job may name (POST /plans with a "datasets" source)
    uploads/<job_id>/       files uploaded for a job, removed when it ends
    scratch/                files of batch assignments in flight

Why this shape: the GeoPackage is the library's own format, readable by QGIS and by
``territory`` itself, so the store adds no format of its own; SQLite gives the catalogue
atomic transactions shared safely between the service and its job processes. A plan's
files are written into a temporary folder that is renamed to ``plans/<plan_id>`` once they
are complete and on disk (:func:`territory.atomic.atomic_dir`), and its catalogue row is
committed only after that: a crash at any point leaves either the previous version or
nothing, never a half-written plan that is listed. What killed jobs leave behind (unfinished
or unlisted folders) is swept when the service starts and when a job process dies.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import geopandas as gpd
import pandas as pd

from territory.atomic import STARTED, atomic_dir, sweep
from territory.plan import LEVELS, PLAN_FILE, Plan, read_grids

log = logging.getLogger(__name__)

#: The plan folder's subfolder of point tables (:meth:`PlanStore.read_tables`).
TABLES_DIR = "tables"
_PLAN_ID = re.compile(r"[0-9a-f]{12}")  # Plan's default ids: uuid4().hex[:12]
_IN_FORCE_MEMO = 256  # (day, service area) answers memoised per thread

_SCHEMA = """
CREATE TABLE IF NOT EXISTS service_areas (
    name TEXT PRIMARY KEY, last_version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS plans (
    plan_id TEXT PRIMARY KEY, service_area TEXT NOT NULL, version INTEGER NOT NULL,
    created TEXT NOT NULL, created_by TEXT NOT NULL, job_id TEXT,
    summary TEXT NOT NULL, metrics TEXT NOT NULL, UNIQUE (service_area, version));
CREATE TABLE IF NOT EXISTS activations (
    service_area TEXT NOT NULL, effective_from TEXT NOT NULL,
    plan_id TEXT NOT NULL REFERENCES plans (plan_id),
    activated_at TEXT NOT NULL, activated_by TEXT NOT NULL,
    PRIMARY KEY (service_area, effective_from));
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY, status TEXT NOT NULL, stage TEXT NOT NULL,
    done INTEGER NOT NULL DEFAULT 0, total INTEGER, service_area TEXT NOT NULL,
    request TEXT NOT NULL, plan_id TEXT, error TEXT, created TEXT NOT NULL,
    started TEXT, finished TEXT, created_by TEXT NOT NULL, runner TEXT NOT NULL,
    worker_pid INTEGER, warnings TEXT NOT NULL DEFAULT '[]');
CREATE INDEX IF NOT EXISTS jobs_created ON jobs (created);
"""
#: Columns added since the first catalogues, as ``ALTER TABLE`` adds them to an existing one
#: (``CREATE TABLE IF NOT EXISTS`` leaves an older table as it was).
_ADDED_COLUMNS = {"jobs": {"warnings": "TEXT NOT NULL DEFAULT '[]'"}}

# A window: the plan in force from one activation until the next one of its area.
_WINDOWS = """
SELECT a.service_area, a.plan_id, p.version, a.effective_from,
       (SELECT MIN(b.effective_from) FROM activations b
         WHERE b.service_area = a.service_area AND b.effective_from > a.effective_from)
         AS effective_to,
       a.activated_at, a.activated_by
  FROM activations a JOIN plans p USING (plan_id)
"""


def _write_tables(folder: Path, tables: Mapping[str, pd.DataFrame | None]) -> None:
    """Each point table as ``<name>.parquet`` without its geometry (its ``lng``/``lat``
    say where it is); text columns as strings, so that mixed cells never fail the write."""
    folder.mkdir(exist_ok=True)
    for name, table in tables.items():
        if table is None:
            continue
        frame = pd.DataFrame(table.drop(columns=table.geometry.name)
                             if isinstance(table, gpd.GeoDataFrame) else table)
        text = frame.select_dtypes(include="object").columns
        frame[text] = frame[text].astype("string")
        frame.to_parquet(folder / f"{name}.parquet")


def now() -> str:
    """UTC timestamp for the catalogue (ISO 8601, seconds)."""
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class PlanRecord:
    """A stored plan as the catalogue knows it (no geometry: that stays in the file)."""

    plan_id: str
    service_area: str
    version: int
    created: str
    created_by: str
    job_id: str | None
    measures: list[str]
    parameters: dict[str, Any]
    n_units: int
    n_grids: dict[str, int]
    metrics: dict[str, Any]


@dataclass(frozen=True)
class WindowRecord:
    """A plan in force from ``effective_from`` until ``effective_to`` (exclusive, or open)."""

    service_area: str
    plan_id: str
    version: int
    effective_from: date
    effective_to: date | None
    activated_at: str
    activated_by: str


@dataclass(frozen=True)
class JobRecord:
    job_id: str
    status: str
    stage: str
    done: int
    total: int | None
    service_area: str
    request: dict[str, Any]
    plan_id: str | None
    error: dict[str, Any] | None
    created: str
    started: str | None
    finished: str | None
    created_by: str
    runner: str
    worker_pid: int | None
    warnings: list[str]


class PlanStore:
    """Plans, effective dates and jobs under one data directory.

    Safe to share between threads and processes (a SQLite connection per thread, WAL mode;
    files replaced atomically). Nothing touches the disk until first use.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._local = threading.local()
        self._ready = False
        self._ready_lock = threading.Lock()
        self._writes = 0  # commits made by this process, for in_force's memo

    # -- folders ---------------------------------------------------------------------------
    @property
    def datasets_dir(self) -> Path:
        return self.root / "datasets"

    def plan_dir(self, plan_id: str) -> Path:
        return self.root / "plans" / plan_id

    def plan_path(self, plan_id: str) -> Path:
        return self.plan_dir(plan_id) / PLAN_FILE

    def tables_dir(self, plan_id: str) -> Path:
        return self.plan_dir(plan_id) / TABLES_DIR

    def read_tables(self, plan_id: str) -> dict[str, pd.DataFrame]:
        """The point tables kept with the plan by :meth:`add_plan` (none for a plan made
        without them: an import, an edit, a redraw)."""
        folder = self.tables_dir(plan_id)
        return {path.stem: pd.read_parquet(path) for path in sorted(folder.glob("*.parquet"))}

    def upload_dir(self, job_id: str) -> Path:
        return self.root / "uploads" / job_id

    def scratch_dir(self) -> Path:
        """A new empty folder for one request's temporary files; the caller removes it."""
        self._ensure()
        path = self.root / "scratch" / uuid.uuid4().hex
        path.mkdir()
        return path

    def sweep_plans(self) -> list[Path]:
        """Remove plan folders that will never be listed: the unfinished ones of killed jobs
        (their process is gone) and, while no job is running, complete ones that a job killed
        before listing them left behind (no catalogue row, older than this process)."""
        self._ensure()
        plans = self.root / "plans"
        removed = sweep(plans)
        if self.pending_jobs() == 0:
            listed = {r["plan_id"] for r in self._rows("SELECT plan_id FROM plans")}
            for path in plans.iterdir():
                if (_PLAN_ID.fullmatch(path.name) and path.name not in listed
                        and path.is_dir() and path.stat().st_mtime < STARTED):
                    shutil.rmtree(path, ignore_errors=True)
                    removed.append(path)
        if removed:
            log.warning("removed %d plan folders of failed jobs: %s", len(removed),
                        ", ".join(p.name for p in removed))
        return removed

    def sweep_scratch(self, older_than_s: float = 86_400.0) -> None:
        """Remove scratch folders a crashed request left behind (not ones still in use)."""
        self._ensure()
        limit = time.time() - older_than_s
        for path in (self.root / "scratch").iterdir():
            if path.stat().st_mtime < limit:
                shutil.rmtree(path, ignore_errors=True)

    # -- catalogue -------------------------------------------------------------------------
    def _connection(self) -> sqlite3.Connection:
        """This thread's connection, opened on first use and kept: opening one costs more
        than the queries a request makes (about 0.5 ms against 50 µs)."""
        con = getattr(self._local, "con", None)
        if con is None:
            self._ensure()
            con = sqlite3.connect(self.root / "catalogue.sqlite", timeout=30.0,
                                  isolation_level=None)
            con.row_factory = sqlite3.Row
            con.execute("PRAGMA foreign_keys = ON")
            self._local.con = con
        return con

    def _ensure(self) -> None:
        with self._ready_lock:
            if self._ready:
                return
            for sub in ("plans", "datasets", "uploads", "scratch"):
                (self.root / sub).mkdir(parents=True, exist_ok=True)
            with sqlite3.connect(self.root / "catalogue.sqlite", timeout=30.0) as con:
                con.execute("PRAGMA journal_mode = WAL")
                con.executescript(_SCHEMA)
                for table, columns in _ADDED_COLUMNS.items():
                    have = {row[1] for row in con.execute(f"PRAGMA table_info({table})")}
                    for name, decl in columns.items():
                        if name not in have:
                            con.execute(f"ALTER TABLE {table} ADD COLUMN {name} {decl}")
            con.close()
            self._ready = True

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken at once so concurrent writers queue, not deadlock."""
        con = self._connection()
        con.execute("BEGIN IMMEDIATE")
        try:
            yield con
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")
        self._writes += 1

    def _rows(self, sql: str, args: tuple | dict = ()) -> list[sqlite3.Row]:
        return self._connection().execute(sql, args).fetchall()

    # -- plans -----------------------------------------------------------------------------
    def add_plan(self, plan: Plan, *, service_area: str, created_by: str,
                 job_id: str | None = None, parameters: dict[str, Any] | None = None,
                 index_writer: Callable[[Plan, Path], object],
                 tables: Mapping[str, pd.DataFrame | None] | None = None) -> PlanRecord:
        """Write the plan's files, then list it as the next version of ``service_area``.

        ``index_writer(plan, folder)`` writes the assignment index beside the plan; it runs
        before the catalogue row exists, so a plan is never listed without its index.
        ``tables``: the point tables the plan was computed from, kept beside it as Parquet
        (:meth:`read_tables`) so that its grid analyses show what the command's do.
        """
        # the files appear together or not at all; plan ids are fresh, and an existing
        # folder (a bug) makes the final rename fail
        with atomic_dir(self.plan_dir(plan.plan_id)) as folder:
            plan.save(folder / PLAN_FILE)
            index_writer(plan, folder)
            _write_tables(folder / TABLES_DIR, tables or {})
        units = plan.units
        summary = {
            "measures": list(plan.measures),
            "parameters": parameters or {},
            "n_units": int(len(units)),
            "n_grids": {lv: int(units[f"{lv}_id"].nunique()) for lv in LEVELS},
        }
        with self._write() as con:
            con.execute("INSERT OR IGNORE INTO service_areas VALUES (?, 0)", (service_area,))
            con.execute("UPDATE service_areas SET last_version = last_version + 1 "
                        "WHERE name = ?", (service_area,))
            (version,) = con.execute("SELECT last_version FROM service_areas WHERE name = ?",
                                     (service_area,)).fetchone()
            con.execute(
                "INSERT INTO plans VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (plan.plan_id, service_area, version, plan.created, created_by, job_id,
                 json.dumps(summary, ensure_ascii=False),
                 json.dumps(plan.metrics, ensure_ascii=False, default=str)),
            )
        record = self.get_plan(plan.plan_id)
        assert record is not None
        return record

    @staticmethod
    def _plan(row: sqlite3.Row) -> PlanRecord:
        summary = json.loads(row["summary"])
        return PlanRecord(
            plan_id=row["plan_id"], service_area=row["service_area"], version=row["version"],
            created=row["created"], created_by=row["created_by"], job_id=row["job_id"],
            measures=summary["measures"], parameters=summary["parameters"],
            n_units=summary["n_units"], n_grids=summary["n_grids"],
            metrics=json.loads(row["metrics"]),
        )

    def get_plan(self, plan_id: str) -> PlanRecord | None:
        rows = self._rows("SELECT * FROM plans WHERE plan_id = ?", (plan_id,))
        return self._plan(rows[0]) if rows else None

    def list_plans(self, *, service_area: str | None, limit: int,
                   offset: int) -> tuple[list[PlanRecord], int]:
        """A page of plans, newest first, and how many match in all."""
        where = "WHERE service_area = :area" if service_area is not None else ""
        args = {"area": service_area, "limit": limit, "offset": offset}
        rows = self._rows(f"SELECT * FROM plans {where} ORDER BY created DESC, service_area, "
                          "version DESC LIMIT :limit OFFSET :offset", args)
        (count,) = self._rows(f"SELECT COUNT(*) FROM plans {where}", args)[0]
        return [self._plan(r) for r in rows], count

    def count_plans(self) -> int:
        return self._rows("SELECT COUNT(*) FROM plans")[0][0]

    def delete_plan(self, plan_id: str) -> None:
        """Unlist the plan (and its scheduled activations), then remove its folder."""
        with self._write() as con:
            con.execute("DELETE FROM activations WHERE plan_id = ?", (plan_id,))
            con.execute("DELETE FROM plans WHERE plan_id = ?", (plan_id,))
        shutil.rmtree(self.plan_dir(plan_id), ignore_errors=True)

    def read_grids(self, plan_id: str, level: str, *,
                   parent_id: str | None = None, grid_id: str | None = None
                   ) -> gpd.GeoDataFrame:
        """One level's grid polygons, straight from the GeoPackage layer (no dissolve)."""
        return read_grids(self.plan_path(plan_id), level, parent_id=parent_id, grid_id=grid_id)

    # -- effective plans -------------------------------------------------------------------
    def activate(self, plan_id: str, effective_from: date, activated_by: str) -> None:
        """Put the plan in force for its service area from ``effective_from``.

        An activation at a date that already has one replaces it (a rescheduling); others
        are kept, so the area's history stays answerable.
        """
        with self._write() as con:
            (area,) = con.execute("SELECT service_area FROM plans WHERE plan_id = ?",
                                  (plan_id,)).fetchone()
            con.execute("INSERT OR REPLACE INTO activations VALUES (?, ?, ?, ?, ?)",
                        (area, effective_from.isoformat(), plan_id, now(), activated_by))

    @staticmethod
    def _window(row: sqlite3.Row) -> WindowRecord:
        return WindowRecord(
            service_area=row["service_area"], plan_id=row["plan_id"], version=row["version"],
            effective_from=date.fromisoformat(row["effective_from"]),
            effective_to=date.fromisoformat(row["effective_to"]) if row["effective_to"]
            else None,
            activated_at=row["activated_at"], activated_by=row["activated_by"],
        )

    def windows(self, *, service_area: str | None = None,
                plan_id: str | None = None) -> list[WindowRecord]:
        """The in-force periods of an area's plans, or of one plan, oldest first."""
        rows = self._rows(
            f"{_WINDOWS} WHERE (:area IS NULL OR a.service_area = :area) "
            "AND (:plan IS NULL OR a.plan_id = :plan) ORDER BY a.service_area, "
            "a.effective_from", {"area": service_area, "plan": plan_id})
        return [self._window(r) for r in rows]

    def _catalogue_version(self) -> tuple[int, int]:
        """Changes whenever the catalogue may have: SQLite's ``data_version`` of this
        thread's connection counts other connections' commits (other threads, job
        processes, the service's other workers), ``_writes`` this process's own."""
        return self._writes, self._connection().execute("PRAGMA data_version").fetchone()[0]

    def in_force(self, on: date, service_area: str | None = None) -> list[WindowRecord]:
        """The window in force on ``on`` of each service area (or of the one named).

        Memoised per thread until the catalogue changes: single assignments ask this on
        every request, and a ``data_version`` check costs a tenth of the query."""
        memo: dict[tuple[date, str | None], list[WindowRecord]] | None
        memo = getattr(self._local, "in_force", None)
        version = self._catalogue_version()
        if (memo is None or getattr(self._local, "in_force_version", None) != version
                or len(memo) >= _IN_FORCE_MEMO):  # bounded: callers name the areas
            memo = self._local.in_force = {}
            self._local.in_force_version = version
        key = (on, service_area)
        windows = memo.get(key)
        if windows is None:
            windows = self._in_force(on, service_area)
            if windows:  # a caller's made-up area names are not kept
                memo[key] = windows
        return list(windows)

    def _in_force(self, on: date, service_area: str | None) -> list[WindowRecord]:
        rows = self._rows(
            f"{_WINDOWS} WHERE (:area IS NULL OR a.service_area = :area) "
            "AND a.effective_from = (SELECT MAX(c.effective_from) FROM activations c "
            " WHERE c.service_area = a.service_area AND c.effective_from <= :on) "
            "ORDER BY a.service_area", {"area": service_area, "on": on.isoformat()})
        return [self._window(r) for r in rows]

    # -- jobs ------------------------------------------------------------------------------
    @staticmethod
    def new_job_id() -> str:
        """A fresh job id, for when files must be placed before the job is listed."""
        return uuid.uuid4().hex[:12]

    def create_job(self, *, service_area: str, request: dict[str, Any], created_by: str,
                   runner: str, job_id: str | None = None) -> JobRecord:
        """A queued job owned by ``runner`` (``pid:instance`` of the service that runs it)."""
        job_id = job_id or self.new_job_id()
        with self._write() as con:
            con.execute(
                "INSERT INTO jobs (job_id, status, stage, service_area, request, created, "
                "created_by, runner) VALUES (?, 'queued', 'queued', ?, ?, ?, ?, ?)",
                (job_id, service_area, json.dumps(request, ensure_ascii=False), now(),
                 created_by, runner))
        record = self.get_job(job_id)
        assert record is not None
        return record

    def update_job(self, job_id: str, **fields: Any) -> None:
        """Set job columns; ``error`` and ``warnings`` are stored as JSON."""
        for name in ("error", "warnings"):
            if fields.get(name) is not None:
                fields[name] = json.dumps(fields[name], ensure_ascii=False)
        sets = ", ".join(f"{k} = :{k}" for k in fields)
        with self._write() as con:
            con.execute(f"UPDATE jobs SET {sets} WHERE job_id = :job_id",
                        {**fields, "job_id": job_id})

    @staticmethod
    def _job(row: sqlite3.Row) -> JobRecord:
        data = dict(row)
        data["request"] = json.loads(data["request"])
        data["error"] = json.loads(data["error"]) if data["error"] else None
        data["warnings"] = json.loads(data["warnings"])
        return JobRecord(**data)

    def get_job(self, job_id: str) -> JobRecord | None:
        rows = self._rows("SELECT * FROM jobs WHERE job_id = ?", (job_id,))
        return self._job(rows[0]) if rows else None

    def list_jobs(self, *, limit: int, offset: int) -> tuple[list[JobRecord], int]:
        rows = self._rows("SELECT * FROM jobs ORDER BY created DESC, rowid DESC "
                          "LIMIT ? OFFSET ?", (limit, offset))
        (count,) = self._rows("SELECT COUNT(*) FROM jobs")[0]
        return [self._job(r) for r in rows], count

    def pending_jobs(self) -> int:
        return self._rows("SELECT COUNT(*) FROM jobs WHERE status IN ('queued', 'running')"
                          )[0][0]

    def fail_orphaned_jobs(self, runner: str, error: dict[str, Any]) -> int:
        """Fail queued or running jobs nobody will finish: their service is gone (its process
        ended, or it was an earlier service in this very process) and so is their worker."""
        rows = self._rows("SELECT job_id, runner, worker_pid FROM jobs "
                          "WHERE status IN ('queued', 'running')")
        orphans = [r["job_id"] for r in rows if _runner_gone(r["runner"], runner)
                   and not (r["worker_pid"] and _alive(r["worker_pid"]))]
        for job_id in orphans:
            self.update_job(job_id, status="failed", error=error, finished=now())
            shutil.rmtree(self.upload_dir(job_id), ignore_errors=True)
        return len(orphans)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _runner_gone(owner: str, me: str) -> bool:
    pid = int(owner.partition(":")[0])
    return owner != me if pid == os.getpid() else not _alive(pid)
