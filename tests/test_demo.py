"""The demo sizes itself: any number of customers on either shipped city gives a valid plan.

Each plan is checked with the project's own validators (``plan_metrics``: contiguity on the
unit graph, balance against the parent's mean, coverage; ``nesting_ok``), on the same two
steps ``territory demo`` runs (:func:`territory.demo.demo_job`, then the pipeline). Larger
sizes run in ``bench/demo_sizes.py``.
"""

from __future__ import annotations

import html
import json

import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from territory.cli import app
from territory.demo import DEMO_BALANCE, demo_job, store_units_by_main_grid
from territory.errors import InvalidInputError
from territory.filenames import safe_filename
from territory.metrics import GAP_TOLERANCE_M2, nesting_ok
from territory.pipeline import run
from territory.plan import Plan
from territory.reports import page_name
from territory.sizing import (
    CUSTOMERS_PER_MAIN,
    PEAK_SHARE,
    SUB_GRIDS_RANGE,
    TARGET_PER_UNIT_RANGE,
    TIME_LIMIT_MAIN_RANGE,
    TIME_LIMIT_SUB_RANGE,
    demo_sizing,
)

# ------------------------------------------------------------------------------- sizing


@given(n=st.integers(5_000, 2_000_000), branches=st.integers(1, 15))
def test_sizing_rules_hold_for_any_city(n, branches):
    s = demo_sizing(n, branches)
    assert s.n_main >= branches
    if n >= 2 * CUSTOMERS_PER_MAIN * branches:  # not held up by one-per-branch
        assert 0.75 * CUSTOMERS_PER_MAIN <= n / s.n_main <= 1.25 * CUSTOMERS_PER_MAIN
    assert SUB_GRIDS_RANGE[0] <= s.n_sub <= SUB_GRIDS_RANGE[1]
    assert TARGET_PER_UNIT_RANGE[0] <= s.target_per_unit <= TARGET_PER_UNIT_RANGE[1]
    # a sub-grid is made of many units, unless units are at their smallest size
    per_sub = n / (s.n_main * s.n_sub)
    assert per_sub / s.target_per_unit >= 20 or s.target_per_unit == TARGET_PER_UNIT_RANGE[0]
    assert s.resolution in PEAK_SHARE and s.min_resolution <= s.resolution
    assert TIME_LIMIT_MAIN_RANGE[0] <= s.time_limit_main <= TIME_LIMIT_MAIN_RANGE[1]
    assert TIME_LIMIT_SUB_RANGE[0] <= s.time_limit_sub <= TIME_LIMIT_SUB_RANGE[1]
    assert s.n_stores == s.n_main


@given(a=st.integers(5_000, 2_000_000), b=st.integers(5_000, 2_000_000))
def test_more_customers_never_coarser_or_fewer_grids(a, b):
    lo, hi = demo_sizing(min(a, b), 6), demo_sizing(max(a, b), 6)
    assert hi.n_main >= lo.n_main
    assert hi.resolution >= lo.resolution
    assert hi.time_limit_main >= lo.time_limit_main


def test_small_city_gets_short_time_limits_and_large_one_finer_units():
    small, large = demo_sizing(5_000, 9), demo_sizing(2_000_000, 9)
    assert small.time_limit_main < 60 and small.n_main == 9
    assert large.resolution > small.resolution and large.n_main == 1_000


def test_overrides_feed_the_rules_after_them():
    s = demo_sizing(20_000, 6, main_grids=6, sub_grids=2, resolution=10)
    assert (s.n_main, s.n_sub, s.resolution) == (6, 2, 10)
    # fewer, larger sub-grids -> larger units
    assert s.target_per_unit > demo_sizing(20_000, 6).target_per_unit
    assert demo_sizing(20_000, 6, target_per_unit=7).target_per_unit == 7


@pytest.mark.parametrize("kwargs, match", [
    ({"main_grids": 3}, "at least 6"),
    ({"sub_grids": 0}, "--sub-grids"),
    ({"target_per_unit": -1}, "--target-per-unit"),
    ({"resolution": 16}, "--resolution"),
])
def test_bad_overrides_name_the_option(kwargs, match):
    with pytest.raises(InvalidInputError, match=match):
        demo_sizing(20_000, 6, **kwargs)


