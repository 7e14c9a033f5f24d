"""ReCom (merge two adjacent grids, re-split along a random spanning tree): invariants."""

from __future__ import annotations

import networkx as nx
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from territory.optimize.balance import BalanceModel, deviation
from territory.optimize.problem import problem_from_graph
from territory.optimize.recom import recombine
from tests.conftest import lattice

MEASURES = ["subscribers", "workload"]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    w=st.integers(4, 12),
    h=st.integers(3, 10),
    k=st.integers(2, 5),
    slack=st.sampled_from([0.0, 0.02, 0.1]),
    n_fixed=st.integers(0, 4),
    seed=st.integers(0, 10_000),
)
def test_recombination_keeps_contiguity_bands_and_locks(w, h, k, slack, n_fixed, seed):
    g = lattice(w, h, seed=seed)
    P = problem_from_graph(g, MEASURES)
    k = min(k, w)
    # a contiguous start: vertical strips of columns; its band is what it meets plus slack
    col = (P.xy[:, 0] / 100).astype(int)
    labels = np.minimum(col * k // w, k - 1).astype(np.int64)
    loads = np.zeros((k, 2))
    np.add.at(loads, labels, P.W)
    dev = np.abs(deviation(loads, loads.mean(axis=0))).max(axis=0)
    tol = {m: float(min(d + slack, 0.99)) + 1e-6 for m, d in zip(MEASURES, dev, strict=True)}
    model = BalanceModel.for_units(P.W, tol, k)
    rng = np.random.default_rng(seed)
    movable = np.ones(P.n, dtype=bool)
    movable[rng.choice(P.n, n_fixed, replace=False)] = False  # locked units
    lo, hi = model.bounds()
    for _ in range(5):
        new = recombine(P, labels, model, movable, rng)
        if new is None:
            continue
        changed = np.unique(np.r_[labels[new != labels], new[new != labels]])
        assert len(changed) in (0, 2)  # two grids recombined, every other grid untouched
        assert np.array_equal(new[~movable], labels[~movable])  # locks hold
        assert set(new.tolist()) == set(range(k))
        ld = np.zeros((k, 2))
        np.add.at(ld, new, P.W)
        assert np.all(ld >= lo - 1e-6) and np.all(ld <= hi + 1e-6)
        for j in range(k):  # every grid contiguous, checked on the graph itself
            assert nx.is_connected(g.subgraph([P.ids[i] for i in np.flatnonzero(new == j)]))
        labels = new


def test_recombination_finds_the_balanced_split_of_a_path():
    """A path of 2 x 5 equal units into two grids of 5: the only balanced cut is the middle."""
    g = nx.path_graph(10)
    for i, d in g.nodes(data=True):
        d.update(x=float(i), y=0.0, subscribers=1.0, workload=1.0)
    for _, _, d in g.edges(data=True):
        d.update(length_m=1.0, bridge=False)
    P = problem_from_graph(g, MEASURES)
    start = np.array([0, 0, 0, 1, 1, 1, 1, 1, 1, 1])  # 3 and 7: out of a ±10 % band
    model = BalanceModel.for_units(P.W, dict.fromkeys(MEASURES, 0.1), 2)
    new = recombine(P, start, model, np.ones(10, dtype=bool), np.random.default_rng(0),
                    pair=(0, 1))
    assert new is not None
    assert sorted(np.bincount(new).tolist()) == [5, 5]
    assert new[0] != new[9] and len(set(new[:5].tolist())) == 1
