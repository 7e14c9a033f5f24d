"""The pre-check: impossible targets refused in seconds, never a solvable one."""

from __future__ import annotations

import itertools
import time

import networkx as nx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from territory.boundaries import load_city
from territory.errors import InfeasibleError
from territory.hierarchy import HierarchySpec, precheck_plan
from territory.optimize.balance import (
    BalanceModel,
    max_feasible_grids,
    precheck,
    stranded_units,
)
from territory.pipeline import Inputs, UnitOptions, run
from territory.synth import generate_city


def test_an_impossible_city_request_fails_in_seconds_with_the_fix():
    areas = load_city("xiamen")
    city = generate_city(areas, n_customers=20_000, seed=3)
    inputs = Inputs(areas, "adcode", city.customers, city.communities, city.stores,
                    city.key_accounts)
    # ±0.1 % on coarse units (resolution 7): far below what the units' granularity allows
    opts = UnitOptions(resolution=7, target_per_unit=400, min_resolution=7)
    # 60 main grids, each lighter than the heaviest units: impossible at the branch level
    spec = HierarchySpec(measures={"subscribers": 0.05}, n_main=60, n_sub=4,
                         time_limit_main=60, time_limit_sub=30, workers=2)
    t0 = time.monotonic()
    with pytest.raises(InfeasibleError) as err:
        run(inputs, opts, spec)
    assert time.monotonic() - t0 < 30  # the search alone would take minutes
    msg = str(err.value)
    assert "branch" in msg and "'subscribers'" in msg and "Proven" in msg
    assert "target_per_unit" in msg and "n_main=" in msg and "tolerance of at least" in msg


def test_hierarchy_precheck_finds_sub_grid_counts_the_unit_loads_cannot_meet():
    """Before any main grid exists, a unit heavier than any sub-grid may hold is found with
    the largest workable count (the hierarchy then uses fewer sub-grids, or flags the grid
    when strict, instead of refusing the whole plan)."""
    areas = load_city("xiamen")
    city = generate_city(areas, n_customers=20_000, seed=3)
    from territory.hierarchy import precheck_plan
    from territory.pipeline import build_unit_table

    units, _ = build_unit_table(Inputs(areas, "adcode", city.customers),
                                UnitOptions(resolution=7, target_per_unit=400,
                                            min_resolution=7))
    spec = HierarchySpec(measures={"subscribers": 0.001}, n_main=12, n_sub=4)
    short = [s for s in precheck_plan(units, spec) if s.level == "main_grid"]
    assert short and all(s.shortfall.max_grids < 4 for s in short)
    assert all("n_sub=" in s.message() and "Proven" in s.message() for s in short)


def test_precheck_reasons_and_largest_workable_count():
    w = np.array([[50.0], [10], [10], [10], [10], [10]])  # total 100
    (s,) = precheck(w, 4, {"m": 0.05})  # mean 25: the unit of 50 cannot fit
    assert "one unit alone holds 50" in s.reason
    assert s.max_grids == 2 and max_feasible_grids(w[:, 0], 4, 0.05) == 2
    assert not precheck(w, s.max_grids, {"m": 0.05})
    assert not precheck(w, 4, {"m": s.min_tolerance})
    # granularity: every grid needs three units of 10 to reach 23.75, two grids need six
    assert "at least 3 units" in precheck(np.full((5, 1), 10.0), 2, {"m": 0.05})[0].reason


def test_hierarchy_precheck_counts_groups_as_one_load():
    import pandas as pd

    u = pd.DataFrame({"branch_id": ["a"] * 6, "s": [10.0] * 6}, index=list("abcdef"))
    spec = HierarchySpec(measures={"s": 0.05}, n_main=3, n_sub=1)
    assert not precheck_plan(u, spec)
    spec.together = [["a", "b", "c"]]  # one load of 30 against a band of 19..21
    (short,) = precheck_plan(u, spec)
    assert short.level == "branch" and short.key == "a" and "n_main=" in short.message()


