"""A proven lower bound of the churn any rebalance needs: the least weight (customers,
households, units) that must change grid for every grid to meet its band.

The argument. Any plan that meets the bands, contiguous and nested or not, is an assignment
of units to grids of their own group (branch) in which every grid's load lies in
``[lo, hi]`` and the held units stay where they are. Relax the plan to exactly that - drop
contiguity, nesting, the sub-grid level and everything else - and minimise the weight of the
units whose grid changes::

    min  sum_i c_i (1 - x_{i,orig(i)})
    s.t. sum_g x_{i,g} = 1                          (each movable unit in one grid of its group)
         lo_g <= fixed_g + sum_i w_i x_{i,g} <= hi_g    (every grid, every measure)
         x binary

Every real plan is a feasible point of this MIP, so its optimum is at most any real plan's
churn, and HiGHS's dual bound (the best bound of its branch and bound, valid whenever it
stops) is at most that optimum: ``value`` is a true lower bound even when the solve is cut
by its time limit (``exact`` says whether it closed). When HiGHS proves the MIP infeasible,
no assignment at all meets the bands (``value`` is infinite): that is a proof that the
tolerances cannot be met, by any rebalance or fresh plan with the same grids.

The bound also holds for a plan drawn afresh whose grids are matched to the old ones (by
most shared customers): within a group every balanced grid has the same band, so a
relabelled balanced plan is still a feasible point, and the matching picks one relabelling.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import highspy
import numpy as np
import scipy.sparse as sp

from territory.optimize.highs import checked_status, new_highs


@dataclass(frozen=True)
class ChurnBound:
    """``value``: the least weight that must change grid (``inf``: no assignment meets the
    bands); ``exact``: the relaxation was solved to optimality (else a dual bound)."""

    value: float
    exact: bool
    status: str


@dataclass
class AssignmentModel:
    """The assignment MIP of the module docstring as arrays: one binary column per (unit,
    grid) pair (``col_unit``, ``col_grid``), costing ``cost`` (the unit's weight unless the
    grid is its own); rows ``A`` with bounds ``r_lo..r_hi`` (first one row per modelled unit,
    then one per balanced grid and measure); ``units`` the units modelled (the others stay)."""

    units: np.ndarray
    col_unit: np.ndarray
    col_grid: np.ndarray
    cost: np.ndarray
    A: sp.csr_matrix
    r_lo: np.ndarray
    r_hi: np.ndarray

    def highs(self, time_limit: float) -> highspy.Highs:
        """A HiGHS model of it, binaries, time-limited."""
        lp = highspy.HighsLp()
        lp.num_col_, lp.num_row_ = len(self.cost), len(self.r_lo)
        lp.col_cost_ = self.cost
        lp.col_lower_, lp.col_upper_ = np.zeros(len(self.cost)), np.ones(len(self.cost))
        inf = highspy.kHighsInf
        lp.row_lower_ = np.where(np.isfinite(self.r_lo), self.r_lo, -inf)
        lp.row_upper_ = np.where(np.isfinite(self.r_hi), self.r_hi, inf)
        A = self.A.tocsc()
        A.sort_indices()
        lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
        lp.a_matrix_.start_ = A.indptr.astype(np.int32)
        lp.a_matrix_.index_ = A.indices.astype(np.int32)
        lp.a_matrix_.value_ = A.data.astype(float)
        lp.integrality_ = [highspy.HighsVarType.kInteger] * len(self.cost)
        h = new_highs()
        h.setOptionValue("time_limit", float(time_limit))
        h.passModel(lp)
        return h


def assignment_model(W: np.ndarray, labels: np.ndarray, group: np.ndarray, lo: np.ndarray,
                     hi: np.ndarray, weight: np.ndarray, movable: np.ndarray,
                     closed: np.ndarray, allowed: np.ndarray | None = None,
                     original: np.ndarray | None = None) -> AssignmentModel | ChurnBound:
    """The MIP of the module docstring (arguments as :func:`churn_lower_bound`), or the
    bound itself when it needs no solve (no grid out of its band: 0; a grid out of its band
    that nothing can reach: infinite). ``allowed`` (n x k booleans, optional) restricts the
    grids a unit may join (its own always stays allowed); ``original`` (optional) the grids
    that churn is counted from, when ``labels`` are already a step away from them (the
    groups changed are modelled too, in or out of their bands)."""
    W = np.asarray(W, dtype=float)
    labels = np.asarray(labels, dtype=np.int64)
    k, m = lo.shape
    loads = np.zeros((k, m))
    np.add.at(loads, labels, W)
    out = ((loads > hi + 1e-9) | (loads < lo - 1e-9)).any(axis=1)
    active = np.zeros(group.max() + 1 if len(group) else 0, dtype=bool)
    active[group[out]] = True
    if original is not None:  # and the groups already changed, whose churn may fall
        active[group[labels[labels != np.asarray(original)]]] = True
    if not active.any():
        return ChurnBound(0.0, True, "Optimal")
    free = np.asarray(movable, bool) & ~closed[labels] & active[group[labels]]
    units = np.flatnonzero(free)
    grids = np.flatnonzero(active[group] & ~closed)
    # columns: every movable unit x every open grid of its group (that it may join)
    cols = [(np.repeat(us, len(gs)), np.tile(gs, len(us)))
            for b in np.unique(group[labels[units]])
            for us, gs in [(units[group[labels[units]] == b], grids[group[grids] == b])]]
    col_unit = np.concatenate([u for u, _ in cols] or [np.zeros(0, np.int64)])
    col_grid = np.concatenate([g for _, g in cols] or [np.zeros(0, np.int64)])
    if allowed is not None:
        keep = allowed[col_unit, col_grid] | (col_grid == labels[col_unit])
        col_unit, col_grid = col_unit[keep], col_grid[keep]
    if not len(col_unit) or not np.isin(units, col_unit).all():
        # nothing can move where a grid is out of its band, or a unit has nowhere to go
        return ChurnBound(math.inf, True, "Infeasible")
    row_of_unit = np.full(len(labels), -1)
    row_of_unit[units] = np.arange(len(units))
    # balance rows: every active grid (open or closed) x measure, bounds minus what stays
    rows_g = np.flatnonzero(active[group])
    row_of_grid = np.full(k, -1)
    row_of_grid[rows_g] = np.arange(len(rows_g))
    fixed = loads.copy()
    np.add.at(fixed, labels[units], -W[units])
    n_assign = len(units)
    r_lo = np.concatenate([np.ones(n_assign), (lo[rows_g] - fixed[rows_g]).ravel()])
    r_hi = np.concatenate([np.ones(n_assign), (hi[rows_g] - fixed[rows_g]).ravel()])
    n_col = len(col_unit)
    rows = np.concatenate([row_of_unit[col_unit]] + [
        n_assign + row_of_grid[col_grid] * m + t for t in range(m)])
    vals = np.concatenate([np.ones(n_col)] + [W[col_unit, t] for t in range(m)])
    A = sp.csr_matrix((vals, (rows, np.tile(np.arange(n_col), 1 + m))),
                      shape=(len(r_lo), n_col))
    home = labels if original is None else np.asarray(original, dtype=np.int64)
    c = np.where(col_grid == home[col_unit], 0.0, np.asarray(weight, float)[col_unit])
    return AssignmentModel(units, col_unit, col_grid, c, A, r_lo, r_hi)


def churn_lower_bound(W: np.ndarray, labels: np.ndarray, group: np.ndarray, lo: np.ndarray,
                      hi: np.ndarray, weight: np.ndarray, movable: np.ndarray,
                      closed: np.ndarray, time_limit: float = 10.0) -> ChurnBound:
    """The bound of the module docstring for units with loads ``W`` (n x m) in grids
    ``labels``, each grid in group ``group[g]`` with band ``lo[g]..hi[g]`` (±inf: free).
    Units not ``movable`` stay; ``closed`` grids neither gain nor lose a unit. Only the
    groups with a grid out of its band are modelled (the others need no move)."""
    model = assignment_model(W, labels, group, lo, hi, weight, movable, closed)
    if isinstance(model, ChurnBound):
        return model
    h = model.highs(time_limit)
    h.run()
    status = checked_status(h, "churn lower bound MIP")
    if status == "Infeasible":
        return ChurnBound(math.inf, True, status)
    bound = float(h.getInfo().mip_dual_bound)
    bound = max(bound, 0.0) if math.isfinite(bound) else 0.0
    if np.allclose(model.cost, np.round(model.cost)):  # whole weights: a whole optimum
        bound = float(math.ceil(bound - 1e-6))
    return ChurnBound(bound, status == "Optimal", status)
