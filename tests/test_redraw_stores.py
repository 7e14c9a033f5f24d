"""Store edits: open, move and close a store, each a version; what a closed centre means."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from territory.cli import app
from territory.crs import wgs84_to_gcj02
from territory.diff import diff_plans
from territory.errors import InvalidInputError
from territory.plan import Plan
from territory.stores import (
    WITHOUT_STORE,
    add_store,
    close_store,
    move_store,
    open_stores,
    store_records,
    with_plan_stores,
)

from .redraw_city import small_city
from .redraw_lattice import SIZE, lattice_plan


def centre(row: int, col: int) -> tuple[float, float]:
    """The centre of lattice unit (row, col), WGS84."""
    return 114.0 + (col + 0.5) * SIZE, 22.6 + (row + 0.5) * SIZE


def centred_plan() -> Plan:
    """The lattice with one store at the heart of each main grid, each grid centred on it
    (the records ``territory plan --stores-as-centres`` keeps)."""
    plan, _ = lattice_plan(0)
    pts = [centre(1, 1), centre(1, 5), centre(5, 1), centre(5, 5)]
    stores = pd.DataFrame({"store_id": ["S1", "S2", "S3", "S4"], "name": list("ABCD"),
                           "lng": [p[0] for p in pts], "lat": [p[1] for p in pts]})
    units = plan.units.assign(stores=0.0)
    units.loc[["u1_1", "u1_5", "u5_1", "u5_5"], "stores"] = 1.0
    return Plan(units=units, measures=plan.measures, params={
        **plan.params, "stores": store_records(units, stores, centred=True)})


def test_add_move_close_are_versions_and_counted_where_the_store_stands():
    plan, _ = lattice_plan(0)
    # given in GCJ-02 (the operator's web map): stored in WGS84, in the unit it really is in
    x, y = centre(2, 2)
    gx, gy = wgs84_to_gcj02(np.array([x]), np.array([y]))
    v2 = add_store(plan, "N1", float(gx[0]), float(gy[0]), crs="gcj02", name="新店",
                   author="ann", message="new hall")
    assert (v2.parent, v2.author, v2.message) == (plan.plan_id, "ann", "new hall")
    rec = v2.params["stores"][0]
    assert rec["unit_id"] == "u2_2" and rec["main_grid_id"] == "B1-M01"
    assert abs(rec["lng"] - x) < 1e-5 and abs(rec["lat"] - y) < 1e-5
    assert v2.units["stores"].sum() == 1 and v2.units.at["u2_2", "stores"] == 1
    assert (v2.units["main_grid_id"] == plan.units["main_grid_id"]).all()
    with pytest.raises(InvalidInputError, match="already in the plan"):
        add_store(v2, "N1", x, y, crs="wgs84")
    with pytest.raises(InvalidInputError, match="outside the plan's units.*`crs`"):
        add_store(v2, "N2", y, x, crs="wgs84")  # lat and lng exchanged
    v3 = move_store(v2, "N1", *centre(6, 6), crs="wgs84", author="bob")
    assert v3.units.at["u2_2", "stores"] == 0 and v3.units.at["u6_6", "stores"] == 1
    assert "B1-M01" in v3.message and "B2-M02" in v3.message
    v4 = close_store(v3, "N1", author="bob")
    assert v4.units["stores"].sum() == 0 and "flag" not in v4.units  # it centred no grid
    assert open_stores(v4).empty and open_stores(plan) is None
    with pytest.raises(InvalidInputError, match="already closed"):
        close_store(v4, "N1")
    with pytest.raises(InvalidInputError, match="not among the plan's stores"):
        close_store(v4, "ZZ")
    changes = diff_plans(v2, v4).stores
    assert changes.to_dict(orient="records") == [
        {"store_id": "N1", "change": "closed", "from_main_grid_id": "B1-M01",
         "to_main_grid_id": None, "grid_left_without_store": None}]


def test_closing_the_store_a_grid_is_centred_on_keeps_the_grid_flagged():
    plan = centred_plan()
    closed = close_store(plan, "S2", author="ann")
    assert "B2-M01 was centred on it" in closed.message and "keeps its units" in closed.message
    assert (closed.units["main_grid_id"] == plan.units["main_grid_id"]).all()
    grids = closed.grids("main_grid").set_index("grid_id")
    assert WITHOUT_STORE in grids.at["B2-M01", "flag"]
    assert not any(WITHOUT_STORE in f for g, f in grids["flag"].items() if g != "B2-M01")
    d = diff_plans(plan, closed)
    assert d.changes.empty and not d.empty  # no unit moved, yet the versions differ
    assert d.stores.iloc[0].to_dict() == {
        "store_id": "S2", "change": "closed", "from_main_grid_id": "B2-M01",
        "to_main_grid_id": None, "grid_left_without_store": "B2-M01"}
    # the maps and reports draw the plan's open stores, not a stale stores file
    stale = pd.DataFrame({"store_id": ["S1", "S2"], "lng": [0.0, 0.0], "lat": [0.0, 0.0]})
    assert set(with_plan_stores(closed, {"stores": stale})["stores"]["store_id"]) == {
        "S1", "S3", "S4"}
    # a centre store moved out of its grid leaves it flagged too
    moved = move_store(plan, "S1", *centre(1, 6), crs="wgs84")
    assert WITHOUT_STORE in moved.grids("main_grid").set_index("grid_id").at["B1-M01",
                                                                              "flag"]


def test_a_plan_made_with_stores_keeps_them():
    city = small_city()
    records = city.plan.params["stores"]
    assert len(records) == city.plan.units["stores"].sum() > 0
    assert {r["main_grid_id"] for r in records} <= set(city.plan.units["main_grid_id"])
    assert all(city.plan.units.at[r["unit_id"], "main_grid_id"] == r["main_grid_id"]
               for r in records)


def test_cli_store_edits_and_the_diff(tmp_path):
    centred_plan().save(tmp_path / "v1.gpkg")
    run = CliRunner()
    args = ["edit", "store", "add", str(tmp_path / "v1.gpkg"), "--out", str(tmp_path /
            "v2.gpkg"), "--id", "N9", "--name", "Hall 9", "--crs", "wgs84", "--author", "ann"]
    x, y = centre(3, 3)
    res = run.invoke(app, [*args, "--lng", str(x), "--lat", str(y)])
    assert res.exit_code == 0, res.output
    res = run.invoke(app, [*args[:4], "--out", str(tmp_path / "bad.gpkg"), "--id", "N8",
                           "--crs", "wgs84", "--lng", "0", "--lat", "0"])
    assert res.exit_code == 2 and "outside the plan's units" in res.output
    res = run.invoke(app, ["edit", "store", "close", str(tmp_path / "v2.gpkg"), "--out",
                           str(tmp_path / "v3.gpkg"), "--id", "S4", "--message", "lease ended"])
    assert res.exit_code == 0, res.output
    v3 = Plan.load(tmp_path / "v3.gpkg")
    assert v3.message == "lease ended" and v3.history[-1]["author"] == "ann"
    res = run.invoke(app, ["diff", str(tmp_path / "v1.gpkg"), str(tmp_path / "v3.gpkg"),
                           "--out", str(tmp_path / "d")])
    assert res.exit_code == 0, res.output
    rows = pd.read_csv(tmp_path / "d" / "stores.csv").fillna("")
    assert rows[["store_id", "change", "grid_left_without_store"]].values.tolist() == [
        ["N9", "opened", ""], ["S4", "closed", "B2-M02"]]
