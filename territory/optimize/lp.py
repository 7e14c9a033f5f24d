"""The balanced assignment LP, handed to HiGHS as arrays.

Given grid centres c_j, assign every unit i to centres with fractions x_ij::

    minimise    sum_ij p_i * d(i, c_j) * x_ij  +  P * sum_jm (s+_jm + s-_jm) / mu_m
    subject to  sum_j x_ij = 1                                  for every unit i
                lo_jm <= sum_i W_im x_ij + s-_jm - s+_jm <= hi_jm   for every grid j, measure m
                x_ij >= 0,  s >= 0,  x_ij = [j == lock_i] for locked units

``p_i`` is the unit's presence (its share of the measures and of the area) and ``d`` the
Euclidean distance in metres. Only the ``candidates`` nearest centres of each unit get a
column: the full model (n x k columns) does not fit a minute at city scale, the sparse one
solves in seconds. The slacks ``s`` keep the LP feasible when a restricted candidate set
cannot meet the balance; their penalty ``P`` makes them zero whenever it can.

The same model yields the lower bound: :func:`lp_lower_bound` prices out every missing
column with the row duals (column generation) until none has a negative reduced cost, so the
value is the LP optimum over *all* assignments to the given centres — a valid lower bound on
the distance objective of any balanced plan with those centres (contiguity relaxed; the
elastic slacks only enlarge the feasible set, so the bound stays valid).

PuLP would add seconds of model building per solve at this size (about 7.5 s for 500 000
variables measured here) and a slower solve; the small exact MIP in :mod:`.mip` uses PuLP.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import highspy
import numpy as np
from scipy.spatial import cKDTree

_PENALTY = 1e3


@dataclass
class LPResult:
    labels: np.ndarray  # rounded: each unit to its largest fraction
    value: float  # LP objective including slack penalties
    slack: float  # total relative balance violation allowed by the slacks
    n_split: int  # units whose LP assignment is fractional
    status: str


def _distances(xy, centres, rows, cols, D=None):
    if D is not None:
        return D[cols, rows]
    return np.hypot(*(xy[rows] - centres[cols]).T)


def _distance_block(xy, centres, rr, D=None):
    """Distances from units ``rr`` to every centre (len(rr) x k)."""
    if D is not None:
        return D[:, rr].T
    return np.hypot(xy[rr, 0][:, None] - centres[None, :, 0],
                    xy[rr, 1][:, None] - centres[None, :, 1])


def solve_balanced_lp(
    xy: np.ndarray,
    presence: np.ndarray,
    W: np.ndarray,
    centres: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    *,
    locked: np.ndarray | None = None,
    candidates: int = 8,
    time_limit: float = 60.0,
    max_rounds: int = 12,
    D: np.ndarray | None = None,
) -> tuple[LPResult, dict]:
    """Solve the balanced LP by column generation; return the rounded labels and the raw
    solution (``converged`` says whether no column was left with a negative reduced cost,
    i.e. whether ``value`` is the optimum over all assignments to ``centres``).

    ``D`` (k x n), when given, replaces Euclidean distances: shortest paths over the unit
    graph make the LP's regions follow the land (see the partitioner)."""
    deadline = time.monotonic() + time_limit
    n, _ = W.shape
    k = len(centres)
    q = min(candidates, k)
    if D is None:
        near = cKDTree(centres).query(xy, k=q)[1].reshape(n, q)
    else:
        near = np.argpartition(D, q - 1, axis=0)[:q].T if q < k else np.tile(np.arange(k), (n, 1))
    rows = np.repeat(np.arange(n), q)
    cols = near.ravel()
    sol: dict = {}
    for _ in range(max_rounds):
        rows, cols = _admissible(rows, cols, locked, k)
        cost = presence[rows] * _distances(xy, centres, rows, cols, D)
        new = _solve(rows, cols, cost, W, k, lo, hi, deadline - time.monotonic())
        new.update(rows=rows, cols=cols, cost=cost, converged=False)
        if not new["optimal"] and sol:
            break  # out of time: the previous round's optimum stands
        sol = new
        if not sol["optimal"] or time.monotonic() >= deadline:
            break
        nr, nc = _price(xy, presence, W, centres, sol, locked, D)
        if len(nr) == 0:
            sol["converged"] = True
            break
        rows, cols = np.concatenate([rows, nr]), np.concatenate([cols, nc])
    return sol["result"], sol


def _admissible(rows, cols, locked, k):
    """Unique (unit, centre) pairs; a locked unit keeps only its own centre's column."""
    if locked is not None:
        lk = np.flatnonzero(locked >= 0)
        keep = (locked[rows] < 0) | (cols == locked[rows])
        rows = np.concatenate([rows[keep], lk])
        cols = np.concatenate([cols[keep], locked[lk]])
    pair = np.unique(rows * k + cols)
    return pair // k, pair % k


