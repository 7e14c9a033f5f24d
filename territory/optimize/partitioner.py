"""Partition units into k contiguous, balanced, compact grids.

The quality comes from a heuristic; the MIP certifies small cases and supplies bounds:

1. centres: given (stores), or a recursive coordinate bisection of the load (each part's
   load-weighted centroid snapped to a unit);
2. the balanced assignment LP (:mod:`.lp`, HiGHS through its arrays) assigns units to
   centres within the balance tolerance; the few split units go to their largest share;
3. contiguity repair keeps one piece per grid and hands orphans to the neighbour they share
   most boundary with;
4. the local search (:mod:`.search`) balances every measure into its tolerance and
   improves compactness greedily;
5. simulated annealing (:mod:`.anneal`) of boundary moves, with a balance penalty that
   hardens to the band, spends the rest of the time budget and keeps the best plan within
   every band: the time limit is both a promise (the call returns by then) and a budget;
6. with ``exact=True`` on small instances the flow MIP (:mod:`.mip`) runs in the time
   reserved for it and replaces the plan when it finds a better one, proving optimality
   when it can.

A search that would run to its time limit (no ``patience``, no ``max_epochs``) on a tiny
instance (up to :data:`PROVE_MAX_UNITS` units) first asks the MIP for a proof: a proven
optimum ends the search at once (status ``optimal``, gap 0) instead of annealing a plan
nothing can better for the rest of the time limit; an unproven MIP's dual bound still stops
the annealing as soon as its plan reaches it. With given centres and the distance objective
the LP bound over balanced assignments to them bounds every plan, so it is computed before
the annealing and stops it the same way.

Locks and given centres reach every search as one
:class:`~territory.optimize.constraints.Held` constraint of the balance model, which the
local search and the annealing kernel both keep (:mod:`.constraints`).

The balance rules (means, bounds, exemptions, the pre-check that refuses impossible targets
before any search) live in :mod:`.balance`.

What varies with machine speed: how many annealing chunks fit in the time limit. Each chunk
is seeded from ``random_state`` and its position, so on a fixed seed a longer time limit
walks further along the same path and never returns a worse plan (unless the start itself
was cut short by a very small time limit).

Results follow scikit-learn's conventions: parameters in the constructor, ``solve(graph)``
returns ``self``, results in trailing-underscore attributes.
"""

from __future__ import annotations

import logging
import time

import networkx as nx
import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.spatial import cKDTree

from territory.errors import InfeasibleError, InvalidInputError, NotSolvedError
from territory.graph import induced_subgraph, join_components
from territory.optimize.anneal import PROVEN_RTOL, anneal
from territory.optimize.balance import (
    BalanceModel,
    locked_shortfalls,
    parse_tolerances,
    precheck,
    stranded_units,
)
from territory.optimize.constraints import Held
from territory.optimize.lp import lp_lower_bound, solve_balanced_lp
from territory.optimize.mip import solve_exact
from territory.optimize.problem import Problem, problem_from_graph
from territory.optimize.search import LocalSearch, is_contiguous, repair_contiguity

log = logging.getLogger(__name__)

OBJECTIVES = ("distance", "boundary")
#: The exact MIP is attempted up to this many (contracted) units.
EXACT_MAX_UNITS = 120
#: Up to this many (contracted) units an anytime search asks the MIP for a proof first
#: (a 9-unit partition annealed for 50 s of a 60 s limit a plan the MIP proves in 0.1 s).
PROVE_MAX_UNITS = 30
#: the share of the time left (and the most seconds) that proof may take
PROVE_SHARE, PROVE_SECONDS = 0.25, 10.0


