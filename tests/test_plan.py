"""The three-level plan on real boundaries: nesting, balance, contiguity, coverage, storage."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from territory.boundaries import load_city
from territory.errors import InvalidInputError
from territory.graph import contiguous_grids
from territory.hierarchy import HierarchySpec, apportion
from territory.metrics import GAP_TOLERANCE_M2, grid_table, nesting_ok
from territory.pipeline import Inputs, Result, UnitOptions, run
from territory.plan import LEVELS, Plan
from territory.synth import generate_city

TOL = 0.08


@pytest.fixture(scope="module")
def xiamen() -> tuple[gpd.GeoDataFrame, object]:
    areas = load_city("xiamen")
    return areas, generate_city(areas, n_customers=20_000, seed=3)


@pytest.fixture(scope="module")
def result(xiamen) -> Result:
    areas, city = xiamen
    spec = HierarchySpec(measures={"subscribers": TOL, "workload": TOL}, n_main=10, n_sub=3,
                         time_limit_main=10, time_limit_sub=5, workers=2,
                         own_grid_islands=True)
    inputs = Inputs(areas, "adcode", city.customers, city.communities, city.stores,
                    city.key_accounts)
    return run(inputs, UnitOptions(resolution=9, target_per_unit=40, min_resolution=7), spec)


def test_every_unit_has_one_grid_at_every_level_and_levels_nest(result):
    u = result.plan.units
    assert u[["sub_grid_id", "main_grid_id", "branch_id"]].notna().all().all()
    assert nesting_ok(result.plan)
    assert (u["sub_grid_id"].str.rsplit("-S", n=1).str[0] == u["main_grid_id"]).all()
    assert (u["main_grid_id"].str.rsplit("-M", n=1).str[0] == u["branch_id"]).all()
    # branches follow the districts
    assert set(u["branch_id"]) == set(load_city("xiamen")["adcode"])


def test_grids_are_contiguous_and_balanced_within_their_parent(result):
    plan, g = result.plan, result.graph
    assert result.plan.params["own_grid_islands"], "Xiamen's islands must be found"
    for level in ("main_grid", "sub_grid"):
        assert all(contiguous_grids(g, plan.labels(level)).values()), level
        table = grid_table(plan, level, g)
        # island grids are exempt from balance: the reported deviation judges the others
        # against their own mean, exactly as the optimizer did
        assert table["balance_exempt"].sum() == (
            sum(result.plan.params["own_grid_islands"].values()) if level == "main_grid" else 0)
        for m in plan.measures:
            dev = table[f"dev_{m}"].abs()
            assert (dev <= TOL + 1e-9).all(), (level, m, dev.max())


def test_main_grids_balanced_except_island_grids(result):
    plan = result.plan
    table = grid_table(plan, "main_grid")
    n_islands = plan.params["own_grid_islands"]
    assert n_islands, "Xiamen's islands (Gulangyu) must be found"
    for branch, grids in table.groupby("parent_id"):
        k_island = n_islands.get(branch, 0)
        normal = grids.sort_values("grid_id").iloc[: len(grids) - k_island]
        for m in plan.measures:
            dev = normal[m] / normal[m].mean() - 1
            assert (dev.abs() <= TOL + 1e-9).all(), (branch, m)


def test_coverage_no_gap_no_overlap(result):
    for level in LEVELS:
        cov = result.metrics[level]["coverage"]
        area = cov["area_km2"] * 1e6
        assert cov["overlap_m2"] / area < 1e-6
        assert cov["gap_m2"] <= GAP_TOLERANCE_M2 and cov["outside_m2"] / area < 1e-6


def test_grids_dissolved_from_the_level_below_are_those_from_the_units(result):
    """all_grids (each level from the one below, as metrics and save use it) gives every
    level's ids, parents, loads and land exactly as dissolving the units does; flags of a
    kept failing grid are joined once."""
    units = result.plan.units.copy()
    units["flag"] = ""
    first = units["sub_grid_id"].iloc[0]
    units.loc[units["sub_grid_id"] == first, "flag"] = "sub-grids not balanced"
    units.loc[units.index[-1], "flag"] = "main grids not balanced; sub-grids not balanced"
    plan = Plan(units=units, measures=result.plan.measures, params=result.plan.params)
    for level, fast in plan.all_grids().items():
        slow = plan.grids(level)
        assert list(fast.columns) == list(slow.columns), level
        pd.testing.assert_frame_equal(fast.drop(columns="geometry"),
                                      slow.drop(columns="geometry"), check_exact=False)
        sym = fast.geometry.symmetric_difference(slow.geometry, align=False).to_crs(32650)
        assert sym.area.max() < 1.0, level  # m², snapping noise at most
        assert all(len(f.split("; ")) == len(set(f.split("; "))) for f in fast["flag"])


def test_no_customer_lost(result, xiamen):
    rep = result.report["customers"]
    assert rep["rows"] == 20_000 == rep["inside"] + rep["outside"] + rep["invalid"]
    assert result.plan.units["customers"].sum() == rep["inside"]


def test_plan_round_trips_through_geopackage(result, tmp_path):
    path = result.plan.save(tmp_path / "plan.gpkg")
    back = Plan.load(path)
    pd.testing.assert_frame_equal(
        pd.DataFrame(back.units.drop(columns="geometry")),
        pd.DataFrame(result.plan.units.drop(columns="geometry")),
        check_dtype=False,
    )
    assert back.units.geometry.geom_equals_exact(result.plan.units.geometry, 0).all()
    assert back.meta() == result.plan.meta()
    import pyogrio

    layers = {name for name, _ in pyogrio.list_layers(path)}
    assert {"branches", "main_grids", "sub_grids", "units"} <= layers
    mains = pyogrio.read_dataframe(path, layer="main_grids")
    assert {"grid_id", "parent_id"} <= set(mains.columns)
    assert len(mains) == result.plan.units["main_grid_id"].nunique()


def test_save_is_atomic(result, tmp_path, monkeypatch):
    path = result.plan.save(tmp_path / "plan.gpkg")
    before = path.read_bytes()
    import territory.plan as plan_mod

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(plan_mod.pyogrio, "write_dataframe", boom)
    with pytest.raises(OSError):
        result.plan.save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["plan.gpkg"]


def test_loading_a_non_plan_file_fails_clearly(tmp_path):
    bad = tmp_path / "x.gpkg"
    bad.write_text("nope")
    with pytest.raises(InvalidInputError, match="not a territory plan"):
        Plan.load(bad)


def test_derive_makes_a_new_version(result):
    child = result.plan.derive(result.plan.units, note="edit")
    assert child.version == result.plan.version + 1 and child.parent == result.plan.plan_id
    assert child.plan_id != result.plan.plan_id and child.params["note"] == "edit"


@given(weights=st.lists(st.integers(0, 10_000), min_size=1, max_size=12),
       extra=st.integers(0, 100))
def test_apportion_sums_to_total_and_gives_each_at_least_one(weights, extra):
    w = pd.Series(weights, index=[f"b{i}" for i in range(len(weights))])
    total = len(weights) + extra
    seats = apportion(w, total)
    assert seats.sum() == total and (seats >= 1).all()
    if w.sum() > 0:  # largest remainder: within one seat of the exact quota
        quota = 1 + w / w.sum() * extra
        assert (np.abs(seats - quota) < 1 + 1e-9).all()


def test_apportion_refuses_too_few_grids():
    with pytest.raises(InvalidInputError, match="at least"):
        apportion(pd.Series([1, 2, 3]), 2)


def test_locks_and_store_centres(xiamen):
    areas, city = xiamen
    inputs = Inputs(areas, "adcode", city.customers, None, city.stores, None)
    opts = UnitOptions(resolution=8)
    spec = HierarchySpec(measures={"customers": 0.15}, n_sub=1, time_limit_main=5,
                         time_limit_sub=2, workers=1)
    res = run(inputs, opts, spec, stores_as_centres=True)
    plan = res.plan
    # one main grid per store, centred on (containing) its unit
    from territory.pipeline import store_centres

    centres = store_centres(res.units, city.stores)
    assert plan.units["main_grid_id"].nunique() == sum(len(v) for v in centres.values())
    for branch, units in centres.items():
        ids = [plan.units.at[u, "main_grid_id"] for u in units]
        assert ids == [f"{branch}-M{j + 1:02d}" for j in range(len(units))]


def test_locked_unit_stays_in_its_main_grid(xiamen):
    areas, city = xiamen
    inputs = Inputs(areas, "adcode", city.customers)
    opts = UnitOptions(resolution=8)
    base = dict(measures={"customers": 0.15}, n_main=12, n_sub=1, time_limit_main=5,
                time_limit_sub=2, workers=1)
    plan = run(inputs, opts, HierarchySpec(**base)).plan
    counts = plan.units.groupby("branch_id")["main_grid_id"].nunique()
    branch = counts.idxmax()
    assert counts[branch] >= 2
    # a unit of the branch's first main grid, locked into the last one
    unit = plan.units.index[plan.units["main_grid_id"] == f"{branch}-M01"][0]
    target = f"{branch}-M{counts[branch]:02d}"
    locked = run(inputs, opts, HierarchySpec(**base, locked={unit: target})).plan
    assert locked.units.at[unit, "main_grid_id"] == target


def test_bad_lock_is_explained(xiamen):
    areas, city = xiamen
    inputs = Inputs(areas, "adcode", city.customers)
    spec = HierarchySpec(measures={"customers": 0.2}, n_main=6, n_sub=1, workers=1,
                         locked={"350203|no-such-unit": "350203-M01"})
    with pytest.raises(InvalidInputError, match="unknown unit"):
        run(inputs, UnitOptions(resolution=7), spec)
