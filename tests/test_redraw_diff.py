"""Versions and diffs: lineage travels with the file; a diff names exactly what changed."""

from __future__ import annotations

import re

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from territory.cli import app
from territory.diff import diff_plans
from territory.plan import Plan

from .redraw_city import small_city


@pytest.fixture(scope="module")
def plan() -> Plan:
    return small_city().plan


def _relabel(plan: Plan, unit_ids: list, author: str = "ann", message: str = "m") -> Plan:
    """Each unit given to the next main grid of its branch (test data, not a valid edit:
    the diff must report whatever changed)."""
    units = plan.units.copy()
    for u in unit_ids:
        cur = units.at[u, "main_grid_id"]
        grids = sorted(units.loc[units["branch_id"] == units.at[u, "branch_id"],
                                 "main_grid_id"].unique())
        new = grids[(grids.index(cur) + 1) % len(grids)]
        units.at[u, "main_grid_id"] = new
        units.at[u, "sub_grid_id"] = f"{new}-S1"
    return plan.derive(units, author=author, message=message)


def test_a_diff_of_a_plan_with_itself_is_empty(plan):
    d = diff_plans(plan, plan)
    assert d.empty and d.changes.empty and d.grids.empty
    assert (d.balance["max_abs_deviation_before"] == d.balance["max_abs_deviation_after"]).all()


@settings(max_examples=5, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_the_diff_lists_exactly_the_units_that_changed(plan, data):
    n_grids = plan.units.groupby("branch_id")["main_grid_id"].transform("nunique")
    movable = list(plan.units.index[n_grids > 1])  # a lone grid's units have nowhere to go
    ids = data.draw(st.lists(st.sampled_from(movable), min_size=1, max_size=6, unique=True))
    after = _relabel(plan, ids)
    d = diff_plans(plan, after)
    assert set(d.changes["unit_id"]) == set(ids)
    row = d.changes.set_index("unit_id").loc[ids[0]]
    assert row["from_main_grid_id"] == plan.units.at[ids[0], "main_grid_id"]
    assert row["to_main_grid_id"] == after.units.at[ids[0], "main_grid_id"]
    assert row["customers"] == plan.units.at[ids[0], "customers"]
    touched = {g for u in ids for g in (plan.units.at[u, "main_grid_id"],
                                        after.units.at[u, "main_grid_id"])}
    touched -= {g for g in touched if set(plan.units.index[plan.units["main_grid_id"] == g])
                == set(after.units.index[after.units["main_grid_id"] == g])}
    assert set(d.grids.loc[d.grids["level"] == "main_grid", "grid_id"]) == touched
    assert diff_plans(after, after).empty


def test_versions_record_author_message_parent_and_lineage(plan, tmp_path):
    v2 = _relabel(plan, [plan.units.index[0]], "ann", "new estate")
    v3 = _relabel(v2, [plan.units.index[1]], "bo", "store closed")
    assert (v3.version, v3.parent, v3.author) == (plan.version + 2, v2.plan_id, "bo")
    assert [h["plan_id"] for h in v3.history] == [plan.plan_id, v2.plan_id]
    assert v2.history == v3.history[:1]  # append-only: the parent's lineage is a prefix
    loaded = Plan.load(v3.save(tmp_path / "v3.gpkg"))
    assert loaded.history == v3.history and loaded.message == "store closed"
    res = CliRunner().invoke(app, ["history", str(tmp_path / "v3.gpkg")])
    assert res.exit_code == 0, res.output
    assert "store closed" in res.output and "new estate" in res.output


def test_cli_diff_writes_the_tables_the_crm_csv_and_an_offline_map(plan, tmp_path):
    city = small_city()
    n_grids = plan.units.groupby("branch_id")["main_grid_id"].transform("nunique")
    busy = plan.units.loc[n_grids > 1, "customers"].sort_values().index[-3:].tolist()
    after = _relabel(plan, busy, message="<script>alert(1)</script>")
    plan.save(tmp_path / "a.gpkg")
    after.save(tmp_path / "b.gpkg")
    city.customers.drop(columns="geometry").to_csv(tmp_path / "customers.csv", index=False)
    communities = city.inputs.communities
    communities.drop(columns="geometry", errors="ignore").to_csv(tmp_path / "communities.csv",
                                                                  index=False)
    res = CliRunner().invoke(app, [
        "diff", str(tmp_path / "a.gpkg"), str(tmp_path / "b.gpkg"), "--out", str(tmp_path / "d"),
        "--customers", str(tmp_path / "customers.csv"), "--points-crs", "wgs84",
        "--communities", str(tmp_path / "communities.csv"),
        "--effective-date", "2027-01-01"])
    assert res.exit_code == 0, res.output
    changes = pd.read_csv(tmp_path / "d" / "changes.csv")
    assert list(changes.columns[:5]) == ["unit_id", "from_sub_grid_id", "to_sub_grid_id",
                                         "from_main_grid_id", "to_main_grid_id"]
    assert set(changes["unit_id"]) == set(busy)
    moved = pd.read_csv(tmp_path / "d" / "customers_moved.csv")
    assert len(moved) == plan.units.loc[busy, "customers"].sum()
    assert (moved["effective_date"] == "2027-01-01").all()
    comm = pd.read_csv(tmp_path / "d" / "communities_moved.csv")
    assert len(comm) == plan.units.loc[busy, "communities"].sum()
    assert set(comm.columns) >= {"community_id", "from_main_grid_id", "to_main_grid_id"}
    page = (tmp_path / "d" / "changes.html").read_text()
    assert "changed areas" in page
    # offline: no script or stylesheet fetched (save_map refuses such a page anyway)
    assert not re.search(r"""<(?:script|link)[^>]+(?:src|href)=["']?(?:https?:)?//""", page)
    assert "<script>alert(1)" not in page
