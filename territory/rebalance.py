"""Rebalance a plan with least churn: meet the tolerances moving at most a budget.

Each customer who changes grid costs a relationship, so a redraw moves as little as it has
to. :func:`rebalance` runs the optimizer's boundary-move local search
(:class:`~territory.optimize.search.LocalSearch`) from the plan in force, over the main
grids of every branch at once, then over the sub-grids of the main grids it touched. Both
searches judge balance with the optimizer's one :class:`~territory.optimize.balance.
BalanceModel` and keep its composable move constraints (:mod:`territory.optimize.
constraints`):

* :class:`~territory.optimize.constraints.Held` — locked units, the units of a
  must-stay-together key-account group (held whole) and balance-exempt or wholly locked
  grids never change;
* :class:`~territory.optimize.constraints.SubGrids` — a unit leaves a main grid only if its
  sub-grid stays one piece, and joins the sub-grid of its new main grid it shares most
  boundary with, so nesting and contiguity hold at both levels after every move;
* :class:`~territory.optimize.constraints.DisruptionBudget` — a hard limit on the measure
  (customers, households, subscribers or units) whose sub-grid changes, shared by the two
  levels, and the secondary objective: a move's score is its balance gain minus its share
  of a grid's customers, so moves that only polish balance are not made, and
  :meth:`~territory.optimize.search.LocalSearch.settle` takes back the moves that the
  balance reached no longer needs (fewest moves first; the compactness of the boundary is a
  smaller term still).

Beside this move-by-move search, which sees one move ahead and so moves what lies next to
the line rather than what is cheapest to move, a second run is guided by least-churn MIPs
(:mod:`territory.optimize.churn_guide`: the bound's MIP below, near the grid lines, with
rows and cuts that keep every grid and sub-grid one piece); the search moves to their
answer when the end state keeps every rule, balances the rest its own way, and the plan
that moves fewer customers across main-grid lines is kept.

Loads are divided by their branch's mean (main grids) or their main grid's mean (sub-grids)
so that one model with mean 1 judges every branch at once, and edges between branches (main
grids) or main grids (sub-grids) are left out so no move crosses them.

When the budget cannot reach the tolerances, the search is run again without a limit: the
most it spent on its way is a budget that works (``smallest_budget``, the least found), and
:func:`churn_bound` gives the least any plan needs (proven by a MIP over the loads that
drops contiguity: :mod:`territory.optimize.churn_bound`; when even that MIP has no solution,
the message says no plan with these grids can meet the tolerances); ``churn_bound(...,
contiguous=True)`` gives a higher one for plans whose grids are each one piece.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import networkx as nx
import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from territory.edits import locked, tolerances
from territory.errors import InvalidInputError
from territory.metrics import load_table
from territory.optimize.balance import BalanceModel
from territory.optimize.churn_bound import ChurnBound, churn_lower_bound
from territory.optimize.churn_guide import Guide, contiguous_churn_bound, least_churn_labels
from territory.optimize.constraints import DisruptionBudget, Held, SubGrids
from territory.optimize.problem import Problem
from territory.optimize.search import LocalSearch, grid_components
from territory.plan import Plan

log = logging.getLogger(__name__)

BUDGET_MEASURES = ("customers", "households", "subscribers", "units")


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
    """What a rebalance reached: the new plan, and the figures to report.

    ``moved_units``/``moved_budget`` count the units whose sub-grid changed (a main-grid move
    changes it too). ``feasible``: every main grid within its band; ``sub_deviation``: the
    worst sub-grid deviation inside the main grids the rebalance touched, per measure.
    """

    plan: Plan | None
    feasible: bool
    worst_excess: float
    moved_units: int
    moved_budget: float
    max_deviation: dict[str, float] = field(default_factory=dict)
    smallest_budget: float | None = None
    message: str = ""
    sub_deviation: dict[str, float] = field(default_factory=dict)
    lower_bound: float = 0.0
    #: a higher bound for plans whose grids are each one piece (contiguity cuts, in what is
    #: left of the bound's time; ``lower_bound`` when no time was left)
    lower_bound_contiguous: float = 0.0


class _Search:
    """The arrays of one plan for both levels (positions follow ``plan.units``)."""

    def __init__(self, plan: Plan, graph: nx.Graph, tol: dict[str, float],
                 weight: pd.Series, together: list[list] | None, seed: int) -> None:
        u = plan.units
        self.plan, self.tol, self.seed = plan, tol, seed
        self.measures = list(tol)
        self.W = u[self.measures].fillna(0).to_numpy(dtype=float)
        self.B = weight.reindex(u.index).fillna(0).to_numpy(dtype=float)
        self.mains = np.array(sorted(u["main_grid_id"].astype(str).unique()), dtype=object)
        self.subs = np.array(sorted(u["sub_grid_id"].astype(str).unique()), dtype=object)
        self.main = np.searchsorted(self.mains, u["main_grid_id"].astype(str).to_numpy())
        self.sub = np.searchsorted(self.subs, u["sub_grid_id"].astype(str).to_numpy())
        self.sub_main = np.zeros(len(self.subs), dtype=np.int64)
        self.sub_main[self.sub] = self.main
        self.branch = pd.factorize(u["branch_id"].astype(str))[0]
        exempt = set(plan.params.get("balance_exempt_grids", []))
        lock = locked(plan).to_numpy()
        grouped = np.zeros(len(u), dtype=bool)
        pos = pd.Series(np.arange(len(u)), index=u.index)
        for grp in together or []:
            members = pos.reindex(list(grp)).dropna().to_numpy(dtype=np.int64)
            if len(members) > 1:
                grouped[members] = True
        self.fixed = lock | grouped
        all_locked = pd.Series(lock).groupby(self.main).all().reindex(
            range(len(self.mains)), fill_value=False).to_numpy()
        self.closed_main = np.isin(self.mains, list(exempt)) | all_locked
        self.fixed |= self.closed_main[self.main]
        e = nx.to_pandas_edgelist(graph)
        if "length_m" not in e:
            e["length_m"] = 1.0
        e = e[e["source"] != e["target"]]
        self.er = pos.reindex(e["source"]).to_numpy()
        self.ec = pos.reindex(e["target"]).to_numpy()
        keep = ~(np.isnan(self.er) | np.isnan(self.ec))
        self.er, self.ec = self.er[keep].astype(np.int64), self.ec[keep].astype(np.int64)
        self.elen = np.maximum(e["length_m"].fillna(1.0).to_numpy(dtype=float)[keep], 1e-6)
        bridge = e["bridge"].fillna(False).to_numpy(dtype=bool) if "bridge" in e else \
            np.zeros(len(e), dtype=bool)
        self.rook = ~bridge[keep]

    def problem(self, W: np.ndarray, group: np.ndarray) -> Problem:
        """The units with edges only inside one ``group`` (branch, or main grid)."""
        same = group[self.er] == group[self.ec]
        r = np.concatenate([self.er[same], self.ec[same]])
        c = np.concatenate([self.ec[same], self.er[same]])

        n = len(W)
        A = sp.csr_matrix((np.concatenate([self.elen[same]] * 2), (r, c)), shape=(n, n))
        A.sum_duplicates()
        A.sort_indices()
        return Problem(ids=np.arange(n), W=W, measures=self.measures, indptr=A.indptr,
                       indices=A.indices, elen=A.data, xy=None, presence=np.ones(n))

    def normalised(self, labels: np.ndarray, parent: np.ndarray, n_grids: int,
                   exempt: np.ndarray) -> tuple[np.ndarray, BalanceModel]:
        """Loads divided by the mean of the balanced grids of each unit's ``parent`` group
        (labels -> parent per grid), and the model with mean 1 judging every grid at once."""
        gp = np.full(n_grids, -1)
        gp[labels] = parent
        loads = np.zeros((n_grids, len(self.measures)))
        np.add.at(loads, labels, self.W)
        frame = pd.DataFrame(loads).assign(p=gp)[~exempt]
        mean = frame.groupby("p").mean()
        counts = frame.groupby("p").size()
        per = mean.reindex(parent).to_numpy()
        per = np.where(np.isfinite(per) & (per > 0), per, 1.0)
        # a parent with one balanced grid has nothing to balance: its grids are free
        lone = np.isin(gp, counts.index[counts <= 1]) | exempt
        model = BalanceModel(tuple(self.measures), np.array(list(self.tol.values())),
                             np.ones(len(self.measures)), n_grids,
                             frozenset(np.flatnonzero(lone).tolist()))
        return self.W / per, model

    def main_problem(self, depth: int | None) -> tuple[Problem, BalanceModel, np.ndarray]:
        """The main grids' problem (loads divided by their branch's mean), its model and
        the units that stay (``depth``: only units within that many hops of a grid line
        may move)."""
        Wn, model = self.normalised(self.main, self.branch, len(self.mains), self.closed_main)
        P = self.problem(Wn, self.branch)
        fixed = self.fixed.copy()
        if depth is not None:
            fixed |= ~_near_lines(P, self.main, depth)
        return P, model, fixed

    def main_level(self, limit: float, deadline: float, depth: int | None,
                   weights: tuple[float, ...], guide: float = 0.0
                   ) -> tuple[LocalSearch, DisruptionBudget, SubGrids]:
        """The main grids' search; with ``guide`` seconds, it first moves to the
        least-churn assignments of :meth:`guide` (each from where the last move ended: until
        balanced, then while a guide around the new lines is cheaper and lands balanced and
        whole), then balances what is left its own way and takes back what is not needed.

        A guide is taken all at once when the end state keeps every rule (no grid or
        sub-grid split or emptied, the budget held: ``valid``; the held units never move,
        as the guide keeps them), else move by move as far as the rules allow."""
        P, model, fixed = self.main_problem(depth)
        Wn = P.W
        subs = SubGrids(self.sub, self.sub_main, P.indptr, P.indices, P.elen)
        scale = self.B.sum() / max(model.n_balanced, 1)
        budget = DisruptionBudget(self.B, self.main, limit, scale=scale, fine=subs,
                                  fine_original=self.sub)
        model = model.with_constraints(Held(fixed, self.closed_main), subs, budget)
        ls = LocalSearch(P, self.main, model, objective="boundary",
                         movable=np.ones(len(Wn), dtype=bool),
                         rng=np.random.default_rng(self.seed))
        end = min(deadline, time.monotonic() + guide)
        levels = ((lambda: ls.labels, len(self.mains)), (lambda: subs.sub, len(self.subs)))
        pieces = [_pieces_per_grid(P, now(), k) for now, k in levels]

        def valid(ls: LocalSearch) -> bool:  # the rules a jump to a guide must keep
            if budget.spent > limit + 1e-6:
                return False
            for (now, k), before in zip(levels, pieces, strict=True):
                after = _pieces_per_grid(P, now(), k)  # none split, none emptied
                if ((after > before) | ((after == 0) & (before > 0))).any():
                    return False
            return True

        def better(ls: LocalSearch) -> bool:  # a jump from a balanced plan keeps it so
            return ls.violation() <= 1e-12 and valid(ls)

        while time.monotonic() < end:
            balanced = ls.violation() <= 1e-12
            # the first guide leaves time for one from where its walk ends (a guide whose
            # last pieces were undone is out of its bands: the next one mends that)
            share = 1.0 if balanced or time.monotonic() > end - 0.4 * guide else 0.8
            g = self.guide(limit, depth, share * (end - time.monotonic()), ls.labels,
                           subs.sub, max_rounds=GUIDE_ROUNDS)
            if g.labels is None:
                break
            if balanced:  # a cheaper guide around the new lines, taken whole or not at all
                churn = self.B[ls.labels != self.main].sum()
                if g.churn >= churn - 1e-9 or not ls.follow(g.labels, deadline, better,
                                                             partial=False):
                    break
            elif ls.follow(g.labels, deadline, valid) == 0:
                break
        _balance(ls, budget, deadline, weights)
        return ls, budget, subs

    def sub_level(self, main: np.ndarray, sub: np.ndarray, limit: float, spent_peak: float,
                  deadline: float, also: np.ndarray
                  ) -> tuple[np.ndarray, float, DisruptionBudget | None]:
        """Bring the sub-grids of the touched main grids (and of ``also``) within
        tolerance (same budget)."""
        touched = np.unique(np.concatenate([main[main != self.main],
                                            self.main[main != self.main], also]))
        if not len(touched):
            return sub, spent_peak, None
        k = len(self.subs)
        sub_main = np.zeros(k, dtype=np.int64)
        sub_main[sub] = main
        off = ~np.isin(sub_main, touched)
        Wn, model = self.normalised(sub, main, k, off)
        P = self.problem(Wn, main)
        budget = DisruptionBudget(self.B, self.sub, limit, scale=self.B.sum() / k)
        budget.bind(sub)
        fixed = self.fixed | ~np.isin(main, touched)
        model = model.with_constraints(Held(fixed, off), budget)
        ls = LocalSearch(P, sub, model, objective="boundary",
                         movable=np.ones(len(Wn), dtype=bool),
                         rng=np.random.default_rng(self.seed))
        _balance(ls, budget, deadline)
        return ls.labels, max(spent_peak, budget.peak), budget

    def run(self, limit: float, time_limit: float, depth: int | None,
            also: Iterable[str] = (), weights: tuple[float, ...] | None = None,
            guide: float = 0.0) -> tuple[np.ndarray, np.ndarray, float, float]:
        """(main codes, sub codes, worst main excess, the most the budget held at once);
        the sub-grids of main grids ``also`` are balanced whether or not they changed.
        ``weights``: the budget's weights in the main grids' search (:data:`CHURN_WEIGHTS`
        unless given); ``guide``: seconds of least-churn guides first (:meth:`main_level`; at
        most 55 % of the time, so that the search has time to balance what they leave)."""
        t0 = time.monotonic()
        ls, budget, subs = self.main_level(limit, t0 + 0.7 * time_limit, depth,
                                           weights or CHURN_WEIGHTS,
                                           min(guide, 0.55 * time_limit))
        main, z = ls.labels.copy(), _worst_excess(ls)
        extra = np.searchsorted(self.mains, np.array(sorted(map(str, also)), dtype=object))
        sub, peak, _ = self.sub_level(main, subs.sub.copy(), limit, budget.peak,
                                      t0 + time_limit, extra.astype(np.int64))
        return main, sub, z, peak

    def guide(self, limit: float, depth: int | None, time_limit: float,
              main: np.ndarray | None = None, sub: np.ndarray | None = None,
              max_rounds: int = 100) -> Guide:
        """The least-churn contiguous assignment of :mod:`territory.optimize.churn_guide`
        from labels ``main``/``sub`` (the plan in force unless given), churn counted from
        the plan in force: main-grid labels for the search to walk towards."""
        P, model, fixed = self.main_problem(depth)
        lo, hi = model.bounds()
        group = np.zeros(len(self.mains), dtype=np.int64)
        group[self.main] = self.branch
        return least_churn_labels(P.W, self.main if main is None else main, group, lo, hi,
                                  self.B, ~fixed, self.closed_main, P.adjacency(),
                                  self.sub if sub is None else sub, limit=limit,
                                  time_limit=time_limit, original=self.main,
                                  max_rounds=max_rounds)

    def lower_bound(self, time_limit: float, contiguous: bool = False) -> ChurnBound:
        """The least budget measure that must change main grid (see
        :mod:`territory.optimize.churn_bound`): a main-grid move changes the sub-grid too,
        so it bounds the budget as well. ``contiguous``: with contiguity cuts
        (:func:`territory.optimize.churn_guide.contiguous_churn_bound`, higher, slower)."""
        Wn, model = self.normalised(self.main, self.branch, len(self.mains), self.closed_main)
        lo, hi = model.bounds()
        group = np.zeros(len(self.mains), dtype=np.int64)
        group[self.main] = self.branch
        if not contiguous:
            return churn_lower_bound(Wn, self.main, group, lo, hi, self.B, ~self.fixed,
                                     self.closed_main, time_limit)
        P = self.problem(Wn, self.branch)
        same = (self.branch[self.er] == self.branch[self.ec]) & self.rook
        n = len(Wn)
        rook = sp.csr_matrix((np.ones(same.sum()), (self.er[same], self.ec[same])), (n, n))
        island = connected_components(rook, directed=False)[1]
        return contiguous_churn_bound(Wn, self.main, group, lo, hi, self.B, ~self.fixed,
                                      self.closed_main, P.adjacency(), island, time_limit)


#: solves in the lenient hop order per guide before the strict one
#: (:mod:`territory.optimize.churn_guide`): on the shipped city the lenient rounds closed
#: their last pieces in 3-8 rounds (workload +30 %: 275 customers in 5 s; the strict order
#: at once: 501 in 11 s), when their time share lets them
GUIDE_ROUNDS = 8

#: the budget's weight in the score, lowered in turn while the bands are not met. Heavy
#: first: of the moves that cut the excess, those carrying least of the budget measure per
#: unit of load go first (on the shipped city, 1000 moved ~25 % fewer customers than 1);
#: then lighter, as a grid whose neighbours are full needs them to pass load on (moves
#: that only even out loads), which a move's full cost forbids. The moves not needed in
#: the end are taken back (:meth:`LocalSearch.settle`).
CHURN_WEIGHTS = (1000.0, 30.0, 1.0, 0.1, 0.01, 0.0)
#: the weights tried in turn when those stall (the search is path-dependent): on the shipped
#: city, a grid whose workload rises 30 % stays 4 % of the mean outside its band with
#: :data:`CHURN_WEIGHTS` and is balanced starting at 30; one whose workload doubles stays
#: 20 % outside with them and 3 % with balance alone
FALLBACK_WEIGHTS = ((30.0, 0.0), (0.0,))


def _balance(ls: LocalSearch, budget: DisruptionBudget, deadline: float,
             weights: tuple[float, ...] = CHURN_WEIGHTS) -> None:
    """Balance with the least churn the search finds before ``deadline``."""
    scale = budget.scale
    for w in weights:
        if ls.violation() <= 0 or time.monotonic() >= deadline:
            break
        budget.scale = scale / w if w > 0 else np.inf
        ls.balance(deadline)
    budget.scale = scale
    ls.settle(deadline)


def _worst_excess(ls: LocalSearch) -> float:
    """The worst relative distance of a grid's load outside its band (0: balanced)."""
    lo, hi = ls.lo, ls.hi
    over = np.maximum(ls.loads - hi, 0) + np.maximum(lo - ls.loads, 0)
    return float(over.max()) if over.size else 0.0


