"""Staff allocation: optimal counts (brute force), one grid manager per main grid, nobody over
capacity, totals equal the city's, moves explained, impossible staffing refused with numbers."""

from __future__ import annotations

import itertools

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from territory.errors import InfeasibleError, InvalidInputError, SolverError
from territory.plan import Plan
from territory.staffing import (
    StaffAllocator,
    headcount_within,
    lower_bounds,
    min_max_counts,
    read_counts,
    read_roster,
)
from territory.synth_roster import synthetic_roster
from territory.workload import PARTS, ROLES, load_model


def brute_force(W, lo, hi, H):
    """Every whole-number count vector: the best max workload per person, then spread."""
    low = lower_bounds(W, lo)
    best = None
    for n in itertools.product(*(range(a, b + 1) for a, b in zip(low, hi, strict=True))):
        if sum(n) != H:
            continue
        per = [w / k if k else 0.0 for w, k in zip(W, n, strict=True)]
        work = [p for p, w in zip(per, W, strict=True) if w > 0]
        key = (max(per), max(work) - min(work) if work else 0.0)
        best = key if best is None or key < best else best
    return best


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 300), st.integers(0, 2), st.integers(0, 4)),
                min_size=1, max_size=4), st.integers(0, 14))
def test_counts_are_optimal_by_brute_force(grids, H):
    W = np.array([g[0] for g in grids], float)
    lo = np.array([g[1] for g in grids])
    hi = lo + np.array([g[2] for g in grids])
    best = brute_force(W, lo, hi, H)
    if best is None:
        with pytest.raises(InfeasibleError, match=f"{H} people for|maximum of 0 people"):
            min_max_counts(W, lo, hi, H, what="test")
        return
    n = min_max_counts(W, lo, hi, H, what="test")
    assert n.sum() == H and (n >= lower_bounds(W, lo)).all() and (n <= hi).all()
    per = np.where(n > 0, W / np.maximum(n, 1), 0.0)
    assert per.max() == pytest.approx(best[0], rel=1e-6, abs=1e-6)
    work = per[W > 0]
    spread = work.max() - work.min() if len(work) else 0.0
    assert spread == pytest.approx(best[1], rel=1e-6, abs=1e-5)


def test_headcount_within_is_the_smallest_that_works():
    W, lo, hi = np.array([300.0, 100.0, 100.0]), np.zeros(3, int), np.full(3, 6)
    h = headcount_within(W, lo, hi, 3, other_work=0.0, other_staff=0, within=0.1)
    # check against brute force: h works, h - 1 does not
    for k, ok in ((h, True), (h - 1, False)):
        best = brute_force(W, lo, hi, k)
        assert (best is not None and best[0] <= 1.1 * W.sum() / k + 1e-9) == ok


# -- a tiny plan ----------------------------------------------------------------------------
def tiny_plan(seed: int, n_main: int = 4, n_sub: int = 2) -> Plan:
    """Two branches of square units near Shenzhen, each main grid a column of units."""
    rng = np.random.default_rng(seed)
    rows, cell = [], 0.01
    per_sub = 2
    for m in range(n_main):
        for s in range(n_sub):
            for k in range(per_sub):
                x0, y0 = 114.0 + m * cell, 22.6 + (s * per_sub + k) * cell
                rows.append({
                    "unit_id": f"u{m}_{s}_{k}", "branch_id": f"B{m % 2}",
                    "main_grid_id": f"B{m % 2}-M{m // 2 + 1:02d}",
                    "sub_grid_id": f"B{m % 2}-M{m // 2 + 1:02d}-S{s + 1}",
                    "customers": int(rng.integers(0, 400)),
                    PARTS["customers"]: float(rng.uniform(0, 60)),
                    PARTS["communities"]: float(rng.uniform(0, 60)),
                    PARTS["key_accounts"]: float(rng.choice([0.0, rng.uniform(0, 30)])),
                    "geometry": shapely.box(x0, y0, x0 + cell, y0 + cell),
                })
    units = gpd.GeoDataFrame(rows, crs="EPSG:4326").set_index("unit_id")
    units["workload"] = units[list(PARTS.values())].sum(axis=1)
    return Plan(units=units, measures=["workload"])


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 10_000), st.floats(0.5, 1.0))
def test_allocation_invariants(seed, utilisation):
    plan = tiny_plan(seed)
    roster = read_roster(synthetic_roster(plan, seed=seed, utilisation=utilisation))
    a = StaffAllocator(time_limit=20).solve(plan, roster)
    staff, load, grids = a.staff_, a.load_, a.grids_
    # every main grid has exactly one grid manager
    gm = staff[staff["role"] == "grid_manager"].groupby("grid_id").size()
    mains = sorted(plan.units["main_grid_id"].unique())
    assert sorted(gm.index) == mains and (gm == 1).all()
    # every sub-grid has its team member
    cm = staff[staff["role"] == "customer_manager"]
    assert set(cm["grid_id"]) == set(plan.units["sub_grid_id"])
    # nobody over capacity, everybody placed once
    assert (staff["workload_hours"] <= staff["hours"] + 1e-6).all()
    assert sorted(staff["person_id"]) == sorted(roster["person_id"])
    # totals equal the city's: every role's hours, the grids' rows, the workload parts
    for role, rows in load.groupby("role"):
        assert staff.loc[staff["role"] == role, "workload_hours"].sum() == pytest.approx(
            rows.loc[rows["staff"] > 0, "workload_hours"].sum())
        assert rows["workload_hours"].sum() == pytest.approx(
            rows.loc[rows["staff"] > 0, "workload_hours"].sum())  # no work left unstaffed
    main = grids[grids["level"] == "main_grid"]
    assert main["workload_hours"].sum() == pytest.approx(load["workload_hours"].sum())
    assert main["staff"].sum() == len(staff)
    m = load_model()
    hours = sum(r.fixed_hours * (plan.units[f"{r.level}_id"].nunique())
                for r in m.roles.values())
    assert load["hours"].sum() == pytest.approx(hours + plan.units["workload"].sum())
    # a person moves only when their current grid cannot keep them, and it is said why
    assert staff.loc[staff["moved"], "reason"].str.len().gt(0).all()


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 10_000), st.floats(0.0, 0.5))
def test_seat_assignment_costs_what_the_mip_does(seed, drift):
    """Where any n people cover a grid's hours, people go to grids by an assignment to
    seats (scipy) instead of the MIP: the same counts, the same fewest moves and the same
    total distance from home as the MIP's optimum on the same roster."""
    plan = tiny_plan(seed)
    roster = read_roster(synthetic_roster(plan, seed=seed, drift=drift))
    seats = StaffAllocator(time_limit=20).solve(plan, roster).staff_
    mip = StaffAllocator(time_limit=20)
    mip._seats_cover = lambda n, hours, W: False  # the MIP for every role and branch
    exact = mip.solve(plan, roster).staff_
    for got in (seats, exact):
        assert (got["workload_hours"] <= got["hours"] + 1e-6).all()
    key = ["role", "branch_id"]
    assert (seats.groupby([*key, "grid_id"]).size().sort_index()
            .equals(exact.groupby([*key, "grid_id"]).size().sort_index()))
    assert seats["moved"].sum() == exact["moved"].sum()
    assert seats["home_km"].sum() == pytest.approx(exact["home_km"].sum(), abs=1e-6)


