"""The churn lower bound (territory.optimize.churn_bound) against brute force on tiny
instances: with contiguity dropped it is the exact least churn, and infinite exactly when
no assignment meets the bands."""

from __future__ import annotations

import itertools
import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from territory.optimize.churn_bound import churn_lower_bound


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
