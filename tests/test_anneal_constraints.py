"""The annealing kernel keeps the balance model's move constraints (locks and closed grids,
sub-grid nesting, a disruption budget) through their array forms, and refuses a constraint
it has no form for."""

from __future__ import annotations

import time

import networkx as nx
import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from territory.optimize.anneal import anneal
from territory.optimize.balance import BalanceModel
from territory.optimize.constraints import (
    DisruptionBudget,
    Held,
    MoveConstraint,
    NotLowered,
    SubGrids,
)
from territory.optimize.problem import Problem
from territory.optimize.search import LocalSearch


def grid_problem(rows: int, cols: int, rng: np.random.Generator) -> Problem:
    """A rows x cols lattice of units with random loads (position r * cols + c)."""
    g = nx.convert_node_labels_to_integers(nx.grid_2d_graph(rows, cols), ordering="sorted")
    A = nx.to_scipy_sparse_array(g, nodelist=range(rows * cols), format="csr",
                                 dtype=float)
    A = sp.csr_matrix(A)
    A.sort_indices()
    n = rows * cols
    W = rng.integers(5, 40, (n, 1)).astype(float)
    return Problem(ids=np.arange(n), W=W, measures=["subscribers"], indptr=A.indptr,
                   indices=A.indices, elen=A.data, xy=None, presence=np.ones(n))


def stripes(rows: int, cols: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Main grids as column stripes, each cut into a top and a bottom sub-grid:
    (main per unit, sub-grid per unit, main grid per sub-grid)."""
    r, c = np.divmod(np.arange(rows * cols), cols)
    main = np.minimum(c * k // cols, k - 1)
    sub = 2 * main + (r >= rows // 2)
    return main, sub, np.repeat(np.arange(k), 2)


def connected(P: Problem, members: np.ndarray) -> bool:
    if len(members) == 0:
        return False
    A = sp.csr_matrix((P.elen, P.indices, P.indptr), shape=(P.n, P.n))[members][:, members]
    return sp.csgraph.connected_components(A, directed=False)[0] == 1


def anneal_with(P, main, model, seed) -> LocalSearch:
    search = LocalSearch(P, main, model, objective="boundary",
                         rng=np.random.default_rng(seed))
    anneal(search, time.monotonic() + 20, seed, max_epochs=1)
    return search


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=st.integers(4, 7),
    cols=st.integers(4, 8),
    k=st.integers(2, 3),
    nested=st.booleans(),
    share_fixed=st.sampled_from([0.0, 0.2, 0.5]),
    close_one=st.booleans(),
    budget_share=st.sampled_from([0.0, 0.05, 0.2, 1.0]),
    tol=st.sampled_from([0.1, 0.3]),
    seed=st.integers(0, 10_000),
)
def test_annealed_plan_keeps_locks_closed_grids_budget_and_nesting(
        rows, cols, k, nested, share_fixed, close_one, budget_share, tol, seed):
    rng = np.random.default_rng(seed)
    P = grid_problem(rows, cols, rng)
    main, sub, sub_main = stripes(rows, cols, k)
    fixed = rng.random(P.n) < share_fixed
    closed = np.zeros(k, dtype=bool)
    closed[k - 1] = close_one and k > 2
    B = rng.integers(1, 10, P.n).astype(float)  # the budget's measure (customers)
    limit = budget_share * B.sum()
    model = BalanceModel.for_units(P.W, {"subscribers": tol}, k)
    subs = None
    if nested:
        subs = SubGrids(sub, sub_main, P.indptr, P.indices, P.elen)
        budget = DisruptionBudget(B, main, limit, scale=1.0, fine=subs, fine_original=sub)
        model = model.with_constraints(Held(fixed, closed), subs, budget)
    else:
        budget = DisruptionBudget(B, main, limit, scale=1.0)
        model = model.with_constraints(Held(fixed, closed), budget)
    search = anneal_with(P, main, model, seed)
    labels = search.labels
    # locks held; a closed grid neither loses nor gains a unit
    assert (labels[fixed] == main[fixed]).all()
    for j in np.flatnonzero(closed):
        assert ((labels == j) == (main == j)).all()
    # every grid one piece, none emptied
    for j in range(k):
        assert connected(P, np.flatnonzero(labels == j))
    # the budget never exceeded, and the constraint's own count follows the plan kept
    moved = (subs.sub != sub) if nested else (labels != main)
    assert B[moved].sum() <= limit + 1e-6
    assert budget.spent == pytest.approx(B[moved].sum())
    if nested:  # every unit in a sub-grid of its main grid, every sub-grid one piece
        assert (sub_main[subs.sub] == labels).all()
        for s in range(len(sub_main)):
            assert connected(P, np.flatnonzero(subs.sub == s))


def test_the_kernel_moves_units_within_the_constraints():
    # not vacuous: with room in the budget the walk does redraw the nested plan
    rng = np.random.default_rng(1)
    P = grid_problem(6, 8, rng)
    main, sub, sub_main = stripes(6, 8, 2)
    P.W[main == 0] *= 1.6  # grid 0 far over its band: units must move to balance
    B = np.ones(P.n)
    subs = SubGrids(sub, sub_main, P.indptr, P.indices, P.elen)
    budget = DisruptionBudget(B, main, 10, scale=1.0, fine=subs, fine_original=sub)
    model = BalanceModel.for_units(P.W, {"subscribers": 0.1}, 2).with_constraints(
        Held(np.zeros(P.n, bool), np.zeros(2, bool)), subs, budget)
    search = anneal_with(P, main, model, 3)
    assert search.violation() == 0  # balanced
    assert 0 < (subs.sub != sub).sum() <= 10
    assert (sub_main[subs.sub] == search.labels).all()


class _Unlowerable(MoveConstraint):
    """A rule only the local search knows (no array form)."""

    def allows(self, i, a, b):
        return i % 2 == 0


def test_a_constraint_without_an_array_form_is_refused_not_dropped():
    rng = np.random.default_rng(0)
    P = grid_problem(4, 4, rng)
    main, _, _ = stripes(4, 4, 2)
    model = BalanceModel.for_units(P.W, {"subscribers": 0.2}, 2)
    search = LocalSearch(P, main, model.with_constraints(_Unlowerable()), objective="boundary",
                         rng=rng)
    with pytest.raises(NotLowered, match="_Unlowerable has no array form"):
        anneal(search, time.monotonic() + 5, 0, max_epochs=1)
    assert (search.labels == main).all()  # refused before any move
    two = model.with_constraints(DisruptionBudget(np.ones(P.n), main, 3, scale=1.0),
                                 DisruptionBudget(np.ones(P.n), main, 5, scale=1.0))
    search = LocalSearch(P, main, two, objective="boundary", rng=rng)
    with pytest.raises(NotLowered, match="one disruption budget"):
        anneal(search, time.monotonic() + 5, 0, max_epochs=1)
