"""The nightly change report on crafted pairs of runs: each reason, ids, formats, refusals."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from territory.assign import PLAN_COLUMNS, Columns, assign_file
from territory.assign_index import AssignmentIndex
from territory.changes import ChangeColumns, changes, write_changes
from territory.cli import app
from territory.crs import to_wgs84
from territory.errors import InvalidInputError

COLS = ChangeColumns(id="cid")


@pytest.fixture(scope="module")
def swapped(plan):
    """The next plan version: every main grid's sub-grids S1 and S2 trade names."""
    ids = plan.units["sub_grid_id"].str.replace("-S1", "-TMP").str.replace("-S2", "-S1")
    units = plan.units.assign(sub_grid_id=ids.str.replace("-TMP", "-S2"))
    return AssignmentIndex.build(plan.derive(units))


def _runs(plan, inside_points):
    """Last night's and tonight's customers: one of each kind of change, and rows that did
    not change (the same point written "114.10" and 114.1, a move within the grid)."""
    x, y = inside_points
    sub = plan.units["sub_grid_id"].to_numpy()
    far = int(np.flatnonzero(sub != sub[0])[0])  # a unit of another sub-grid than unit 0
    same = int(np.flatnonzero(sub == sub[0])[1])  # another unit of unit 0's sub-grid
    then = pd.DataFrame({
        "cid": ["same", "moved", "within", "gone", "geocoded", "lost", "zero"],
        "lng": [f"{x[0]:.6f}0", str(x[0]), str(x[0]), str(x[1]), "", str(x[2]), str(x[3])],
        "lat": [f"{y[0]:.6f}", str(y[0]), str(y[0]), str(y[1]), "", str(y[2]), str(y[3])],
    })
    now = pd.DataFrame({
        "cid": ["new", "zero", "same", "moved", "within", "geocoded", "lost"],
        "lng": [str(x[4]), str(x[3]), f"{x[0]:.6f}", str(x[far]), str(x[same]), str(x[5]), ""],
        "lat": [str(y[4]), str(y[3]), f"{y[0]:.6f}", str(y[far]), str(y[same]), str(y[5]), ""],
    })
    return then, now


def test_each_reason_on_one_plan(plan, index, inside_points, tmp_path):
    then, now = _runs(plan, inside_points)
    then.to_csv(tmp_path / "then_in.csv", index=False)
    now.to_csv(tmp_path / "now_in.csv", index=False)
    wgs = Columns(crs="wgs84")
    assign_file(index, tmp_path / "then_in.csv", tmp_path / "then.parquet", columns=wgs)
    assign_file(index, tmp_path / "now_in.csv", tmp_path / "now.csv", columns=wgs)
    report = changes(tmp_path / "then.parquet", tmp_path / "now.csv", columns=COLS)
    got = dict(zip(report["cid"], report["reason"], strict=True))
    assert got == {"new": "new_customer", "moved": "moved", "geocoded": "newly_geocoded",
                   "lost": "no_longer_geocoded", "gone": "customer_gone"}
    # tonight's order, then the customers gone in last night's order
    assert report["cid"].tolist() == ["new", "moved", "geocoded", "lost", "gone"]
    row = report.set_index("cid")
    assert row.loc["new", "change"] == "appeared" and pd.isna(row.loc["new", "prev_status"])
    assert row.loc["gone", "change"] == "disappeared" and pd.isna(row.loc["gone", "status"])
    assert row.loc["moved", "prev_sub_grid_id"] != row.loc["moved", "sub_grid_id"]
    assert (row.loc["lost", "prev_status"], row.loc["lost", "status"]) == ("ok", "invalid")
    # one plan both nights, as both files record it: a changed grid is a move, not a plan
    assert set(report["plan_version"].dropna()) == {str(plan.version)}
    assert set(report["prev_plan_id"].dropna()) == set(report["plan_id"].dropna()) == {
        plan.plan_id}
    path = write_changes(report, tmp_path / "changes.csv")
    back = pd.read_csv(path, dtype=str, encoding="utf-8-sig")
    assert back["cid"].tolist() == report["cid"].tolist()


def test_a_new_plan_version_is_named_as_the_reason(plan, index, swapped, inside_points,
                                                   tmp_path):
    then, _ = _runs(plan, inside_points)
    then.to_csv(tmp_path / "in.csv", index=False)
    wgs = Columns(crs="wgs84")
    assign_file(index, tmp_path / "in.csv", tmp_path / "then.csv", columns=wgs)
    assign_file(swapped, tmp_path / "in.csv", tmp_path / "now.csv", columns=wgs)
    report = changes(tmp_path / "then.csv", tmp_path / "now.csv", columns=COLS)
    before = pd.read_csv(tmp_path / "then.csv", dtype=str, keep_default_na=False)
    moved = before.loc[before["sub_grid_id"].str.contains("-S[12]$"), "cid"].tolist()
    assert moved and sorted(report["cid"]) == sorted(moved)
    assert set(report["reason"]) == {"plan_changed"}
    # the versions that assigned each row, as recorded in the two files
    assert set(report["prev_plan_version"]) == {"1"} and set(report["plan_version"]) == {"2"}
    assert set(report["prev_plan_id"]) == {plan.plan_id}
    assert set(report["plan_id"]) == {swapped.plan.plan_id} != {plan.plan_id}