class Partitioner:
    """Balanced, contiguous, compact partition of a unit graph into ``n_grids`` grids.

    Parameters
    ----------
    n_grids : int
        Number of grids k.
    measures : list of str or dict {measure: tolerance}
        Node attributes to balance; each within ±tolerance of the mean (``tolerance`` is the
        default, 0.05 = ±5 %).
    objective : "distance" or "boundary"
        Presence-weighted distance of units to their grid centre, or total boundary length
        between grids (the number of cut edges for graphs without geometry).
    centres : list of node ids, optional
        One centre per grid (a store's unit); grid j is centred on ``centres[j]``.
    locked : dict node -> grid index, optional
        Units fixed to a grid.
    together : list of lists of node ids, optional
        Units that must stay in one grid (a key account spanning several units).
    own_grids : list of lists of node ids, optional
        Areas that form a grid of their own (an island, a development zone); they take the
        last grid indices and are exempt from balance.
    exact : bool
        Run the exact MIP after the heuristic on small instances.
    time_limit : float
        Seconds: a promise (the call returns its best plan by then) and a budget (the
        annealing keeps improving the plan until then).
    random_state : int or None
        Seed of every random choice; with ``max_epochs`` the plan does not depend on the
        machine's speed (as long as the epochs fit in the time limit).
    max_epochs : int, optional
        Stop the annealing after this many epochs even if time is left.
    patience : int, optional
        Stop the annealing after this many epochs without a better plan (the hierarchy's
        many small jobs); by default it runs until the time limit.
    min_gain : float
        With ``patience``: an epoch counts as a better plan only when it improves the
        objective by more than this share (0.005: half a percent), so that a job whose
        plan is good enough stops instead of polishing it to the time limit.
    n_jobs : int
        Independent annealing walks run in parallel threads (one per core you can spare;
        the hierarchy already runs one partition per worker process, so it keeps 1).

    Attributes (after ``solve``)
    ----------------------------
    labels_ : Series, node id -> grid index, in the graph's node order
    objective_, bound_, gap_ : objective value, lower bound (or None) and relative gap
    bound_kind_ : what the bound bounds, or why there is none (``not computed: ...``)
    status_ : "optimal" (proven) or "feasible"
    loads_ : DataFrame k x measures;  max_deviation_ : dict measure -> max |load/mean - 1|
    centres_ : list of node ids (distance objective) or None
    epochs_ : annealing epochs run;  moves_ : moves applied;  time_ : seconds used
    """

    def __init__(
        self,
        n_grids: int,
        *,
        measures: list[str] | dict[str, float | None] | str = "subscribers",
        tolerance: float = 0.05,
        objective: str = "distance",
        centres: list | None = None,
        locked: dict | None = None,
        together: list[list] | None = None,
        own_grids: list[list] | None = None,
        exact: bool = False,
        time_limit: float = 60.0,
        candidates: int = 8,
        random_state: int | None = 0,
        max_epochs: int | None = None,
        patience: int | None = None,
        min_gain: float = 0.0,
        n_jobs: int = 1,
    ) -> None:
        self.n_grids = n_grids
        self.measures = measures
        self.tolerance = tolerance
        self.objective = objective
        self.centres = centres
        self.locked = locked
        self.together = together
        self.own_grids = own_grids
        self.exact = exact
        self.time_limit = time_limit
        self.candidates = candidates
        self.random_state = random_state
        self.max_epochs = max_epochs
        self.patience = patience
        self.min_gain = min_gain
        self.n_jobs = n_jobs

    def __getattr__(self, name: str):
        if name.endswith("_") and not name.startswith("_"):
            raise NotSolvedError(f"{name} is available after solve(graph)")
        raise AttributeError(name)

    # ------------------------------------------------------------------------------------
    def check_parameters(self) -> dict[str, float]:
        """Validate every parameter that needs no graph; returns ``{measure: tolerance}``.

        :meth:`solve` calls it first; a caller with slow input to prepare calls it before
        preparing it, so that a bad value fails at once.
        """
        tol = parse_tolerances(self.measures, self.tolerance)
        if self.objective not in OBJECTIVES:
            raise InvalidInputError(
                f"`objective` {self.objective!r}: choose one of {list(OBJECTIVES)}"
            )
        if not (isinstance(self.time_limit, int | float) and self.time_limit > 0):
            raise InvalidInputError(f"`time_limit` {self.time_limit!r}: give seconds > 0")
        if not (isinstance(self.min_gain, int | float) and 0 <= self.min_gain < 1):
            raise InvalidInputError(f"`min_gain` {self.min_gain!r}: give a share in [0, 1)")
        k = self.n_grids
        if not isinstance(k, int | np.integer) or k < 1:
            raise InvalidInputError(f"`n_grids` {k!r}: give a whole number >= 1")
        return tol

    def solve(self, graph: nx.Graph) -> Partitioner:
        t0 = time.monotonic()
        tol = self.check_parameters()
        deadline = t0 + float(self.time_limit)
        measures = list(tol)
        k = self.n_grids
        P = problem_from_graph(graph, measures, allow_zero=k == 1)
        if k > P.n:
            raise InvalidInputError(
                f"n_grids={k} is larger than the number of units ({P.n}); "
                f"use at most {P.n} grids or finer units"
            )
        if self.objective == "distance" and P.xy is None:
            raise InvalidInputError(
                "objective='distance' needs unit coordinates (node attributes x, y; name them with "
                "`xy` when reading a graph); "
                "use objective='boundary' for graphs without coordinates"
            )
        pos = {nid: i for i, nid in enumerate(P.ids)}
        labels = np.full(P.n, -1, dtype=np.int64)
        own = self._own_grid_nodes(pos, k)
        for g, nodes in enumerate(own):
            labels[nodes] = k - len(own) + g
        k_rest = k - len(own)
        rest = np.flatnonzero(labels < 0)
        if k_rest < 1 or len(rest) < k_rest:
            raise InvalidInputError(
                f"own_grids take {len(own)} of n_grids={k} grids and leave {len(rest)} units "
                "for the rest; raise n_grids"
            )
        sub = _connected_subproblem(P, rest, graph)
        locked = self._locked_positions(pos, rest, k_rest)
        islands = graph.graph.get("islands")
        self._mainland = _islands(P, islands)[1] < 0
        groups = self._together_groups(pos, rest) + _island_groups(sub, tol, k_rest, islands)
        C, member = _contract(sub, groups)
        c_locked = _contract_locks(locked, member, C.n, sub.ids)
        model = BalanceModel.for_units(C.W, tol, k_rest)
        _precheck(C, c_locked, model)
        lo, hi = model.bounds()
        rng = np.random.default_rng(self.random_state)
        centre_pos = self._centre_positions(pos, rest, member, k_rest)
        self._proof = self._early_bound = None
        search, feasible = self._heuristic(C, model, c_locked, centre_pos, rng, t0,
                                           deadline)
        status, bound, bound_kind = "feasible", None, None
        self._proven: str | None = None
        if self._proof is not None:  # the MIP proved the plan optimal before the search
            status, bound, bound_kind = self._proof
        elif C.n <= EXACT_MAX_UNITS and (self.exact or not feasible):
            # small instances: the MIP proves optimality, or finds the balanced plan the
            # heuristic missed
            res = solve_exact(
                C, k_rest, lo[0], hi[0], objective=self.objective, locked=c_locked,
                roots=centre_pos, deadline=deadline - 0.05 * self.time_limit,
                start=search.labels if feasible else None,
            )
            if not feasible and res["status"] == "Infeasible":
                self._proven = "the exact MIP: no contiguous plan meets every tolerance"
            if not feasible and res["labels"] is not None:
                search.set_labels(self._root_labels(res["labels"], c_locked, centre_pos, k_rest))
                feasible = True
            c_labels, status, bound, bound_kind = self._take_exact(
                res, C, search.labels, search.compactness(), c_locked, centre_pos, k_rest
            )
            search.set_labels(c_labels)
        if bound is None and self._early_bound is not None:  # found before the search
            bound, bound_kind = self._early_bound
        c_labels = search.labels
        objective = search.compactness()
        if bound is None and self.objective == "distance":
            left = deadline - time.monotonic()
            if not feasible:
                bound_kind = "not computed: no plan meets every tolerance"
            elif left <= 0.5:
                bound_kind = f"not computed: {max(left, 0):.1f} s of the time limit left"
            else:
                bound, how = lp_lower_bound(
                    C.xy, C.presence, C.W, search.centres, lo, hi, locked=c_locked,
                    time_limit=left * 0.8,
                )
                bound_kind = f"{how}, for balanced assignments to the plan's centres"
        labels[rest] = c_labels[member]
        self._finish(P, labels, k, own, model, search, objective, bound,
                     bound_kind, status, feasible, t0)
        return self

    # -- pieces ---------------------------------------------------------------------------
    def _own_grid_nodes(self, pos: dict, k: int) -> list[np.ndarray]:
        own = []
        seen: set[int] = set()
        for area in self.own_grids or []:
            missing = [u for u in area if u not in pos]
            if missing or not area:
                raise InvalidInputError(f"own_grids: unknown or empty units {missing[:10]}")
            idx = np.array([pos[u] for u in area])
            if seen & set(idx.tolist()):
                raise InvalidInputError("own_grids: a unit belongs to two own-grid areas")
            seen |= set(idx.tolist())
            own.append(idx)
        if len(own) >= k:
            raise InvalidInputError(
                f"own_grids: {len(own)} areas need more than n_grids={k} grids"
            )
        return own

    def _locked_positions(self, pos: dict, rest: np.ndarray, k_rest: int) -> np.ndarray:
        locked = np.full(len(rest), -1, dtype=np.int64)
        where = {int(p): i for i, p in enumerate(rest)}
        for u, g in (self.locked or {}).items():
            if u not in pos:
                raise InvalidInputError(f"locked: unknown unit {u!r}")
            if not (isinstance(g, int | np.integer) and 0 <= g < k_rest):
                raise InvalidInputError(
                    f"locked: unit {u!r} -> grid {g!r}; grids are numbered 0..{k_rest - 1}"
                )
            if pos[u] not in where:
                raise InvalidInputError(f"locked: unit {u!r} is in an own-grid area")
            locked[where[pos[u]]] = g
        return locked

    def _together_groups(self, pos: dict, rest: np.ndarray) -> list[np.ndarray]:
        where = {int(p): i for i, p in enumerate(rest)}
        groups = []
        for grp in self.together or []:
            bad = [u for u in grp if u not in pos or pos[u] not in where]
            if bad:
                raise InvalidInputError(
                    f"together: units {bad[:10]} are unknown or in an own-grid area"
                )
            groups.append(np.array([where[pos[u]] for u in grp]))
        return groups

    def _centre_positions(self, pos, rest, member, k_rest) -> np.ndarray | None:
        if self.centres is None:
            return None
        if len(self.centres) != k_rest:
            raise InvalidInputError(
                f"centres: {len(self.centres)} given for {k_rest} grids; give one per grid"
            )
        where = {int(p): i for i, p in enumerate(rest)}
        bad = [c for c in self.centres if c not in pos or pos[c] not in where]
        if bad:
            raise InvalidInputError(f"centres: unknown units {bad[:10]}")
        cp = np.array([member[where[pos[c]]] for c in self.centres])
        if len(set(cp.tolist())) < len(cp):
            raise InvalidInputError("centres: two grids share a centre unit")
        return cp

    def _initial(self, C: Problem, balance: BalanceModel, locked, centre_pos, rng, deadline,
                 attempt=0):
        k = balance.n_grids
        if C.xy is None:
            return _grow_regions(C, k, locked, rng), None
        # anchors: the unit each grid must keep through the repair (given centres, locks)
        anchors = np.full(k, -1) if centre_pos is None else np.array(centre_pos)
        parts = None
        if centre_pos is None:
            angle = 0.0 if attempt == 0 else float(rng.uniform(0, np.pi))
            parts = _bisection_parts(C.xy, C.W, k, angle)
            centre_pos = _snap(C.xy, _bisection_centres(C.xy, C.W, parts, locked), locked)
        centres = C.xy[centre_pos]
        # shortest paths over the graph: additively weighted graph-Voronoi regions are
        # connected (every unit on the path from a centre to its unit goes to that centre),
        # where straight-line regions would jump across bays and rivers
        D = _graph_distances(C, centre_pos, self.candidates)
        # The start balances one combined measure (the mean of the measures over their
        # means) and weighs distances by it: the LP optimum is then an additively weighted
        # Voronoi diagram, contiguous but for a few units. Balancing every measure in the LP
        # interleaves units of different mix between centres and repair would undo it.
        comb = (C.W / balance.scale).mean(axis=1)
        comb = comb + 0.05 * comb.mean()
        tight = float(balance.tolerance.min()) * 0.8
        mc = comb.sum() / k
        _, sol = solve_balanced_lp(
            C.xy, comb, comb[:, None], centres, np.full((k, 1), (1 - tight) * mc),
            np.full((k, 1), (1 + tight) * mc), locked=locked, candidates=self.candidates,
            time_limit=0.3 * (deadline - time.monotonic()), D=D,
        )
        if sol["optimal"]:
            labels = sol["result"].labels
        elif parts is not None:
            # the LP ran out of its share of the time (50 000 units on a loaded machine):
            # the bisection's parts balance the combined measure already, so the repair
            # starts near balance, where graph-Voronoi regions are far from it
            log.info("start LP: %s, starting from the load bisection", sol["result"].status)
            labels = np.empty(C.n, dtype=np.int64)
            for j, part in enumerate(parts):
                labels[part] = j
        else:
            labels = D.argmin(axis=0)
        lk = locked >= 0
        labels[lk] = locked[lk]
        labels[anchors[anchors >= 0]] = np.flatnonzero(anchors >= 0)
        for i in np.flatnonzero(locked >= 0):
            anchors[locked[i]] = i
        labels = repair_contiguity(C, labels, k, anchors)
        return labels, centres

    def _heuristic(self, C, balance: BalanceModel, locked, centre_pos, rng, t0, deadline):
        """LP start, repair and local search; new centres while a start cannot be balanced.

        Returns the search (its labels are the plan) and whether it meets every tolerance.
        """
        best = None
        attempt = 0
        self.epochs_ = 0
        # what may not move: a locked unit, a given centre (it anchors its grid)
        held = locked >= 0
        if centre_pos is not None:
            held[centre_pos] = True
        balance = balance.with_constraints(Held(held, np.zeros(balance.n_grids, bool)))
        while True:
            if balance.n_grids == 1:
                labels = np.zeros(C.n, dtype=np.int64)
                centres = None if C.xy is None else C.xy[:1]
            else:
                labels, centres = self._initial(C, balance, locked, centre_pos, rng,
                                                deadline, attempt)
            search = LocalSearch(
                C, labels, balance, objective=self.objective, centres=centres,
                fixed_centres=centre_pos is not None, rng=rng,
            )
            feasible = search.balance(t0 + 0.7 * self.time_limit)
            if feasible:
                break
            if best is None or search.violation() < best.violation():
                best = search
            attempt += 1
            if centre_pos is not None or time.monotonic() > t0 + 0.4 * self.time_limit:
                search = best
                break
        # what the steps after the search need (the exact MIP on small instances; the LP
        # bound for the distance objective): neither the descent nor the anneal may use it
        left = deadline - time.monotonic()
        small = C.n <= EXACT_MAX_UNITS
        if small and (self.exact or not feasible):
            reserve = left - min(0.5 * left, 0.05 * C.n)  # the MIP gets the larger share
        elif self.objective == "distance" and C.xy is not None and centre_pos is None:
            reserve = 0.15 * self.time_limit  # for the LP bound on the plan's centres
        else:
            reserve = 0.02 * self.time_limit
        self._centres_bound(C, balance, locked, centre_pos, search, feasible, deadline)
        if feasible:
            search.compact(deadline - reserve)
        self._prove(C, balance, locked, centre_pos, search, feasible, deadline)
        stop_at = -np.inf if self._early_bound is None else self._early_bound[0]
        # the anytime part: anneal until the budget is spent, minus the reserve (or until
        # its plan reaches a proven bound)
        if self._proof is None and balance.n_grids > 1 and search.movable.any():
            self.epochs_ = anneal(search, deadline - reserve, int(rng.integers(2**31)),
                                  max_epochs=self.max_epochs, patience=self.patience,
                                  min_gain=self.min_gain, n_walks=max(1, int(self.n_jobs)),
                                  stop_at=stop_at)
            feasible = search.violation() <= 1e-12
            if feasible and search.compactness() <= stop_at + PROVEN_RTOL * max(
                    1.0, abs(stop_at)):
                self._proof = ("optimal", stop_at,
                               f"{self._early_bound[1]}: the search reached it and stopped")
        return search, feasible

    def _prove(self, C, balance: BalanceModel, locked, centre_pos, search, feasible: bool,
               deadline: float) -> None:
        """On a tiny instance whose search would run to the time limit, the exact MIP,
        warm-started from the search's plan: a proven optimum is taken and recorded in
        ``self._proof`` (the anneal is skipped); else its dual bound is kept in
        ``self._early_bound``, where the anneal stops if its plan reaches it."""
        if not (feasible and balance.n_grids > 1 and C.n <= PROVE_MAX_UNITS
                and self.patience is None and self.max_epochs is None):
            return
        left = deadline - time.monotonic()
        lo, hi = balance.bounds()
        res = solve_exact(C, balance.n_grids, lo[0], hi[0], objective=self.objective,
                          locked=locked, roots=centre_pos,
                          deadline=time.monotonic() + min(PROVE_SHARE * left, PROVE_SECONDS),
                          start=search.labels)
        labels, status, bound, _ = self._take_exact(
            res, C, search.labels, search.compactness(), locked, centre_pos, balance.n_grids)
        search.set_labels(labels)  # the better of the two plans
        if status == "optimal":
            self._proof = (status, bound, "MIP dual bound: proven optimal, search stopped")
        elif bound is not None and (self._early_bound is None
                                    or bound > self._early_bound[0]):
            self._early_bound = (float(bound), "MIP dual bound (the exact MIP before the "
                                 "search)")

    def _centres_bound(self, C, balance: BalanceModel, locked, centre_pos, search,
                       feasible: bool, deadline: float) -> None:
        """With given centres (the distance objective), the LP bound over balanced
        assignments to them bounds every plan and does not change with the plan: it is
        computed before the anneal (in the time the bound after it would take) and kept in
        ``self._early_bound``, so the anneal stops if its plan reaches it."""
        left = deadline - time.monotonic()
        if not (feasible and self.objective == "distance" and centre_pos is not None
                and C.xy is not None and balance.n_grids > 1 and left > 0.5):
            return
        lo, hi = balance.bounds()
        bound, how = lp_lower_bound(C.xy, C.presence, C.W, search.centres, lo, hi,
                                    locked=locked,
                                    time_limit=min(0.8 * left, 0.12 * self.time_limit))
        self._early_bound = (bound, f"{how}, for balanced assignments to the given centres")

    @staticmethod
    def _root_labels(roots, locked, centre_pos, k) -> np.ndarray:
        """MIP root positions -> grid indices, keeping locks and given centres in place."""
        order: dict[int, int] = {}
        if centre_pos is not None:
            order = {int(c): j for j, c in enumerate(centre_pos)}
        for i in np.flatnonzero(locked >= 0):
            order.setdefault(int(roots[i]), int(locked[i]))
        free = iter(sorted(set(range(k)) - set(order.values())))
        for r in sorted(set(roots.tolist())):
            if r not in order:
                order[r] = next(free)
        return np.array([order[int(r)] for r in roots])

    def _take_exact(self, res, C, labels, objective, locked, centre_pos, k):
        """The MIP's plan when it is at least as good; status and bound either way."""
        if res["labels"] is None:
            log.info("exact MIP: %s, no better plan", res["status"])
            return labels, "feasible", res["bound"], "MIP dual bound"
        new = self._root_labels(res["labels"], locked, centre_pos, k)
        proven = res["status"] == "Optimal"
        mip_obj = res["objective"]
        if mip_obj is not None and mip_obj <= objective + 1e-9 * max(1, abs(objective)):
            return new, "optimal" if proven else "feasible", (
                mip_obj if proven else res["bound"]), "MIP dual bound"
        return labels, "feasible", res["bound"], "MIP dual bound"

    def _finish(self, P, labels, k, own, model, search, objective, bound,
                bound_kind, status, feasible, t0) -> None:
        full = BalanceModel(model.measures, model.tolerance, model.mean, k,
                            frozenset(range(k - len(own), k)))
        arr = np.zeros((k, len(full.measures)))
        np.add.at(arr, labels, P.W)
        loads = pd.DataFrame(arr, index=range(k), columns=list(full.measures))
        violations = full.violations(arr)
        contiguous = is_contiguous(P, labels, self._mainland)
        self.labels_ = pd.Series(labels, index=pd.Index(P.ids, name="unit_id"), name="grid")
        self.loads_ = loads
        self.max_deviation_ = full.max_deviation(arr)
        self.exempt_grids_ = sorted(full.exempt)
        self.contiguous_ = bool(contiguous.all())
        norm = P.presence.sum() if self.objective == "distance" else 1.0
        self.objective_ = objective / norm if self.objective == "distance" else objective
        self.bound_ = None if bound is None else bound / norm
        self.bound_kind_ = bound_kind
        self.gap_ = (
            0.0 if status == "optimal"  # proven: not a rounding residue of the bound
            else None if self.bound_ is None or self.objective_ <= 0
            else max(0.0, (self.objective_ - self.bound_) / self.objective_)
        )
        self.status_ = status
        self.centres_ = None
        if self.objective == "distance" and search.centres is not None:
            near = cKDTree(P.xy).query(search.centres)[1]
            self.centres_ = [P.ids[i] for i in near]
        self.time_ = time.monotonic() - t0
        self.moves_ = search.stats.moves
        if violations or not self.contiguous_:
            lines = [full.explain(arr, P.W[labels < full.n_balanced], searched=(
                f"within time_limit={self.time_limit:g} s; a longer time limit may find one"),
                proven=self._proven)
            ] if violations else []
            if not self.contiguous_:
                lines.append(f"grids {np.flatnonzero(~contiguous).tolist()} could not be made "
                             "contiguous (locked units of one grid far apart, or an island "
                             "heavier than a grid cut across its bridge?)")
            err = InfeasibleError("; ".join(lines))
            err.partitioner = self  # the best plan found, for inspection
            raise err


