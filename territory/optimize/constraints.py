"""Composable move constraints of the balance model: the rules a boundary move must keep
beside balance and grid contiguity.

A :class:`~territory.optimize.balance.BalanceModel` carries a tuple of them
(:meth:`~territory.optimize.balance.BalanceModel.with_constraints`) and every consumer asks
the same objects: the local search (:class:`~territory.optimize.search.LocalSearch`) scores
its candidate moves with :meth:`MoveConstraint.cost`, applies a move only if
:meth:`MoveConstraint.allows` it and tells every constraint :meth:`MoveConstraint.moved`
(the partitioner's searches and :mod:`territory.rebalance` alike); the least budget any
plan needs is :mod:`territory.optimize.churn_bound`'s. A new rule (staffing, a store's
catchment...) is one class here, not a change in each consumer.

Constraints are stateful (they follow the labels of the search that owns them) and applied
in the order given: a constraint that reads another's state comes after it (the disruption
budget after the sub-grids it counts). :meth:`MoveConstraint.mark` and
:meth:`MoveConstraint.restore` undo tentative moves exactly (a swap or a chain that fails
half-way).
"""

from __future__ import annotations

from collections import deque

import numpy as np

_EPS = 1e-6


def leaves_connected(i: int, nbrs, labels, a: int) -> bool:
    """Whether unit ``i`` can leave part ``a`` (its label in ``labels``) with the part still
    one piece: its neighbours in ``a`` must stay linked without it. A breadth-first search
    from one of them that stops as soon as it has met them all, so a move on a compact
    part's boundary costs a few steps, not a walk over the whole part."""
    same = [j for j in nbrs[i] if labels[j] == a]
    if not same:
        return False  # the unit is its part's last one
    if len(same) == 1:
        return True
    targets = set(same[1:])
    seen = {i, same[0]}
    queue = deque([same[0]])
    while queue:
        u = queue.popleft()
        for v in nbrs[u]:
            if v not in seen and labels[v] == a:
                targets.discard(v)
                if not targets:
                    return True
                seen.add(v)
                queue.append(v)
    return False