def _pieces_per_grid(P: Problem, labels: np.ndarray, k: int) -> np.ndarray:
    """How many pieces each of the ``k`` labels has over ``P``'s edges (0: empty; a grid
    may be one piece only over another branch's bridge: the count before a change is the
    reference, not 1)."""
    comp = grid_components(P, labels)
    return pd.Series(comp).groupby(labels).nunique().reindex(range(k), fill_value=0).to_numpy()


def _near_lines(P: Problem, labels: np.ndarray, depth: int) -> np.ndarray:
    """Units within ``depth`` hops of a unit of another grid (over ``P``'s edges)."""
    rows = np.repeat(np.arange(P.n), np.diff(P.indptr))
    near = np.zeros(P.n, dtype=bool)
    near[rows[labels[rows] != labels[P.indices]]] = True
    for _ in range(max(depth, 1) - 1):
        grow = near.copy()
        grow[rows[near[P.indices]]] = True
        near = grow
    return near


def rebalance(plan: Plan, graph: nx.Graph, budget: Budget, *,
              tolerance: float | dict[str, float] | None = None, depth: int | None = None,
              time_limit: float = 30.0, author: str = "", message: str = "",
              together: list[list] | None = None, sub_grids_of: Iterable[str] = (),
              seed: int = 0) -> Result:
    """Meet the balance tolerances of the main grids, then of the sub-grids inside the main
    grids that changed, moving at most ``budget`` (see the module docstring).

    Locked units (``locked`` column), the units of each ``together`` group (key accounts:
    lists of unit ids) and balance-exempt grids never change grid. ``depth`` (optional)
    lets only units within that many hops of a grid line move. The sub-grids of the main
    grids in ``sub_grids_of`` are balanced too (a headcount change: see
    :mod:`territory.headcount`). ``time_limit`` paces the call: the plain least-churn
    search (up to 40 %; then, if that stalls, lighter churn weights within the same budget,
    20 %: the best is kept), then the search guided by least-churn MIPs (up to 80 % when the
    first ended early, at least 20 %: the plan that moves fewer of the budget's measure
    across main-grid lines is kept), and when the budget falls short the search for a
    budget that works (the rest, at least 20 %, and the bound, up to 20 %: at most about 1.4
    times ``time_limit`` in all; 23 s for 20 on the shipped city's hardest case). When the
    budget cannot reach the tolerances the result is not feasible: it carries the plan the
    budget reaches (never worse than the plan in force) and ``smallest_budget``, the least
    budget found that reaches them (None when none was).
    """
    tol = _tolerances(plan, tolerance)
    s = _Search(plan, graph, tol, _weights(plan, budget.measure), together, seed)
    t0 = time.monotonic()
    # a balanced plan ends the search early; only a short budget uses the time, and then
    # the search for a budget that works gets the rest
    main, sub, z, _ = s.run(budget.value, 0.4 * time_limit, depth, sub_grids_of)
    for weights in FALLBACK_WEIGHTS:  # least churn first stalled: lighter weights
        if z <= 1e-9:
            break
        m2, s2, z2, _ = s.run(budget.value, 0.2 * time_limit / len(FALLBACK_WEIGHTS), depth,
                              sub_grids_of, weights)
        if z2 < z - 1e-9:
            main, sub, z = m2, s2, z2
    if z > 1e-9 or (main != s.main).any():  # moves were needed: a least-churn guide's turn
        left = max(min(0.8 * time_limit, time_limit - (time.monotonic() - t0)),
                   0.2 * time_limit)
        m2, s2, z2, _ = s.run(budget.value, left, depth, sub_grids_of, guide=left)
        if z2 < z - 1e-9 or (z2 <= z + 1e-9 and s.B[m2 != s.main].sum()
                             < s.B[main != s.main].sum()):
            main, sub, z = m2, s2, z2
    new = _apply(plan, s, main, sub, tol, author=author, message=message or (
        f"rebalance within {budget.measure}={budget.value:g}"))
    if _max_dev_all(new) > _max_dev_all(plan) + 1e-9:  # never worse than the plan in force
        log.warning("rebalance: no plan better than the current one found within the budget")
        main, sub, z = s.main.copy(), s.sub.copy(), _excess_of(s, s.main)
        new = _apply(plan, s, main, sub, tol, author=author, message=message or "rebalance")
    feasible = z <= 1e-9
    moved = (main != s.main) | (sub != s.sub)
    res = Result(new, feasible, z, int(moved.sum()), float(s.B[moved].sum()), _max_dev(new),
                 sub_deviation=_sub_dev(new, plan.units.index[moved]))
    if not feasible:
        t_bound = time.monotonic() + min(10.0, 0.2 * time_limit)
        bound = s.lower_bound(t_bound - time.monotonic())
        # the rest of the bound's time: higher, for plans whose grids are each one piece
        whole = (s.lower_bound(t_bound - time.monotonic(), contiguous=True)
                 if np.isfinite(bound.value) and t_bound - time.monotonic() > 1 else bound)
        res.lower_bound, res.lower_bound_contiguous = bound.value, max(bound.value, whole.value)
        if not np.isfinite(whole.value):  # proven: by the cut MIP, or already without cuts
            proof = ("whose grids are each one piece: no assignment of the movable units to "
                     "the grids of their branch that keeps every grid connected puts every "
                     "grid within its band (proven by a MIP with contiguity cuts)"
                     if np.isfinite(bound.value) else
                     "with these grids: no assignment of the movable units to the grids of "
                     "their branch puts every grid within its band, even ignoring contiguity "
                     "(proven by a MIP)")
            res.message = (
                f"the tolerances cannot be met by any plan {proof}; the best plan within "
                f"{budget.value:g} {budget.measure} stays {z:.2%} of the mean outside its band:"
                " raise the tolerance, unlock units or change the number of grids")
            return res
        left = max(time_limit - (time.monotonic() - t0), 0.2 * time_limit)
        nearest = z
        # least churn first, then lighter weights: the point is a budget that works at all
        schedules = (CHURN_WEIGHTS, *FALLBACK_WEIGHTS)
        for weights in schedules:
            _, _, z2, peak = s.run(np.inf, left / len(schedules), depth, sub_grids_of,
                                   weights)
            nearest = min(nearest, z2)
            if z2 <= 1e-9:
                res.smallest_budget = float(peak)
                break
        proof = "proven" if bound.exact else "a proven bound"
        res.message = (
            f"the tolerances cannot be met moving at most {budget.value:g} {budget.measure}: "
            f"the best plan within it stays {z:.2%} of the mean outside its band; "
            + (f"the smallest budget found that meets them is {peak:g} {budget.measure}"
               if res.smallest_budget is not None else
               "no plan moving units across grid lines was found that meets them (the nearest, "
               f"with no budget, stays {nearest:.2%} outside): raise the tolerance or re-plan")
            + f" (any plan that meets them moves at least {res.lower_bound:.6g} "
            f"{budget.measure} across main-grid lines, contiguity aside: {proof}"
            + (f"; at least {whole.value:.6g} if its grids are each one piece: "
               f"{'proven' if whole.exact else 'a proven bound'}"
               if whole is not bound and whole.value > bound.value + 1e-9 else "") + ")")
    return res


