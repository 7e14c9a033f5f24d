"""Rebalance a plan with least churn: meet the tolerances moving at most a budget.

Each customer who changes grid costs a relationship, so a redraw moves as little as it has
to. :func:`rebalance` solves one mixed-integer model over the main grids of every branch
(PuLP + HiGHS, the optimizer's solver policy), whose balance rows are the optimizer's
:class:`~territory.optimize.balance.BalanceModel` bounds and whose disruption budget is a
row of the same model::

    x_ig in {0,1}   unit i ends in grid g   (g: its grid or a grid within `depth` hops, same
                                             branch; locked units and exempt grids fixed)
    sum_g x_ig = 1
    L_gm = F_gm + sum_i W_im x_ig            (F: the load of the units that cannot move)
    lo_gm - e_gm s_m <= L_gm <= hi_gm + e_gm s_m,   0 <= e_gm <= z   (s_m: the mean)
    sum_i B_i (1 - x_i,cur(i)) <= budget    (B: the budget measure: customers, households,
                                             or 1 per unit)
    x_ig <= sum_{j ~ i} x_jg  (+1 if a fixed neighbour is in g)   (a unit joins or stays in
                                             a grid only next to a unit of it)

Solved lexicographically: (1) minimise the worst excess z over the bands (0: balanced);
(2) with z at its optimum, minimise the moved budget plus a small cost per moved unit
(fewest moves first) plus, smaller still, the distance of moved units to their new grid's
centre (compactness second). Contiguity is checked on the result; a grid that fell into
pieces adds a cut forbidding that combination of moves and the model is solved again.

``smallest budget``: the same model with z = 0 minimising the moved budget.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import networkx as nx
import numpy as np
import pandas as pd
import pulp

from territory.edits import EditRefused, _adjacent_sub, locked, tolerances
from territory.errors import InvalidInputError
from territory.graph import contiguous_grids
from territory.metrics import load_table
from territory.optimize.balance import BalanceModel
from territory.optimize.highs import pulp_solver
from territory.plan import Plan

log = logging.getLogger(__name__)

BUDGET_MEASURES = ("customers", "households", "subscribers", "units")
MAX_CUTS = 25


@dataclass(frozen=True)
class Budget:
    """At most ``value`` of ``measure`` may change grid (``units``: a count of units)."""

    measure: str
    value: float

    @classmethod
    def parse(cls, text: str, plan: Plan) -> Budget:
        """``"customers=3%"``, ``"customers=120"``, ``"units=10"`` against ``plan``."""
        name, sep, val = text.partition("=")
        if not sep or name not in BUDGET_MEASURES:
            raise InvalidInputError(f"--budget {text!r}: write MEASURE=VALUE[%] with MEASURE one "
                                    f"of {list(BUDGET_MEASURES)}, e.g. customers=3%")
        if name != "units" and name not in plan.units:
            raise InvalidInputError(f"--budget {text!r}: the plan's units have no {name!r}")
        try:
            x = float(val.rstrip("%"))
        except ValueError:
            raise InvalidInputError(f"--budget {text!r}: the value must be a number, "
                                    "optionally with %") from None
        if x < 0:
            raise InvalidInputError(f"--budget {text!r}: a budget cannot be negative")
        if val.endswith("%"):
            x = x / 100 * float(_weights(plan, name).sum())
        return cls(name, x)


def _weights(plan: Plan, measure: str) -> pd.Series:
    if measure == "units":
        return pd.Series(1.0, index=plan.units.index)
    return plan.units[measure].fillna(0).astype(float)


@dataclass
class Result:
    """What a rebalance reached: the new plan (or None), and the figures to report."""

    plan: Plan | None
    feasible: bool
    worst_excess: float
    moved_units: int
    moved_budget: float
    max_deviation: dict[str, float] = field(default_factory=dict)
    smallest_budget: float | None = None
    message: str = ""


class _Model:
    """The rebalance model over one plan (see module docstring)."""

    def __init__(self, plan: Plan, graph: nx.Graph, budget_measure: str, tol: dict,
                 depth: int) -> None:
        u = plan.units
        self.plan, self.graph = plan, graph
        self.measures = list(tol)
        self.cur = u["main_grid_id"].astype(str)
        exempt = set(plan.params.get("balance_exempt_grids", []))
        fixed = locked(plan) | self.cur.isin(exempt)
        branch = u["branch_id"].astype(str)
        # candidates: unlocked units within `depth` hops of another grid of their branch
        near: dict = {i: set() for i in u.index}
        frontier = {i: {self.cur[j] for j in graph.adj[i] if branch[j] == branch[i]}
                    for i in u.index}
        for i in u.index:
            near[i] |= frontier[i]
        for _ in range(depth - 1):
            frontier = {i: set().union(*(near[j] for j in graph.adj[i]
                                         if branch[j] == branch[i])) | near[i]
                        for i in u.index}
            near = frontier
        self.targets = {i: sorted(g - exempt | {self.cur[i]})
                        for i, g in near.items() if not fixed[i] and len(g - {self.cur[i]})}
        self.B = _weights(plan, budget_measure)
        self.W = u[self.measures].fillna(0).astype(float)
        grids = sorted(self.cur.unique())
        self.grids = grids
        loads = self.W.groupby(self.cur).sum().reindex(grids)
        mov = list(self.targets)
        self.F = loads - self.W.loc[mov].groupby(self.cur[mov]).sum().reindex(grids).fillna(0)
        # bounds per branch: the optimizer's balance model over that branch's grids
        lo = pd.DataFrame(-np.inf, index=grids, columns=self.measures)
        hi = pd.DataFrame(np.inf, index=grids, columns=self.measures)
        self.scale = pd.DataFrame(1.0, index=grids, columns=self.measures)
        gb = u.groupby("main_grid_id")["branch_id"].first().astype(str).reindex(grids)
        for _, gs in gb.groupby(gb).groups.items():
            bal = [g for g in gs if g not in exempt]
            model = BalanceModel.for_units(loads.loc[bal].to_numpy(), tol, len(bal))
            blo, bhi = model.bounds()
            lo.loc[bal], hi.loc[bal] = blo, bhi
            self.scale.loc[bal] = model.scale
        self.lo, self.hi = lo, hi
        self.cuts: list[list[tuple]] = []
        xy = u.geometry.representative_point()
        self.xy = pd.DataFrame({"x": xy.x, "y": xy.y})
        centre = self.xy.groupby(self.cur).mean()
        span = float(np.hypot(*(self.xy.max() - self.xy.min()))) or 1.0
        self.dist = {(i, g): float(np.hypot(*(self.xy.loc[i] - centre.loc[g]))) / span
                     for i, ts in self.targets.items() for g in ts}

    def solve(self, *, budget: float | None, z_max: float | None, stage: str,
              time_limit: float) -> tuple[pd.Series | None, float]:
        """Labels (main grid per unit) and the objective of one stage, or (None, inf)."""
        prob = pulp.LpProblem("rebalance", pulp.LpMinimize)
        x = {(i, g): prob.add_variable(f"x_{n}_{k}", cat="Binary")
             for n, (i, ts) in enumerate(self.targets.items()) for k, g in enumerate(ts)}
        z = prob.add_variable("z", lowBound=0)
        for i, ts in self.targets.items():
            prob += pulp.lpSum(x[i, g] for g in ts) == 1
            for g in ts:
                fixed_nb = any(j not in self.targets and self.cur[j] == g
                               for j in self.graph.adj[i])
                if not fixed_nb:
                    prob += x[i, g] <= pulp.lpSum(x[j, g] for j in self.graph.adj[i]
                                                  if (j, g) in x)
        by_grid: dict = {g: [] for g in self.grids}
        for (i, g), v in x.items():
            by_grid[g].append((i, v))
        for g in self.grids:
            for m in self.measures:
                load = self.F.at[g, m] + pulp.lpSum(self.W.at[i, m] * v for i, v in by_grid[g])
                s = self.scale.at[g, m]
                if np.isfinite(self.hi.at[g, m]):
                    e = prob.add_variable(f"e_{self.grids.index(g)}_{m}", lowBound=0)
                    prob += load <= self.hi.at[g, m] + e * s
                    prob += load >= self.lo.at[g, m] - e * s
                    prob += e <= z
        moved = pulp.lpSum(self.B[i] * (1 - x[i, self.cur[i]]) for i in self.targets)
        if budget is not None:
            prob += moved <= budget + 1e-6
        if z_max is not None:
            prob += z <= z_max + 1e-7
        for cut in self.cuts:
            prob += pulp.lpSum(x[k] for k in cut) <= len(cut) - 1
        if stage == "balance":
            prob += z
        else:
            unit = max(float(self.B[list(self.targets)].mean()) if self.targets else 1.0, 1e-3)
            delta = 1e-3 * unit
            eps = delta / (len(self.dist) + 1)
            prob += moved + pulp.lpSum(delta * (1 - x[i, self.cur[i]]) for i in self.targets) \
                + pulp.lpSum(eps * self.dist[k] * v for k, v in x.items())
        prob.solve(pulp_solver(time_limit))
        # a solution found by the time limit counts (it is within the budget all the same)
        if prob.sol_status not in (pulp.LpSolutionOptimal, pulp.LpSolutionIntegerFeasible):
            return None, float("inf")
        labels = self.cur.copy()
        for (i, g), v in x.items():
            if (v.value() or 0) > 0.5:
                labels[i] = g
        return labels, float(pulp.value(prob.objective) or 0.0)

    def broken(self, labels: pd.Series) -> list[list[tuple]]:
        """Per main grid that fell into pieces, or whose sub-grid did, the moves touching
        it (a cut forbids that combination)."""
        changed = labels.index[labels != self.cur]
        try:
            units = _relabel(self.plan.units, self.graph, labels)
        except EditRefused:  # a moved piece floating free of its new grid: forbid it all
            return [[(i, labels[i]) for i in changed]]
        broken: set = set()
        for col in ("main_grid_id", "sub_grid_id"):
            ok = contiguous_grids(self.graph, units[col])
            was = contiguous_grids(self.graph, self.plan.units[col])
            bad = {g for g, fine in ok.items() if not fine and was.get(g, True)}
            broken |= set(units.loc[units[col].isin(bad), "main_grid_id"])
        out = [[(i, labels[i]) for i in changed if g in (labels[i], self.cur[i])]
               for g in sorted(broken)]
        return [c for c in out if c]

    def excess(self, labels: pd.Series) -> float:
        """The worst relative excess over the bands of a labelling (0: balanced)."""
        loads = self.W.groupby(labels).sum().reindex(self.grids).fillna(0)
        over = np.maximum(loads - self.hi, 0) + np.maximum(self.lo - loads, 0)
        return float((over / self.scale).to_numpy().max())

    def lexicographic(self, budget: float | None, *, balanced: bool, time_limit: float
                      ) -> tuple[pd.Series | None, float]:
        """Stage 1 (worst excess, or 0 when ``balanced``) then stage 2 (fewest moves),
        cutting off disconnected results; ``time_limit`` bounds the whole call. Out of time
        before a connected result, the best connected plan known is the one in force."""
        deadline = time.monotonic() + time_limit
        for _ in range(MAX_CUTS):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            if balanced:
                z = 0.0
            else:
                lab, z = self.solve(budget=budget, z_max=None, stage="balance",
                                    time_limit=max(left / 2, 1.0))
                if lab is None:
                    break
            left = deadline - time.monotonic()
            lab, _ = self.solve(budget=budget, z_max=z, stage="moves",
                                time_limit=max(left, 1.0))
            if lab is None:
                break
            cuts = self.broken(lab)
            if not cuts:
                return lab, z
            self.cuts += cuts
        log.warning("rebalance: no connected plan better than the current one found in time "
                    "(%d contiguity cuts)", len(self.cuts))
        if balanced:
            return None, float("inf")
        return self.cur.copy(), self.excess(self.cur)


def rebalance(plan: Plan, graph: nx.Graph, budget: Budget, *,
              tolerance: float | dict[str, float] | None = None, depth: int = 2,
              time_limit: float = 30.0, author: str = "", message: str = "") -> Result:
    """Meet the balance tolerances of the main grids moving at most ``budget``.

    Locked units (``locked`` column) and balance-exempt grids never change grid; moved
    units join the sub-grid of their new main grid they share most boundary with.
    ``time_limit`` bounds the search within the budget, and again the search for the
    smallest budget when the given one falls short. When the
    budget cannot reach the tolerances, the result is not feasible: it carries the plan the
    budget reaches (the least excess), and ``smallest_budget``, the least budget that
    reaches them (None when no plan moving units within ``depth`` hops of a grid line does).
    """
    tol = tolerances(plan)
    if isinstance(tolerance, dict):
        tol.update(tolerance)
    elif tolerance is not None:
        tol = {m: float(tolerance) for m in tol}
    model = _Model(plan, graph, budget.measure, tol, depth)
    labels, z = model.lexicographic(budget.value, balanced=False, time_limit=time_limit)
    assert labels is not None  # within a budget, the plan in force is always a fallback
    feasible = z <= 1e-6
    smallest = None
    if not feasible:
        best, _ = model.lexicographic(None, balanced=True, time_limit=time_limit)
        if best is not None:
            smallest = float(model.B[best.index[best != model.cur]].sum())
    new = _apply(plan, graph, labels, tol, author=author, message=message or (
        f"rebalance within {budget.measure}={budget.value:g}"))
    moved = labels.index[labels != model.cur]
    res = Result(new, feasible, z, len(moved), float(model.B[moved].sum()),
                 _max_dev(new), smallest)
    if not feasible:
        res.message = (
            f"the tolerances cannot be met moving at most {budget.value:g} {budget.measure}: "
            f"the best plan within it stays {z:.2%} of the mean outside its band; "
            + (f"the smallest budget that meets them is {smallest:g} {budget.measure}"
               if smallest is not None else
               f"no plan moving units within {depth} hops of a grid line meets them: "
               "raise --depth or re-plan"))
    return res


def sweep(plan: Plan, graph: nx.Graph, measure: str, budgets: list[float], *,
          tolerance: float | None = None, depth: int = 2, time_limit: float = 30.0
          ) -> pd.DataFrame:
    """The trade-off curve: for each budget, the worst excess and deviation it reaches."""
    rows = []
    for b in budgets:
        r = rebalance(plan, graph, Budget(measure, b), tolerance=tolerance, depth=depth,
                      time_limit=time_limit)
        rows.append({"budget": b, "moved": r.moved_budget, "units_moved": r.moved_units,
                     "worst_excess": r.worst_excess,
                     **{f"max_dev_{m}": v for m, v in r.max_deviation.items()}})
    return pd.DataFrame(rows)


def _max_dev(plan: Plan) -> dict[str, float]:
    t = load_table(plan, "main_grid")
    t = t[~t["balance_exempt"]]
    return {m: float(t[f"dev_{m}"].abs().max()) for m in plan.measures}


def _relabel(units: pd.DataFrame, graph: nx.Graph, labels: pd.Series) -> pd.DataFrame:
    """``units`` with the new main grids; each moved piece joins the sub-grid of its new
    main grid it shares most boundary with."""
    units = units.copy()
    moved = labels.index[labels != units["main_grid_id"].astype(str)]
    units.loc[moved, "main_grid_id"] = labels[moved]
    for main, ids in units.loc[moved].groupby("main_grid_id").groups.items():
        for piece in nx.connected_components(graph.subgraph(ids)):
            units.loc[list(piece), "sub_grid_id"] = _adjacent_sub(units, graph, list(piece),
                                                                  main)
    return units


def _apply(plan: Plan, graph: nx.Graph, labels: pd.Series, tol: dict, *, author: str,
           message: str) -> Plan:
    return plan.derive(_relabel(plan.units, graph, labels), author=author, message=message,
                       measures=tol)
