"""The churn lower bounds against brute force on tiny instances: with contiguity dropped
(territory.optimize.churn_bound) the exact least churn, and infinite exactly when no
assignment meets the bands; with contiguity cuts (territory.optimize.churn_guide) between
that and the least churn of a contiguous assignment, equal to it when it says exact."""

from __future__ import annotations

import itertools
import math

import networkx as nx
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from territory.optimize.churn_bound import churn_lower_bound
from territory.optimize.churn_guide import contiguous_churn_bound


def _brute(W, labels, group, lo, hi, weight, movable, closed) -> float:
    k = len(group)
    best = math.inf
    choices = [[int(labels[i])] if not movable[i] or closed[labels[i]] else
               [g for g in range(k) if group[g] == group[labels[i]] and not closed[g]]
               for i in range(len(labels))]
    for assign in itertools.product(*choices):
        a = np.array(assign)
        loads = np.zeros(lo.shape)
        np.add.at(loads, a, W)
        if ((loads >= lo - 1e-9) & (loads <= hi + 1e-9)).all():
            best = min(best, float(weight[a != labels].sum()))
    return best


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(3, 8), tol=st.sampled_from([0.05, 0.2, 0.5]),
       two_groups=st.booleans())
def test_the_bound_is_the_least_churn_without_contiguity(seed, n, tol, two_groups):
    rng = np.random.default_rng(seed)
    W = rng.integers(1, 10, (n, 2)).astype(float)
    group = np.array([0, 0, 1, 1]) if two_groups else np.array([0, 0, 0])
    k = len(group)
    labels = rng.integers(0, k, n)
    movable = rng.random(n) > 0.2
    closed = np.zeros(k, dtype=bool)
    closed[rng.integers(0, k)] = rng.random() < 0.3
    weight = rng.integers(0, 20, n).astype(float)
    # bands: ±tol around each group's mean over its grids (as the rebalance sets them)
    loads = np.zeros((k, 2))
    np.add.at(loads, labels, W)
    mean = np.array([loads[group == group[g]].mean(axis=0) for g in range(k)])
    lo, hi = (1 - tol) * mean, (1 + tol) * mean
    got = churn_lower_bound(W, labels, group, lo, hi, weight, movable, closed, time_limit=10)
    want = _brute(W, labels, group, lo, hi, weight, movable, closed)
    assert got.exact
    assert got.value == want


def _brute_contiguous(W, labels, lo, hi, weight, movable, graph) -> float:
    """The least churn of an assignment of a lattice's units to its grids, every grid one
    piece (and not empty) within its band."""
    k = lo.shape[0]
    best = math.inf
    choices = [[int(labels[i])] if not movable[i] else list(range(k)) for i in range(len(labels))]
    for assign in itertools.product(*choices):
        a = np.array(assign)
        loads = np.zeros(lo.shape)
        np.add.at(loads, a, W)
        if not ((loads >= lo - 1e-9) & (loads <= hi + 1e-9)).all():
            continue
        if all(len(m) and nx.is_connected(graph.subgraph(m))
               for m in (np.flatnonzero(a == g).tolist() for g in range(k))):
            best = min(best, float(weight[a != labels].sum()))
    return best


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), tol=st.sampled_from([0.1, 0.25, 0.5]),
       shape=st.sampled_from([(3, 3), (2, 5), (3, 4)]), k=st.sampled_from([2, 3]))
def test_the_contiguous_bound_lies_between_the_relaxed_bound_and_the_least_contiguous_churn(
        seed, tol, shape, k):
    rng = np.random.default_rng(seed)
    graph = nx.convert_node_labels_to_integers(nx.grid_2d_graph(*shape), ordering="sorted")
    n = graph.number_of_nodes()
    # grids: k vertical strips (one piece each), loads with some heavy units
    cols = np.arange(n) % shape[1]
    labels = np.minimum(cols * k // shape[1], k - 1)
    W = rng.integers(1, 10, (n, 2)).astype(float)
    W[rng.integers(0, n)] *= 4
    weight = rng.integers(0, 20, n).astype(float)
    movable = rng.random(n) > 0.15
    group, closed = np.zeros(k, dtype=np.int64), np.zeros(k, dtype=bool)
    loads = np.zeros((k, 2))
    np.add.at(loads, labels, W)
    mean = loads.mean(axis=0)
    lo, hi = np.tile((1 - tol) * mean, (k, 1)), np.tile((1 + tol) * mean, (k, 1))
    adjacency = nx.to_scipy_sparse_array(graph, nodelist=range(n), format="csr")
    relaxed = churn_lower_bound(W, labels, group, lo, hi, weight, movable, closed)
    got = contiguous_churn_bound(W, labels, group, lo, hi, weight, movable, closed, adjacency,
                                 np.zeros(n, dtype=np.int64), time_limit=20)
    want = _brute_contiguous(W, labels, lo, hi, weight, movable, graph)
    assert relaxed.value <= got.value <= want
    if got.exact:
        assert got.value == want