def _tolerances(plan: Plan, tolerance: float | dict[str, float] | None) -> dict[str, float]:
    tol = tolerances(plan)
    if isinstance(tolerance, dict):
        tol.update(tolerance)
    elif tolerance is not None:
        tol = {m: float(tolerance) for m in tol}
    return tol


def churn_bound(plan: Plan, graph: nx.Graph, measure: str = "customers", *,
                tolerance: float | dict[str, float] | None = None,
                together: list[list] | None = None, time_limit: float = 10.0,
                contiguous: bool = False) -> ChurnBound:
    """The least ``measure`` that any plan meeting the tolerances (with the same grids, the
    locks and ``together`` groups held) moves across main-grid lines: a proven lower bound
    (:mod:`territory.optimize.churn_bound`); infinite when no plan can meet them.
    ``contiguous``: a higher one, for plans whose grids are each one piece
    (:func:`territory.optimize.churn_guide.contiguous_churn_bound`)."""
    s = _Search(plan, graph, _tolerances(plan, tolerance), _weights(plan, measure), together,
                0)
    return s.lower_bound(time_limit, contiguous)


def _excess_of(s: _Search, main: np.ndarray) -> float:
    Wn, model = s.normalised(main, s.branch, len(s.mains), s.closed_main)
    lo, hi = model.bounds()
    loads = np.zeros(hi.shape)
    np.add.at(loads, main, Wn)
    over = np.maximum(loads - hi, 0) + np.maximum(lo - loads, 0)
    return float(over.max()) if over.size else 0.0


