"""The service's store: a plan's files appear together; what killed jobs leave is swept."""

from __future__ import annotations

import os
import shutil
import subprocess
from datetime import date
from pathlib import Path

from fastapi.testclient import TestClient

import territory.atomic
from api.assignment import write_index
from api.main import create_app
from api.settings import Settings
from api.store import PLAN_FILE, PlanStore
from tests.conftest import make_plan


def dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def leftovers_of_killed_jobs(store: PlanStore, tiny_units) -> tuple[list[Path], list[Path]]:
    """A listed plan, what killed jobs leave, and things that are not the store's to take."""
    listed = store.add_plan(make_plan(tiny_units, 1), service_area="a", created_by="t",
                            index_writer=write_index)
    plans = store.root / "plans"
    unlisted = plans / make_plan(tiny_units, 2).plan_id  # killed after its folder's rename
    shutil.copytree(store.plan_dir(listed.plan_id), unlisted)
    unfinished = plans / f".{unlisted.name}x.{dead_pid()}-0123abcd.tmp"  # killed mid-write
    unfinished.mkdir()
    (unfinished / PLAN_FILE).write_text("half")
    past = territory.atomic.STARTED - 60
    os.utime(unlisted, (past, past))
    keep = [store.plan_dir(listed.plan_id), plans / "notes", plans / "README.txt"]
    keep[1].mkdir()
    keep[2].write_text("x")
    return [unlisted, unfinished], keep


def test_service_start_sweeps_plan_folders_of_killed_jobs(tiny_units, tmp_path):
    store = PlanStore(tmp_path)
    gone, kept = leftovers_of_killed_jobs(store, tiny_units)
    with TestClient(create_app(Settings(data_dir=tmp_path, api_keys="k:viewer"))):
        pass
    assert sorted((tmp_path / "plans").iterdir()) == sorted(kept)
    assert not any(p.exists() for p in gone)


def test_no_unlisted_folder_is_swept_while_a_job_may_still_list_it(tiny_units, tmp_path):
    store = PlanStore(tmp_path)
    (unlisted, unfinished), kept = leftovers_of_killed_jobs(store, tiny_units)
    store.create_job(service_area="a", request={}, created_by="t", runner=f"{os.getpid()}:x")
    store.sweep_plans()
    assert sorted((tmp_path / "plans").iterdir()) == sorted([*kept, unlisted])


def test_a_catalogue_of_an_earlier_release_gains_the_job_warnings(tmp_path):
    """The jobs table as released before ``warnings``: its rows read back, and take some."""
    import sqlite3

    with sqlite3.connect(tmp_path / "catalogue.sqlite") as con:
        con.execute(
            "CREATE TABLE jobs (job_id TEXT PRIMARY KEY, status TEXT NOT NULL, "
            "stage TEXT NOT NULL, done INTEGER NOT NULL DEFAULT 0, total INTEGER, "
            "service_area TEXT NOT NULL, request TEXT NOT NULL, plan_id TEXT, error TEXT, "
            "created TEXT NOT NULL, started TEXT, finished TEXT, created_by TEXT NOT NULL, "
            "runner TEXT NOT NULL, worker_pid INTEGER)")
        con.execute("INSERT INTO jobs (job_id, status, stage, service_area, request, created, "
                    "created_by, runner) VALUES ('old', 'done', 'done', 'a', '{}', "
                    "'2026-01-01T00:00:00+00:00', 'planner', '1:x')")
    con.close()
    store = PlanStore(tmp_path)
    assert store.get_job("old").warnings == []
    store.update_job("old", warnings=["customers declared wgs84 fit better as gcj02"])
    assert PlanStore(tmp_path).get_job("old").warnings == [
        "customers declared wgs84 fit better as gcj02"]
    with TestClient(create_app(Settings(data_dir=tmp_path, api_keys="k:viewer"))) as client:
        job = client.get("/jobs/old", headers={"X-API-Key": "k"}).json()
    assert job["warnings"] == ["customers declared wgs84 fit better as gcj02"]


def test_the_plan_in_force_is_memoised_until_any_process_changes_the_catalogue(tiny_units,
                                                                               tmp_path):
    """``in_force`` is asked on every single lookup and memoised; an activation made
    through another connection (another worker, a job process) or through this very store
    is seen by the next call."""
    here, there = PlanStore(tmp_path), PlanStore(tmp_path)  # two connections, as two workers
    a, b = (here.add_plan(make_plan(tiny_units, seed), service_area="a", created_by="t",
                          index_writer=lambda p, f: None) for seed in (1, 2))
    day = date(2026, 1, 5)
    assert here.in_force(day) == []
    there.activate(a.plan_id, day, "t")
    assert [w.plan_id for w in here.in_force(day)] == [a.plan_id]
    assert [w.plan_id for w in here.in_force(day, "a")] == [a.plan_id]
    here.activate(b.plan_id, day, "t")  # the same connection: SQLite's data_version stays
    assert [w.plan_id for w in here.in_force(day)] == [b.plan_id]
    there.activate(a.plan_id, day, "t")
    assert [w.plan_id for w in here.in_force(day, "a")] == [a.plan_id]
    assert here.in_force(day, "no-such-area") == []
