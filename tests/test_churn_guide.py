"""The least-churn guide (territory.optimize.churn_guide) and the rebalance that follows it:
a guide that says it is contiguous is a plan that keeps every rule and costs no less than
the proven bound, and the rebalance never moves more customers across main-grid lines
than the plain search alone."""

from __future__ import annotations

import networkx as nx
import numpy as np
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from territory.edits import set_lock
from territory.graph import contiguous_grids
from territory.metrics import nesting_ok
from territory.optimize.churn_bound import churn_lower_bound
from territory.optimize.churn_guide import least_churn_labels
from territory.rebalance import Budget, _Search, _tolerances, _weights, churn_bound, rebalance

from .redraw_lattice import lattice_plan


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000), tol=st.sampled_from([0.03, 0.1]),
       n_locked=st.integers(0, 8))
def test_a_contiguous_guide_keeps_the_rules_and_costs_at_least_the_bound(seed, tol, n_locked):
    plan, graph = lattice_plan(seed, tolerance=tol)
    rng = np.random.default_rng(seed)
    locks = list(rng.choice(plan.units.index, n_locked, replace=False))
    if locks:
        plan = set_lock(plan, graph, unit_ids=locks)
    s = _Search(plan, graph, _tolerances(plan, None), _weights(plan, "customers"), None, 0)
    g = s.guide(np.inf, None, 10.0)
    bound = churn_bound(plan, graph, "customers")
    if g.labels is None:  # no assignment in the band meets the bands
        assert bound.value > 0
        return
    moved = g.labels != s.main
    assert g.churn == s.B[moved].sum()
    assert g.churn >= bound.value - 1e-6  # the relaxed bound is below any plan's churn
    assert not moved[s.fixed].any()
    branch_of = np.zeros(len(s.mains), dtype=np.int64)
    branch_of[s.main] = s.branch
    assert (branch_of[g.labels] == s.branch).all()  # no unit leaves its branch
    if not g.contiguous:
        return
    # within every band, every grid one piece, every sub-grid's staying units one piece
    P, model, _ = s.main_problem(None)
    Wn = P.W
    loads = np.zeros((len(s.mains), Wn.shape[1]))
    np.add.at(loads, g.labels, Wn)
    lo, hi = model.bounds()
    assert ((loads >= lo - 1e-9) & (loads <= hi + 1e-9)).all()
    ids = plan.units.index
    assert all(contiguous_grids(graph, dict(zip(ids, s.mains[g.labels], strict=True))).values())
    for code in np.unique(s.sub):
        staying = ids[(s.sub == code) & ~moved]
        assert len(staying) and nx.is_connected(graph.subgraph(staying))


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 10_000), tol=st.sampled_from([0.03, 0.1]),
       share=st.floats(0.05, 0.5))
def test_the_rebalance_moves_no_more_across_main_lines_than_the_plain_search(seed, tol, share):
    plan, graph = lattice_plan(seed, tolerance=tol)
    budget = Budget.parse(f"customers={share * 100:.3f}%", plan)
    s = _Search(plan, graph, _tolerances(plan, None), _weights(plan, "customers"), None, 0)
    plain, _, z_plain, _ = s.run(budget.value, 8.0, None)
    res = rebalance(plan, graph, budget, time_limit=20)
    new = res.plan
    across = (new.units["main_grid_id"] != plan.units["main_grid_id"]).to_numpy()
    if z_plain <= 1e-9:  # the plain search balanced: the rebalance does too, moving no more
        assert res.feasible
        assert s.B[across].sum() <= s.B[plain != s.main].sum() + 1e-6
    assert res.moved_budget <= budget.value + 1e-6
    assert nesting_ok(new)
    for level in ("main_grid", "sub_grid"):
        assert all(contiguous_grids(graph, new.labels(level)).values()), level


def test_a_joiner_may_follow_one_as_near_its_new_grid_as_itself():
    """Grid B (unit 0) must gain three load-1 units of grid A. Units 3 and 4 lie two hops
    from B; 4 reaches B one hop nearer only through the heavy unit 2, so "one hop nearer"
    alone joins 5 instead (10 customers: churn 12). In B's joining order 4 may join beside
    3, as near B as itself: churn 3, which is the proven bound, and both grids one piece."""
    edges = [(0, 1), (0, 2), (1, 3), (3, 4), (4, 2), (1, 5), (5, 6), (2, 6), (6, 7)]
    n = 8
    graph = nx.Graph(edges)
    A = sp.csr_matrix(nx.to_scipy_sparse_array(graph, nodelist=range(n)))
    W = np.array([[2.0], [1], [5], [1], [1], [1], [4], [4]])
    labels = np.array([1, 0, 0, 0, 0, 0, 0, 0])
    weight = np.array([1.0, 1, 1, 1, 1, 10, 1, 1])
    group, closed = np.zeros(2, dtype=np.int64), np.zeros(2, dtype=bool)
    lo, hi = np.array([[0.0], [5.0]]), np.array([[100.0], [5.5]])
    movable = np.arange(n) > 0  # B's one unit stays
    g = least_churn_labels(W, labels, group, lo, hi, weight, movable, closed, A, labels)
    bound = churn_lower_bound(W, labels, group, lo, hi, weight, movable, closed)
    assert g.contiguous and g.churn == bound.value == 3
    assert sorted(np.flatnonzero(g.labels == 1)) == [0, 1, 3, 4]
    for grid in (0, 1):
        assert nx.is_connected(graph.subgraph(np.flatnonzero(g.labels == grid).tolist()))