def _precheck(C: Problem, locked: np.ndarray, model: BalanceModel) -> None:
    """Fail fast, with the reason and the fix, on targets no plan can meet."""
    short = precheck(C.W, model.n_balanced, dict(zip(model.measures, model.tolerance,
                                                      strict=True)))
    lines = [s.message() for s in short] + locked_shortfalls(C.W, locked, model)
    if not lines:
        lines = stranded_units(C.W, C.indptr, C.indices, model, C.ids)
    if lines:
        big = [i for i in range(C.n) if C.group_size[i] > 1]
        note = (f" (units that must stay together count as one: {len(big)} groups)"
                if big else "")
        raise InfeasibleError("; ".join(lines) + note)


def _connected_subproblem(P: Problem, rest: np.ndarray, graph: nx.Graph) -> Problem:
    """The problem on ``rest``; components left apart (own grids cut them) get bridges."""
    sub = P.subproblem(rest)
    from scipy.sparse.csgraph import connected_components

    ncomp, _ = connected_components(sub.adjacency(), directed=False)
    if ncomp == 1:
        return sub
    g = induced_subgraph(graph, sub.ids.tolist())
    join_components(g)
    return _with_edges(sub, g)


def _with_edges(sub: Problem, g: nx.Graph) -> Problem:
    pos = {n: i for i, n in enumerate(sub.ids)}
    r, c, w = [], [], []
    for u, v, d in g.edges(data=True):
        length = max(float(d.get("length_m", 1.0)), 1e-6)
        r += [pos[u], pos[v]]
        c += [pos[v], pos[u]]
        w += [length, length]
    A = sp.csr_matrix((w, (r, c)), shape=(sub.n, sub.n))
    A.sort_indices()
    return Problem(sub.ids, sub.W, sub.measures, A.indptr, A.indices, A.data, sub.xy,
                   sub.presence)


