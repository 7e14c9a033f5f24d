"""The balance model: one home for measures, tolerances, means, bounds and exemptions.

Every consumer of "is this plan balanced?" asks this module: the partitioner's LP rows and
MIP rows (:meth:`BalanceModel.bounds`), the local search and the annealing kernel (the same
bounds and :meth:`BalanceModel.excess`, :meth:`BalanceModel.move_delta`,
:meth:`BalanceModel.admissible`), the pre-check (:func:`precheck`), the explanation of a miss
(:meth:`BalanceModel.explain`) and the plan metrics (:func:`deviation`, :func:`exempt_mean`).
The rules a move must keep beside balance (locks, nesting, the disruption budget) are
composable constraints the model carries (:mod:`.constraints`,
:meth:`BalanceModel.with_constraints`), consumed by the same search, MIP and pre-check.

The rule: a grid's load of measure m lies within ±tolerance_m of the mean, where the mean is
taken over the grids that are balanced, i.e. all grids but the exempt ones (an own grid: an
island, a development zone). The exempt grids' loads are left out of the mean and out of the
reported deviation alike.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property

import numpy as np

from territory.errors import InvalidInputError

_EPS = 1e-9


def parse_tolerances(measures: Sequence[str] | Mapping[str, float | None] | str,
                     tolerance: float) -> dict[str, float]:
    """``measures`` as given to the partitioner -> {measure: tolerance}, validated."""
    if isinstance(measures, str):
        measures = [measures]
    tol = dict(measures) if isinstance(measures, Mapping) else {m: tolerance for m in measures}
    if not tol:
        raise InvalidInputError("measures: give at least one balance measure, e.g. subscribers")
    for m, t in tol.items():
        if t is None:
            tol[m] = t = tolerance
        if isinstance(t, bool) or not (isinstance(t, int | float) and 0 < t < 1):
            raise InvalidInputError(
                f"tolerance for {m!r} is {t!r}: give a fraction between 0 and 1 "
                "(0.05 = ±5 % of the mean)"
            )
    return {m: float(t) for m, t in tol.items()}


def deviation(load: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Relative deviation load/mean - 1 (0 where the mean is 0: nothing to balance)."""
    load, mean = np.asarray(load, dtype=float), np.asarray(mean, dtype=float)
    safe = np.where(mean > 0, mean, 1.0)
    return np.where(mean > 0, load / safe - 1, 0.0)


def exempt_mean(load: np.ndarray, exempt: np.ndarray) -> float:
    """Mean load over the balanced (not exempt) grids; 0 when every grid is exempt."""
    keep = ~np.asarray(exempt, dtype=bool)
    return float(np.asarray(load, dtype=float)[keep].mean()) if keep.any() else 0.0


@dataclass(frozen=True)
class Violation:
    """One grid outside its band for one measure."""

    grid: int
    measure: str
    load: float
    mean: float

    @property
    def deviation(self) -> float:
        return float(deviation(self.load, self.mean))


