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

The compiled annealing kernel (:mod:`.anneal`) cannot call Python objects in its inner loop,
so each constraint also *lowers* itself (:meth:`MoveConstraint.lower`) into a small fixed
set of array forms the kernel keeps, a :class:`KernelForm`: which units may move, which
grids neither lose nor gain a unit, sub-grid nesting (sub-grid per unit, main grid per
sub-grid, home sub-grid) and one disruption budget (weight per unit, the labels moves are
counted against, a cap). :func:`kernel_form` combines a model's constraints into one form;
after the walk, :func:`resume` hands the kernel's state back to the constraint objects. A
constraint without an array form is refused (:class:`NotLowered`), never dropped: the
anneal would otherwise break it silently. A new rule either lowers into these forms or
adds one (the kernel's arguments and this module), and stays one class here.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from territory.errors import TerritoryError

_EPS = 1e-6


class NotLowered(TerritoryError, TypeError):
    """A move constraint has no array form the annealing kernel keeps (or two constraints
    need one form the kernel holds once): run :class:`~territory.optimize.search.
    LocalSearch` alone with it, or give it a :meth:`MoveConstraint.lower`."""


@dataclass
class KernelForm:
    """The array forms of a tuple of constraints, as the annealing kernel takes them.

    ``movable`` (uint8, per unit): the unit may move. ``closed`` (uint8, per grid): the grid
    neither loses nor gains a unit. Nesting (empty arrays: none): ``sub`` the sub-grid per
    unit (the kernel updates it with its moves), ``sub_main`` the main grid per sub-grid,
    ``home`` the sub-grid a unit rejoins when it comes back. Budget (empty ``weight``:
    none): at most ``limit`` of ``weight`` may be on units whose label (``on_sub``: whose
    sub-grid) differs from ``original``, ``spent`` already used by earlier phases;
    ``peak`` is the most the kernel held at once.
    """

    movable: np.ndarray
    closed: np.ndarray
    sub: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    sub_main: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    home: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    weight: np.ndarray = field(default_factory=lambda: np.empty(0, np.float64))
    original: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    limit: float = np.inf
    spent: float = 0.0
    on_sub: bool = False
    peak: float = 0.0
    #: which constraint lowered the nesting and the budget (each form is held once)
    nesting: MoveConstraint | None = None
    budget: MoveConstraint | None = None

    @property
    def recombinable(self) -> bool:
        """Whether a recombination jump (:mod:`.recom`, which knows only ``movable``) keeps
        every form: not with nesting, a budget or closed grids."""
        return self.nesting is None and self.budget is None and not self.closed.any()


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

    def lower(self, form: KernelForm) -> None:
        """Add this rule's array forms to ``form`` (see :class:`KernelForm`); a rule the
        kernel cannot keep raises :class:`NotLowered`."""
        raise NotLowered(
            f"{type(self).__name__} has no array form the annealing kernel keeps (a movable "
            "mask, closed grids, sub-grid nesting, one disruption budget): give it a "
            "lower() method in territory/optimize/constraints.py or search with "
            "LocalSearch alone")

    def resume(self, labels: np.ndarray, form: KernelForm) -> None:
        """Take up the state the kernel left (its ``labels`` and ``form``) after a walk."""


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

    def lower(self, form: KernelForm) -> None:
        form.movable &= ~self.fixed
        form.closed |= self.closed


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

    def lower(self, form: KernelForm) -> None:
        """Nesting on the search's own adjacency: the kernel picks the same target (home
        first, else the most shared boundary, ties to the lowest code)."""
        if form.nesting is not None:
            raise NotLowered("the annealing kernel keeps one sub-grid nesting; "
                             "two SubGrids constraints were given")
        form.nesting = self
        form.sub = self.sub.copy()
        form.sub_main = self.sub_main.copy()
        form.home = self.home.copy()

    def resume(self, labels: np.ndarray, form: KernelForm) -> None:
        self.sub = form.sub.copy()
        self._log.clear()


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

    def lower(self, form: KernelForm) -> None:
        """The cap, as a hard rule of every kernel move. The budget's cost (least churn as
        a secondary objective) stays the local search's: a walk may spend up to the cap,
        and :meth:`~territory.optimize.search.LocalSearch.settle` takes back what the
        balance does not need."""
        if form.budget is not None:
            raise NotLowered("the annealing kernel keeps one disruption budget; two "
                             "DisruptionBudget constraints were given")
        if self.fine is not None and form.nesting is not self.fine:
            raise NotLowered("a DisruptionBudget counted on sub-grids needs its SubGrids "
                             "among the constraints, before it")
        form.budget = self
        form.weight = self.weight.copy()
        form.on_sub = self.fine is not None
        form.original = (self.fine_original if form.on_sub else self.original).astype(
            np.int64)
        form.limit, form.spent = self.limit, self.base

    def resume(self, labels: np.ndarray, form: KernelForm) -> None:
        peak = max(self.peak, form.peak)
        self._log.clear()
        self.bind(labels)
        self.peak = max(peak, self.peak)

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


def kernel_form(constraints: tuple[MoveConstraint, ...], n: int, k: int,
                movable: np.ndarray | None = None) -> KernelForm:
    """The one array form of ``constraints`` (in order) for ``n`` units and ``k`` grids,
    starting from ``movable``; raises :class:`NotLowered` for a rule the kernel cannot
    keep."""
    form = KernelForm(np.ones(n, dtype=bool) if movable is None
                      else np.asarray(movable, dtype=bool).copy(), np.zeros(k, dtype=bool))
    for c in constraints:
        c.lower(form)
    if len(form.sub) not in (0, n) or len(form.weight) not in (0, n):
        raise NotLowered(f"a constraint's arrays do not match the search's {n} units")
    form.peak = form.spent
    return form


def resume(constraints: tuple[MoveConstraint, ...], labels: np.ndarray,
           form: KernelForm) -> None:
    """Hand the kernel's final state back to ``constraints`` (in order: the budget reads
    the nesting it counts)."""
    for c in constraints:
        c.resume(labels, form)