def _brute_force_feasible(g: nx.Graph, w: np.ndarray, k: int, tol: float) -> bool:
    """Exhaustive: is there a labelling into k connected grids within ±tol?"""
    n = len(w)
    mean = w.sum() / k
    for lab in itertools.product(range(k), repeat=n - 1):
        lab = (0, *lab)  # symmetry: unit 0 in grid 0
        loads = np.bincount(lab, weights=w, minlength=k)
        if np.any(np.abs(loads - mean) > tol * mean + 1e-9):
            continue
        if all(len(nodes := [i for i in range(n) if lab[i] == j]) and
               nx.is_connected(g.subgraph(nodes)) for j in range(k)):
            return True
    return False


@settings(max_examples=40, deadline=None)
@given(
    shape=st.sampled_from([(2, 3), (3, 3), (2, 4), (3, 4)]),
    k=st.integers(2, 3),
    tol=st.sampled_from([0.02, 0.1, 0.3]),
    seed=st.integers(0, 10_000),
)
def test_precheck_never_refuses_an_instance_the_exact_search_solves(shape, k, tol, seed):
    w_, h_ = shape
    if k == 3 and w_ * h_ > 9:
        k = 2  # keep the enumeration small
    g = nx.convert_node_labels_to_integers(nx.grid_2d_graph(w_, h_))
    rng = np.random.default_rng(seed)
    w = rng.choice([1.0, 2, 3, 5, 8, 20], size=len(g))
    if _brute_force_feasible(g, w, k, tol):
        assert not precheck(w[:, None], k, {"m": tol})
        A = nx.to_scipy_sparse_array(g, nodelist=range(len(g)), format="csr")
        model = BalanceModel.for_units(w[:, None], {"m": tol}, k)
        assert not stranded_units(w[:, None], A.indptr, A.indices, model)


def test_a_unit_that_fits_in_no_contiguous_grid_is_refused_as_proven():
    from territory.optimize import Partitioner

    # a light unit between two heavy ones: alone it is below the band, with either
    # neighbour above it (Denver among Colorado's counties at ±0.5 %); the loads alone
    # (bin packing without contiguity) would allow 100 | 100 | 10+50+50
    g = nx.path_graph(5)
    for i, w in enumerate([100.0, 10, 100, 50, 50]):
        g.nodes[i].update(x=float(i), y=0.0, s=w)
    assert not precheck(np.array([[100.0], [10], [100], [50], [50]]), 3, {"s": 0.05})
    t0 = time.monotonic()
    with pytest.raises(InfeasibleError, match="fits in no contiguous grid") as err:
        Partitioner(3, measures={"s": 0.05}, objective="boundary", time_limit=30).solve(g)
    assert time.monotonic() - t0 < 5 and "Proven" in str(err.value)
    assert "unit 1 holds 10" in str(err.value)
    assert "tolerance of at least 6.45%" in str(err.value)  # 110 / (310 / 3) - 1


def test_fit_main_lowers_each_branch_to_the_count_its_loads_allow():
    """The demo picks main-grid counts from the customers alone; with ``fit_main`` a branch
    whose heaviest unit outweighs a main grid gets the most main grids the loads allow,
    recorded with the reason, instead of a refusal."""
    from territory.hierarchy import _branch_counts, _fit_main_counts, precheck_plan
    from territory.pipeline import build_unit_table

    areas = load_city("xiamen")
    city = generate_city(areas, n_customers=20_000, seed=3)
    units, _ = build_unit_table(Inputs(areas, "adcode", city.customers),
                                UnitOptions(resolution=7, target_per_unit=400,
                                            min_resolution=7))
    spec = HierarchySpec(measures={"subscribers": 0.05}, n_main=60, n_sub=1, fit_main=True)
    counts = _branch_counts(units, spec)
    asked = counts.copy()
    reduced, last = _fit_main_counts(units, spec, counts)
    assert reduced and all(r["used"] < r["requested"] for r in reduced.values())
    assert {b: int(asked[b]) for b in asked.index if counts[b] != asked[b]} == {
        b: r["requested"] for b, r in reduced.items()}
    # the fit hands back the pre-check of the counts it settled on
    assert last == precheck_plan(units, spec, counts)
    assert not [s for s in last if s.level == "branch"]
    # the most: one more main grid in a reduced branch is refused again
    for b, r in reduced.items():
        more = counts.copy()
        more[b] = r["used"] + 1
        assert [s for s in precheck_plan(units, spec, more) if s.key == b]
