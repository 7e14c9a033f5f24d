"""The exact model for small instances: a labelling MIP with flow-based contiguity.

Built with PuLP and solved by HiGHS. Every unit j may be a grid's root (its centre)::

    x_ij in {0,1}: unit i belongs to the grid rooted at j;   sum_j x_ij = 1;   x_ij <= x_jj
    sum_j x_jj = k
    lo_m x_jj <= sum_i W_im x_ij <= hi_m x_jj                       (balance)
    f^j_uv >= 0 on both arcs of every edge; for every i != j:
        sum_u f^j_ui - sum_v f^j_iv = x_ij,  f^j_uv <= (n-k+1) x_vj,  f^j_uv <= (n-k+1) x_uj
                                                        (contiguity, Shirabe 2009 style)
    distance:  minimise sum_ij p_i d_ij x_ij          (the root is the grid's centre)
    boundary:  minimise sum_e len_e c_e,  c_e >= x_uj - x_vj and x_vj - x_uj for every j,
               with x_ij = 0 for i < j (a grid's root is its lowest unit: breaks symmetry)

Locked units: units locked to one grid share their root (x_uj = x_vj), units locked to
different grids never do. HiGHS does not always stop at its own time limit on these models,
so the solve runs in a child process that is ended at the deadline: the time limit given to
the partitioner is a promise.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import time

import numpy as np
import pulp

from territory.errors import SolverError
from territory.optimize.highs import checked_status, pulp_solver
from territory.optimize.problem import Problem


def _build(P: Problem, k: int, lo, hi, objective: str, locked: np.ndarray,
           roots: np.ndarray | None):
    n = P.n
    R = list(range(n)) if roots is None else [int(r) for r in roots]
    prob = pulp.LpProblem("partition", pulp.LpMinimize)
    x = {(i, j): prob.add_variable(f"x_{i}_{j}", cat="Binary") for i in range(n) for j in R
         if not (objective == "boundary" and roots is None and i < j)}
    for i in range(n):
        prob += pulp.lpSum(x[i, j] for j in R if (i, j) in x) == 1
    if roots is None:
        prob += pulp.lpSum(x[j, j] for j in R) == k
        for (i, j), v in x.items():
            if i != j:
                prob += v <= x[j, j]
    else:
        for j in R:
            prob += x[j, j] == 1
    for t in range(P.W.shape[1]):
        for j in R:
            load = pulp.lpSum(P.W[i, t] * x[i, j] for i in range(n) if (i, j) in x)
            prob += load >= lo[t] * x[j, j]
            prob += load <= hi[t] * x[j, j]
    arcs = [(u, int(v)) for u in range(n) for v in P.neighbours(u)]
    cap = n - k + 1
    for j in R:
        f = {a: prob.add_variable(f"f_{j}_{a[0]}_{a[1]}", lowBound=0) for a in arcs if a[1] != j}
        inflow: dict[int, list] = {i: [] for i in range(n)}
        outflow: dict[int, list] = {i: [] for i in range(n)}
        for (u, v), var in f.items():
            inflow[v].append(var)
            outflow[u].append(var)
            prob += var <= cap * x.get((v, j), 0)
            prob += var <= cap * x.get((u, j), 0)
        for i in range(n):
            if i != j:
                prob += pulp.lpSum(inflow[i]) - pulp.lpSum(outflow[i]) == x.get((i, j), 0)
    lk = np.flatnonzero(locked >= 0)
    for a_ in range(len(lk)):
        for b_ in range(a_ + 1, len(lk)):
            u, v = int(lk[a_]), int(lk[b_])
            for j in R:
                xu, xv = x.get((u, j), 0), x.get((v, j), 0)
                if locked[u] == locked[v]:
                    prob += xu == xv
                else:
                    prob += xu + xv <= 1
    if objective == "distance":
        d = np.hypot(P.xy[:, None, 0] - P.xy[None, :, 0], P.xy[:, None, 1] - P.xy[None, :, 1])
        prob += pulp.lpSum(P.presence[i] * d[i, j] * v for (i, j), v in x.items())
    else:
        cut = []
        for u in range(n):
            for v in P.neighbours(u):
                v = int(v)
                if u < v:
                    length = float(P.elen[P.indptr[u]:P.indptr[u + 1]][P.neighbours(u) == v][0])
                    c = prob.add_variable(f"c_{u}_{v}", lowBound=0)
                    for j in R:
                        prob += c >= x.get((u, j), 0) - x.get((v, j), 0)
                        prob += c >= x.get((v, j), 0) - x.get((u, j), 0)
                    cut.append(length * c)
        prob += pulp.lpSum(cut)
    return prob, x, R


def _child(P, k, lo, hi, objective, locked, roots, time_limit, start, out) -> None:
    try:
        out.put(_solve_child(P, k, lo, hi, objective, locked, roots, time_limit, start))
    except SolverError as exc:
        out.put({"error": str(exc)})


def _solve_child(P, k, lo, hi, objective, locked, roots, time_limit, start) -> dict:
    prob, x, R = _build(P, k, lo, hi, objective, locked, roots)
    prob.solve(pulp_solver(max(time_limit, 1.0), _warm_start(P, x, R, roots, start)))
    h = prob.solverModel
    info = h.getInfo()
    status = checked_status(h, "exact MIP")
    labels = None
    if pulp.value(prob.objective) is not None and info.primal_solution_status == 2:
        labels = np.full(P.n, -1)
        for (i, j), v in x.items():
            if (v.value() or 0) > 0.5:
                labels[i] = j
    return {
        "labels": labels,
        "status": status,
        "objective": info.objective_function_value if labels is not None else None,
        "bound": info.mip_dual_bound,
    }


def _warm_start(P: Problem, x: dict, R: list, roots, start) -> dict | None:
    """x values of the plan ``start`` (grid index per unit): each grid's root is its given
    centre, else its lowest unit (what the boundary model's symmetry breaking demands)."""
    if start is None:
        return None
    if roots is not None:
        root_of = {j: int(r) for j, r in enumerate(roots)}
    else:
        root_of = {}
        for i in range(P.n):
            root_of.setdefault(int(start[i]), i)
    values = {}
    for (i, j), var in x.items():
        values[var] = 1.0 if root_of.get(int(start[i])) == j else 0.0
    return values if all(root_of[int(start[i])] in R for i in range(P.n)) else None


def solve_exact(P: Problem, k: int, lo: np.ndarray, hi: np.ndarray, *, objective: str,
                locked: np.ndarray, roots: np.ndarray | None, deadline: float,
                start: np.ndarray | None = None) -> dict:
    """Solve the MIP until ``deadline`` (monotonic seconds); always returns by then.
    ``start`` (a balanced contiguous plan, grid index per unit) warm-starts it.

    Returns ``labels`` (root position per unit, or None), ``status`` (HiGHS model status or
    "time limit (process ended)"), ``objective`` and ``bound`` (the MIP dual bound).
    """
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    budget = deadline - time.monotonic()
    proc = ctx.Process(
        target=_child,
        args=(P, k, lo, hi, objective, locked, roots, budget - 1.0, start, out),
        daemon=True,
    )
    proc.start()
    try:
        res = out.get(timeout=max(budget, 0.1))
    except queue.Empty:
        res = {"labels": None, "status": "time limit (process ended)", "objective": None,
               "bound": None}
    finally:
        if proc.is_alive():
            proc.terminate()
        proc.join(timeout=2)
    if "error" in res:
        raise SolverError(res["error"])
    return res