def test_moves_are_the_fewest_and_homes_the_nearest():
    plan = tiny_plan(3)
    roster = synthetic_roster(plan, seed=3, drift=0.0)
    a = StaffAllocator().solve(plan, read_roster(roster))
    assert not a.staff_["moved"].any()
    # two customer managers of one branch swap their current sub-grids: still nobody needs to
    # move, and they stay where they are told they are (moves first, distance second)
    cm = roster.index[roster["role"] == "customer_manager"][:2]
    roster.loc[cm, "current_grid"] = roster.loc[cm[::-1], "current_grid"].to_numpy()
    a = StaffAllocator().solve(plan, read_roster(roster))
    got = a.staff_.set_index("person_id").loc[roster.loc[cm, "person_id"], "grid_id"]
    assert list(got) == list(roster.loc[cm, "current_grid"]) and not a.staff_["moved"].any()


def test_vacancies_fill_counts_above_the_roster():
    plan = tiny_plan(1)
    roster = read_roster(synthetic_roster(plan, seed=1))
    heads = roster.groupby(["branch_id", "role"]).size().rename("headcount").reset_index()
    heads.loc[heads["role"] == "installer", "headcount"] += 2
    a = StaffAllocator().solve(plan, roster, counts=read_counts(heads))
    vac = a.staff_[a.staff_["person_id"].str.startswith("vacancy")]
    assert len(vac) == 2 * heads["branch_id"].nunique() and (vac["role"] == "installer").all()
    assert a.grids_.query("level == 'main_grid'")["vacancies"].sum() == len(vac)


def test_impossible_staffing_is_refused_with_numbers():
    plan = tiny_plan(2)
    roster = synthetic_roster(plan, seed=2)
    # too few customer managers for the hours
    cm = roster.index[(roster["role"] == "customer_manager") & (roster["branch_id"] == "B0")]
    short = roster.drop(cm[1:])
    with pytest.raises(InfeasibleError, match=r"customer_manager in branch B0: 1 people .* "
                                              r"it takes \d+: add \d+"):
        StaffAllocator().solve(plan, read_roster(short))
    # a grid manager missing
    gm = roster.index[(roster["role"] == "grid_manager") & (roster["branch_id"] == "B1")]
    with pytest.raises(InfeasibleError, match="1 grid managers for 2 main grids.*add 1"):
        StaffAllocator().solve(plan, read_roster(roster.drop(gm[:1])))
    # a grid whose workload no allowed team can carry
    units = plan.units.copy()
    units.iloc[0, units.columns.get_loc(PARTS["customers"])] = 5000.0
    with pytest.raises(InfeasibleError, match="more than its maximum of 8 people"):
        StaffAllocator().solve(Plan(units=units, measures=["workload"]), read_roster(roster))
    # more people than the counts place
    heads = read_roster(roster).groupby(["branch_id", "role"]).size().rename(
        "headcount").reset_index()
    extra = roster[roster["role"] == "installer"].iloc[:1].assign(person_id="extra")
    with pytest.raises(InfeasibleError, match="roster has (\\d+) people but the counts place "
                                              "\\d+; .* remove 1"):
        StaffAllocator().solve(plan, read_roster(pd.concat([roster, extra])),
                               counts=read_counts(heads))