@dataclass(frozen=True)
class BalanceModel:
    """Bounds of every grid's load: ``(1 ± tolerance) * mean`` for balanced grids.

    ``mean`` is per measure, over the ``n_grids - len(exempt)`` balanced grids. With one
    balanced grid there is nothing to balance and its bounds are infinite.
    """

    measures: tuple[str, ...]
    tolerance: np.ndarray
    mean: np.ndarray
    n_grids: int
    exempt: frozenset[int] = field(default_factory=frozenset)
    #: move constraints (:mod:`.constraints`) every consumer of the model keeps, in order
    constraints: tuple = ()

    def with_constraints(self, *constraints) -> BalanceModel:
        """The same bounds with more move constraints (applied after the ones it has)."""
        return replace(self, constraints=self.constraints + tuple(constraints))

    @classmethod
    def for_units(cls, W: np.ndarray, tol: Mapping[str, float], n_balanced: int,
                  n_exempt: int = 0) -> BalanceModel:
        """The model for balanced units ``W`` (n x m, exempt units excluded) in
        ``n_balanced`` grids, with ``n_exempt`` exempt grids numbered after them."""
        mean = np.asarray(W, dtype=float).sum(axis=0) / max(n_balanced, 1)
        return cls(tuple(tol), np.array([tol[m] for m in tol], dtype=float), mean,
                   n_balanced + n_exempt,
                   frozenset(range(n_balanced, n_balanced + n_exempt)))

    @property
    def n_balanced(self) -> int:
        return self.n_grids - len(self.exempt)

    @property
    def scale(self) -> np.ndarray:
        """The mean, floored so a measure summing to zero does not divide by zero."""
        return np.maximum(self.mean, 1e-12)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """(lo, hi), each n_grids x m; ±inf for exempt grids and for a lone balanced grid.

        Read-only and built once: the search asks for them on every scored move."""
        return self._bounds

    @cached_property
    def _bounds(self) -> tuple[np.ndarray, np.ndarray]:
        k, m = self.n_grids, len(self.measures)
        lo = np.tile((1 - self.tolerance) * self.mean, (k, 1))
        hi = np.tile((1 + self.tolerance) * self.mean, (k, 1))
        free = sorted(self.exempt) + ([0] if self.n_balanced == 1 else [])
        lo[free], hi[free] = -np.inf, np.inf
        lo, hi = lo.reshape(k, m), hi.reshape(k, m)
        lo.setflags(write=False)
        hi.setflags(write=False)
        return lo, hi

    # -- judging loads -------------------------------------------------------------------
    def excess(self, loads: np.ndarray, grids: np.ndarray | None = None) -> np.ndarray:
        """Per grid, the summed relative distance of its loads outside their band."""
        lo, hi = self.bounds()
        if grids is not None:
            lo, hi = lo[grids], hi[grids]
        over = np.maximum(loads - hi, 0) + np.maximum(lo - loads, 0)
        return (over / self.scale).sum(axis=-1)

    def move_delta(self, loads: np.ndarray, w: np.ndarray, a: np.ndarray,
                   b: np.ndarray) -> np.ndarray:
        """Change of the total excess when loads ``w`` (rows) move from grids a to b."""
        La, Lb = loads[a], loads[b]
        return (self.excess(La - w, a) + self.excess(Lb + w, b)
                - self.excess(La, a) - self.excess(Lb, b))

    def admissible(self, loads: np.ndarray, w: np.ndarray, a: np.ndarray,
                   b: np.ndarray) -> np.ndarray:
        """Whether each move keeps grid a above and grid b below its bounds."""
        lo, hi = self.bounds()
        return ((loads[a] - w >= lo[a] - _EPS).all(axis=1)
                & (loads[b] + w <= hi[b] + _EPS).all(axis=1))

    def deviations(self, loads: np.ndarray) -> np.ndarray:
        """k x m relative deviations; 0 for exempt grids (they are not judged)."""
        dev = deviation(loads, self.mean[None, :])
        dev[sorted(self.exempt)] = 0.0
        return dev

    def max_deviation(self, loads: np.ndarray) -> dict[str, float]:
        dev = np.abs(self.deviations(loads))
        return {m: float(dev[:, t].max()) if len(dev) else 0.0
                for t, m in enumerate(self.measures)}

    def violations(self, loads: np.ndarray) -> list[Violation]:
        lo, hi = self.bounds()
        out = []
        for j, t in zip(*np.nonzero((loads > hi + _EPS) | (loads < lo - _EPS)), strict=True):
            out.append(Violation(int(j), self.measures[t], float(loads[j, t]),
                                 float(self.mean[t])))
        return out

    def explain(self, loads: np.ndarray, W: np.ndarray, *, searched: str,
                proven: str | None = None) -> str:
        """Which measure, which grid, and what would work. ``proven`` names what proved
        that no plan exists (the exact MIP); otherwise ``searched`` says how hard we looked,
        since a longer search might still find a plan."""
        by_m: dict[str, list[Violation]] = {}
        for v in self.violations(loads):
            by_m.setdefault(v.measure, []).append(v)
        lines = []
        for m, vs in by_m.items():
            t = self.measures.index(m)
            worst = max(vs, key=lambda v: abs(v.deviation))
            need = math.ceil(max(abs(v.deviation) for v in vs) * 1000) / 10
            kmax = max_feasible_grids(W[:, t], self.n_balanced, float(self.tolerance[t]))
            lines.append(
                f"measure {m!r}: {len(vs)} grids outside ±{self.tolerance[t]:.1%} of the mean "
                f"{self.mean[t]:.6g} (worst: grid {worst.grid} at {worst.load:.6g}, "
                f"{worst.deviation:+.2%}); a tolerance of ±{need:.1f}% works for the best plan "
                "found"
                + (f", or use at most k={kmax} grids" if kmax < self.n_balanced else
                   ", or use fewer grids or finer units")
            )
        head = (f"balance targets cannot be met (proven by {proven}); the best plan found: "
                if proven else
                f"balance targets not met (not proven impossible: no plan found {searched}): ")
        return head + "; ".join(lines)