def sweep(plan: Plan, graph: nx.Graph, measure: str, budgets: list[float], *,
          tolerance: float | None = None, depth: int | None = None, time_limit: float = 30.0,
          together: list[list] | None = None) -> pd.DataFrame:
    """The trade-off curve: for each budget, the worst excess and deviation it reaches."""
    rows = []
    for b in budgets:
        r = rebalance(plan, graph, Budget(measure, b), tolerance=tolerance, depth=depth,
                      time_limit=time_limit, together=together)
        rows.append({"budget": b, "moved": r.moved_budget, "units_moved": r.moved_units,
                     "worst_excess": r.worst_excess,
                     **{f"max_dev_{m}": v for m, v in r.max_deviation.items()}})
    return pd.DataFrame(rows)


def _max_dev(plan: Plan) -> dict[str, float]:
    t = load_table(plan, "main_grid")
    t = t[~t["balance_exempt"]]
    return {m: float(t[f"dev_{m}"].abs().max()) for m in plan.measures}


def _max_dev_all(plan: Plan) -> float:
    return max(_max_dev(plan).values(), default=0.0)


def _sub_dev(plan: Plan, moved: pd.Index) -> dict[str, float]:
    """Worst sub-grid deviation inside the main grids holding a moved unit."""
    mains = set(plan.units.loc[moved, "main_grid_id"])
    t = load_table(plan, "sub_grid")
    t = t[t["parent_id"].isin(mains)]
    return {m: float(t[f"dev_{m}"].abs().max()) if len(t) else 0.0 for m in plan.measures}


def _apply(plan: Plan, s: _Search, main: np.ndarray, sub: np.ndarray, tol: dict, *,
           author: str, message: str) -> Plan:
    units = plan.units.copy()
    units["main_grid_id"] = s.mains[main]
    units["sub_grid_id"] = s.subs[sub]
    return plan.derive(units, author=author, message=message, measures=tol)
