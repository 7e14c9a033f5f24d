"""A plan folder is published as one set: a kill -9 at any step leaves one whole plan."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np
import pyogrio
import pytest

import territory.atomic
from territory.assign import open_index
from territory.assign_index import AssignmentIndex, index_path
from territory.plan import Plan, plan_file
from territory.plan_folder import CURRENT, FILES, KEEP, VERSIONS, publish, sweep_folder
from tests.conftest import make_plan

#: Every call of the writer that changes what is on disk is a step to die at: dying before
#: each of them reaches every state a kill -9 can leave (a flush or a mode change in between
#: shows nothing new to the next reader; the page cache outlives the process).
STEPS = [(os, "replace"), (os, "rename"), (os, "symlink"), (os, "unlink"), (os, "mkdir"),
         (pyogrio, "write_dataframe"), (np, "savez")]


def whole_plan_id(folder: Path) -> str:
    """The id of the one plan the folder holds; fails if its files disagree."""
    plan = Plan.load(folder / "plan.gpkg")
    meta = json.loads((folder / "plan.json").read_text(encoding="utf-8"))
    metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    assert (meta["plan_id"], meta["version"], meta["fingerprint"]) == (
        plan.plan_id, plan.version, plan.fingerprint)
    assert metrics == meta["metrics"] == plan.metrics
    AssignmentIndex.load(folder / index_path("plan.gpkg"), plan)  # refuses another plan's
    assert plan_file(folder) == plan_file(folder / "plan.gpkg")  # the folder opens as it
    return plan.plan_id


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for d in (folder, folder / VERSIONS) if d.exists()
                  for p in d.iterdir() if p.name.startswith("."))


def test_published_files_agree_and_stay_at_the_documented_paths(tiny_units, tmp_path):
    units = tiny_units
    old, new = make_plan(units, 1), make_plan(units, 2)
    publish(old, tmp_path)
    assert whole_plan_id(tmp_path) == old.plan_id
    assert publish(new, tmp_path) == tmp_path / "plan.gpkg"
    assert whole_plan_id(tmp_path) == new.plan_id
    assert {p.name for p in tmp_path.iterdir()} == {*FILES, CURRENT, VERSIONS}
    # the old version stays for a rollback; readers of the folder get the new one
    assert sorted(p.name for p in (tmp_path / VERSIONS).iterdir()) == sorted(
        f"{p.plan_id}-v1" for p in (old, new))
    assert open_index(tmp_path).plan.plan_id == new.plan_id
    assert leftovers(tmp_path) == []


def test_only_the_last_versions_are_kept(tiny_units, tmp_path):
    units = tiny_units
    plans = [make_plan(units, s) for s in range(KEEP + 2)]
    for p in plans:
        publish(p, tmp_path)
    kept = {p.name for p in (tmp_path / VERSIONS).iterdir()}
    assert kept == {f"{p.plan_id}-v1" for p in plans[-KEEP:]}
    assert whole_plan_id(tmp_path) == plans[-1].plan_id


def test_a_folder_of_plain_files_becomes_a_plan_folder(tiny_units, tmp_path):
    """What earlier versions wrote: plain files, replaced by the links at first publication."""
    units = tiny_units
    old, new = make_plan(units, 1), make_plan(units, 2)
    old.save(tmp_path / "plan.gpkg")
    (tmp_path / "plan.json").write_text(json.dumps(old.meta()))
    (tmp_path / "metrics.json").write_text(json.dumps(old.metrics))
    publish(new, tmp_path)
    assert whole_plan_id(tmp_path) == new.plan_id


def _count_steps(monkeypatch, plan, folder) -> int:
    count = 0

    def counting(fn):
        def step(*args, **kwargs):
            nonlocal count
            count += 1
            return fn(*args, **kwargs)
        return step

    for module, name in STEPS:
        monkeypatch.setattr(module, name, counting(getattr(module, name)))
    publish(plan, folder)
    monkeypatch.undo()
    return count


def _publish_killed_at(step: int, plan, folder) -> bool:
    """Publish in a child process that SIGKILLs itself at its ``step``-th step; returns
    whether it was killed (False: it finished first)."""
    pid = os.fork()
    if pid == 0:  # the child: count the steps, die at the one asked for
        try:
            count = 0

            def dying(fn):
                def step_or_die(*args, **kwargs):
                    nonlocal count
                    count += 1
                    if count == step:
                        os.kill(os.getpid(), signal.SIGKILL)
                    return fn(*args, **kwargs)
                return step_or_die

            for module, name in STEPS:
                setattr(module, name, dying(getattr(module, name)))
            publish(plan, folder)
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    return os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


@pytest.mark.slow  # a publication and a check per step: about a second each
def test_kill_9_at_every_step_leaves_one_whole_plan(tiny_units, tmp_path, monkeypatch):
    units = tiny_units
    old, new, after = make_plan(units, 1), make_plan(units, 2), make_plan(units, 3)
    start = tmp_path / "start"
    publish(old, start)
    probe = tmp_path / "probe"
    shutil.copytree(start, probe, symlinks=True)
    n_steps = _count_steps(monkeypatch, new, probe)
    assert n_steps > 15  # every file, rename and link of the set
    seen = set()
    for step in range(1, n_steps + 1):
        folder = tmp_path / f"kill{step}"
        shutil.copytree(start, folder, symlinks=True)
        assert _publish_killed_at(step, new, folder), f"step {step} was not reached"
        got = whole_plan_id(folder)
        assert got in (old.plan_id, new.plan_id), f"killed at step {step}"
        seen.add(got)
        # the next run publishes, and sweeps what the killed one left
        publish(after, folder)
        assert whole_plan_id(folder) == after.plan_id
        assert leftovers(folder) == [], f"killed at step {step}"
        shutil.rmtree(folder)
    assert seen == {old.plan_id}  # readers see the old plan until the one last step
    assert not _publish_killed_at(n_steps + 1, new, start)  # the count was complete
    assert whole_plan_id(start) == new.plan_id


def test_sweep_removes_only_leftovers_of_dead_writers(tmp_path):
    child = subprocess.Popen(["true"])
    child.wait()
    dead, me = child.pid, os.getpid()
    ours = {
        f".a.csv.{dead}-0123abcd.tmp.csv": "file",
        f".plan.gpkg.{dead}-0123abcd.tmp.gpkg": "file",
        f".plan.gpkg.{dead}-0123abcd.tmp.gpkg-journal": "file",
        f".current.{dead}-89abcdef.tmp": "link",
        ".a.csv.k2x_9qzm.tmp": "file",  # an earlier version's mkstemp name, from before
        ".plan.gpkg.abcd_123.tmp.gpkg": "file",
    }
    kept = {
        f".b.csv.{me}-0123abcd.tmp.csv": "file",  # this process is writing it
        ".a.csv.tmp": "file", "a.csv": "file", "notes.tmp": "file", ".hidden": "file",
        f".a.csv.{dead}-0123abcd.tmp.parquet": "file",  # not a temporary name of a.csv
        ".c.csv.k2x_9qzm.tmp": "new",  # mkstemp-like but written after this process started
    }
    versions = {f".abc123-v2.{dead}-0123abcd.tmp": "dir"}
    past = territory.atomic.STARTED - 60
    (tmp_path / "versions").mkdir()
    for folder, names in ((tmp_path, ours | kept), (tmp_path / "versions", versions)):
        for name, kind in names.items():
            path = folder / name
            if kind == "dir":
                path.mkdir(exist_ok=True)
                (path / "plan.gpkg").write_text("half")
            elif kind == "link":
                path.symlink_to("versions/abc123-v2")
            else:
                path.write_text("x")
            if kind not in ("new", "link"):
                os.utime(path, (past, past))
    removed = sweep_folder(tmp_path)
    assert sorted(p.name for p in removed) == sorted([*ours, *versions])
    assert {p.name for p in tmp_path.iterdir()} == {*kept, "versions"}
    assert list((tmp_path / "versions").iterdir()) == []
