"""``territory staff`` end to end: the files it writes and its exit codes."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from territory.cli import app
from territory.synth_roster import synthetic_roster
from tests.test_staffing import tiny_plan

runner = CliRunner()


def _files(tmp_path, seed=0):
    plan = tiny_plan(seed)
    plan.save(tmp_path / "plan.gpkg")
    roster = synthetic_roster(plan, seed=seed)
    roster.to_csv(tmp_path / "roster.csv", index=False)
    return plan, roster


def test_staff_writes_staff_and_grids(tmp_path):
    plan, roster = _files(tmp_path)
    res = runner.invoke(app, ["staff", str(tmp_path / "plan.gpkg"), "--roster",
                              str(tmp_path / "roster.csv"), "--out", str(tmp_path / "s")])
    assert res.exit_code == 0, res.output
    staff = pd.read_csv(tmp_path / "s" / "staff.csv")
    assert list(staff.columns[:3]) == ["person_id", "name", "role"]
    assert {"main_grid_id", "sub_grid_id", "hours", "workload_hours", "travel_km",
            "moved"} <= set(staff.columns)
    assert sorted(staff["person_id"]) == sorted(roster["person_id"])
    assert staff.loc[staff["role"] == "customer_manager", "sub_grid_id"].notna().all()
    assert staff.loc[staff["role"] != "customer_manager", "sub_grid_id"].isna().all()
    assert (staff["workload_hours"] <= staff["hours"] + 0.05).all()
    grids = pd.read_csv(tmp_path / "s" / "grids_staffing.csv")
    main = grids[grids["level"] == "main_grid"]
    assert sorted(main["grid_id"]) == sorted(plan.units["main_grid_id"].unique())
    assert (main["grid_manager"] == 1).all() and main["staff"].sum() == len(staff)
    # every hour of work is someone's (the files round to 0.1 h)
    assert abs(main["workload_hours"].sum() - staff["workload_hours"].sum()) <= 0.05 * (
        len(staff) + len(main))
    summary = json.loads((tmp_path / "s" / "staffing.json").read_text())
    assert set(summary) == {"grid_manager", "customer_manager", "key_account_manager",
                            "installer"}


def test_staff_counts_file_and_refusals(tmp_path):
    _, roster = _files(tmp_path, seed=1)
    heads = roster.groupby(["branch_id", "role"]).size().rename("headcount").reset_index()
    heads.loc[heads["role"] == "grid_manager", "headcount"] += 1
    heads.to_csv(tmp_path / "counts.csv", index=False)
    res = runner.invoke(app, ["staff", str(tmp_path / "plan.gpkg"), "--roster",
                              str(tmp_path / "roster.csv"), "--counts",
                              str(tmp_path / "counts.csv"), "--out", str(tmp_path / "s")])
    assert res.exit_code == 3 and "grid managers for 2 main grids" in res.output
    res = runner.invoke(app, ["staff", str(tmp_path / "plan.gpkg"), "--roster",
                              str(tmp_path / "roster.csv"), "--stores", str(tmp_path / "x.csv"),
                              "--out", str(tmp_path / "s")])
    assert res.exit_code == 2 and "--stores-crs" in res.output
    (tmp_path / "bad.csv").write_text("person_id,role\np1,chef\n")
    res = runner.invoke(app, ["staff", str(tmp_path / "plan.gpkg"), "--roster",
                              str(tmp_path / "bad.csv"), "--out", str(tmp_path / "s")])
    assert res.exit_code == 2 and "chef" in res.output


def test_plan_with_staff_hours_then_staff(tmp_path):
    """Joint planning: sub-grids sized to one person's hours, then the staff allocated."""
    from territory.boundaries import DATA_DIR, load_city
    from territory.plan import Plan
    from territory.staff_grids import staff_range
    from territory.synth import generate_city, write_city
    from territory.workload import BEAT, beat_size, load_model

    areas = load_city("xiamen")
    data = generate_city(areas, n_customers=4000, seed=3)
    write_city(data, tmp_path / "data")
    d = tmp_path / "data"
    plan_args = [
        "plan", str(DATA_DIR / "xiamen_districts_gcj02.geojson"), "--boundaries-crs", "gcj02",
        "--customers", str(d / "customers.csv"), "--communities", str(d / "communities.csv"),
        "--key-accounts", str(d / "key_accounts.csv"), "--points-crs", "wgs84",
        "--resolution", "8", "--workers", "1", "--time-limit-main", "5",
        "--time-limit-sub", "2"]
    res = runner.invoke(app, [*plan_args, "--main-grids", "6", "--staff-hours", "20",
                              "--balance", "workload=0.5", "--out", str(tmp_path / "p")])
    assert res.exit_code == 0, res.output
    plan = Plan.load(tmp_path / "p" / "plan.gpkg")
    people = plan.units.groupby("main_grid_id")[BEAT].sum() / beat_size(load_model(), 20)
    per_main = plan.units.groupby("main_grid_id").agg(
        workload=("workload", "sum"), n_sub=("sub_grid_id", "nunique"))
    # every main grid's workload per staff (one person a sub-grid) within ±10 % of the city's
    city = per_main["workload"].sum() / per_main["n_sub"].sum()
    per_staff = per_main["workload"] / per_main["n_sub"] / city - 1
    assert per_staff.abs().max() <= 0.10, per_staff
    assert plan.params["staff_balance"]["max_abs_deviation"] == pytest.approx(
        per_staff.abs().max())
    # rounding each grid's people on its own would not hold it on this city
    rounded = people.round().clip(lower=1)
    assert (per_main["workload"] / rounded / (per_main["workload"].sum() / rounded.sum())
            - 1).abs().max() > 0.10
    lo, hi = staff_range(float(people.sum()), 0.10)  # the sub-grids follow the staff
    assert lo <= per_main["n_sub"].sum() <= hi
    # a city whose branches hold 1.7 people's months cannot: refused with the numbers
    res = runner.invoke(app, [*plan_args, "--main-size", "120", "--staff-hours", "25",
                              "--balance", "workload=0.3", "--out", str(tmp_path / "q")])
    assert res.exit_code == 3, res.output
    said = " ".join(res.output.split())
    assert "within ±10% of the city's" in said and "people's months" in said
    assert "a larger --staff-tolerance" in said
    synthetic_roster(plan, seed=3).to_csv(tmp_path / "roster.csv", index=False)
    res = runner.invoke(app, ["staff", str(tmp_path / "p" / "plan.gpkg"), "--roster",
                              str(tmp_path / "roster.csv"), "--out", str(tmp_path / "s")])
    assert res.exit_code == 0, res.output
    staff = pd.read_csv(tmp_path / "s" / "staff.csv")
    cm = staff[staff["role"] == "customer_manager"]
    assert set(cm["sub_grid_id"]) == set(plan.units["sub_grid_id"])