def test_the_recorded_plan_decides_between_plan_changed_and_input_changed(plan, index,
                                                                          inside_points,
                                                                          tmp_path):
    """Same plan, same coordinates, another grid (the row's CRS changed): not a new plan,
    which the files' plan columns prove; files without them (written before the plan was
    recorded) leave only the old inference."""
    x, y = inside_points
    gx, gy = to_wgs84(x, y, "gcj02")  # the same numbers read as GCJ-02
    sub = plan.units["sub_grid_id"].to_numpy()
    there = index.locate(gx, gy)
    k = int(np.flatnonzero((there >= 0) & (sub[np.maximum(there, 0)] != sub))[0])
    rows = pd.DataFrame({"cid": ["shifted", "still"], "lng": [str(x[k]), str(x[0])],
                         "lat": [str(y[k]), str(y[0])]})
    rows.assign(sys="wgs84").to_csv(tmp_path / "then_in.csv", index=False)
    rows.assign(sys=["gcj02", "wgs84"]).to_csv(tmp_path / "now_in.csv", index=False)
    cols = Columns(crs_column="sys")
    assign_file(index, tmp_path / "then_in.csv", tmp_path / "then.csv", columns=cols)
    assign_file(index, tmp_path / "now_in.csv", tmp_path / "now.parquet", columns=cols)
    report = changes(tmp_path / "then.csv", tmp_path / "now.parquet", columns=COLS)
    assert dict(zip(report["cid"], report["reason"], strict=True)) == {
        "shifted": "input_changed"}
    old = pd.read_csv(tmp_path / "then.csv", dtype=str, keep_default_na=False)
    old.drop(columns=list(PLAN_COLUMNS)).to_csv(tmp_path / "old.csv", index=False)
    report = changes(tmp_path / "old.csv", tmp_path / "now.parquet", columns=COLS)
    assert dict(zip(report["cid"], report["reason"], strict=True)) == {
        "shifted": "plan_changed"}
    assert report["prev_plan_id"].isna().all() and (report["plan_id"] == plan.plan_id).all()


def test_refusals_name_the_column_and_the_fix(plan, index, inside_points, tmp_path):
    then, now = _runs(plan, inside_points)
    now.to_csv(tmp_path / "now_in.csv", index=False)
    assign_file(index, tmp_path / "now_in.csv", tmp_path / "now.csv",
                columns=Columns(crs="wgs84"))
    with pytest.raises(InvalidInputError, match="'customer_id'.*id_column"):
        changes(tmp_path / "now.csv", tmp_path / "now.csv")
    with pytest.raises(InvalidInputError, match="assigned file"):
        changes(tmp_path / "now_in.csv", tmp_path / "now.csv", columns=COLS)
    dup = pd.read_csv(tmp_path / "now.csv", dtype=str, keep_default_na=False)
    pd.concat([dup, dup.iloc[:1]]).to_csv(tmp_path / "dup.csv", index=False)
    with pytest.raises(InvalidInputError, match=r"not unique \(\['new'\]"):
        changes(tmp_path / "dup.csv", tmp_path / "now.csv", columns=COLS)
    with pytest.raises(InvalidInputError, match="no such file"):
        changes(tmp_path / "none.csv", tmp_path / "now.csv", columns=COLS)


def test_cli_reports_changes_after_assigning(plan, plan_file, inside_points, tmp_path):
    then, now = _runs(plan, inside_points)
    then.to_csv(tmp_path / "then_in.csv", index=False)
    now.to_csv(tmp_path / "now_in.csv", index=False, encoding="gb18030")
    runner = CliRunner()
    res = runner.invoke(app, ["assign", str(plan_file), str(tmp_path / "then_in.csv"),
                              "--out", str(tmp_path / "then.csv"), "--crs", "wgs84"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["assign", str(plan_file), str(tmp_path / "now_in.csv"),
                              "--out", str(tmp_path / "now.parquet"), "--crs", "wgs84",
                              "--encoding", "gb18030", "--previous",
                              str(tmp_path / "then.csv"), "--changes",
                              str(tmp_path / "changes.csv"), "--id-column", "cid"])
    assert res.exit_code == 0, res.output
    report = pd.read_csv(tmp_path / "changes.csv", dtype=str, encoding="utf-8-sig")
    assert len(report) == 5 and set(report["reason"]) == {
        "new_customer", "moved", "newly_geocoded", "no_longer_geocoded", "customer_gone"}
    res = runner.invoke(app, ["changes", str(tmp_path / "then.csv"),
                              str(tmp_path / "now.parquet"), "--out",
                              str(tmp_path / "again.csv"), "--id-column", "cid"])
    assert res.exit_code == 0, res.output
    pd.testing.assert_frame_equal(
        pd.read_csv(tmp_path / "again.csv", dtype=str, encoding="utf-8-sig"), report)
    res = runner.invoke(app, ["assign", str(plan_file), str(tmp_path / "then_in.csv"),
                              "--out", str(tmp_path / "x.csv"), "--crs", "wgs84",
                              "--changes", str(tmp_path / "c.csv")])
    assert res.exit_code == 2 and "--previous" in res.output