def test_bad_override_on_the_command_exits_2(tmp_path):
    res = CliRunner().invoke(app, ["demo", "--city", "xiamen", "--customers", "5000",
                                   "--main-grids", "2", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "--main-grids" in res.output
    assert "Traceback" not in res.output


# ---------------------------------------------------------------------------- the plans


def check_plan(result, n_customers):
    """The plan checks: nesting, every grid contiguous, balance within tolerance at the
    levels that promise it, coverage without overlap, every customer in a unit."""
    plan, m = result.plan, result.metrics
    assert nesting_ok(plan)
    assert plan.units[["sub_grid_id", "main_grid_id", "branch_id"]].notna().all().all()
    for level in ("branch", "main_grid", "sub_grid"):
        assert m[level]["all_contiguous"], level
        assert m[level]["coverage"]["overlap_m2"] < 1.0, level
        assert m[level]["coverage"]["gap_m2"] <= GAP_TOLERANCE_M2, level
    for level in ("main_grid", "sub_grid"):
        for measure, tol in DEMO_BALANCE.items():
            assert m[level][measure]["max_abs_deviation"] <= tol + 1e-9, (level, measure)
    assert result.report["customers"]["inside"] == n_customers
    assert plan.units["customers"].sum() == n_customers


@pytest.mark.parametrize("city, n", [("xiamen", 5_000), ("shenzhen", 5_000)])
def test_demo_plan_is_valid(city, n):
    job = demo_job(city, n, workers=1)
    assert job.spec.n_main == job.size.n_main and job.spec.n_sub == job.size.n_sub
    result = run(job.inputs, job.units, job.spec)
    check_plan(result, n)
    units = result.plan.units
    assert units["main_grid_id"].nunique() == job.size.n_main
    # sub-grids: as many as the main grid's subscribers hold mean sub-grids, at least one
    per_main = units.groupby("main_grid_id").agg(subs=("subscribers", "sum"),
                                                 n=("sub_grid_id", "nunique"))
    expected = (per_main["subs"] / job.spec.sub_size).round().clip(lower=1)
    # a main grid the search could not split in its time limit (a busy machine) gets fewer
    # sub-grids, and the plan says so: never silently
    reduced = result.plan.params["sub_grids_reduced"]
    for mg in per_main.index[per_main["n"] != expected]:
        r = reduced[mg]
        assert (r["requested"], r["used"]) == (expected[mg], per_main.at[mg, "n"])
    assert len(reduced) <= len(per_main) // 4  # the exception, not the rule


def test_stores_as_centres_every_main_grid_holds_exactly_its_store():
    job = demo_job("shenzhen", 12_000, workers=1, seed=3)
    result = run(job.inputs, job.units, job.spec, stores_as_centres=True)
    check_plan(result, 12_000)
    store_units = store_units_by_main_grid(result.plan.units, job.data.stores)
    assert (store_units == 1).all(), store_units[store_units != 1]
    # one main grid per store (two stores never fall in one unit here)
    assert len(store_units) == len(job.data.stores) == job.size.n_stores


def test_demo_command_sizes_itself(tmp_path):
    out = tmp_path / "demo"
    res = CliRunner().invoke(app, ["demo", "--city", "xiamen", "--customers", "9000",
                                   "--out", str(out), "--workers", "1"])
    assert res.exit_code == 0, res.output
    size = demo_sizing(9_000, 6)
    plan = Plan.load(out / "plan.gpkg")
    assert plan.units["main_grid_id"].nunique() == size.n_main
    assert plan.params["resolution"] == size.resolution
    assert plan.params["target_per_unit"] == size.target_per_unit
    metrics = json.loads((out / "metrics.json").read_text())
    for level in ("main_grid", "sub_grid"):
        assert metrics[level]["all_contiguous"]
        for measure, tol in DEMO_BALANCE.items():
            assert metrics[level][measure]["max_abs_deviation"] <= tol + 1e-9
    said = " ".join(res.output.split())
    assert f"{size.n_main} main grids x {size.n_sub} sub-grids" in said
    assert "main grids containing a store: " in said and f"of {size.n_main} " in said
    # staff are allocated before the maps: every field map names its grid manager and team
    staff = pd.read_csv(out / "staff" / "staff.csv", dtype=str)
    for grid, people in staff.groupby("main_grid_id"):
        page = (out / "maps" / "field" / f"{safe_filename(grid)}.html").read_text("utf-8")
        assert f"Staff ({len(people)})" in page
        boss = people.loc[people["role"] == "grid_manager", "name"]
        assert len(boss) == 1 and html.escape(boss.iloc[0]) in page
        for name in people["name"].head(30):  # the info box lists up to 30
            assert html.escape(name) in page
        report = (out / "reports" / "grids" / page_name(grid, "html")).read_text("utf-8")
        assert html.escape(boss.iloc[0]) in report