def _island_groups(P: Problem, tol: dict[str, float], k: int,
                   islands: list[dict] | None = None) -> list[np.ndarray]:
    """Islands (pieces joined to the rest by bridges alone) light enough for one grid, to
    be held whole like a must-stay-together group.

    A grid may hold an island whole beside its piece of land (Gulangyu with the quay it is
    ferried from): the island touches no other grid, so the grid is still one walkable
    piece plus an island (:func:`territory.graph.contiguous_grids`). A grid holding part
    of an island and land across the bridge is two pieces that each touch another grid:
    not contiguous, although the bridge makes it look connected to the search. Held whole,
    an island can never be cut that way. ``islands`` is the graph's report
    (:func:`territory.graph.join_components`), which says which pieces are islands (a
    part of a city can hold an islet larger than its own piece of land); without it every
    piece but the largest is one. An island heavier than a grid may hold is left to the
    search, and a plan that cuts it across its bridge is refused (:func:`is_contiguous`).
    """
    if k == 1:
        return []
    comp, island = _islands(P, islands)
    isle = np.unique(island[island >= 0])
    sizes = np.bincount(comp)
    hi = (1 + np.array(list(tol.values()))) * P.W.sum(axis=0) / k
    loads = np.zeros((len(sizes), P.W.shape[1]))
    np.add.at(loads, comp, P.W)
    return [np.flatnonzero(comp == c) for c in isle
            if sizes[c] > 1 and (loads[c] <= hi).all()]