# -- the pre-check: targets no plan can meet ------------------------------------------------
@dataclass(frozen=True)
class Shortfall:
    """A balance target that no plan can meet, proven from the unit loads alone."""

    measure: str
    n_grids: int
    tolerance: float
    mean: float
    reason: str
    #: the smallest tolerance that passes the same check for ``n_grids`` grids
    min_tolerance: float
    #: the largest grid count <= n_grids that passes the check at ``tolerance``
    max_grids: int

    def message(self, where: str = "", count: str = "k") -> str:
        """The refusal with its fix; ``count`` names the grid-count parameter."""
        return (
            f"{where + ': ' if where else ''}measure {self.measure!r} cannot be balanced "
            f"within ±{self.tolerance:.2%} over {self.n_grids} grids (mean {self.mean:.6g}): "
            f"{self.reason}. Proven from the unit loads. Fix: finer units (a smaller "
            f"target_per_unit or a finer resolution), at most {count}={self.max_grids} grids, or a "
            f"tolerance of at least {math.ceil(self.min_tolerance * 1e4) / 1e4:.2%}"
        )


def _packing_reason(w_desc: np.ndarray, k: int, tol: float) -> str | None:
    """Why ``k`` grids within ±tol cannot hold the loads ``w_desc`` (sorted, heaviest
    first), or None. Necessary conditions of bin packing into [L, U]:

    * the heaviest unit fits: w_max <= U;
    * every grid needs at least ``c_min`` units (the fewest heaviest units reaching L) and
      holds at most ``c_max`` (the most lightest units staying <= U): k * c_min <= n <=
      k * c_max (and c_min <= c_max);
    * integer loads with a common divisor g need a multiple of g inside [L, U].
    """
    n = len(w_desc)
    total = float(w_desc.sum())
    if total <= 0 or k <= 1:
        return None
    mean = total / k
    lo, hi = (1 - tol) * mean, (1 + tol) * mean
    if w_desc[0] > hi + _EPS:
        return (f"one unit alone holds {w_desc[0]:.6g}, above the upper bound {hi:.6g} of "
                "any grid")
    if n < k:
        return f"{n} units cannot fill {k} grids"
    heavy = np.cumsum(w_desc)
    light = np.cumsum(w_desc[::-1])
    c_min = int(np.searchsorted(heavy, lo - _EPS)) + 1
    c_max = int(np.searchsorted(light, hi + _EPS, side="right"))
    if k * c_min > n:
        return (f"every grid needs at least {c_min} units to reach the lower bound {lo:.6g}, "
                f"so {k} grids need {k * c_min} units; there are {n}")
    if k * c_max < n:
        return (f"a grid holds at most {c_max} units below the upper bound {hi:.6g}, so {k} "
                f"grids hold at most {k * c_max} of the {n} units")
    if np.all(w_desc == np.round(w_desc)):
        g = int(np.gcd.reduce(w_desc.astype(np.int64)))
        if g > 1 and math.ceil((lo - _EPS) / g) * g > hi + _EPS:
            return (f"every unit load is a multiple of {g} and no multiple of {g} lies in "
                    f"[{lo:.6g}, {hi:.6g}]")
    return None


def max_feasible_grids(w: np.ndarray, k: int, tol: float) -> int:
    """The largest grid count <= ``k`` that the pre-check does not refuse (at least 1)."""
    w_desc = np.sort(np.asarray(w, dtype=float))[::-1]
    for kk in range(int(k), 1, -1):
        if _packing_reason(w_desc, kk, tol) is None:
            return kk
    return 1


