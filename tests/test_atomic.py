"""Atomic writes: whole files with the usual permissions; leftovers of killed runs swept."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import geopandas as gpd
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import territory.atomic
from territory.atomic import atomic_dir, atomic_path, write_text
from territory.cli import app
from territory.plan_folder import publish
from tests.conftest import make_plan

runner = CliRunner()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask():
    """Set the umask for one test, then put it back."""
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o077, 0o002])
def test_atomic_writes_take_the_mode_of_any_new_file(tmp_path, umask, mask):
    umask(mask)
    usual = 0o666 & ~mask
    assert mode(write_text(tmp_path / "a.txt", "x")) == usual
    with atomic_path(tmp_path / "b.csv") as tmp:  # a writer making its file private
        fd = os.open(tmp, os.O_CREAT | os.O_WRONLY, 0o600)
        os.close(fd)
    assert mode(tmp_path / "b.csv") == usual
    with atomic_path(tmp_path / "c.bin", mode=0o640) as tmp:  # unless asked otherwise
        tmp.write_bytes(b"x")
    assert mode(tmp_path / "c.bin") == 0o640


def test_a_failed_write_keeps_the_old_file_and_leaves_nothing(tmp_path):
    write_text(tmp_path / "a.txt", "old")
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "a.txt") as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "set") as folder:
        (folder / "one").write_text("1")
        raise RuntimeError("killed")
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]
    assert (tmp_path / "a.txt").read_text() == "old"


def test_assign_takes_the_plan_folder_sweeps_leftovers_and_writes_0644(
        tiny_units, tmp_path, umask):
    umask(0o022)
    publish(make_plan(tiny_units, 1), tmp_path / "plan")
    centre = tiny_units.geometry.union_all().centroid
    pd.DataFrame({"id": [1, 2], "lng": [centre.x, 0.0], "lat": [centre.y, 0.0]}).to_csv(
        tmp_path / "in.csv", index=False)
    out = tmp_path / "out"
    out.mkdir()
    child = subprocess.Popen(["true"])
    child.wait()
    left = [out / f".a.csv.{child.pid}-0123abcd.tmp.csv", out / ".a.csv.q1w2e3r4.tmp"]
    mine = [out / "a.csv.bak", out / ".a.csv.tmp", out / "notes.tmp"]
    for path in left + mine:
        path.write_text("x")
    past = territory.atomic.STARTED - 60
    os.utime(left[1], (past, past))  # an earlier version's leftover, from before this run
    res = runner.invoke(app, ["assign", str(tmp_path / "plan"), str(tmp_path / "in.csv"),
                              "--crs", "wgs84", "--out", str(out / "a.csv")])
    assert res.exit_code == 0, res.output
    assigned = pd.read_csv(out / "a.csv")
    assert list(assigned["status"]) == ["ok", "outside"]
    assert mode(out / "a.csv") == 0o644
    assert sorted(p.name for p in out.iterdir()) == sorted(["a.csv", *(p.name for p in mine)])


def test_export_takes_the_plan_folder_and_writes_the_usual_mode(tiny_units, tmp_path,
                                                                  umask):
    umask(0o027)
    plan = make_plan(tiny_units, 1)
    publish(plan, tmp_path / "plan")
    res = runner.invoke(app, ["export", str(tmp_path / "plan"), "--format", "geojson",
                              "--level", "sub_grid", "--out", str(tmp_path / "exports")])
    assert res.exit_code == 0, res.output
    (written,) = (tmp_path / "exports").iterdir()
    assert mode(written) == 0o640
    assert len(gpd.read_file(written)) == plan.units["sub_grid_id"].nunique()


DEAD = None


def _dead_pid() -> int:
    global DEAD
    if DEAD is None:
        child = subprocess.Popen(["true"])
        child.wait()
        DEAD = child.pid
    return DEAD


@settings(max_examples=150, deadline=None)
@given(name=st.text(st.characters(blacklist_characters="/\x00", blacklist_categories=["Cs"]),
                    min_size=1, max_size=40).filter(lambda n: n not in (".", "..")))
def test_every_temporary_name_a_writer_makes_is_recognised_as_ours(tmp_path_factory, name):
    """Whatever the target's name (dots, spaces, Chinese, a leading dot), the sweeper knows
    the temporary names made for it, and knows them by their writer's process alone."""
    folder = tmp_path_factory.mktemp("names")
    for suffix in (Path(name).suffix, ""):
        tmp, _ = territory.atomic._reserve(folder, name, suffix)
        tmp.unlink()
        assert not territory.atomic.is_leftover(tmp)  # this process is writing it
        dead = tmp.with_name(tmp.name.replace(f".{os.getpid()}-", f".{_dead_pid()}-"))
        assert territory.atomic.is_leftover(dead)