def _islands(P: Problem, islands: list[dict] | None) -> tuple[np.ndarray, np.ndarray]:
    """Every unit's land component, and that component where it is an island (else -1):
    the components holding a unit of the graph's islands report, or without a report every
    component but the largest."""
    comp = P.land_components()
    sizes = np.bincount(comp)
    if islands:
        where = {str(u): i for i, u in enumerate(P.ids)}
        isle = {int(comp[where[u]]) for isl in islands for u in isl["units"] if u in where}
    else:
        isle = set(range(len(sizes))) - {int(np.argmax(sizes))}
    return comp, np.where(np.isin(comp, sorted(isle)), comp, -1)


def _contract(P: Problem, groups: list[np.ndarray]) -> tuple[Problem, np.ndarray]:
    """Merge each must-stay-together group into one node; ``member[i]`` is i's new node."""
    member = np.arange(P.n)
    if not groups:
        P.group_size = np.ones(P.n, dtype=int)
        return P, member
    parent = np.arange(P.n)  # union-find over overlapping groups

    def find(a):
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for grp in groups:
        r = find(grp[0])
        for u in grp[1:]:
            parent[find(u)] = r
    roots = np.array([find(i) for i in range(P.n)])
    uniq, member = np.unique(roots, return_inverse=True)
    M = sp.csr_matrix((np.ones(P.n), (np.arange(P.n), member)), shape=(P.n, len(uniq)))
    A = (M.T @ P.adjacency() @ M).tolil()
    A.setdiag(0)
    A = A.tocsr()
    A.eliminate_zeros()
    A.sort_indices()
    pres = M.T @ P.presence
    xy = None
    if P.xy is not None:
        w = P.presence + 1e-12
        xy = (M.T @ (P.xy * w[:, None])) / (M.T @ w)[:, None]
    ids = np.array([P.ids[r] for r in uniq], dtype=object)
    C = Problem(ids, M.T @ P.W, P.measures, A.indptr, A.indices, A.data, xy, pres)
    C.group_size = np.bincount(member, minlength=len(uniq))
    return C, member