def _min_tolerance(w_desc: np.ndarray, k: int, tol: float) -> float:
    """The smallest tolerance (to 0.01 %) that the pre-check accepts for ``k`` grids."""
    hi = max(tol, 1e-4)
    while _packing_reason(w_desc, k, hi) is not None and hi < 64:
        hi *= 2
    lo = tol
    while hi - lo > 1e-4:
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if _packing_reason(w_desc, k, mid) is None else (mid, hi)
    return hi


def precheck(W: np.ndarray, k: int, tolerances: Mapping[str, float],
             measures: Sequence[str] | None = None) -> list[Shortfall]:
    """Targets that no plan of ``k`` grids can meet, per measure, from the loads alone.

    ``W`` is n x m unit loads with must-stay-together groups already summed (a group is one
    indivisible load) and exempt areas left out. Runs in O(n log n) per measure: call it
    before any search. An empty list means "not refused", not "feasible": contiguity can
    still make a target unreachable.
    """
    W = np.asarray(W, dtype=float).reshape(len(W), -1)
    names = list(measures or tolerances)
    out = []
    for t, m in enumerate(names):
        tol = float(tolerances[m])
        w_desc = np.sort(W[:, t])[::-1]
        reason = _packing_reason(w_desc, k, tol)
        if reason is not None:
            out.append(Shortfall(m, int(k), tol, float(w_desc.sum() / k), reason,
                                 _min_tolerance(w_desc, k, tol),
                                 max_feasible_grids(w_desc, k, tol)))
    return out


def locked_shortfalls(W: np.ndarray, locked: np.ndarray, model: BalanceModel) -> list[str]:
    """Grids whose locked units alone exceed the grid's upper bound (proven infeasible)."""
    _, hi = model.bounds()
    out = []
    if not (locked >= 0).any():
        return out
    load = np.zeros((model.n_grids, len(model.measures)))
    np.add.at(load, locked[locked >= 0], W[locked >= 0])
    for j, t in zip(*np.nonzero(load > hi + _EPS), strict=True):
        out.append(f"measure {model.measures[t]!r}: units locked to grid {j} hold "
                   f"{load[j, t]:.6g}, more than its upper bound {hi[j, t]:.6g}; unlock some "
                   "of them or raise the tolerance")
    return out


def stranded_units(W: np.ndarray, indptr: np.ndarray, indices: np.ndarray,
                   model: BalanceModel, ids: Sequence | None = None) -> list[str]:
    """Units that fit in no contiguous grid (proven): lighter than the lower bound, so
    their grid needs a neighbour, yet heavier than the upper bound with the lightest one.

    (CO counties at ±0.5 %: Denver is below the mean and every neighbour county is big.)
    """
    if model.n_balanced < 2:
        return []
    lo, hi = model.bounds()
    lo, hi = lo[0], hi[0]
    out = []
    for i in range(len(W)):
        nbrs = indices[indptr[i]:indptr[i + 1]]
        for t, m in enumerate(model.measures):
            if W[i, t] >= lo[t] - _EPS:
                continue
            lightest = W[nbrs, t].min() if len(nbrs) else np.inf
            if W[i, t] + lightest > hi[t] + _EPS:
                name = ids[i] if ids is not None else i
                # alone (a wider lower bound) or with its lightest neighbour (a wider upper)
                need = min(1 - W[i, t] / model.mean[t], (W[i, t] + lightest) / model.mean[t] - 1)
                out.append(
                    f"measure {m!r}: unit {name!r} holds {W[i, t]:.6g}, below the lower bound "
                    f"{lo[t]:.6g} (mean {model.mean[t]:.6g} -{model.tolerance[t]:.1%}), and with "
                    f"its lightest neighbour {W[i, t] + lightest:.6g}, above the upper bound "
                    f"{hi[t]:.6g}: it fits in no contiguous grid. Proven from the unit loads. "
                    "Fix: finer units around it, a tolerance of at least "
                    f"{need:.2%}, "
                    "or another number of grids")
                break
    return out
