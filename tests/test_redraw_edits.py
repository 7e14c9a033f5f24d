"""Edits: each a new version with author and message, or refused with the rule and the fix."""

from __future__ import annotations

import pandas as pd
import pytest
import shapely

from territory.edits import (
    EditRefused,
    add_grid,
    load_points,
    merge_grids,
    move_units,
    remove_grid,
    set_lock,
    set_tolerance,
    split_grid,
    units_in_polygon,
)
from territory.graph import contiguous_grids
from territory.metrics import nesting_ok
from territory.plan import Plan

from .redraw_lattice import SIZE, lattice_plan


def _valid(plan, graph):
    assert plan.units[["branch_id", "main_grid_id", "sub_grid_id"]].notna().all().all()
    assert nesting_ok(plan)
    for level in ("main_grid", "sub_grid"):
        assert all(contiguous_grids(graph, plan.labels(level)).values()), level


def test_a_move_inside_a_drawn_polygon_is_a_new_version():
    plan, graph = lattice_plan(tolerance=0.9)
    # the two units of B1-M01 (rows 3) under the line with B1-M02, columns 0-1
    box = shapely.box(114.0 + 0.1 * SIZE, 22.6 + 3.1 * SIZE, 114.0 + 1.9 * SIZE,
                      22.6 + 3.9 * SIZE)
    ids = units_in_polygon(plan, box)
    assert sorted(ids) == ["u3_0", "u3_1"]
    new = move_units(plan, graph, ids, "B1-M02", author="ann", message="estate")
    assert (new.parent, new.author, new.message, new.version) == (plan.plan_id, "ann",
                                                                  "estate", plan.version + 1)
    assert (new.units.loc[ids, "main_grid_id"] == "B1-M02").all()
    assert new.units.loc[ids, "sub_grid_id"].iloc[0] == "B1-M02-S1"
    changed = new.units.index[new.units["main_grid_id"] != plan.units["main_grid_id"]]
    assert sorted(changed) == sorted(ids)
    _valid(new, graph)
    assert plan.units.loc["u3_0", "main_grid_id"] == "B1-M01"  # the parent is unchanged


def test_moves_that_break_a_rule_are_refused_with_the_reason():
    plan, graph = lattice_plan(tolerance=0.9)
    with pytest.raises(EditRefused, match="another branch"):
        move_units(plan, graph, ["u0_3"], "B2-M01")
    with pytest.raises(EditRefused, match="do not touch"):
        move_units(plan, graph, ["u0_0"], "B1-M02")
    locked = set_lock(plan, graph, unit_ids=["u3_0"], author="bo")
    with pytest.raises(EditRefused, match="locked units would move"):
        move_units(locked, graph, ["u3_0"], "B1-M02")
    unlocked = set_lock(locked, graph, unit_ids=["u3_0"], lock=False)
    move_units(unlocked, graph, ["u3_0"], "B1-M02")
    grid_locked = set_lock(plan, graph, grids=["B1-M01"])
    with pytest.raises(EditRefused, match="locked"):
        move_units(grid_locked, graph, ["u3_1"], "B1-M02")
    # column 1 of B1-M01 handed over: column 0 is cut off from columns 2-3
    with pytest.raises(EditRefused, match="contiguity"):
        move_units(plan, graph, ["u0_1", "u1_1", "u2_1", "u3_1"], "B1-M02")


def test_a_move_that_unbalances_is_refused_with_what_would_work():
    plan, graph = lattice_plan(tolerance=0.05)
    units = plan.units.assign(subscribers=10.0)  # every main grid holds 160
    even = Plan(units=units, measures=plan.measures, params=plan.params)
    with pytest.raises(EditRefused, match=r"balance: main grid B1-M0[12] .*6\.2%.*rebalance"):
        move_units(even, graph, ["u3_0"], "B1-M02")
    # the same move with a tolerance that holds it is accepted
    loose = Plan(units=units, measures=plan.measures, params={"measures": {"subscribers": 0.1}})
    assert move_units(loose, graph, ["u3_0"], "B1-M02").units.at["u3_0", "main_grid_id"] == \
        "B1-M02"


def test_split_merge_remove_keep_every_rule():
    plan, graph = lattice_plan(tolerance=0.9)
    split = split_grid(plan, graph, "B1-M01", parts=2, time_limit=5)
    assert split.units.loc[split.units["branch_id"] == "B1", "main_grid_id"].nunique() == 3
    _valid(split, graph)
    merged = merge_grids(split, graph, "B1-M01", "B1-M01-b")
    assert set(merged.units.loc[merged.units["branch_id"] == "B1", "main_grid_id"]) == {
        "B1-M01", "B1-M02"}
    _valid(merged, graph)
    added = add_grid(plan, graph, "B2", time_limit=5)
    assert added.units.loc[added.units["branch_id"] == "B2", "main_grid_id"].nunique() == 3
    _valid(added, graph)
    removed = remove_grid(plan, graph, "B2-M02")
    assert set(removed.units.loc[removed.units["branch_id"] == "B2", "main_grid_id"]) == {
        "B2-M01"}
    _valid(removed, graph)
    with pytest.raises(EditRefused, match="only grid"):
        remove_grid(removed, graph, "B2-M01")
    with pytest.raises(EditRefused, match="one parent"):
        merge_grids(plan, graph, "B1-M01", "B2-M01")


def test_a_tolerance_the_plan_does_not_meet_is_refused_with_the_least_that_works():
    plan, graph = lattice_plan(tolerance=0.9)
    with pytest.raises(EditRefused, match="at least"):
        set_tolerance(plan, graph, "subscribers", 0.0001)
    loose = set_tolerance(plan, graph, "subscribers", 0.8)
    assert loose.params["measures"]["subscribers"] == 0.8


def test_new_customers_load_onto_the_same_units():
    plan, _ = lattice_plan()
    centre = plan.units.geometry.iloc[0].representative_point()
    pts = pd.DataFrame({"lng": [centre.x] * 7, "lat": [centre.y] * 7, "subscribers": [2] * 7,
                        "workload": [1] * 7, "arpu": [50.0] * 7})
    new, rep = load_points(plan, "customers", pts, author="ops")
    assert rep["inside"] == 7
    assert new.units["customers"].iloc[0] == 7 and new.units["customers"].sum() == 7
    assert (new.units["main_grid_id"] == plan.units["main_grid_id"]).all()


def test_cli_edit_move_records_the_version_or_exits_2_with_the_reason(tmp_path):
    from typer.testing import CliRunner

    from territory.cli import app

    plan, _ = lattice_plan(tolerance=0.9)
    plan.save(tmp_path / "v1.gpkg")
    run = CliRunner().invoke
    res = run(app, ["edit", "move", str(tmp_path / "v1.gpkg"), "--out", str(tmp_path / "v2.gpkg"),
                    "--unit", "u3_0", "--to", "B1-M02", "--author", "ann", "--message", "x"])
    assert res.exit_code == 0, res.output
    v2 = Plan.load(tmp_path / "v2.gpkg")
    assert (v2.parent, v2.author, v2.units.at["u3_0", "main_grid_id"]) == (
        plan.plan_id, "ann", "B1-M02")
    res = run(app, ["edit", "move", str(tmp_path / "v2.gpkg"), "--out", str(tmp_path / "v3.gpkg"),
                    "--unit", "u0_0", "--to", "B1-M02"])
    assert res.exit_code == 2 and "do not touch" in res.output
    assert not (tmp_path / "v3.gpkg").exists()