def test_staff_in_field_maps_and_exports(tmp_path):
    plan, roster = _files(tmp_path, seed=2)
    roster.loc[roster.index[roster["role"] == "grid_manager"][0], "name"] = "<b>Wang</b>"
    roster.to_csv(tmp_path / "roster.csv", index=False)
    res = runner.invoke(app, ["staff", str(tmp_path / "plan.gpkg"), "--roster",
                              str(tmp_path / "roster.csv"), "--out", str(tmp_path / "s")])
    assert res.exit_code == 0, res.output
    staff = pd.read_csv(tmp_path / "s" / "staff.csv")
    boss = staff[staff["name"] == "<b>Wang</b>"].iloc[0]
    grid = boss["main_grid_id"]
    res = runner.invoke(app, ["map", str(tmp_path / "plan.gpkg"), "--grid", grid, "--out",
                              str(tmp_path / "m"), "--staff", str(tmp_path / "s" / "staff.csv")])
    assert res.exit_code == 0, res.output
    page = (tmp_path / "m" / f"{grid}.html").read_text(encoding="utf-8")
    mine = staff[staff["main_grid_id"] == grid]
    assert f"Staff ({len(mine)})" in page
    assert "<b>Wang</b>" not in page and "Wang" in page  # escaped, never markup
    res = runner.invoke(app, ["export", str(tmp_path / "plan.gpkg"), "--format", "csv",
                              "--out", str(tmp_path / "e"), "--staff",
                              str(tmp_path / "s" / "staff.csv")])
    assert res.exit_code == 0, res.output
    exported = pd.read_csv(tmp_path / "e" / "staff.csv")
    assert sorted(exported["person_id"]) == sorted(staff["person_id"])
    res = runner.invoke(app, ["export", str(tmp_path / "plan.gpkg"), "--format", "kml",
                              "--out", str(tmp_path / "e"), "--staff",
                              str(tmp_path / "s" / "staff.csv")])
    assert res.exit_code == 2 and "--format 'csv'" in res.output