def test_a_roster_no_assignment_covers_is_refused_and_a_timeout_is_not_called_so():
    """People's hours differ, so which ones a grid gets decides whether its hours are
    covered (the MIP): with one long-hours person and three who each fall short of all but
    the lightest grid, no assignment covers them (proven: InfeasibleError); the same MIP cut
    off before it finds any assignment says so and proves nothing (SolverError)."""
    plan = tiny_plan(3)
    roster = synthetic_roster(plan, seed=3, drift=0.3)
    cm = roster.index[(roster["role"] == "customer_manager") & (roster["branch_id"] == "B0")]
    staff = StaffAllocator().solve(plan, read_roster(roster)).staff_
    staff = staff[(staff["role"] == "customer_manager") & (staff["branch_id"] == "B0")]
    hours = staff.groupby("grid_id")["workload_hours"].sum().sort_values()  # one each
    assert len(cm) == len(hours) == 4
    # the counts stay one each (the mean is the heaviest grid's hours); the short three
    # cover the lightest grid only
    short = np.floor(hours.iloc[1]) - 1
    assert short >= hours.iloc[0]
    roster.loc[cm, "hours"] = [4 * np.ceil(hours.iloc[-1]) - 3 * short] + [short] * 3
    with pytest.raises(InfeasibleError, match=r"customer_manager in branch B0: no assignment "
                                              r"of these 4 people .* gives every grid the hours"):
        StaffAllocator().solve(plan, read_roster(roster))
    with pytest.raises(SolverError, match=r"customer_manager in branch B0: HiGHS stopped at "
                                          r"'Time limit reached' .* does not prove"):
        StaffAllocator(time_limit=1e-9).solve(plan, read_roster(roster))

def test_counts_for_an_unknown_branch_are_named():
    plan = tiny_plan(0)
    roster = read_roster(synthetic_roster(plan, seed=0))
    heads = roster.groupby(["branch_id", "role"]).size().rename("headcount").reset_index()
    heads.loc[0, "branch_id"] = "B9"
    with pytest.raises(InvalidInputError, match="B9.*no such branch.*'B0', 'B1'"):
        StaffAllocator().solve(plan, roster, counts=read_counts(heads))


@pytest.mark.parametrize("change, match", [
    (lambda r: r.assign(role="boss"), "roles \\['boss'\\]"),
    (lambda r: r.assign(hours="-3"), "'hours'"),
    (lambda r: r.assign(home_store_id=None, home_lng=None), "no home base"),
    (lambda r: r.assign(home_crs=None), "without home_crs"),
    (lambda r: pd.concat([r, r.iloc[:1]]), "more than once"),
    (lambda r: r.assign(shoe_size=42), "unknown columns"),
])
def test_bad_rosters_name_the_field(change, match):
    roster = synthetic_roster(tiny_plan(0), seed=0)
    with pytest.raises(InvalidInputError, match=match):
        read_roster(change(roster))


def test_results_before_solve_raise():
    from territory.errors import NotSolvedError

    with pytest.raises(NotSolvedError):
        StaffAllocator().staff_  # noqa: B018


def test_summary_names_the_worst_grid():
    plan = tiny_plan(5)
    a = StaffAllocator(within=0.1).solve(plan, read_roster(synthetic_roster(plan, seed=5)))
    for role in ROLES:
        s = a.summary_[role]
        rows = a.load_[a.load_["role"] == role]
        assert s["max_per_staff"] == pytest.approx(rows["workload_per_staff"].max(), abs=0.06)
        assert s["worst_grid"] in set(rows["grid_id"])


def test_demo_staffing_writes_a_labelled_synthetic_roster_and_its_allocation(tmp_path):
    from territory.synth_roster import demo_staffing

    plan = tiny_plan(7)
    stores = pd.DataFrame({"store_id": ["S1", "S2"], "lng": [114.005, 114.035],
                           "lat": [22.61, 22.63]})
    paths = demo_staffing(plan, stores, tmp_path, seed=7)
    roster = pd.read_csv(tmp_path / "synthetic" / "roster.csv")
    assert roster["synthetic"].all() and roster["name"].str.startswith("synthetic").all()
    assert roster["home_store_id"].notna().any()  # some home bases are stores
    staff = pd.read_csv(paths["staff"])
    assert sorted(staff["person_id"]) == sorted(roster["person_id"])
    # same seed, same roster
    again = synthetic_roster(plan, stores=stores, seed=7)
    pd.testing.assert_frame_equal(
        roster.drop(columns="home_store_id"), again.drop(columns="home_store_id")
        .reset_index(drop=True).astype(roster.drop(columns="home_store_id").dtypes.to_dict()))