class MoveConstraint:
    """A rule on moves of unit ``i`` from grid ``a`` to grid ``b`` (positions and grid codes
    of the search). The base class allows every move at no cost."""

    def movable(self, n: int) -> np.ndarray:
        """Which units may move at all."""
        return np.ones(n, dtype=bool)

    def cost(self, i: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """A secondary objective per candidate move (``inf``: never), added to its score."""
        return np.zeros(len(i))

    def allows(self, i: int, a: int, b: int) -> bool:
        """Whether the move keeps the rule, judged exactly against the current state."""
        return True

    def moved(self, i: int, a: int, b: int) -> None:
        """Follow a move the search applied."""

    def mark(self) -> object:
        return None

    def restore(self, mark: object) -> None:
        """Back to the state of :meth:`mark` (undo tentative moves)."""


class Held(MoveConstraint):
    """Units that never move (locks, must-stay-together groups held whole) and grids that
    neither lose nor gain a unit (balance-exempt own grids, locked grids)."""

    def __init__(self, fixed_units: np.ndarray, closed_grids: np.ndarray) -> None:
        self.fixed = np.asarray(fixed_units, dtype=bool)
        self.closed = np.asarray(closed_grids, dtype=bool)

    def movable(self, n: int) -> np.ndarray:
        return ~self.fixed

    def cost(self, i, a, b) -> np.ndarray:
        return np.where(self.closed[b] | self.closed[a], np.inf, 0.0)

    def allows(self, i: int, a: int, b: int) -> bool:
        return not (self.fixed[i] or self.closed[a] or self.closed[b])


class SubGrids(MoveConstraint):
    """Nesting for a search over main grids: each unit's sub-grid stays contiguous and
    non-empty when the unit leaves it, and a moved unit joins the sub-grid of its new main
    grid it shares most boundary with (its own former sub-grid when it comes home).

    ``sub`` are sub-grid codes per unit, ``sub_main`` the main-grid code of each sub-grid;
    ``indptr``/``indices``/``elen`` the search's adjacency.
    """

    def __init__(self, sub: np.ndarray, sub_main: np.ndarray, indptr: np.ndarray,
                 indices: np.ndarray, elen: np.ndarray, home: np.ndarray | None = None
                 ) -> None:
        self.sub = np.asarray(sub, dtype=np.int64).copy()
        self.sub_main = np.asarray(sub_main, dtype=np.int64)
        self.home = self.sub.copy() if home is None else np.asarray(home, dtype=np.int64)
        self.nbrs = [indices[indptr[i]:indptr[i + 1]].tolist() for i in range(len(sub))]
        self.elen = [elen[indptr[i]:indptr[i + 1]].tolist() for i in range(len(sub))]
        self._log: list[tuple[int, int]] = []

    def target(self, i: int, b: int) -> int:
        """The sub-grid of main grid ``b`` that unit ``i`` would join (-1: none adjacent)."""
        length: dict[int, float] = {}
        for j, d in zip(self.nbrs[i], self.elen[i], strict=True):
            s = int(self.sub[j])
            if self.sub_main[s] == b:
                length[s] = length.get(s, 0.0) + d
        if not length:
            return -1
        if int(self.home[i]) in length:
            return int(self.home[i])
        return max(sorted(length), key=length.__getitem__)

    def allows(self, i: int, a: int, b: int) -> bool:
        if self.target(i, b) < 0:
            return False
        return leaves_connected(i, self.nbrs, self.sub, int(self.sub[i]))

    def moved(self, i: int, a: int, b: int) -> None:
        self._log.append((i, int(self.sub[i])))
        self.sub[i] = self.target(i, b)

    def mark(self) -> int:
        return len(self._log)

    def restore(self, mark: int) -> None:
        while len(self._log) > mark:
            i, s = self._log.pop()
            self.sub[i] = s


class DisruptionBudget(MoveConstraint):
    """At most ``limit`` of a measure (``weight`` per unit: customers, households, 1 per
    unit) may end in another grid than ``original``; the amount moved is also the secondary
    objective, so the search moves as little as it has to and takes back moves it no longer
    needs.

    With ``fine`` (the :class:`SubGrids` of a main-grid search), a unit counts as moved when
    its sub-grid differs from ``fine_original``, so that main-grid moves and the sub-grid
    moves that follow share one budget. ``scale`` converts the moved measure into the
    search's score units (the mean grid's share of it: a move costs about its share of a
    grid); ``spent`` is what earlier phases already used.
    """

    def __init__(self, weight: np.ndarray, original: np.ndarray, limit: float, *,
                 scale: float, spent: float = 0.0, fine: SubGrids | None = None,
                 fine_original: np.ndarray | None = None) -> None:
        self.weight = np.asarray(weight, dtype=float)
        self.original = np.asarray(original, dtype=np.int64)
        self.limit = float(limit)
        self.scale = max(float(scale), 1e-12)
        self.fine = fine
        self.fine_original = None if fine_original is None else np.asarray(fine_original)
        self.labels = self.original.copy()
        self.base = float(spent)
        self.is_moved = np.zeros(len(self.weight), dtype=bool)
        self.spent = self.base
        self.peak = self.spent
        self._log: list[tuple[int, bool, int]] = []

    def bind(self, labels: np.ndarray) -> DisruptionBudget:
        """Start from ``labels`` (a search that starts away from ``original``)."""
        self.labels = np.asarray(labels, dtype=np.int64).copy()
        self.is_moved = self._moved_now(np.arange(len(self.labels)))
        self.spent = self.peak = self.base + float(self.weight[self.is_moved].sum())
        return self

    def _moved_now(self, i) -> np.ndarray:
        if self.fine is not None:
            return self.fine.sub[i] != self.fine_original[i]
        return self.labels[i] != self.original[i]

    def cost(self, i, a, b) -> np.ndarray:
        # returning to the original grid refunds; a unit already away costs nothing more
        after = b != self.original[i]
        delta = self.weight[i] * (after.astype(float) - self.is_moved[i])
        return delta / self.scale

    def delta(self, i: int, a: int, b: int) -> float:
        """The exact change of the moved amount if unit ``i`` goes to ``b`` now."""
        if self.fine is not None:
            after = self.fine.target(i, b) != self.fine_original[i]
        else:
            after = b != self.original[i]
        return float(self.weight[i]) * (float(after) - float(self.is_moved[i]))

    def allows(self, i: int, a: int, b: int) -> bool:
        return self.spent + self.delta(i, a, b) <= self.limit + _EPS

    def moved(self, i: int, a: int, b: int) -> None:
        self._log.append((i, bool(self.is_moved[i]), int(self.labels[i])))
        self.labels[i] = b
        now = bool(self._moved_now(i))
        self.spent += float(self.weight[i]) * (float(now) - float(self.is_moved[i]))
        self.is_moved[i] = now
        self.peak = max(self.peak, self.spent)

    def mark(self) -> tuple[int, float]:
        return len(self._log), self.spent

    def restore(self, mark: tuple[int, float]) -> None:
        n, spent = mark
        while len(self._log) > n:
            i, was, lab = self._log.pop()
            self.is_moved[i] = was
            self.labels[i] = lab
        self.spent = spent


def movable_mask(constraints: tuple[MoveConstraint, ...], n: int) -> np.ndarray:
    """Units every constraint lets move."""
    out = np.ones(n, dtype=bool)
    for c in constraints:
        out &= c.movable(n)
    return out