def _price(xy, presence, W, centres, sol, locked, D=None, per_unit: int = 3):
    """Columns with negative reduced cost c_ij - y_i - sum_m W_im pi_jm (the most negative
    few per unit), computed in chunks so the n x k matrix never sits in memory whole."""
    n, m = W.shape
    k = len(centres)
    y = sol["duals"][:n]
    pi = sol["duals"][n:].reshape(k, m)
    tol = 1e-7 * max(1.0, abs(sol["result"].value) / n)
    out_r, out_c = [], []
    for s in range(0, n, 2048):
        rr = np.arange(s, min(n, s + 2048))
        d = _distance_block(xy, centres, rr, D)
        rc = presence[rr][:, None] * d - y[rr][:, None] - W[rr] @ pi.T
        if locked is not None:
            rc[locked[rr] >= 0] = np.inf
        t = min(per_unit, k)
        best = np.argpartition(rc, t - 1, axis=1)[:, :t]
        val = np.take_along_axis(rc, best, axis=1)
        r_i, c_i = np.nonzero(val < -tol)
        out_r.append(rr[r_i])
        out_c.append(best[r_i, c_i])
    return np.concatenate(out_r), np.concatenate(out_c)


def _solve(rows, cols, cost, W, k, lo, hi, time_limit) -> dict:
    n, m = W.shape
    nx_ = len(rows)
    mu = W.sum(axis=0) / k
    # x columns: one assignment row + m balance rows each (rows: n assignment, then k*m)
    starts = np.arange(nx_ + 1) * (1 + m)
    idx = np.empty((nx_, 1 + m), dtype=np.int32)
    val = np.empty((nx_, 1 + m))
    idx[:, 0] = rows
    val[:, 0] = 1.0
    for t in range(m):
        idx[:, 1 + t] = n + cols * m + t
        val[:, 1 + t] = W[rows, t]
    # slack columns: s- (+1) and s+ (-1) for every balance row
    nb = k * m
    s_idx = np.concatenate([n + np.arange(nb), n + np.arange(nb)])
    s_val = np.concatenate([np.ones(nb), -np.ones(nb)])
    s_cost = np.tile(_PENALTY * cost.mean() * n / k / mu, 2 * k) if nb else np.zeros(0)
    lp = highspy.HighsLp()
    lp.num_col_ = nx_ + 2 * nb
    lp.num_row_ = n + nb
    lp.col_cost_ = np.concatenate([cost, s_cost])
    lp.col_lower_ = np.zeros(lp.num_col_)
    lp.col_upper_ = np.full(lp.num_col_, highspy.kHighsInf)
    lp.row_lower_ = np.concatenate([np.ones(n), lo.ravel()])
    lp.row_upper_ = np.concatenate([np.ones(n), hi.ravel()])
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_ = np.concatenate([starts, starts[-1] + 1 + np.arange(2 * nb)])
    lp.a_matrix_.index_ = np.concatenate([idx.ravel(), s_idx]).astype(np.int32)
    lp.a_matrix_.value_ = np.concatenate([val.ravel(), s_val])
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    h.setOptionValue("time_limit", max(float(time_limit), 0.5))
    h.passModel(lp)
    h.run()
    status = h.modelStatusToString(h.getModelStatus())
    sol = h.getSolution()
    x = np.asarray(sol.col_value)[:nx_]
    slack = np.asarray(sol.col_value)[nx_:]
    duals = np.asarray(sol.row_dual)
    labels = _round(rows, cols, x, n)
    frac = (x > 1e-6) & (x < 1 - 1e-6)
    res = LPResult(
        labels=labels,
        value=float(h.getInfo().objective_function_value),
        slack=float((slack.reshape(2, k, m) / mu).sum()) if nb else 0.0,
        n_split=int(len(np.unique(rows[frac]))),
        status=status,
    )
    return {"result": res, "x": x, "duals": duals, "optimal": status == "Optimal"}


def _round(rows: np.ndarray, cols: np.ndarray, x: np.ndarray, n: int) -> np.ndarray:
    order = np.lexsort((-x, rows))
    first = np.ones(len(order), dtype=bool)
    first[1:] = rows[order][1:] != rows[order][:-1]
    labels = np.full(n, -1, dtype=np.int64)
    labels[rows[order][first]] = cols[order][first]
    return labels


def lp_lower_bound(
    xy: np.ndarray,
    presence: np.ndarray,
    W: np.ndarray,
    centres: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    *,
    locked: np.ndarray | None = None,
    time_limit: float = 30.0,
) -> float | None:
    """LP optimum over all assignments to ``centres``; None when pricing did not finish."""
    _, sol = solve_balanced_lp(
        xy, presence, W, centres, lo, hi, locked=locked, time_limit=time_limit, max_rounds=50
    )
    return sol["result"].value if sol["converged"] else None
