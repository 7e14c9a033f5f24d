"""ReCom: merge two adjacent grids and re-split the union along a random spanning tree.

The annealing walk moves one unit at a time; after a long anneal it sits in a deep local
optimum that single moves cannot leave without crossing plans out of balance. A
recombination redraws two grids' common border wholesale (DeFord, Duchin and Solomon,
"Recombination: a family of Markov chains for redistricting", 2021): join grids a and b,
draw a random spanning tree of their union (random edge weights and a minimum spanning
tree, as GerryChain does), and cut the one tree edge whose two sides both fall within
every balance band. Both sides of a tree edge are connected, so the new grids are
contiguous; the loads of every other grid are unchanged, so the plan stays within its bands.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import breadth_first_order, minimum_spanning_tree

from territory.optimize.balance import BalanceModel
from territory.optimize.problem import Problem


def recombine(P: Problem, labels: np.ndarray, model: BalanceModel, movable: np.ndarray,
              rng: np.random.Generator, *, tries: int = 8,
              pair: tuple[int, int] | None = None,
              score: Callable[[np.ndarray], float] | None = None) -> np.ndarray | None:
    """A plan with grids a and b (adjacent; drawn at random unless ``pair`` is given)
    re-split along a spanning tree, or None when ``tries`` trees gave no admissible cut.

    Admissible: both new grids within every band of ``model``, and every unit that may not
    move (``movable`` False: locked units, given centres) keeps its grid. Of the admissible
    cuts of a tree, the one with the lowest ``score`` (default: the plan's boundary, the
    summed length of the edges between grids) is taken.
    """
    src = np.repeat(np.arange(P.n), np.diff(P.indptr))
    if score is None:
        def score(lab: np.ndarray) -> float:
            return float(P.elen[lab[src] != lab[P.indices]].sum())
    if pair is None:
        cut = np.flatnonzero(labels[src] != labels[P.indices])
        if len(cut) == 0:
            return None
        e = cut[rng.integers(len(cut))]
        a, b = int(labels[src[e]]), int(labels[P.indices[e]])
    else:
        a, b = pair
    nodes = np.flatnonzero((labels == a) | (labels == b))
    A = P.adjacency()[nodes][:, nodes].tocoo()
    upper = A.row < A.col
    r, c = A.row[upper], A.col[upper]
    lo, hi = model.bounds()
    W = P.W[nodes]
    total = W.sum(axis=0)
    fixed_a = ~movable[nodes] & (labels[nodes] == a)
    fixed_b = ~movable[nodes] & (labels[nodes] == b)
    for _ in range(tries):
        weights = rng.random(len(r)) + 1e-9  # strictly positive: zero means "no edge"
        T = minimum_spanning_tree(sp.csr_matrix((weights, (r, c)), shape=(len(nodes),) * 2))
        T = T + T.T
        order, parent = breadth_first_order(T, 0, directed=False)
        if len(order) < len(nodes):
            return None  # the union is not connected (cannot happen for adjacent grids)
        sub = W.copy()
        n_a, n_b = fixed_a.astype(np.int64), fixed_b.astype(np.int64)
        for v in order[:0:-1]:  # leaves first: subtree sums
            p = parent[v]
            sub[p] += sub[v]
            n_a[p] += n_a[v]
            n_b[p] += n_b[v]
        child = order[1:]
        inside, outside = sub[child], total - sub[child]
        # the subtree below a child edge becomes a (its complement b), or the other way
        as_a = ((inside >= lo[a] - 1e-9).all(1) & (inside <= hi[a] + 1e-9).all(1)
                & (outside >= lo[b] - 1e-9).all(1) & (outside <= hi[b] + 1e-9).all(1)
                & (n_b[child] == 0) & (n_a[child] == fixed_a.sum()))
        as_b = ((inside >= lo[b] - 1e-9).all(1) & (inside <= hi[b] + 1e-9).all(1)
                & (outside >= lo[a] - 1e-9).all(1) & (outside <= hi[a] + 1e-9).all(1)
                & (n_a[child] == 0) & (n_b[child] == fixed_b.sum()))
        options = [(v, a, b) for v in child[as_a]] + [(v, b, a) for v in child[as_b]]
        if not options:
            continue
        best, best_cut = None, np.inf
        for v, side, other in options:
            new = labels.copy()
            below = _subtree(order, parent, v)
            new[nodes] = other
            new[nodes[below]] = side
            value = score(new)
            if value < best_cut:
                best, best_cut = new, value
        return best
    return None


def _subtree(order: np.ndarray, parent: np.ndarray, v: int) -> np.ndarray:
    """Local indices of the tree nodes below (and including) ``v``."""
    inside = np.zeros(len(order), dtype=bool)
    inside[v] = True
    for u in order:  # BFS order: a parent comes before its children
        if parent[u] >= 0 and inside[parent[u]]:
            inside[u] = True
    return np.flatnonzero(inside)
