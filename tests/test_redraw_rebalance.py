"""Rebalance with least churn: the budget is a hard limit, locks hold, invariants kept."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from territory.cli import app
from territory.diff import diff_plans
from territory.edits import set_lock
from territory.graph import contiguous_grids
from territory.metrics import load_table, nesting_ok
from territory.plan import Plan
from territory.progress import GRAPH, REBALANCE
from territory.rebalance import Budget, rebalance

from .redraw_lattice import lattice_plan


def _worst(plan: Plan) -> float:
    return float(load_table(plan, "main_grid")["dev_subscribers"].abs().max())


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 10_000), share=st.floats(0, 0.3),
       measure=st.sampled_from(["customers", "households", "units"]),
       n_locked=st.integers(0, 12), tol=st.sampled_from([0.03, 0.1, 0.3]))
def test_rebalance_never_exceeds_its_budget_never_moves_a_lock_keeps_invariants(
        seed, share, measure, n_locked, tol):
    plan, graph = lattice_plan(seed, tolerance=tol)
    rng = np.random.default_rng(seed)
    locks = list(rng.choice(plan.units.index, n_locked, replace=False))
    if locks:
        plan = set_lock(plan, graph, unit_ids=locks)
    budget = Budget.parse(f"{measure}={share * 100:.3f}%", plan)
    res = rebalance(plan, graph, budget, time_limit=20)
    new = res.plan
    w = plan.units["customers"] if measure == "customers" else (
        plan.units["households"] if measure == "households" else plan.units["customers"] * 0 + 1)
    moved = new.units.index[new.units["main_grid_id"] != plan.units["main_grid_id"]]
    assert w[moved].sum() <= budget.value + 1e-6
    assert res.moved_budget == pytest.approx(float(w[moved].sum()))
    assert not set(moved) & set(locks)
    assert new.units[["main_grid_id", "sub_grid_id"]].notna().all().all()
    assert nesting_ok(new)
    for level in ("main_grid", "sub_grid"):
        assert all(contiguous_grids(graph, new.labels(level)).values()), level
    assert (new.units["branch_id"] == plan.units["branch_id"]).all()
    assert new.parent == plan.plan_id
    # never worse than where it started; feasible means within the band
    assert _worst(new) <= _worst(plan) + 1e-9
    if res.feasible:
        assert _worst(new) <= tol + 1e-6
    elif res.smallest_budget is not None:
        assert res.smallest_budget > budget.value


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_a_zero_budget_on_a_valid_plan_returns_it_unchanged(seed):
    plan, graph = lattice_plan(seed)
    tol = min(_worst(plan) + 0.01, 0.99)  # the plan meets its tolerance
    plan = Plan(units=plan.units, measures=plan.measures,
                params={"measures": {"subscribers": tol}})
    res = rebalance(plan, graph, Budget("customers", 0.0), time_limit=20)
    assert res.feasible and res.moved_units == 0
    assert diff_plans(plan, res.plan).empty


def test_an_impossible_budget_says_so_with_the_smallest_that_works():
    plan, graph = lattice_plan(3, tolerance=0.03)
    first = rebalance(plan, graph, Budget("customers", 0.0), time_limit=20)
    assert not first.feasible and first.smallest_budget is not None
    assert "smallest budget" in first.message
    enough = rebalance(plan, graph, Budget("customers", first.smallest_budget), time_limit=20)
    assert enough.feasible and enough.moved_budget <= first.smallest_budget + 1e-6
    assert _worst(enough.plan) <= 0.03 + 1e-6


def test_cli_rebalance_writes_a_child_version_and_the_sweep(tmp_path):
    plan, _ = lattice_plan(3, tolerance=0.03)
    plan.save(tmp_path / "p.gpkg")
    (tmp_path / "locks.csv").write_text("unit_id\nu3_3\nu4_3\n")
    res = CliRunner().invoke(app, ["rebalance", str(tmp_path / "p.gpkg"), "--budget",
                                   "customers=100%", "--lock", str(tmp_path / "locks.csv"),
                                   "--sweep", "--out", str(tmp_path / "r"), "--author", "ann"])
    assert res.exit_code == 0, res.output
    for stage in (GRAPH, REBALANCE):  # the stages are shown as they run
        assert stage in res.output
    new = Plan.load(tmp_path / "r" / "plan.gpkg")
    assert new.parent == plan.plan_id and new.author == "ann"
    assert [h["plan_id"] for h in new.history][0] == plan.plan_id
    assert (new.units.loc[["u3_3", "u4_3"], "main_grid_id"]
            == plan.units.loc[["u3_3", "u4_3"], "main_grid_id"]).all()
    figures = json.loads((tmp_path / "r" / "rebalance.json").read_text())
    assert figures["feasible"] is True
    sweep = (tmp_path / "r" / "sweep.csv").read_text().splitlines()
    assert sweep[0].startswith("budget,") and len(sweep) >= 3
    short = CliRunner().invoke(app, ["rebalance", str(tmp_path / "p.gpkg"), "--budget",
                                     "customers=0", "--out", str(tmp_path / "s")])
    assert short.exit_code == 3 and "smallest budget" in short.output
