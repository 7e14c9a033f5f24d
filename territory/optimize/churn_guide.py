"""The least-churn assignment with contiguity: a guide for the rebalance's local search.

The local search (:class:`~territory.optimize.search.LocalSearch`) balances by moving one
boundary unit at a time, scoring each move by the balance it gains against the customers it
costs. It sees one move ahead, so it moves what is next to the line, not what is cheapest
to move: on the shipped city it moved 1.4-6.5 times the customers of the proven bound
(:mod:`.churn_bound`). The bound's MIP sees every unit at once but drops contiguity, so its
optimum moves units scattered through the grids, which no real plan can.

This module solves the bound's MIP with contiguity put back, in part by rows and in part
lazily:

* only units within ``reach`` hops of a grid line may move, and only to grids found within
  ``reach`` hops of them (the band where a rebalance's moves lie);
* every piece of every grid and sub-grid keeps a root (a unit that stays: a held one, else
  its deepest);
* hop-order rows (:func:`_local_rows`): a unit joins grid ``g`` only beside a unit of ``g``
  one hop nearer ``g``'s present units (so joiners never form an island: the hops lead
  back), and a unit stays in its grid (and sub-grid) only beside one that stays and is no
  farther from its root (lenient: a ring of stayers can still lose its way to the root);
* the MIP is solved, the pieces of each grid (and of each sub-grid's staying units) left
  without a root are found, and for each piece ``S`` of grid ``g`` a cut ``x[i,g] <= sum
  of x[j,g] over the neighbours j of S`` (for i in S) is added: a grid that holds ``i`` and
  its root must hold a unit on the way out of S. After ``max_rounds`` solves with pieces
  left, the staying rows are made strict (one hop nearer the root) for a last solve: every
  solution is then one piece at both levels (the hops lead down to a root), at some cost
  (on the shipped city 1.1-1.9 times the churn of the lenient order alone, which is why
  it is not the first try). When the time runs out with pieces left, they are undone
  (:func:`_repaired`: the guide is whole then, but maybe out of its bands).
* then all that once more, in what is left of the time, with a wider joining rule: beside
  a unit of ``g`` earlier in ``g``'s joining order (fewer hops from ``g``'s present units,
  then fewer from its roots, then lower position: strict and total, so joiners still never
  form an island), which lets a unit join beside a joiner as near ``g`` as itself. The
  cheaper one-piece answer of the two is kept (the second only when one piece: only the
  first's pieces are undone). "One hop nearer" first because it closes in
  a few rounds where the wider rule can take several times as long (the shipped city's
  workload +30 %: 5 s against 33 s); the wider one because it finds what the first cannot
  (the store-closed case: 185 customers, 173 with the order).

The answer is a set of target labels; the search then moves to them
(:meth:`~territory.optimize.search.LocalSearch.follow`), keeping every hard rule, and
balances what is left its own way. The restrictions (band, roots, hop orders) make this
MIP's bound no bound for other plans. :func:`contiguous_churn_bound` is one: the bound's
MIP with only the cuts every contiguous plan keeps, added lazily.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components, dijkstra

from territory.optimize.churn_bound import AssignmentModel, ChurnBound, assignment_model
from territory.optimize.highs import checked_status

#: rows added for one cut-off piece at most (one per unit of it: the piece's far units are
#: cut again in a later round if still needed)
_CUTS_PER_PIECE = 12
#: a guide need not be optimal: 2 % above the best bound is found much sooner

GAP = 0.02


@dataclass
class Guide:
    """Target labels (``None``: the MIP found no assignment in time), whether every grid
    and sub-grid of them is one piece, the churn they cost and how many cut rounds ran."""

    labels: np.ndarray | None
    contiguous: bool
    churn: float
    rounds: int


def _hops(A: sp.csr_matrix, seeds: np.ndarray, limit: int) -> np.ndarray:
    """Hops from ``seeds`` (booleans) over ``A``, ``limit + 1`` beyond ``limit``."""
    if not seeds.any():
        return np.full(len(seeds), limit + 1, dtype=np.int64)
    dist = dijkstra(A, unweighted=True, indices=np.flatnonzero(seeds), min_only=True,
                    limit=limit)
    return np.where(np.isfinite(dist), dist, limit + 1).astype(np.int64)


def least_churn_labels(W: np.ndarray, labels: np.ndarray, group: np.ndarray, lo: np.ndarray,
                       hi: np.ndarray, weight: np.ndarray, movable: np.ndarray,
                       closed: np.ndarray, adjacency: sp.csr_matrix, sub: np.ndarray, *,
                       limit: float = np.inf, reach: int = 6, time_limit: float = 10.0,
                       original: np.ndarray | None = None, max_rounds: int = 100) -> Guide:
    """The module's guide for units with loads ``W`` in grids ``labels`` (arguments as
    :func:`.churn_bound.churn_lower_bound`), ``adjacency`` the units' graph (edges inside a
    group only), ``sub`` their sub-grid codes; at most ``limit`` weight changes grid from
    ``original`` (``labels`` unless given: a guide from a plan already partly changed).
    Each of its two solves stops after ``max_rounds`` rounds of cuts."""
    t_end = time.monotonic() + time_limit
    labels = np.asarray(labels, dtype=np.int64)
    n, k = len(labels), len(group)
    A = sp.csr_matrix(adjacency, dtype=float)
    A.data[:] = 1.0
    rows, cols = A.nonzero()
    line = np.zeros(n, dtype=bool)
    line[rows[labels[rows] != labels[cols]]] = True
    depth = _hops(A, line, n)  # hops to the nearest grid line
    # grids within `reach` hops of each unit
    near = sp.csr_matrix((np.ones(n), (np.arange(n), labels)), shape=(n, k))
    seen = near.copy()
    for _ in range(reach):
        seen = ((seen + A @ seen) > 0).astype(float)
    allowed = seen.toarray() > 0
    free = np.asarray(movable, bool) & (depth < reach) & (allowed.sum(axis=1) > 1)
    # a root per piece of each grid and sub-grid (a grid may be one piece only through
    # another branch's units, over a bridge): a unit that stays, the piece's deepest one
    # when all may move
    roots = []
    for codes in (labels, sub):
        piece = _pieces(A, codes)
        order = np.lexsort((-depth, piece))
        first = order[np.r_[True, piece[order][1:] != piece[order][:-1]]]
        held = np.bincount(piece, weights=(~free).astype(float)) > 0
        free[first[~held[piece[first]]]] = False
        stays = np.flatnonzero(~free)
        roots.append(stays[np.unique(piece[stays], return_index=True)[1]])
    model = assignment_model(W, labels, group, lo, hi, weight, free, closed, allowed,
                             original)
    if isinstance(model, ChurnBound):  # balanced already, or out of reach
        done = model.value == 0
        return Guide(labels.copy() if done else None, done, 0.0 if done else np.inf, 0)
    col = {(int(i), int(g)): c for c, (i, g) in enumerate(zip(model.col_unit, model.col_grid,
                                                            strict=True))}
    cost = model.cost + np.where(model.cost > 0, 1e-3, 0.0)  # fewer units at equal churn
    # what the units that stay away from ``original`` already cost
    home = labels if original is None else np.asarray(original, dtype=np.int64)
    away = (labels != home) & ~np.isin(np.arange(n), model.units)
    spent = float(np.asarray(weight, float)[away].sum())

    def solve(by_order: bool) -> Guide | None:
        """The MIP with the joining rows ``by_order`` (or one hop nearer), cut until one
        piece or out of time or rounds."""
        h = model.highs(max(t_end - time.monotonic(), 0.1))
        h.changeColsCost(len(cost), np.arange(len(cost), dtype=np.int32), cost)
        h.setOptionValue("mip_rel_gap", GAP)
        _add(h, _local_rows(model, labels, sub, free, A, reach, roots, col, False, by_order))
        if np.isfinite(limit):
            moved = np.flatnonzero(model.cost > 0)
            _add(h, [(moved.tolist(), model.cost[moved].tolist(), -np.inf,
                      float(limit) - spent)])
        best, rounds, strict = None, 0, False
        while time.monotonic() < t_end:
            h.setOptionValue("time_limit", max(t_end - time.monotonic(), 0.1))
            h.run()
            status = checked_status(h, "least-churn guide MIP")
            x = np.asarray(h.getSolution().col_value)
            if (status == "Infeasible" or len(x) != len(cost)
                    or not h.getInfo().primal_solution_status):
                break
            target = labels.copy()
            on = x > 0.5
            target[model.col_unit[on]] = model.col_grid[on]
            rounds += 1
            if status != "Optimal" and best is not None:
                break  # a solve cut short: its incumbent can be far worse than the last
            cuts = _cuts(target, labels, sub, A, roots, col)
            best = Guide(target, not cuts, spent + float(model.cost[on].sum()), rounds)
            if not cuts or status != "Optimal" or strict:
                break
            _add(h, cuts)
            if rounds >= max_rounds:  # the last solve in strict order: one piece for sure
                _add(h, _local_rows(model, labels, sub, free, A, reach, roots, col, True))
                strict = True
        return best

    best = solve(by_order=False)
    if best is not None and best.contiguous and time.monotonic() < t_end:
        wider = solve(by_order=True)  # the joining order, in what is left of the time
        if wider is not None and wider.contiguous and wider.churn < best.churn - 1e-9:
            best = wider
    if best is not None and not best.contiguous:  # the pieces left undone
        fixed = _repaired(best.labels, labels, sub, A, roots)
        if fixed is not None:
            churn = float(np.asarray(weight, float)[fixed != home].sum())
            return Guide(fixed, True, churn, best.rounds)
    return best or Guide(None, False, np.inf, 0)


def _pieces(A: sp.csr_matrix, codes: np.ndarray, keep: np.ndarray | None = None
            ) -> np.ndarray:
    """The connected piece of each unit within its code (units ``keep`` only, if given)."""
    rows, cols = A.nonzero()
    same = codes[rows] == codes[cols]
    if keep is not None:
        same &= keep[rows] & keep[cols]
    B = sp.csr_matrix((np.ones(same.sum()), (rows[same], cols[same])), shape=A.shape)
    return connected_components(B, directed=False)[1]


def _local_rows(model: AssignmentModel, labels: np.ndarray, sub: np.ndarray,
                free: np.ndarray, A: sp.csr_matrix, reach: int, roots: list[np.ndarray],
                col: dict, strict: bool, by_order: bool = False) -> list:
    """The hop-order rows of the module docstring: a unit joins grid g only beside a unit
    of g one hop nearer g's present units (``by_order``: earlier in g's joining order); a
    unit stays in its grid (sub-grid) only beside one that stays there and is no farther
    from the root of its piece. ``strict``: the staying rows alone, one hop nearer the
    root."""
    out = []
    nbrs = np.split(A.indices, A.indptr[1:-1])
    rows, cols = A.nonzero()
    to_root = []
    for codes, r in zip((labels, sub), roots, strict=True):
        same = codes[rows] == codes[cols]
        B = sp.csr_matrix((np.ones(same.sum()), (rows[same], cols[same])), shape=A.shape)
        seeds = np.zeros(len(labels), dtype=bool)
        seeds[r] = True
        to_root.append(_hops(B, seeds, len(labels)))
    key = {}
    for c in range(len(model.col_unit)):
        i, g = int(model.col_unit[c]), int(model.col_grid[c])
        nb = nbrs[i]
        if g == labels[i]:
            ways = [nb[(codes[nb] == codes[i]) & (d[nb] <= d[i] - strict)]
                    for codes, d in zip((labels, sub), to_root, strict=True)]
        elif strict:
            continue  # the joining rows are in already
        else:
            if g not in key:
                key[g] = (_joining_order(A, labels, g, roots[0], reach) if by_order else
                          _hops(A, labels == g, reach + 1))
            ways = [nb[key[g][nb] < key[g][i]]]
        for way in ways:
            if ((labels[way] == g) & ~free[way]).any():
                continue  # a neighbour surely in g
            idx = [col[(int(j), g)] for j in way if (int(j), g) in col]
            out.append(([c] + idx, [1.0] + [-1.0] * len(idx), -np.inf, 0.0))
    return out


def _joining_order(A: sp.csr_matrix, labels: np.ndarray, g: int, roots: np.ndarray,
                   reach: int) -> np.ndarray:
    """Each unit's rank in grid ``g``'s joining order: by hops from ``g``'s present units
    (up to ``reach + 1``), then hops from its ``roots``, then position. Strict and total, so
    a chain of joiners each beside an earlier one ends at a present unit of ``g``."""
    n = len(labels)
    seeds = np.zeros(n, dtype=bool)
    seeds[roots[labels[roots] == g]] = True
    key = np.lexsort((np.arange(n), _hops(A, seeds, n), _hops(A, labels == g, reach + 1)))
    rank = np.empty(n, dtype=np.int64)
    rank[key] = np.arange(n)
    return rank


def _rootless(target: np.ndarray, labels: np.ndarray, sub: np.ndarray, A: sp.csr_matrix,
              roots: list[np.ndarray]):
    """The pieces of each grid (level 0) and of each sub-grid's staying units (level 1)
    that ``target`` leaves without a root: ``(level, units, grid, neighbours)``, the
    neighbours those of the piece one of which would have to be in the grid (in the same
    sub-grid, at level 1)."""
    n = len(target)
    for level, region, inside in ((0, target, np.ones(n, dtype=bool)),
                                  (1, sub, target == labels)):
        comp = _pieces(A, region, inside)
        ok = np.zeros(comp.max() + 1, dtype=bool)
        ok[comp[roots[level]]] = True
        for c in np.unique(comp[inside & ~ok[comp]]):
            S = np.flatnonzero(comp == c)
            nb = np.setdiff1d(np.unique(A[S].indices), S)
            if level:
                nb = nb[region[nb] == region[S[0]]]
            yield level, S, int(target[S[0]]), nb


def _cuts(target: np.ndarray, labels: np.ndarray, sub: np.ndarray, A: sp.csr_matrix,
          roots: list[np.ndarray], col: dict) -> list:
    """Rows cutting off the pieces that ``target`` leaves without a root (:func:`_rootless`)."""
    out = []
    for _, S, g, nb in _rootless(target, labels, sub, A, roots):
        way = [col[(int(j), g)] for j in nb if (int(j), g) in col]
        own = [col[(int(i), g)] for i in S if (int(i), g) in col][:_CUTS_PER_PIECE]
        if not own:  # the piece is held in g: a way out must be in g
            out.append((way, [1.0] * len(way), 1.0, np.inf))
        for c_i in own:
            out.append(([c_i] + way, [1.0] + [-1.0] * len(way), -np.inf, 0.0))
    return out


def _repaired(target: np.ndarray, labels: np.ndarray, sub: np.ndarray, A: sp.csr_matrix,
              roots: list[np.ndarray], tries: int = 6) -> np.ndarray | None:
    """``target`` with its rootless pieces undone (joiners cut off go back, units whose
    leaving cut stayers off stay), or None when that does not settle in ``tries`` passes;
    the bands may be lost on the way (the search balances what is left)."""
    target = target.copy()
    for _ in range(tries):
        undo = [S if target[S[0]] != labels[S[0]] else nb[target[nb] != labels[nb]]
                for _, S, _, nb in _rootless(target, labels, sub, A, roots)]
        if not undo:
            return target
        for units in undo:
            target[units] = labels[units]
    return None


def _add(h, rows: list) -> None:
    """Add ``(columns, values, lower, upper)`` rows to HiGHS model ``h``."""
    if not rows:
        return
    starts = np.cumsum([0] + [len(r[0]) for r in rows[:-1]]).astype(np.int32)
    idx = np.concatenate([np.asarray(r[0], dtype=np.int32) for r in rows])
    val = np.concatenate([np.asarray(r[1], dtype=float) for r in rows])
    lo = np.array([r[2] for r in rows], dtype=float)
    hi = np.array([r[3] for r in rows], dtype=float)
    inf = 1e30
    h.addRows(len(rows), np.maximum(lo, -inf), np.minimum(hi, inf), len(idx), starts, idx, val)


def contiguous_churn_bound(W: np.ndarray, labels: np.ndarray, group: np.ndarray,
                           lo: np.ndarray, hi: np.ndarray, weight: np.ndarray,
                           movable: np.ndarray, closed: np.ndarray, adjacency: sp.csr_matrix,
                           island: np.ndarray, time_limit: float = 10.0) -> ChurnBound:
    """A lower bound of the churn of any plan whose grids meet their bands and are each one
    piece: :func:`.churn_bound.churn_lower_bound`'s MIP (no band, no roots, every unit of an
    unbalanced branch may join every grid of it) with valid contiguity cuts added lazily.

    The cut: a set ``S`` of units that cannot hold grid ``g`` alone - its load, with every
    unit outside ``S``'s ``island`` (the piece of the area it lies in, over rook edges: a
    grid may own whole islands besides its main piece), is below ``g``'s band in some
    measure - holds unit ``i`` in ``g`` only if one of ``S``'s neighbours (``adjacency``,
    bridges included) is in ``g`` too. Every contiguous plan keeps it, so HiGHS's dual bound
    stays a bound for them, whenever it stops; each round cuts off the pieces of the last
    solution (one unit alone first: every unit, upfront). Infinite when the cut MIP has no
    solution: no contiguous plan meets the bands."""
    t_end = time.monotonic() + time_limit
    model = assignment_model(W, labels, group, lo, hi, weight, movable, closed)
    if isinstance(model, ChurnBound):
        return model
    labels = np.asarray(labels, dtype=np.int64)
    A = sp.csr_matrix(adjacency, dtype=float)
    A.data[:] = 1.0
    col = {(int(i), int(g)): c for c, (i, g) in enumerate(zip(model.col_unit, model.col_grid,
                                                            strict=True))}
    held = ~np.isin(np.arange(len(labels)), model.units)
    outside = {}  # per island: the load of the units off it (in the branch)
    total = np.zeros((group.max() + 1, W.shape[1]))
    np.add.at(total, group[labels], W)
    per_island = pd.DataFrame(W).groupby([group[labels], island]).sum()

    def cuts_for(S: np.ndarray, g: int) -> list:
        b = int(group[g])
        key = (b, int(island[S[0]]))
        if key not in outside:
            outside[key] = total[b] - per_island.loc[key].to_numpy()
        if not ((W[S].sum(axis=0) + outside[key]) < lo[g] - 1e-9).any():
            return []  # S with the islands could be all of g
        nb = np.setdiff1d(np.unique(A[S].indices), S)
        if ((labels[nb] == g) & held[nb]).any():
            return []  # a neighbour surely in g
        way = [col[(int(j), g)] for j in nb if (int(j), g) in col]
        own = [col[(int(i), g)] for i in S if (int(i), g) in col][:_CUTS_PER_PIECE]
        if not own:
            return [(way, [1.0] * len(way), 1.0, np.inf)]
        return [([c] + way, [1.0] + [-1.0] * len(way), -np.inf, 0.0) for c in own]

    h = model.highs(max(t_end - time.monotonic(), 0.1))
    _add(h, [r for c in range(len(model.col_unit))
             for r in cuts_for(np.array([model.col_unit[c]]), int(model.col_grid[c]))
             if r[0][0] == c])
    bound, exact = 0.0, False
    while True:
        h.setOptionValue("time_limit", max(t_end - time.monotonic(), 0.1))
        h.run()
        status = checked_status(h, "contiguous churn bound MIP")
        if status == "Infeasible":
            return ChurnBound(math.inf, True, status)
        dual = float(h.getInfo().mip_dual_bound)
        bound = max(bound, dual if math.isfinite(dual) else 0.0)
        x = np.asarray(h.getSolution().col_value)
        if status != "Optimal" or len(x) != len(model.cost) or time.monotonic() >= t_end:
            break
        target = labels.copy()
        on = x > 0.5
        target[model.col_unit[on]] = model.col_grid[on]
        comp = _pieces(A, target)
        rows, split = [], False
        for g in np.unique(target[model.units]):
            parts = np.unique(comp[target == g])
            split |= len(parts) > 1
            for p in parts if len(parts) > 1 else ():
                rows += cuts_for(np.flatnonzero(comp == p), int(g))
        if not rows:  # one piece per grid: the least churn of a contiguous plan
            exact = not split
            break
        _add(h, rows)
    if np.allclose(model.cost, np.round(model.cost)):  # whole weights: a whole optimum
        bound = float(math.ceil(bound - 1e-6))
    return ChurnBound(bound, exact, status)
