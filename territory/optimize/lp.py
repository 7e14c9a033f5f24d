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

from territory.optimize.highs import checked_status, new_highs

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

    One HiGHS model grows by the priced-out columns and is re-solved from its last basis,
    so every round after the first costs a fraction of a cold solve.

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
    rows, cols = _admissible(np.repeat(np.arange(n), q), near.ravel(), locked, k)
    cost = presence[rows] * _distances(xy, centres, rows, cols, D)
    model = _Model(W, k, lo, hi, float(cost.mean()))
    model.add(rows, cols, cost)
    sol = model.solve(deadline)
    best = sol if sol["optimal"] else None
    lagrangian = None
    for _ in range(max_rounds):
        if not sol["optimal"] or time.monotonic() >= deadline:
            break
        nr, nc, short = _price(xy, presence, W, centres, sol, locked, D)
        # Lagrangian bound: the restricted LP's value plus, for every unit, its most
        # negative reduced cost (each unit's assignments sum to 1), valid every round
        bound = sol["result"].value + short
        lagrangian = bound if lagrangian is None else max(lagrangian, bound)
        if len(nr) == 0:
            sol["converged"] = True
            break
        model.add(nr, nc, presence[nr] * _distances(xy, centres, nr, nc, D))
        sol = model.solve(deadline)
        if sol["optimal"]:
            best = sol
    out = best or sol
    out["lagrangian"] = lagrangian
    return out["result"], out


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
    few per unit), computed in chunks so the n x k matrix never sits in memory whole; and
    the sum over units of their most negative reduced cost (<= 0)."""
    n, m = W.shape
    k = len(centres)
    y = sol["duals"][:n]
    pi = sol["duals"][n:].reshape(k, m)
    tol = 1e-7 * max(1.0, abs(sol["result"].value) / n)
    out_r, out_c = [], []
    short = 0.0
    for s in range(0, n, 2048):
        rr = np.arange(s, min(n, s + 2048))
        d = _distance_block(xy, centres, rr, D)
        rc = presence[rr][:, None] * d - y[rr][:, None] - W[rr] @ pi.T
        if locked is not None:
            rc[locked[rr] >= 0] = np.inf
        t = min(per_unit, k)
        best = np.argpartition(rc, t - 1, axis=1)[:, :t]
        val = np.take_along_axis(rc, best, axis=1)
        short += float(np.minimum(val.min(axis=1), 0.0).sum())
        r_i, c_i = np.nonzero(val < -tol)
        out_r.append(rr[r_i])
        out_c.append(best[r_i, c_i])
    return np.concatenate(out_r), np.concatenate(out_c), short


class _Model:
    """The LP in HiGHS: rows are n assignment rows then k*m balance rows; the 2*k*m
    elastic slack columns come first, assignment columns are appended as they are priced."""

    def __init__(self, W: np.ndarray, k: int, lo: np.ndarray, hi: np.ndarray,
                 mean_cost: float) -> None:
        n, m = W.shape
        self.W, self.k, self.n, self.m = W, k, n, m
        self.mu = W.sum(axis=0) / k
        self.rows = np.zeros(0, dtype=np.int64)
        self.cols = np.zeros(0, dtype=np.int64)
        nb = k * m
        self.nb = nb
        s_cost = np.tile(_PENALTY * max(mean_cost, 1e-9) * n / k / self.mu, 2 * k)
        lp = highspy.HighsLp()
        lp.num_col_ = 2 * nb
        lp.num_row_ = n + nb
        lp.col_cost_ = s_cost
        lp.col_lower_ = np.zeros(2 * nb)
        lp.col_upper_ = np.full(2 * nb, highspy.kHighsInf)
        lp.row_lower_ = np.concatenate([np.ones(n), lo.ravel()])
        lp.row_upper_ = np.concatenate([np.ones(n), hi.ravel()])
        lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
        lp.a_matrix_.start_ = np.arange(2 * nb + 1, dtype=np.int32)
        lp.a_matrix_.index_ = np.tile(n + np.arange(nb), 2).astype(np.int32)
        lp.a_matrix_.value_ = np.concatenate([np.ones(nb), -np.ones(nb)])
        self.h = new_highs()
        self.h.passModel(lp)

    def add(self, rows: np.ndarray, cols: np.ndarray, cost: np.ndarray) -> None:
        """Append assignment columns x_ij: one assignment row and m balance rows each."""
        n, m = self.n, self.m
        idx = np.empty((len(rows), 1 + m), dtype=np.int32)
        val = np.empty((len(rows), 1 + m))
        idx[:, 0] = rows
        val[:, 0] = 1.0
        for t in range(m):
            idx[:, 1 + t] = n + cols * m + t
            val[:, 1 + t] = self.W[rows, t]
        starts = (np.arange(len(rows)) * (1 + m)).astype(np.int32)
        self.h.addCols(len(rows), cost, np.zeros(len(rows)), np.full(len(rows), highspy.kHighsInf),
                       idx.size, starts, idx.ravel(), val.ravel())
        self.rows = np.concatenate([self.rows, rows])
        self.cols = np.concatenate([self.cols, cols])

    def solve(self, deadline: float) -> dict:
        h = self.h
        h.setOptionValue("time_limit", max(deadline - time.monotonic(), 0.5))
        h.run()
        status = checked_status(h, "balanced assignment LP")
        sol = h.getSolution()
        values = np.asarray(sol.col_value)
        slack, x = values[: 2 * self.nb], values[2 * self.nb :]
        frac = (x > 1e-6) & (x < 1 - 1e-6)
        res = LPResult(
            labels=_round(self.rows, self.cols, x, self.n),
            value=float(h.getInfo().objective_function_value),
            slack=float((slack.reshape(2, self.k, self.m) / self.mu).sum()),
            n_split=int(len(np.unique(self.rows[frac]))),
            status=status,
        )
        return {"result": res, "x": x, "duals": np.asarray(sol.row_dual),
                "optimal": status == "Optimal", "converged": False,
                "rows": self.rows, "cols": self.cols}


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
) -> tuple[float, str]:
    """A lower bound on the LP over all assignments to ``centres``, and what it is: the
    LP optimum when pricing finished, else the best of the Lagrangian bound of the priced
    rounds and the nearest-centre assignment (weaker, still valid)."""
    res, sol = solve_balanced_lp(
        xy, presence, W, centres, lo, hi, locked=locked, time_limit=time_limit, max_rounds=50
    )
    if sol["converged"]:
        return sol["result"].value, "LP optimum"
    # balance relaxed altogether (the Lagrangian with zero multipliers): every unit to its
    # nearest centre; always at hand, used when the LP gave nothing better in its time
    nearest = float((presence * cKDTree(centres).query(xy)[0]).sum())
    lagrangian = sol.get("lagrangian")
    if lagrangian is not None and lagrangian > nearest:
        return lagrangian, "Lagrangian bound (column generation cut by time)"
    why = ("column generation cut by time" if lagrangian is not None
           else f"its first solve ended {res.status} within {time_limit:.1f} s")
    return nearest, f"nearest-centre bound, balance relaxed (the LP: {why})"