def _contract_locks(locked, member, n_c, ids) -> np.ndarray:
    out = np.full(n_c, -1, dtype=np.int64)
    for i in np.flatnonzero(locked >= 0):
        c = member[i]
        if out[c] >= 0 and out[c] != locked[i]:
            raise InvalidInputError(
                f"unit {ids[i]!r} is locked to grid {locked[i]} but must stay together with "
                f"units locked to grid {out[c]}"
            )
        out[c] = locked[i]
    return out


def _snap(xy, centres, locked) -> np.ndarray:
    """Distinct units nearest to the centres (a grid with locked units: one of them)."""
    taken: set[int] = set()
    out = []
    tree = cKDTree(xy)
    for j, c in enumerate(centres):
        own = np.flatnonzero(locked == j)
        if len(own):
            pick = int(own[0])
        else:
            pick = _nearest_free(tree, c, len(centres) + 1, taken, locked)
            if pick is None:
                raise InfeasibleError(f"grid {j} has no unit of its own: every unit is locked "
                                      "to another grid or starts one; unlock some or ask for "
                                      "fewer grids")
        taken.add(pick)
        out.append(pick)
    return np.array(out)


def _nearest_free(tree: cKDTree, c, k: int, taken: set[int], locked) -> int | None:
    """The unit nearest to ``c`` that is neither taken nor locked, looking at the ``k``
    nearest first and widening (locked or taken units can crowd a centre's neighbours)."""
    n = tree.n
    while True:
        k = min(n, k)
        _, cand = tree.query(c, k=k)
        free = [int(i) for i in np.atleast_1d(cand) if int(i) not in taken and locked[int(i)] < 0]
        if free:
            return free[0]
        if k == n:
            return None
        k *= 4


