"""The service's store: a plan's files appear together; what killed jobs leave is swept."""

from __future__ import annotations

import os
import shutil
import subprocess
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
