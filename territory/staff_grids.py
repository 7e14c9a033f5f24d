"""Joint planning: grid counts that give every main grid the city's workload per staff.

When sub-grids follow the staff (``territory plan --staff-hours H``), a sub-grid is one team
member's beat, so a main grid of workload ``W_g`` cut into ``n_g`` sub-grids has ``W_g / n_g``
hours of workload per staff member, and the city ``W / N`` (``N = sum n_g``). Rounding each
main grid's count on its own (``round(its load / one person's load)``) can leave a main grid
of 2.5 people's work at 2 or 3 people: 25 % or 17 % off the city's figure. Two small integer
programmes (PuLP + HiGHS) keep every main grid within ``±tolerance`` of the city instead:

* **before the main grids are drawn** (:func:`branch_counts`), where the number of main
  grids per branch is ours to choose (``n_main`` for the city, or ``main_size``), each
  branch gets ``k_b`` main grids of ``n_b`` sub-grids such that its main grids, balanced to
  the branch mean, sit near the city's workload per staff: binaries ``x_bkn`` (one option
  per branch), ``K_b = sum k n x_bkn``, ``N = sum_b K_b``, and for a band ``eps``::

      (W_b / W) N <= (1 + eps) K_b,    (W_b / W) N >= (1 - eps) K_b

  (linear: ``N`` is a sum of the binaries), minimising the change of main-grid count and
  the staff off one person's month, ``sum |k - k0_b| + |k n - S_b|`` (``S_b`` = the
  branch's sizing load over one beat), with ``N`` in the same range as below. The city
  total of main grids stays as asked.
* **after the main grids are drawn** (:func:`sub_counts`), each main grid's whole number of
  sub-grids ``n_g >= 1``, ``N = sum n_g``::

      (W_g / W) N <= (1 + tolerance) n_g,    (W_g / W) N >= (1 - tolerance) n_g

  and the city's workload per staff within ``±tolerance`` of one person's month
  (``N`` within ``sum S_g / (1 ± tolerance)``), minimising ``sum |n_g - S_g|``: each
  sub-grid as close to one person's month as the tolerance allows. No such counts:
  :class:`InfeasibleError` with every main grid's workload and the people it would need.

Main grids that are exempt from balance (an island that is its own grid) keep one sub-grid
and stay out of the city's figure, as they stay out of every balance mean.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pulp

from territory.errors import InfeasibleError
from territory.optimize.highs import pulp_solver

#: Seconds per HiGHS solve (1 000 main grids' counts take about 3 CPU-seconds; see
#: bench/staff_grids.py).
TIME_LIMIT_S = 20.0
#: Main grids a refusal lists (those furthest from a whole number of people's months).
MAX_LISTED = 10
#: The main-grid counts tried per branch: the asked count ± this share (at least ± 2).
COUNT_SPAN = 0.25


def _solved(prob: pulp.LpProblem, start: dict | None = None) -> bool:
    """Solve (from ``start`` when given); whether a solution was found (a proof of none is
    ``prob.status`` Infeasible)."""
    prob.solve(pulp_solver(TIME_LIMIT_S, start))
    return prob.sol_status in (pulp.LpSolutionOptimal, pulp.LpSolutionIntegerFeasible)


def per_staff_deviation(workload: np.ndarray, n_sub: np.ndarray) -> np.ndarray:
    """Each main grid's workload per staff relative to the city's, minus 1."""
    w, n = np.asarray(workload, float), np.asarray(n_sub, float)
    return (w / n) / (w.sum() / n.sum()) - 1


def sub_counts(workload: pd.Series, beats: pd.Series, max_sub: pd.Series,
               tolerance: float) -> pd.Series:
    """Sub-grids per main grid (index of ``workload``) so that every main grid's workload per
    staff is within ``±tolerance`` of the city's, each count as close to ``beats`` (the
    grid's load in people's months) as that allows; at most ``max_sub`` (its units).

    Raises :class:`InfeasibleError` naming the grids, their workload and people's months.
    """
    W = workload.astype(float)
    total = float(W.sum())
    if len(W) == 0 or total <= 0:
        return pd.Series(1, index=W.index, dtype=int)
    share = W / total
    t = beats.reindex(W.index).astype(float).clip(lower=0)
    tol = tolerance * (1 - 1e-6)  # a margin the solver's feasibility tolerance respects
    lo, hi = staff_range(float(t.sum()), tolerance)
    # the bounds the constraints imply for N in lo..hi: a grid has one or two counts left
    s_ = share.to_numpy()
    lb = np.maximum(1, np.ceil(s_ * lo / (1 + tol) - 1e-9)).astype(int)
    ub = np.minimum(max_sub.reindex(W.index).to_numpy(int),
                    np.floor(s_ * hi / (1 - tol) + 1e-9)).astype(int)
    prob = pulp.LpProblem("sub_counts", pulp.LpMinimize)
    n = [prob.add_variable(f"n_{i}", lowBound=int(a), upBound=int(max(a, b)), cat="Integer")
         for i, (a, b) in enumerate(zip(lb, ub, strict=True))]
    d = [prob.add_variable(f"d_{i}", lowBound=0) for i in range(len(n))]
    N = pulp.lpSum(n)
    for i, (s, ti) in enumerate(zip(share.to_numpy(), t.to_numpy(), strict=True)):
        prob += s * N <= (1 + tol) * n[i]
        prob += s * N >= (1 - tol) * n[i]
        prob += d[i] >= n[i] - ti
        prob += d[i] >= ti - n[i]
    prob += N >= lo
    prob += N <= hi
    prob += pulp.lpSum(d)
    rounded = np.clip(np.round(t.to_numpy()), lb, np.maximum(lb, ub))
    start = {v: float(r) for v, r in zip(n, rounded, strict=True)} if (ub >= lb).all() \
        else None
    if (ub < lb).any() or not _solved(prob, start):
        people = W / (total / max(float(t.sum()), 1e-9))
        # the grids furthest from a whole team first (a city has hundreds)
        off = (people - people.round()).abs() / people.round().clip(lower=1)
        worst = off.sort_values(ascending=False, kind="stable").index[:MAX_LISTED]
        rows = "; ".join(f"{g}: {W[g]:,.0f} h, {people[g]:.2f} people's months"
                         for g in worst)
        if len(W) > MAX_LISTED:
            rows += f"; … and {len(W) - MAX_LISTED} more"
        proven = ("" if (ub < lb).any() or prob.status == pulp.LpStatusInfeasible else
                  f" (not proven: HiGHS found none within {TIME_LIMIT_S:g} s)")
        raise InfeasibleError(
            f"no whole number of sub-grids per main grid{proven} keeps every main grid's "
            f"workload per staff within ±{tolerance:.0%} of the city's with {lo}..{hi} people "
            f"in all (the city's {total:,.0f} h are {t.sum():.1f} people's months): a main grid "
            f"needs a workload near a whole number of people's months. Main grids "
            f"furthest from one: {rows}. "
            f"Fix: fewer, larger main grids (at most {hi}: each needs a person), fewer "
            "staff hours (more people per main grid), a larger `staff_tolerance`, or a "
            "tighter workload balance of the main grids")
    return pd.Series([round(v.value()) for v in n], index=W.index, dtype=int)


def staff_range(people: float, tolerance: float) -> tuple[int, int]:
    """The city's whole headcount (sub-grids) whose load per person is within ``±tolerance``
    of one person's month, ``people`` being the city's load in people's months (the sizing
    load over one beat); the nearest whole number when no whole number is that close."""
    lo, hi = math.ceil(people / (1 + tolerance)), math.floor(people / (1 - tolerance))
    lo = max(lo, 1)
    return (lo, hi) if lo <= hi else (max(1, round(people)),) * 2


def count_range(asked: int, most: int | None = None) -> range:
    """The main-grid counts :func:`branch_counts` tries for a branch asked ``asked``."""
    span = max(2, math.ceil(COUNT_SPAN * asked))
    top = asked + span if most is None else min(most, asked + span)
    return range(max(1, asked - span), max(top, 1) + 1)


def branch_counts(workload: pd.Series, beats: pd.Series, asked: pd.Series,
                  max_main: pd.Series, *, tolerance: float, main_tolerance: float,
                  city_total: int | None) -> pd.Series:
    """Main grids per branch (index of ``asked``) whose balanced main grids can each be
    given a whole number of sub-grids within ``tolerance`` of the city's workload per staff.

    ``main_tolerance``: how far a main grid's workload may stray from its branch's mean
    (the plan's workload balance); the branch is then held within the rest of the band.
    ``city_total``: keep the city's number of main grids (``n_main`` given); ``max_main``:
    the most main grids each branch's units allow. Returns ``asked`` when no choice fits
    (the counts after the draw then decide, or refuse).
    """
    W = workload.reindex(asked.index).astype(float)
    total = float(W.sum())
    if total <= 0:
        return asked
    S = beats.reindex(asked.index).astype(float).clip(lower=0)
    keys = [(b, k, n) for b, k0 in asked.items()
            for k in count_range(int(k0), int(max_main[b]))
            for n in range(max(1, math.floor(S[b] / k / 2)), math.ceil(S[b] / k * 1.5) + 2)]
    room = (1 + tolerance) / (1 + main_tolerance) - 1 if main_tolerance < tolerance else 0.0
    for eps in (room / 2, room) if room > 0 else (tolerance / 4, tolerance / 2):
        prob = pulp.LpProblem("branch_counts", pulp.LpMinimize)
        options = {key: prob.add_variable(f"x_{j}", cat="Binary") for j, key in enumerate(keys)}
        N = pulp.lpSum(k * n * x for (_, k, n), x in options.items())
        for b in asked.index:
            mine = [(k, n, x) for (bb, k, n), x in options.items() if bb == b]
            prob += pulp.lpSum(x for *_, x in mine) == 1
            K = pulp.lpSum(k * n * x for k, n, x in mine)
            prob += (W[b] / total) * N <= (1 + eps) * K
            prob += (W[b] / total) * N >= (1 - eps) * K
        lo, hi = staff_range(float(S.sum()), tolerance)
        prob += N >= lo
        prob += N <= hi
        if city_total is not None:
            prob += pulp.lpSum(k * x for (_, k, _), x in options.items()) == city_total
        prob += pulp.lpSum((abs(k - int(asked[b])) + abs(k * n - S[b])) * x
                           for (b, k, n), x in options.items())
        if _solved(prob):
            chosen = {b: k for (b, k, _), x in options.items() if (x.value() or 0) > 0.5}
            return pd.Series(chosen).reindex(asked.index).astype(int)
    return asked


def staff_balance(workload: pd.Series, n_sub: pd.Series, tolerance: float) -> dict:
    """The plan's record of the per-staff balance (``params["staff_balance"]``)."""
    dev = per_staff_deviation(workload.to_numpy(), n_sub.reindex(workload.index).to_numpy())
    return {"tolerance": tolerance, "main_grids": len(workload),
            "sub_grids": int(n_sub.reindex(workload.index).sum()),
            "city_workload_per_staff": float(workload.sum() / n_sub.reindex(
                workload.index).sum()) if len(workload) else 0.0,
            "max_abs_deviation": float(np.abs(dev).max()) if len(dev) else 0.0}