def _graph_distances(P: Problem, sources: np.ndarray, nearest: int) -> np.ndarray:
    """Shortest-path distances (metres along centroid links) from ``sources`` to every unit.

    Only the ``nearest`` sources of a unit matter (the start LP's candidates), so each
    search stops at a radius that covers them: a bit more than the straight-line distance
    of almost every unit to its ``nearest``-th source. Beyond it a unit gets the radius or
    its straight-line distance, whichever is larger (a path is never shorter than the
    straight line), which keeps it far. On 50 000 units and 300 sources this cut the start
    from minutes of CPU under load to seconds.
    """
    from scipy.sparse.csgraph import dijkstra

    A = P.adjacency().tocoo()
    length = np.hypot(*(P.xy[A.row] - P.xy[A.col]).T) + 1e-3
    G = sp.csr_matrix((length, (A.row, A.col)), shape=A.shape)
    q = min(max(nearest, 1), len(sources))
    reach = cKDTree(P.xy[sources]).query(P.xy, k=q)[0].reshape(P.n, q)[:, -1]
    limit = 1.5 * float(np.quantile(reach, 0.98)) + float(length.max())
    D = dijkstra(G, directed=False, indices=sources, limit=limit)
    E = np.hypot(P.xy[None, :, 0] - P.xy[sources, 0][:, None],
                 P.xy[None, :, 1] - P.xy[sources, 1][:, None])
    far = ~np.isfinite(D)
    D[far] = np.maximum(E[far], limit)
    # Pure path lengths make the LP degenerate: every unit behind a narrow neck costs the
    # same difference to both sides, and the LP splits such subtrees arbitrarily. Half the
    # straight-line distance breaks those ties geometrically.
    D += 0.5 * E
    return D


def _bisection_parts(xy: np.ndarray, W: np.ndarray, k: int,
                     angle: float = 0.0) -> list[np.ndarray]:
    """Recursive coordinate bisection into k parts of equal combined load (the mean of the
    measures over their means), split in proportion to the grid counts on each side.

    ``angle`` turns the cutting axes: a restart gets a different start.
    """
    comb = (W / np.maximum(W.mean(axis=0), 1e-12)).mean(axis=1) + 1e-3
    c, s = np.cos(angle), np.sin(angle)
    axes = xy @ np.array([[c, -s], [s, c]])

    def split(idx: np.ndarray, parts: int) -> list[np.ndarray]:
        if parts == 1:
            return [idx]
        left = parts // 2
        axis = 0 if np.ptp(axes[idx, 0]) >= np.ptp(axes[idx, 1]) else 1
        order = idx[np.argsort(axes[idx, axis], kind="stable")]
        cum = np.cumsum(comb[order])
        cut = int(np.searchsorted(cum, cum[-1] * left / parts)) + 1
        cut = min(max(cut, left), len(order) - (parts - left))
        return split(order[:cut], left) + split(order[cut:], parts - left)

    return split(np.arange(len(xy)), k)


def _bisection_centres(xy: np.ndarray, W: np.ndarray, parts: list[np.ndarray],
                       locked) -> np.ndarray:
    """Initial centres: each bisection part's load-weighted centroid.

    Centres end up as dense as the load, which the balanced LP needs: k-means places them as
    dense as roughly its square root, and on a flat city of 31 000 units into 100 grids the
    start was then too far from balance to repair within a minute (bench/partition.py).
    """
    comb = (W / np.maximum(W.mean(axis=0), 1e-12)).mean(axis=1) + 1e-3
    centres = np.array([(xy[part] * comb[part, None]).sum(axis=0) / comb[part].sum()
                        for part in parts])
    lk = np.flatnonzero(locked >= 0)
    for j in np.unique(locked[lk]):  # a grid with locked units is centred on them
        centres[j] = xy[lk[locked[lk] == j]].mean(axis=0)
    return centres


def _grow_regions(P: Problem, k, locked, rng) -> np.ndarray:
    """Graph-only start: seeds spread by BFS distance, then the lightest grid grows first."""
    from scipy.sparse.csgraph import shortest_path

    n = P.n
    A = P.adjacency()
    labels = np.full(n, -1, dtype=np.int64)
    lk = np.flatnonzero(locked >= 0)
    labels[lk] = locked[lk]
    seeded = set(locked[lk].tolist())
    start = lk if len(lk) else np.array([int(rng.integers(n))])
    dist = shortest_path(A, unweighted=True, indices=start).min(axis=0)
    for j in range(k):
        if j in seeded:
            continue
        s = int(np.argmax(np.where(labels < 0, dist, -1)))
        labels[s] = j
        dist = np.minimum(dist, shortest_path(A, unweighted=True, indices=[s])[0])
    load = np.zeros(k)
    share = P.W.sum(axis=1) / P.W.sum()
    np.add.at(load, labels[labels >= 0], share[labels >= 0])
    frontier = [set() for _ in range(k)]
    for i in np.flatnonzero(labels >= 0):
        frontier[labels[i]].update(int(v) for v in P.neighbours(i) if labels[v] < 0)
    while (labels < 0).any():
        for j in np.argsort(load):  # the lightest grid that can grow takes one unit
            fr = {v for v in frontier[j] if labels[v] < 0}
            frontier[j] = fr
            if fr:
                v = min(fr)
                labels[v] = j
                load[j] += share[v]
                frontier[j].update(int(u) for u in P.neighbours(v) if labels[u] < 0)
                break
        else:
            raise RuntimeError("graph is not connected; join its components first")
    return labels
